"""How many calls one provider endpoint gets at once: a limit that adapts (issue 15.2).

AIMD, as concurrency-limit libraries do it (Netflix's ``AIMDLimit``): the limit starts small
and grows by one per answered call while at least half of it is in use, so it doubles per round
trip the way TCP's slow start does, up to ``maximum``. Two signs of trouble, two answers:

* **refused**: a new connection (or stream) was turned away, or could not be made, while
  ``working`` others still answer. The endpoint takes that many from this client now: the limit
  drops to it and holds there for ``probe_min_ms``; then one more is tried (a probe). A refused
  probe doubles the hold, up to ``probe_max_ms``; a probe that answers (``proven``) ends the
  episode and the limit grows freely again. So a cap costs one refused connection per hold
  while it lasts, and its end is noticed within ``probe_max_ms``.
* **timeout**: a written call got no answer in time: the limit is multiplied by ``backoff``.

Engine-free and not thread-safe: one per endpoint, used on the event loop that calls it.
"""
from __future__ import annotations

import time
from typing import Callable


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class AdaptiveLimit:
    """One endpoint's concurrency limit (``limit``: calls, or connections, at once)."""

    __slots__ = ("limit", "minimum", "maximum", "backoff", "probe_min_ms", "probe_max_ms",
                 "ceiling", "refusals", "timeouts", "_hold_ms", "_probe_at", "_clock")

    def __init__(self, *, initial: int = 8, minimum: int = 1, maximum: int = 256,
                 backoff: float = 0.5, probe_min_ms: float = 250.0,
                 probe_max_ms: float = 2_000.0, clock: Callable[[], float] = monotonic_ms):
        self.minimum = _check_int("minimum", minimum, 1)
        self.maximum = _check_int("maximum", maximum, minimum)
        _check_int("initial", initial, 1)
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or \
                not 0 < backoff < 1:
            raise ValueError(f"backoff must be in (0, 1), got {backoff!r}")
        if not 0 < probe_min_ms <= probe_max_ms:
            raise ValueError("probe times must satisfy 0 < probe_min_ms <= probe_max_ms")
        self.backoff = backoff
        self.probe_min_ms = probe_min_ms
        self.probe_max_ms = probe_max_ms
        self.limit = min(max(initial, minimum), maximum)
        self.ceiling: int | None = None  # the level a refusal pinned (None: no episode)
        self.refusals = 0
        self.timeouts = 0
        self._hold_ms = 0.0
        self._probe_at = 0.0
        self._clock = clock

    def on_answer(self, in_use: int) -> None:
        """A call was answered while ``in_use`` calls (itself included) were in flight."""
        limit = self.limit
        if limit >= self.maximum or in_use * 2 < limit:
            return  # at the top, or not using what it has: no evidence it needs more
        ceiling = self.ceiling
        if ceiling is None or limit < ceiling:
            self.limit = limit + 1
        elif limit == ceiling and self._clock() >= self._probe_at:
            self.limit = limit + 1  # one probe above the refused level, then wait for its fate

    def proven(self, working: int) -> None:
        """A new connection (stream) answered its first call; ``working`` answer now, itself
        included. More than the refused level: the cap has lifted."""
        if self.ceiling is not None and working > self.ceiling:
            self.ceiling = None
            self._hold_ms = 0.0

    def refused(self, working: int) -> None:
        """A new connection (stream) was turned away while ``working`` others answer."""
        self.refusals += 1
        if self.ceiling is not None and self.limit > self.ceiling:
            self._hold_ms = min(self._hold_ms * 2, self.probe_max_ms)  # the probe failed
        elif self._hold_ms == 0:
            self._hold_ms = self.probe_min_ms
        level = min(max(working, self.minimum), self.maximum)
        self.ceiling = self.limit = level
        self._probe_at = self._clock() + self._hold_ms

    def timeout(self) -> None:
        """A written call got no answer in time: the endpoint is overloaded or slow."""
        self.timeouts += 1
        limit = self.limit
        self.limit = max(self.minimum, min(limit - 1, int(limit * self.backoff)))

    def probe_in_ms(self) -> float:
        """How long until a probe above the refused level may go (0: now, or no episode)."""
        if self.ceiling is None:
            return 0.0
        return max(0.0, self._probe_at - self._clock())

    def __repr__(self) -> str:
        return f"AdaptiveLimit(limit={self.limit}, ceiling={self.ceiling})"
