"""The contract checker in a run with crashes (``check(..., restarts=True)``, bench/stress.py's
faults): a call re-sent because a crash left it in flight, and reported so, is not a duplicate;
one not reported still is; repeated status events are not false duplicates."""
from __future__ import annotations

from bench.contract_fuzz import RunData, check
from tests.unit.test_contract_fuzz_check import A, T0, Run

RESENT = "in flight at a crash; re-sent (at-least-once for the ambiguous call)"


def counts(run: Run, restarts: bool) -> dict:
    data = RunData(run.scenario, run.statuses, run.logs, run.switches, 10_000, {})
    report = check(data, restarts=restarts)
    return {k: v for k, v in report.counts.items() if v}, report.info


def test_a_resend_reported_in_flight_at_a_crash_is_allowed_once_after_a_restart():
    run = Run()
    n = run.note(A, "k")
    run.delivered(n, T0 + 100)
    run.request(n, T0 + 5_000)  # again, after the restore
    run.status(n, "delivered", T0 + 5_002, detail=RESENT)
    found, info = counts(run, restarts=True)
    assert found == {} and info["resent_in_flight_at_a_crash"] == 1
    assert info["reported_in_flight"] == 1
    assert counts(run, restarts=False)[0] == {"duplicate_delivery": 1}  # no crash: no excuse
    run.request(n, T0 + 9_000)  # a third time: more than one crash can explain
    assert counts(run, restarts=True)[0] == {"duplicate_delivery": 1}


def test_an_unreported_resend_after_a_restart_is_a_duplicate():
    run = Run()
    n = run.note(A, "k")
    run.delivered(n, T0 + 100)
    run.delivered(n, T0 + 5_000)
    assert counts(run, restarts=True)[0] == {"duplicate_delivery": 1}


def test_status_events_repeated_by_a_restore_are_not_false_duplicates():
    run = Run()
    replayed = run.note(A, "r", copies=2)
    run.delivered(replayed, T0 + 100)
    for at in (T0 + 200, T0 + 5_200):  # the replay's event, and again after the restore
        run.status(replayed, "duplicate", at)
    assert counts(run, restarts=True)[0] == {}
    assert counts(run, restarts=False)[0] == {"false_duplicate": 1}
    once = run.note(A, "once")  # produced once: a `duplicate` is false whatever happened
    run.delivered(once, T0 + 300)
    run.status(once, "duplicate", T0 + 400)
    assert counts(run, restarts=True)[0] == {"false_duplicate": 1}


def test_an_expired_call_left_in_flight_by_a_crash_is_excused_only_when_reported():
    run = Run()
    n = run.note(A, "e", life="short", ttl_ms=3_000)
    run.request(n, T0 + 100)   # accepted; the job died before its answer was settled
    run.status(n, "expired", T0 + 6_000, detail="dropped at the gate: expired")
    assert counts(run, restarts=True)[0] == {"unreported_delivery": 1}
    run.statuses[-1]["detail"] += "; a call in flight at a crash may have reached the provider"
    assert counts(run, restarts=True)[0] == {}


def test_a_late_seq_is_in_order_only_if_it_came_gap_timeout_after_a_later_one():
    run = Run()
    first, second, third = (run.note(A, f"s{i}", seq=i) for i in (1, 2, 3))
    run.delivered(second, T0 + 100)
    run.status(second, "accepted", T0 + 90, detail="seq gap 1..1 not received within 2000 ms;"
                                                   " moved on")
    run.delivered(third, T0 + 3_400)
    run.delivered(first, T0 + 3_500)
    assert counts(run, restarts=False)[0] == {"out_of_order": 2}  # all produced together
    first.produced_ms = [T0 + 1_999]  # 1,999 ms after seq 2 in the log: still to be waited for
    assert counts(run, restarts=False)[0] == {"out_of_order": 2}
    # In the log 3 s after seq 2: the gap was real, and seq 3, produced with the late seq 1,
    # may go before it too.
    first.produced_ms = [T0 + 3_000]
    third.produced_ms = [T0 + 2_999]
    found, info = counts(run, restarts=False)
    assert found == {} and info["late_seq_after_gap_timeout"] == 2
    assert info["of_them_gap_reported"] == 2
    # A stream's first seqs: the gate starts at the lowest one held, with no report.
    run.statuses = [e for e in run.statuses if e["state"] != "accepted"]
    found, info = counts(run, restarts=False)
    assert found == {} and info["of_them_gap_reported"] == 0
