"""The per-user gate: dedup, order by seq, gaps, expiry, send_at, cancellation and timers."""
from __future__ import annotations

import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herald import states
from herald.gate import DROP, EMIT, HOLD, NEVER, Gate, GateState
from herald.models import Contacts, Content, Notification

T0 = 1_764_000_000_000
HOUR = 3_600_000


def ntf(nid: str, *, seq: int | None = None, created: int = T0, ttl: int = HOUR,
        send_at: int | None = None, campaign: str | None = None,
        expires_at: int | None = None) -> Notification:
    return Notification(
        id=nid, tenant_id="acme", user_id="u-1", priority=states.CRITICAL, channels=("push",),
        to=Contacts(), content=Content(body="hi"), created_at=created,
        expires_at=expires_at if expires_at is not None else created + ttl, seq=seq,
        campaign_id=campaign, send_at=send_at)


def ids(decision) -> list[str]:
    return [n.id for n in decision.emit]


def drops(decision) -> list[tuple[str, str]]:
    return [(n.id, reason) for n, reason in decision.dropped]


@pytest.fixture
def gate() -> Gate:
    return Gate(gap_timeout_ms=2_000, start_hold_ms=1_000, dedup_ttl_ms=HOUR)


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("kwargs", [{"gap_timeout_ms": -1}, {"dedup_ttl_ms": 1.5},
                                    {"start_hold_ms": True}, {"first_seq": -3}])
def test_rejects_bad_configuration(kwargs):
    with pytest.raises(ValueError):
        Gate(**kwargs)


def test_start_hold_defaults_to_gap_timeout():
    assert Gate(gap_timeout_ms=750).start_hold_ms == 750


# ---------------------------------------------------------------- no seq

def test_record_without_seq_passes_at_once(gate):
    state = gate.new_state()
    d = gate.process(state, ntf("a"), T0)
    assert (d.verdict, ids(d), d.timer_ms, d.register_timer_ms) == (EMIT, ["a"], None, None)
    assert not state.holds_anything()


def test_records_without_seq_keep_arrival_order(gate):
    state = gate.new_state()
    out = [i for k in "abc" for i in ids(gate.process(state, ntf(k), T0))]
    assert out == ["a", "b", "c"]


# ---------------------------------------------------------------- dedup

def test_duplicate_id_dropped(gate):
    state = gate.new_state()
    gate.process(state, ntf("a"), T0)
    d = gate.process(state, ntf("a"), T0 + 10)
    assert (d.verdict, d.reason, ids(d)) == (DROP, states.DUPLICATE, [])
    assert drops(d) == [("a", states.DUPLICATE)]


def test_duplicate_of_a_held_record_dropped(gate):
    state = gate.new_state()
    assert gate.process(state, ntf("a", send_at=T0 + 500), T0).verdict == HOLD
    d = gate.process(state, ntf("a", send_at=T0 + 500), T0 + 1)
    assert d.reason == states.DUPLICATE
    assert ids(gate.on_timer(state, T0 + 500)) == ["a"]


def test_dedup_window_is_ttl_after_arrival(gate):
    state = gate.new_state()
    gate.process(state, ntf("a", ttl=10), T0)            # expires long before the TTL ends
    assert gate.process(state, ntf("a", ttl=10), T0 + HOUR - 1).reason == states.DUPLICATE
    # after the window the id is forgotten (a replay so late is expired anyway)
    assert gate.process(state, ntf("a", ttl=10), T0 + HOUR).reason == states.EXPIRED


def test_dedup_window_covers_the_whole_life_of_the_record():
    gate = Gate(dedup_ttl_ms=1_000)
    state = gate.new_state()
    gate.process(state, ntf("a", ttl=10 * HOUR), T0)
    assert gate.process(state, ntf("a", ttl=10 * HOUR), T0 + 5 * HOUR).reason == \
        states.DUPLICATE


def test_seen_ids_are_pruned():
    gate = Gate(dedup_ttl_ms=1_000)
    state = gate.new_state()
    for i in range(50):
        gate.process(state, ntf(f"n{i}", created=T0 + i, ttl=10), T0 + i)
    gate.process(state, ntf("late", created=T0 + 5_000), T0 + 5_000)
    assert set(state.seen) == {"late"}


