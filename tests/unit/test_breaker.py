"""The per-provider circuit breaker, on an injected clock."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitBreakers


class Clock:
    def __init__(self, now: int = 1_000_000):
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(clock, **kwargs) -> CircuitBreaker:
    kwargs.setdefault("failure_threshold", 3)
    kwargs.setdefault("cool_down_ms", 1_000)
    return CircuitBreaker(clock=clock, **kwargs)


def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        b.record_failure()


# ---------------------------------------------------------------- consecutive failures

def test_closed_lets_everything_through(clock):
    b = breaker(clock)
    assert b.state == CLOSED and all(b.allow() for _ in range(100))


def test_opens_after_n_consecutive_failures(clock):
    b = breaker(clock)
    fail(b, 2)
    assert b.state == CLOSED
    b.record_failure()
    assert b.state == OPEN and not b.allow() and b.times_opened == 1


def test_a_success_resets_the_consecutive_count(clock):
    b = breaker(clock)
    fail(b, 2)
    b.record_success()
    fail(b, 2)
    assert b.state == CLOSED


def test_open_for_the_cool_down_then_half_open(clock):
    b = breaker(clock)
    fail(b, 3)
    clock.advance(999)
    assert not b.allow() and b.retry_in_ms() == 1
    clock.advance(1)
    assert b.state == HALF_OPEN and b.retry_in_ms() == 0


def test_half_open_lets_exactly_one_probe_through(clock):
    b = breaker(clock)
    fail(b, 3)
    clock.advance(1_000)
    assert b.allow()
    assert not b.allow() and not b.allow()
    assert b.state == HALF_OPEN


def test_probe_success_closes(clock):
    b = breaker(clock)
    fail(b, 3)
    clock.advance(1_000)
    assert b.allow()
    b.record_success()
    assert b.state == CLOSED and b.allow() and b.allow()


def test_probe_failure_reopens_for_a_new_cool_down(clock):
    b = breaker(clock)
    fail(b, 3)
    clock.advance(1_000)
    assert b.allow()
    clock.advance(200)
    b.record_failure()
    assert b.state == OPEN and b.times_opened == 2
    assert b.retry_in_ms() == 1_000
    clock.advance(1_000)
    assert b.allow()


def test_a_lost_probe_is_replaced_after_the_probe_timeout(clock):
    b = breaker(clock, probe_timeout_ms=300)
    fail(b, 3)
    clock.advance(1_000)
    assert b.allow()
    clock.advance(299)
    assert not b.allow() and b.retry_in_ms() == 1
    clock.advance(1)
    assert b.allow()


def test_late_answers_while_open_change_nothing(clock):
    b = breaker(clock)
    fail(b, 3)
    clock.advance(500)
    b.record_success()                  # a call from before the circuit opened
    assert b.state == OPEN
    b.record_failure()
    assert b.retry_in_ms() == 500       # the cool-down was not stretched


# ---------------------------------------------------------------- failure rate in a window

def test_opens_on_failure_rate_in_the_window(clock):
    b = breaker(clock, failure_threshold=1_000, failure_rate=0.5, window_ms=10_000,
                min_calls=10)
    for i in range(10):                 # alternate: never 2 failures in a row
        clock.advance(100)
        (b.record_failure if i % 2 else b.record_success)()
    assert b.state == OPEN


def test_rate_needs_enough_calls(clock):
    b = breaker(clock, failure_threshold=1_000, failure_rate=0.5, min_calls=10)
    fail(b, 4)
    b.record_success()
    assert b.state == CLOSED


def test_old_failures_leave_the_window(clock):
    b = breaker(clock, failure_threshold=1_000, failure_rate=0.5, window_ms=10_000,
                window_slots=10, min_calls=10)
    fail(b, 9)                          # 9 of 9 failed, but too few calls
    clock.advance(11_000)               # ...and now they are out of the window
    for _ in range(9):
        b.record_success()
    b.record_failure()                  # 1 of 10 in the window
    assert b.state == CLOSED


def test_closing_forgets_the_window(clock):
    b = breaker(clock, failure_threshold=1_000, failure_rate=0.5, min_calls=4)
    fail(b, 4)
    assert b.state == OPEN
    clock.advance(1_000)
    assert b.allow()
    b.record_success()
    b.record_failure()                  # would be 5 of 6 with the old counts
    assert b.state == CLOSED


# ---------------------------------------------------------------- properties and registry

@given(st.lists(st.sampled_from(["ok", "fail", "tick", "allow"]), max_size=200))
def test_never_more_than_one_probe_in_flight(ops):
    clock = Clock()
    b = CircuitBreaker(failure_threshold=2, cool_down_ms=50, probe_timeout_ms=10_000,
                       clock=clock)
    in_flight_probes = 0
    for op in ops:
        if op == "tick":
            clock.advance(20)
        elif op == "allow":
            was_closed = b.state == CLOSED
            if b.allow() and not was_closed:
                in_flight_probes += 1
                assert in_flight_probes == 1
        else:
            (b.record_success if op == "ok" else b.record_failure)()
            in_flight_probes = 0
        assert b.state in (CLOSED, OPEN, HALF_OPEN)


@pytest.mark.parametrize("kwargs", [
    {"failure_threshold": 0}, {"cool_down_ms": 0}, {"failure_rate": 0},
    {"failure_rate": 1.5}, {"window_ms": 5, "window_slots": 10}, {"min_calls": 0},
    {"probe_timeout_ms": 0}, {"clock": 5},
])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)


def test_one_breaker_per_provider(clock):
    breakers = CircuitBreakers(failure_threshold=1, cool_down_ms=1_000, clock=clock)
    breakers["fcm"].record_failure()
    assert breakers["fcm"] is breakers["fcm"]
    assert breakers.states() == {"fcm": OPEN}
    assert breakers["apns"].allow()
    assert breakers.states() == {"fcm": OPEN, "apns": CLOSED}


def test_registry_checks_its_settings_up_front():
    with pytest.raises(ValueError):
        CircuitBreakers(failure_threshold=0)


def test_default_clock_works():
    b = CircuitBreaker(failure_threshold=1, cool_down_ms=60_000)
    b.record_failure()
    assert b.state == OPEN and 0 < b.retry_in_ms() <= 60_000
