"""The adaptive concurrency limit (herald.concurrency), on an injected clock, and against a
simulated endpoint that caps a client's connections."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.concurrency import AdaptiveLimit


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def limit(clock=None, **kwargs) -> AdaptiveLimit:
    return AdaptiveLimit(clock=clock or Clock(), **kwargs)


# ---------------------------------------------------------------- growth and shrinking

def test_grows_by_one_per_answer_while_half_of_it_is_in_use():
    lim = limit(initial=8, maximum=20)
    lim.on_answer(in_use=3)  # fewer than half in use: no evidence it needs more
    assert lim.limit == 8
    for _ in range(8):
        lim.on_answer(in_use=lim.limit)
    assert lim.limit == 16  # doubled in one round trip's worth of answers
    for _ in range(50):
        lim.on_answer(in_use=lim.limit)
    assert lim.limit == 20


def test_a_timeout_shrinks_it_multiplicatively_never_below_the_minimum():
    lim = limit(initial=64, minimum=2, backoff=0.5)
    lim.timeout()
    assert lim.limit == 32
    for _ in range(10):
        lim.timeout()
    assert lim.limit == 2 and lim.timeouts == 11


def test_a_refusal_pins_the_limit_to_what_works_and_holds_it_there():
    clock = Clock()
    lim = limit(clock, initial=32, probe_min_ms=250, probe_max_ms=2_000)
    lim.refused(working=12)
    assert (lim.limit, lim.ceiling) == (12, 12)
    for _ in range(100):
        lim.on_answer(in_use=12)
    assert lim.limit == 12 and lim.probe_in_ms() == 250
    clock.now += 250
    for _ in range(100):
        lim.on_answer(in_use=lim.limit)
    assert lim.limit == 13  # one probe, and only one, until its fate is known


def test_a_refused_probe_doubles_the_hold_up_to_the_maximum():
    clock = Clock()
    lim = limit(clock, initial=10, probe_min_ms=250, probe_max_ms=1_000)
    lim.refused(working=10)
    holds = []
    for _ in range(5):
        holds.append(lim.probe_in_ms())
        clock.now += lim.probe_in_ms()
        lim.on_answer(in_use=10)
        assert lim.limit == 11
        lim.refused(working=10)
    assert holds == [250, 500, 1_000, 1_000, 1_000]


def test_a_proven_probe_ends_the_episode_and_growth_resumes():
    clock = Clock()
    lim = limit(clock, initial=10, maximum=100, probe_min_ms=250)
    lim.refused(working=10)
    lim.proven(working=10)  # a connection of the refused level answering proves nothing
    assert lim.ceiling == 10
    clock.now += 250
    lim.on_answer(in_use=10)
    lim.proven(working=11)
    assert lim.ceiling is None and lim.probe_in_ms() == 0
    for _ in range(40):
        lim.on_answer(in_use=lim.limit)
    assert lim.limit == 51
    lim.refused(working=30)  # a new episode starts from the shortest hold again
    assert lim.probe_in_ms() == 250


def test_a_burst_of_refusals_is_one_episode_and_ends_at_the_last_count():
    clock = Clock()
    lim = limit(clock, initial=16, probe_min_ms=250)
    for working in (12, 10, 9, 9):
        lim.refused(working=working)
    assert (lim.limit, lim.ceiling, lim.probe_in_ms(), lim.refusals) == (9, 9, 250, 4)


def test_nothing_working_drops_to_the_minimum():
    lim = limit(initial=8, minimum=1)
    lim.refused(working=0)
    assert lim.limit == 1


@pytest.mark.parametrize("kwargs", [
    {"initial": 0}, {"minimum": 0}, {"maximum": 0}, {"minimum": 4, "maximum": 2},
    {"backoff": 1.0}, {"backoff": 0}, {"backoff": True}, {"initial": 2.5},
    {"probe_min_ms": 0}, {"probe_min_ms": 500, "probe_max_ms": 100},
])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        AdaptiveLimit(**kwargs)


def test_initial_is_kept_within_minimum_and_maximum():
    assert AdaptiveLimit(initial=500, maximum=256).limit == 256
    assert AdaptiveLimit(initial=1, minimum=4, maximum=8).limit == 4


# ---------------------------------------------------------------- any sequence of events

events = st.lists(st.one_of(
    st.tuples(st.just("answer"), st.integers(0, 400)),
    st.tuples(st.just("proven"), st.integers(0, 400)),
    st.tuples(st.just("refused"), st.integers(0, 400)),
    st.tuples(st.just("timeout"), st.just(0)),
    st.tuples(st.just("wait"), st.integers(0, 3_000)),
), max_size=300)


@given(events, st.integers(1, 300), st.integers(1, 8), st.integers(8, 300))
def test_the_limit_stays_within_its_bounds_and_a_probe_never_overshoots(seq, initial, minimum,
                                                                        maximum):
    clock = Clock()
    lim = limit(clock, initial=initial, minimum=minimum, maximum=maximum)
    for kind, value in seq:
        before = lim.limit
        if kind == "wait":
            clock.now += value
        elif kind == "answer":
            lim.on_answer(value)
            assert lim.limit - before in (0, 1)
        elif kind == "proven":
            lim.proven(value)
        elif kind == "refused":
            lim.refused(value)
            assert lim.limit == min(max(value, minimum), maximum) == lim.ceiling
        else:
            lim.timeout()
            assert lim.limit < before or lim.limit == minimum
        assert minimum <= lim.limit <= maximum
        if lim.ceiling is not None:
            assert lim.limit <= lim.ceiling + 1  # above a refused level: one probe at most
            assert 0 <= lim.probe_in_ms() <= lim.probe_max_ms


# ---------------------------------------------------------------- against a capped endpoint

RTT_MS = 10


def simulate(lim: AdaptiveLimit, clock: Clock, cap: int | None, ticks: int, conns: int):
    """An endpoint answering every call in one round trip, with unbounded demand: each tick
    the client opens connections up to its limit (those beyond ``cap`` are turned away),
    then every call answers. Returns (connections, answers per tick, refusals)."""
    answers, refused = [], 0
    for _ in range(ticks):
        conns = min(conns, lim.limit)  # a shrunk limit closes the extra connections
        opened = 0
        while conns + opened < lim.limit:
            if cap is not None and conns + opened >= cap:
                refused += 1
                lim.refused(working=conns + opened)
                break
            opened += 1
        in_use = conns + opened
        for i in range(in_use):
            lim.on_answer(in_use)
            if i >= conns:
                lim.proven(conns + 1 + (i - conns))
        conns = in_use
        answers.append(in_use)
        clock.now += RTT_MS
    return conns, answers, refused


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(1, 64), initial=st.integers(1, 32), extra=st.integers(1, 200),
       fault_s=st.integers(1, 20))
def test_under_a_connection_cap_it_works_at_the_cap_and_recovers_quickly_after(cap, initial,
                                                                               extra, fault_s):
    clock = Clock()
    maximum = cap + extra
    lim = limit(clock, initial=initial, maximum=maximum, probe_min_ms=250, probe_max_ms=2_000)
    ticks = fault_s * 1000 // RTT_MS
    conns, answers, refused = simulate(lim, clock, cap, ticks, 0)
    settle = math.ceil(math.log2(cap + 1)) + 2
    assert all(a == cap for a in answers[settle + 25:])  # at the cap, once it has found it
    # one refused connection per hold at most, after the first burst
    assert refused <= 1 + fault_s * 1000 / 250
    # the cap lifts: full concurrency within the longest hold plus the doubling
    _, after, _ = simulate(lim, clock, None, 400, conns)
    full_by = next(i for i, a in enumerate(after) if a == maximum)
    assert full_by * RTT_MS <= 2_000 + RTT_MS * (math.ceil(math.log2(maximum)) + 2)