def test_dropped_records_are_not_remembered(gate):
    state = gate.new_state()
    gate.process(state, ntf("x", campaign="c1"), T0, cancelled={"c1"})
    assert state.seen == {}


# ---------------------------------------------------------------- expiry and send_at

def test_expired_on_arrival(gate):
    state = gate.new_state()
    d = gate.process(state, ntf("a", ttl=100), T0 + 100)
    assert (d.verdict, d.reason) == (DROP, states.EXPIRED)


def test_send_at_not_before_expiry_can_never_be_sent(gate):
    state = gate.new_state()
    d = gate.process(state, ntf("a", ttl=100, send_at=T0 + 100), T0)
    assert (d.verdict, d.reason) == (DROP, states.EXPIRED)


def test_send_at_holds_until_then(gate):
    state = gate.new_state()
    d = gate.process(state, ntf("a", send_at=T0 + 5_000), T0)
    assert (d.verdict, d.timer_ms, d.register_timer_ms) == (HOLD, T0 + 5_000, T0 + 5_000)
    assert ids(gate.on_timer(state, T0 + 4_999)) == []
    d = gate.on_timer(state, T0 + 5_000)
    assert ids(d) == ["a"] and d.timer_ms is None and not state.holds_anything()


def test_send_at_in_the_past_passes(gate):
    state = gate.new_state()
    assert gate.process(state, ntf("a", send_at=T0 - 1), T0).verdict == EMIT


def test_scheduled_records_due_together_leave_in_arrival_order(gate):
    state = gate.new_state()
    gate.process(state, ntf("late", send_at=T0 + 300), T0)
    gate.process(state, ntf("early", send_at=T0 + 100), T0)
    assert ids(gate.on_timer(state, T0 + 1_000)) == ["late", "early"]


def test_due_scheduled_records_leave_before_a_later_arrival(gate):
    state = gate.new_state()
    gate.process(state, ntf("a", send_at=T0 + 100), T0)
    d = gate.process(state, ntf("b"), T0 + 200)     # the timer at +100 has not fired yet
    assert ids(d) == ["a", "b"] and d.verdict == EMIT


def test_scheduled_record_expiring_before_release_is_dropped(gate):
    state = gate.new_state()
    gate.process(state, ntf("a", ttl=1_000, send_at=T0 + 500), T0)
    d = gate.on_timer(state, T0 + 2_000)  # a late timer: the watermark jumped past expiry
    assert ids(d) == [] and drops(d) == [("a", states.EXPIRED)]


def test_held_seq_record_expires_on_its_timer(gate):
    state = gate.new_state()
    gate.process(state, ntf("s0", seq=0), T0)
    d = gate.process(state, ntf("s2", seq=2, ttl=500), T0)   # waits for 1
    assert d.timer_ms == T0 + 500                           # expiry is earlier than the gap
    d = gate.on_timer(state, T0 + 500)
    assert drops(d) == [("s2", states.EXPIRED)] and d.timer_ms is None
    assert not state.held


# ---------------------------------------------------------------- cancellation

def test_cancelled_campaign_dropped_on_arrival(gate):
    state = gate.new_state()
    d = gate.process(state, ntf("a", campaign="c1"), T0, cancelled={"c1"})
    assert (d.verdict, d.reason) == (DROP, states.CANCELLED)
    assert gate.process(state, ntf("b", campaign="c2"), T0, cancelled={"c1"}).verdict == EMIT


def test_cancelled_while_scheduled_is_dropped_at_release(gate):
    state = gate.new_state()
    gate.process(state, ntf("a", campaign="c1", send_at=T0 + 100), T0)
    d = gate.on_timer(state, T0 + 100, cancelled=frozenset({"c1"}))
    assert ids(d) == [] and drops(d) == [("a", states.CANCELLED)]


