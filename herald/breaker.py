"""A circuit breaker per provider: stop calling a provider that is down, probe it now and then.

closed → open after ``failure_threshold`` consecutive failures, or when the failure rate in
the last ``window_ms`` reaches ``failure_rate`` (with at least ``min_calls`` calls); open for
``cool_down_ms``; then half-open lets one probe through: its success closes the circuit, its
failure opens it again. A probe whose answer never comes is replaced after
``probe_timeout_ms``, so a lost result cannot wedge the circuit half-open.

Record provider faults only (5xx, timeouts, refused connections). Throttling is the rate
limiter's business and a permanent answer about one recipient says nothing about the
provider's health; counting either would open the circuit on a healthy provider.
"""
from __future__ import annotations

import time
from typing import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class CircuitBreaker:
    """One provider's breaker. Not thread-safe: one per operator instance (and per thread)."""

    __slots__ = ("name", "failure_threshold", "cool_down_ms", "failure_rate", "window_ms",
                 "min_calls", "probe_timeout_ms", "_clock", "_state", "_consecutive",
                 "_opened_at", "_probe_started", "_slot_ms", "_slot_epoch", "_slot_calls",
                 "_slot_failures", "times_opened")

    def __init__(self, *, failure_threshold: int = 5, cool_down_ms: int = 30_000,
                 failure_rate: float | None = None, window_ms: int = 60_000, min_calls: int = 20,
                 window_slots: int = 10, probe_timeout_ms: int | None = None,
                 clock: Callable[[], int | float] = monotonic_ms, name: str = ""):
        """``failure_rate`` (0–1] turns on the windowed rule; ``probe_timeout_ms`` defaults
        to ``cool_down_ms``. ``clock`` returns milliseconds."""
        self.failure_threshold = _check_int("failure_threshold", failure_threshold, 1)
        self.cool_down_ms = _check_int("cool_down_ms", cool_down_ms, 1)
        if failure_rate is not None and (isinstance(failure_rate, bool) or
                                         not isinstance(failure_rate, (int, float)) or
                                         not 0 < failure_rate <= 1):
            raise ValueError(f"failure_rate must be in (0, 1], got {failure_rate!r}")
        self.failure_rate = failure_rate
        self.window_ms = _check_int("window_ms", window_ms, 1)
        self.min_calls = _check_int("min_calls", min_calls, 1)
        slots = _check_int("window_slots", window_slots, 1)
        if window_ms < slots:
            raise ValueError(f"window_ms ({window_ms}) must be at least window_slots ({slots})")
        self.probe_timeout_ms = _check_int(
            "probe_timeout_ms", cool_down_ms if probe_timeout_ms is None else probe_timeout_ms, 1)
        if not callable(clock):
            raise ValueError("clock must be a callable returning milliseconds")
        self._clock = clock
        self.name = name
        self._state = CLOSED
        self._consecutive = 0
        self._opened_at = 0
        self._probe_started: int | float | None = None
        # The failure-rate window: a ring of time slots, each counting calls and failures.
        self._slot_ms = window_ms // slots
        self._slot_epoch = [-1] * slots
        self._slot_calls = [0] * slots
        self._slot_failures = [0] * slots
        self.times_opened = 0

    @property
    def state(self) -> str:
        """The state now; an open circuit whose cool-down has passed reads half-open."""
        if self._state == OPEN and self._clock() >= self._opened_at + self.cool_down_ms:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go to the provider now? In half-open, True for one probe at a time."""
        if self._state == CLOSED:
            return True
        now = self._clock()
        if self._state == OPEN:
            if now < self._opened_at + self.cool_down_ms:
                return False
            self._state = HALF_OPEN
        if self._probe_started is None or now >= self._probe_started + self.probe_timeout_ms:
            self._probe_started = now
            return True
        return False

    def retry_in_ms(self) -> int:
        """How long until ``allow`` may answer True (0 if it may now)."""
        now = self._clock()
        if self._state == CLOSED:
            return 0
        if self._state == OPEN:
            return max(0, int(self._opened_at + self.cool_down_ms - now))
        if self._probe_started is None:
            return 0
        return max(0, int(self._probe_started + self.probe_timeout_ms - now))

    def record_success(self) -> None:
        if self._state == HALF_OPEN:
            self._close()
        elif self._state == CLOSED:
            self._consecutive = 0
            self._count(failed=False)
        # OPEN: a late answer from before the circuit opened proves nothing; ignore it.

    def record_failure(self) -> None:
        if self._state == HALF_OPEN:
            self._open()
        elif self._state == CLOSED:
            self._consecutive += 1
            calls, failures = self._count(failed=True)
            if self._consecutive >= self.failure_threshold or (
                    self.failure_rate is not None and calls >= self.min_calls and
                    failures >= self.failure_rate * calls):
                self._open()
        # OPEN: a late failure must not stretch the cool-down.

    def _open(self) -> None:
        self._state = OPEN
        self._opened_at = self._clock()
        self._probe_started = None
        self.times_opened += 1

    def _close(self) -> None:
        self._state = CLOSED
        self._consecutive = 0
        self._probe_started = None
        for i in range(len(self._slot_epoch)):
            self._slot_epoch[i] = -1
            self._slot_calls[i] = self._slot_failures[i] = 0

    def _count(self, failed: bool) -> tuple[int, int]:
        """Count one call in the window; return the window's (calls, failures)."""
        epoch = int(self._clock()) // self._slot_ms
        slots = len(self._slot_epoch)
        i = epoch % slots
        if self._slot_epoch[i] != epoch:
            self._slot_epoch[i] = epoch
            self._slot_calls[i] = self._slot_failures[i] = 0
        self._slot_calls[i] += 1
        if failed:
            self._slot_failures[i] += 1
        if self.failure_rate is None:
            return 0, 0
        oldest = epoch - slots + 1
        calls = failures = 0
        for k in range(slots):
            if self._slot_epoch[k] >= oldest:
                calls += self._slot_calls[k]
                failures += self._slot_failures[k]
        return calls, failures

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state})"


class CircuitBreakers:
    """One breaker per provider, made on first use with the same settings."""

    def __init__(self, **breaker_kwargs):
        CircuitBreaker(**breaker_kwargs)  # check the settings now, not on the first call
        self._kwargs = breaker_kwargs
        self._by_provider: dict[str, CircuitBreaker] = {}

    def __getitem__(self, provider: str) -> CircuitBreaker:
        breaker = self._by_provider.get(provider)
        if breaker is None:
            breaker = CircuitBreaker(name=provider, **self._kwargs)
            self._by_provider[provider] = breaker
        return breaker

    def states(self) -> dict[str, str]:
        """Every known provider's state, for metrics and health checks."""
        return {name: b.state for name, b in self._by_provider.items()}
