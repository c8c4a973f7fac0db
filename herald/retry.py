"""Retry and fallback policies: when to try again, when to give up, which channel is next,
and whether the time left allows another try on this channel before the next one.

Small objects that check their arguments once at construction (like PyFlink's
``async_retry_strategies``), then answer per failure without I/O. Times are epoch ms, the
clock of ``created_at``/``expires_at``.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Collection, Sequence

from herald import states

RETRY = "retry"
GIVE_UP_EXHAUSTED = "give_up_exhausted"
GIVE_UP_EXPIRED = "give_up_expired"

# Why a channel failed for good. The first three are the provider layer's outcome kinds
# (herald.providers.base.Kind is a str enum with the same values).
THROTTLED = "throttled"
RETRYABLE = "retryable"
PERMANENT = "permanent"
EXHAUSTED = "exhausted"              # retries used up on this channel
MISSING_CONTACT = "missing_contact"  # the user has no token/number/address for this channel
UNAVAILABLE = "unavailable"          # the provider's circuit is open
OUT_OF_TIME = "out_of_time"          # a retry here would leave the later channels too little
EXPIRED = "expired"                  # expires_at reached: no channel can help
FAILURES = frozenset({THROTTLED, RETRYABLE, PERMANENT, EXHAUSTED, MISSING_CONTACT, UNAVAILABLE,
                      OUT_OF_TIME, EXPIRED})
FINAL_FAILURES = frozenset({PERMANENT, EXHAUSTED, MISSING_CONTACT, UNAVAILABLE, OUT_OF_TIME,
                            EXPIRED})

# TimeLeftPolicy's answers
RETRY_HERE = "retry_here"
FALL_BACK = "fall_back"


@dataclass(frozen=True, slots=True)
class RetryDecision:
    action: str                # RETRY | GIVE_UP_EXHAUSTED | GIVE_UP_EXPIRED
    at_ms: int | None = None   # when to try again (RETRY only)
    delay_ms: int | None = None

    @property
    def retry(self) -> bool:
        return self.action == RETRY


_EXHAUSTED = RetryDecision(GIVE_UP_EXHAUSTED)
_EXPIRED = RetryDecision(GIVE_UP_EXPIRED)


class ExponentialBackoffRetry:
    """Exponential backoff with full jitter, capped by attempts and by the record's expiry.

    The n-th retry waits a uniform random time in ``[0, min(max_delay, initial * mult**(n-1))]``
    (full jitter spreads a burst of failures instead of retrying it in lockstep), or the
    provider's ``Retry-After`` when that is longer. A retry that would fire at or after
    ``expires_at`` is never scheduled: the answer is ``GIVE_UP_EXPIRED``. Throttling answers do
    not use up attempts (the contract: throttling slows Herald down, it never loses a message),
    so only expiry ends a run of them.
    """

    __slots__ = ("max_attempts", "initial_delay_ms", "max_delay_ms", "multiplier", "_rng",
                 "_doublings_to_cap")

    def __init__(self, *, max_attempts: int = 5, initial_delay_ms: int = 500,
                 max_delay_ms: int = 60_000, multiplier: float = 2.0,
                 rng: random.Random | None = None, seed: int | None = None):
        """``max_attempts`` counts every try, the first included. ``rng`` or ``seed`` make the
        jitter reproducible (tests); by default a private, unseeded RNG."""
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        if not _positive_number(initial_delay_ms):
            raise ValueError(f"initial_delay_ms must be > 0, got {initial_delay_ms!r}")
        if not _positive_number(max_delay_ms) or max_delay_ms < initial_delay_ms:
            raise ValueError(f"max_delay_ms must be >= initial_delay_ms ({initial_delay_ms}), "
                             f"got {max_delay_ms!r}")
        if not _positive_number(multiplier) or multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {multiplier!r}")
        if rng is not None and seed is not None:
            raise ValueError("give rng or seed, not both")
        self.max_attempts = max_attempts
        self.initial_delay_ms = initial_delay_ms
        self.max_delay_ms = max_delay_ms
        self.multiplier = multiplier
        self._rng = rng if rng is not None else random.Random(seed)
        # Past this many retries the ceiling is max_delay; avoids float overflow in mult**n.
        self._doublings_to_cap = (math.inf if multiplier == 1 else
                                  math.log(max_delay_ms / initial_delay_ms) / math.log(multiplier))

    def ceiling_ms(self, retry_number: int) -> float:
        """The upper bound of the jittered wait before the ``retry_number``-th retry (1-based)."""
        exponent = max(retry_number - 1, 0)
        if exponent >= self._doublings_to_cap:
            return float(self.max_delay_ms)
        return min(float(self.max_delay_ms), self.initial_delay_ms * self.multiplier ** exponent)

    def next_retry(self, attempts: int, now_ms: int, expires_at: int, *,
                   retry_after_ms: int | None = None, throttled: bool = False) -> RetryDecision:
        """After ``attempts`` failed tries (>= 1) at ``now_ms``: retry when, or give up why."""
        if attempts < 1:
            raise ValueError(f"attempts counts the failed tries so far (>= 1), got {attempts}")
        if now_ms >= expires_at:
            return _EXPIRED
        if not throttled and attempts >= self.max_attempts:
            return _EXHAUSTED
        delay = int(self._rng.uniform(0.0, self.ceiling_ms(attempts)))
        if retry_after_ms is not None and retry_after_ms > delay:
            delay = int(math.ceil(retry_after_ms))
        at = now_ms + delay
        if at >= expires_at:
            return _EXPIRED
        return RetryDecision(RETRY, at, delay)


class FallbackPolicy:
    """Which channel to try next when one has failed for good.

    The notification's ``channels`` is the user's preference order; later ones are fallbacks.
    ``None`` means nothing is left: the caller dead-letters with the attempt history. A
    failure that is not final (throttled, retryable) is a caller bug, since falling back then
    would skip the retry policy, so it raises.
    """

    __slots__ = ("fall_back_on",)

    def __init__(self, *, fall_back_on: Collection[str] = (PERMANENT, EXHAUSTED, MISSING_CONTACT,
                                                              UNAVAILABLE, OUT_OF_TIME)):
        chosen = frozenset(_kind(f) for f in fall_back_on)
        unknown = chosen - FINAL_FAILURES
        if unknown:
            raise ValueError(f"cannot fall back on {sorted(unknown)}: only on final failures "
                             f"{sorted(FINAL_FAILURES)}")
        if EXPIRED in chosen:
            raise ValueError("an expired notification cannot be delivered on any channel")
        self.fall_back_on = chosen

    def next_channel(self, channels: Sequence[str], failed_channel: str, failure: str, *,
                     skip: Collection[str] = ()) -> str | None:
        """The channel after ``failed_channel`` in ``channels``, passing over ``skip`` (opted
        out, or no contact known); ``None`` when there is none or ``failure`` allows none."""
        failure = _kind(failure)
        if failure not in FAILURES:
            raise ValueError(f"unknown failure kind {failure!r}")
        if failure not in FINAL_FAILURES:
            raise ValueError(f"{failure!r} is not final: retry it, do not fall back")
        try:
            position = list(channels).index(failed_channel)
        except ValueError:
            raise ValueError(f"{failed_channel!r} is not one of the channels {list(channels)}") \
                from None
        if failure not in self.fall_back_on:
            return None
        for channel in channels[position + 1:]:
            if channel not in skip:
                return channel
        return None


class TimeLeftPolicy:
    """Retry on the current channel, or fall back now, by the time left before expiry.

    A retry here is scheduled only if, once it is due, every later channel would still have
    ``reserve_ms`` before ``expires_at``: ``time_left - retry_delay >= channels_left *
    reserve_ms``. Otherwise the notification falls back now (``OUT_OF_TIME``), so a critical
    alert does not spend its life on a dead provider. With no channel left it always retries
    here (whether that is before expiry is ``ExponentialBackoffRetry``'s call); with channels
    left and no retry possible before expiry (``retry_delay_ms`` None) it falls back.
    """

    __slots__ = ("reserve_ms",)

    def __init__(self, *, reserve_ms: int):
        if isinstance(reserve_ms, bool) or not isinstance(reserve_ms, int) or reserve_ms < 0:
            raise ValueError(f"reserve_ms must be an integer >= 0, got {reserve_ms!r}")
        self.reserve_ms = reserve_ms

    def decide(self, channels_left: int, time_left_ms: int, retry_delay_ms: int | None) -> str:
        """``RETRY_HERE`` or ``FALL_BACK``, for a notification with ``channels_left`` usable
        channels after this one, ``time_left_ms`` to live, and a retry due in
        ``retry_delay_ms`` (None: none before expiry)."""
        if channels_left < 0:
            raise ValueError(f"channels_left must be >= 0, got {channels_left}")
        if retry_delay_ms is not None and retry_delay_ms < 0:
            raise ValueError(f"retry_delay_ms must be >= 0, got {retry_delay_ms}")
        if channels_left == 0:
            return RETRY_HERE
        if retry_delay_ms is None:
            return FALL_BACK
        if time_left_ms - retry_delay_ms >= channels_left * self.reserve_ms:
            return RETRY_HERE
        return FALL_BACK


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery try, kept for the status event and the dead letter's history."""
    channel: str
    provider: str
    attempt: int
    at: int
    outcome: str               # ok | throttled | retryable | permanent | missing_contact | ...
    detail: str = ""
    status: int | None = None  # HTTP status, when there was an answer
    latency_ms: int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


def final_state(failure: str) -> str:
    """The contract's status ``state`` for a notification that ran out of options."""
    return states.EXPIRED if _kind(failure) == EXPIRED else states.FAILED


def _kind(failure) -> str:
    """A plain string for a failure kind, also from the provider layer's ``Kind`` enum."""
    return failure.value if isinstance(failure, Enum) else failure


def _positive_number(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and value > 0)