def test_cancelled_while_held_in_sequence_keeps_its_place(gate):
    state = gate.new_state()
    gate.process(state, ntf("s0", seq=0), T0)
    gate.process(state, ntf("s2", seq=2, campaign="c1"), T0)
    gate.process(state, ntf("s3", seq=3), T0)
    d = gate.process(state, ntf("s1", seq=1), T0 + 10, cancelled={"c1"})
    assert ids(d) == ["s1", "s3"] and drops(d) == [("s2", states.CANCELLED)]
    assert d.skipped == ()


# ---------------------------------------------------------------- order by seq

def test_in_order_seqs_pass_at_once(gate):
    state = gate.new_state()
    for i in range(5):
        d = gate.process(state, ntf(f"s{i}", seq=i), T0 + i)
        assert ids(d) == [f"s{i}"] and d.timer_ms is None
    assert state.next_seq == 5


def test_out_of_order_seq_is_held_then_released_in_order(gate):
    state = gate.new_state()
    gate.process(state, ntf("s0", seq=0), T0)
    d = gate.process(state, ntf("s2", seq=2), T0 + 10)
    assert (d.verdict, d.timer_ms, d.register_timer_ms) == (HOLD, T0 + 2_010, T0 + 2_010)
    d = gate.process(state, ntf("s1", seq=1), T0 + 20)
    assert (d.verdict, ids(d)) == (EMIT, ["s1", "s2"])
    assert (d.timer_ms, d.register_timer_ms, d.delete_timer_ms) == (None, None, T0 + 2_010)


def test_gap_is_given_up_after_the_timeout_and_reported(gate):
    state = gate.new_state()
    gate.process(state, ntf("s0", seq=0), T0)
    gate.process(state, ntf("s3", seq=3), T0)
    gate.process(state, ntf("s4", seq=4), T0 + 100)
    assert ids(gate.on_timer(state, T0 + 1_999)) == []
    d = gate.on_timer(state, T0 + 2_000)
    assert ids(d) == ["s3", "s4"] and d.skipped == [(1, 2)]
    assert state.next_seq == 5 and d.timer_ms is None


def test_a_gap_is_given_up_on_the_logs_clock_not_the_wall_clock(gate):
    """Seconds behind the log, a missing predecessor appended just after the held record has
    not been read yet: however long the wall clock runs, the hold gives up only once the log
    has moved the gap timeout past the held record."""
    state = gate.new_state()
    log = T0 - 30_000  # the job is 30 s behind
    gate.process(state, ntf("s0", seq=0), T0, log_ms=log)
    d = gate.process(state, ntf("s2", seq=2), T0 + 10, log_ms=log + 5)
    assert d.verdict == HOLD and d.hold_ms == log + 2_005
    assert d.timer_ms == T0 + 2_010  # on the wall clock, as if the log kept pace
    assert ids(gate.on_timer(state, T0 + 9_000, log_ms=log + 2_004)) == []  # wall long past
    d = gate.process(state, ntf("s1", seq=1), T0 + 9_100, log_ms=log + 2_004)
    assert ids(d) == ["s1", "s2"] and d.skipped == () and d.hold_ms is None


def test_a_log_running_ahead_of_the_wall_clock_gives_up_early(gate):
    state = gate.new_state()
    gate.process(state, ntf("s0", seq=0), T0, log_ms=T0 - 60_000)
    gate.process(state, ntf("s2", seq=2), T0, log_ms=T0 - 60_000)
    d = gate.on_timer(state, T0 + 50, log_ms=T0 - 57_000)  # a backlog drains: 3 s of log
    assert ids(d) == ["s2"] and d.skipped == [(1, 1)]


def test_expiry_and_send_at_stay_on_the_wall_clock(gate):
    state = gate.new_state()
    gate.process(state, ntf("s0", seq=0), T0, log_ms=T0 - 60_000)
    gate.process(state, ntf("s2", seq=2, expires_at=T0 + 500), T0, log_ms=T0 - 60_000)
    d = gate.process(state, ntf("late", send_at=T0 + 300), T0, log_ms=T0 - 60_000)
    assert d.timer_ms == T0 + 300
    d = gate.on_timer(state, T0 + 300, log_ms=T0 - 60_000)
    assert ids(d) == ["late"]
    d = gate.on_timer(state, T0 + 500, log_ms=T0 - 60_000)
    assert drops(d) == [("s2", states.EXPIRED)] and d.timer_ms is None


def test_no_record_waits_longer_than_the_gap_timeout_for_missing_predecessors(gate):
    state = gate.new_state()
    gate.process(state, ntf("s0", seq=0), T0)
    gate.process(state, ntf("s5", seq=5), T0)          # arrived first: its wait ends at +2000
    gate.process(state, ntf("s2", seq=2), T0 + 1_500)
    d = gate.on_timer(state, T0 + 2_000)
    assert ids(d) == ["s2", "s5"] and d.skipped == [(1, 1), (3, 4)]


def test_late_seq_after_a_given_up_gap_is_delivered_not_lost(gate):
    state = gate.new_state()
    gate.process(state, ntf("s0", seq=0), T0)
    gate.process(state, ntf("s2", seq=2), T0)
    gate.on_timer(state, T0 + 2_000)
    d = gate.process(state, ntf("s1", seq=1), T0 + 3_000)
    assert (d.verdict, ids(d)) == (EMIT, ["s1"]) and state.next_seq == 3


def test_clashing_seq_passes_like_a_record_without_seq(gate):
    state = gate.new_state()
    gate.process(state, ntf("s0", seq=0), T0)
    gate.process(state, ntf("s2", seq=2), T0)
    d = gate.process(state, ntf("other", seq=2), T0 + 1)
    assert (d.verdict, ids(d)) == (EMIT, ["other"])
    assert state.held[2][1].id == "s2"


def test_records_without_seq_do_not_wait_behind_a_gap(gate):
    state = gate.new_state()
    gate.process(state, ntf("s0", seq=0), T0)
    gate.process(state, ntf("s2", seq=2), T0)
    d = gate.process(state, ntf("plain"), T0 + 1)
    assert (d.verdict, ids(d)) == (EMIT, ["plain"]) and d.timer_ms == T0 + 2_000


def test_seq_head_waiting_for_send_at_holds_the_ones_behind(gate):
    state = gate.new_state()
    gate.process(state, ntf("s0", seq=0), T0)
    gate.process(state, ntf("s1", seq=1, send_at=T0 + 10_000), T0)
    d = gate.process(state, ntf("s2", seq=2), T0)
    assert d.verdict == HOLD and d.timer_ms == T0 + 10_000   # no gap: s1 is present
    assert ids(gate.on_timer(state, T0 + 5_000)) == []
    assert ids(gate.on_timer(state, T0 + 10_000)) == ["s1", "s2"]


def test_expired_held_seq_keeps_its_place_no_gap_reported(gate):
    state = gate.new_state()
    gate.process(state, ntf("s0", seq=0), T0)
    gate.process(state, ntf("s2", seq=2, ttl=100), T0)
    gate.process(state, ntf("s3", seq=3), T0)
    d = gate.on_timer(state, T0 + 100)
    assert drops(d) == [("s2", states.EXPIRED)]
    d = gate.process(state, ntf("s1", seq=1), T0 + 200)
    assert ids(d) == ["s1", "s3"] and d.skipped == ()


# ---------------------------------------------------------------- start of a sequence

def test_first_seq_starts_at_once(gate):
    state = gate.new_state()
    assert gate.process(state, ntf("s0", seq=0), T0).verdict == EMIT


def test_higher_first_arrival_waits_briefly_for_a_lower_seq(gate):
    state = gate.new_state()
    d = gate.process(state, ntf("s7", seq=7), T0)
    assert (d.verdict, d.timer_ms) == (HOLD, T0 + 1_000)
    d = gate.process(state, ntf("s6", seq=6), T0 + 300)
    assert d.verdict == HOLD
    d = gate.on_timer(state, T0 + 1_000)
    assert ids(d) == ["s6", "s7"] and d.skipped == ()      # nothing known before 6
    assert state.next_seq == 8


def test_lower_seq_arriving_during_start_hold_starts_the_sequence(gate):
    state = gate.new_state()
    gate.process(state, ntf("s2", seq=2), T0)
    d = gate.process(state, ntf("s0", seq=0), T0 + 1)
    assert ids(d) == ["s0"] and d.timer_ms == T0 + 2_000   # now it is a gap at 1
    assert ids(gate.process(state, ntf("s1", seq=1), T0 + 2)) == ["s1", "s2"]


def test_zero_start_hold_starts_with_whatever_comes_first():
    gate = Gate(start_hold_ms=0)
    state = gate.new_state()
    assert ids(gate.process(state, ntf("s7", seq=7), T0)) == ["s7"]
    assert ids(gate.process(state, ntf("s6", seq=6), T0)) == ["s6"]   # late, not lost


def test_producer_counting_from_one():
    gate = Gate(first_seq=1)
    state = gate.new_state()
    assert ids(gate.process(state, ntf("s1", seq=1), T0)) == ["s1"]


# ---------------------------------------------------------------- timers and state

def test_timer_moves_earlier_and_the_stale_one_is_deleted(gate):
    state = gate.new_state()
    d = gate.process(state, ntf("a", send_at=T0 + 5_000), T0)
    assert (d.register_timer_ms, d.delete_timer_ms) == (T0 + 5_000, None)
    d = gate.process(state, ntf("b", send_at=T0 + 1_000), T0)
    assert (d.register_timer_ms, d.delete_timer_ms) == (T0 + 1_000, T0 + 5_000)
    d = gate.process(state, ntf("c", send_at=T0 + 3_000), T0)
    assert (d.register_timer_ms, d.delete_timer_ms) == (None, None)


def test_fired_timer_is_not_deleted_and_the_next_is_registered(gate):
    state = gate.new_state()
    gate.process(state, ntf("a", send_at=T0 + 1_000), T0)
    gate.process(state, ntf("b", send_at=T0 + 3_000), T0)
    d = gate.on_timer(state, T0 + 1_000)
    assert (ids(d), d.register_timer_ms, d.delete_timer_ms) == (["a"], T0 + 3_000, None)


def test_stale_timer_firing_is_harmless(gate):
    state = gate.new_state()
    d = gate.on_timer(state, T0)
    assert (ids(d), d.timer_ms, d.register_timer_ms) == ([], None, None)


def test_state_pickles_mid_hold(gate):
    state = gate.new_state()
    gate.process(state, ntf("s0", seq=0), T0)
    gate.process(state, ntf("s2", seq=2), T0)
    gate.process(state, ntf("x", send_at=T0 + 50), T0)
    restored = pickle.loads(pickle.dumps(state))
    assert isinstance(restored, GateState)
    assert ids(gate.process(restored, ntf("s1", seq=1), T0 + 100)) == ["s1", "s2", "x"]
    assert gate.process(restored, ntf("s0", seq=0), T0 + 100).reason == states.DUPLICATE


# ---------------------------------------------------------------- properties

class Caller:
    """Applies decisions the way the Flink operator does: one timer, status for every drop."""

    def __init__(self, gate: Gate):
        self.gate, self.state = gate, gate.new_state()
        self.timers: set[int] = set()
        self.emitted: list[tuple[int, Notification]] = []
        self.dropped: list[tuple[str, str]] = []
        self.now = T0

    def apply(self, d) -> None:
        self.emitted += [(self.now, n) for n in d.emit]
        self.dropped += drops(d)
        if d.delete_timer_ms is not None:
            self.timers.discard(d.delete_timer_ms)
        if d.register_timer_ms is not None:
            assert d.register_timer_ms > self.now, "a timer must lie in the future"
            self.timers.add(d.register_timer_ms)
        assert len(self.timers) <= 1, self.timers
        assert self.state.timer_ms is None or self.state.timer_ms in self.timers

    def advance(self, now: int, cancelled=frozenset()) -> None:
        """Move time forward, firing due timers in order as Flink would."""
        while self.timers and min(self.timers) <= now:
            t = min(self.timers)
            self.timers.discard(t)
            self.now = max(self.now, t)
            self.apply(self.gate.on_timer(self.state, self.now, cancelled))
        self.now = max(self.now, now)

    def arrive(self, n: Notification, cancelled=frozenset()) -> None:
        self.apply(self.gate.process(self.state, n, self.now, cancelled))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=40).flatmap(
    lambda n: st.permutations(range(n))), st.data())
def test_any_shuffled_arrival_is_emitted_in_seq_order_exactly_once(order, data):
    gate = Gate(gap_timeout_ms=NEVER // 4, dedup_ttl_ms=HOUR)
    caller = Caller(gate)
    for seq in order:
        caller.advance(caller.now + data.draw(st.integers(0, 50)))
        caller.arrive(ntf(f"s{seq}", seq=seq, ttl=10 * HOUR))
    assert [n.seq for _, n in caller.emitted] == list(range(len(order)))
    assert not caller.state.held and not caller.timers


arrival = st.tuples(
    st.integers(0, 11),                              # id (small range, so duplicates happen)
    st.one_of(st.none(), st.integers(0, 11)),        # seq
    st.integers(0, 3_000),                           # time step before arrival
    st.integers(1, 6_000),                           # ttl
    st.one_of(st.none(), st.integers(-500, 4_000)),  # send_at offset
    st.sampled_from([None, "c1", "c2"]),             # campaign
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(arrival, max_size=40), st.integers(0, 3_000), st.integers(0, 2_000),
       st.booleans())
def test_nothing_twice_nothing_late_nothing_lost(arrivals, gap_timeout, start_hold, cancel_c2):
    gate = Gate(gap_timeout_ms=gap_timeout, start_hold_ms=start_hold, dedup_ttl_ms=HOUR)
    caller = Caller(gate)
    cancelled = frozenset({"c2"}) if cancel_c2 else frozenset()
    first_by_id: dict[str, Notification] = {}
    for nid, seq, step, ttl, send_off, campaign in arrivals:
        caller.advance(caller.now + step, cancelled)
        # a replay carries the same record, as Kafka would
        n = first_by_id.get(f"n{nid}") or ntf(
            f"n{nid}", seq=seq, created=caller.now, ttl=ttl, campaign=campaign,
            send_at=None if send_off is None else caller.now + send_off)
        first_by_id.setdefault(n.id, n)
        caller.arrive(n, cancelled)
    caller.advance(caller.now + 10 * HOUR, cancelled)   # let every timer fire

    emitted_ids = [n.id for _, n in caller.emitted]
    assert len(emitted_ids) == len(set(emitted_ids)), "emitted twice"
    for at, n in caller.emitted:
        assert at < n.expires_at, "emitted at or after expiry"
        assert n.send_at is None or n.send_at <= at, "emitted before send_at"
        assert n.campaign_id not in cancelled, "cancelled campaign emitted"
    final = {i: r for i, r in caller.dropped if r != states.DUPLICATE}
    assert set(final).isdisjoint(emitted_ids)
    # every distinct record met exactly one fate; nothing is left held
    assert set(final) | set(emitted_ids) == set(first_by_id)
    assert not caller.state.holds_anything() and caller.state.timer_ms is None
    assert not caller.timers


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=30), st.integers(0, 3_000))
def test_seqs_released_through_the_sequence_only_increase(seqs, gap_timeout):
    """Gaps may be skipped, but apart from late or clashing arrivals order never goes back."""
    caller = Caller(Gate(gap_timeout_ms=gap_timeout, dedup_ttl_ms=HOUR))
    around: set[str] = set()
    for i, seq in enumerate(seqs):
        caller.advance(caller.now + 400)
        expected = caller.state.next_seq
        if (expected is not None and seq < expected) or seq in caller.state.held:
            around.add(f"n{i}")
        caller.arrive(ntf(f"n{i}", seq=seq, ttl=10 * HOUR))
    caller.advance(caller.now + 10 * HOUR)
    in_sequence = [n.seq for _, n in caller.emitted if n.id not in around]
    assert in_sequence == sorted(in_sequence)
    assert len(caller.emitted) == len(seqs)
