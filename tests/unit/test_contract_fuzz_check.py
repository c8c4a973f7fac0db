"""The randomized contract test's checker (bench/contract_fuzz.py) on hand-made runs: a clean
run counts nothing, and each kind of violation, planted alone, is counted as that kind only."""
from __future__ import annotations

import pytest

from bench.contract_fuzz import (KINDS, Note, RunData, Scenario, check, provider_for,
                                 record_of)

T0 = 1_764_000_000_000
A, B = "acme", "globex"


def contacts() -> dict:
    return {(t, u): {"push_token": f"tok-{t}-{u}", "platform": "android",
                     "phone": f"+1555{ti}00000{ui}", "email": f"{u}@{t}.example.com"}
            for ti, t in enumerate((A, B)) for ui, u in enumerate(("u1", "u2"))}


class Run:
    """A run being written by hand: notes produced at T0, requests at the mocks, statuses."""

    def __init__(self):
        self.scenario = Scenario(1, "r", 10.0, [A, B], ["u1", "u2"], contacts(), [], [])
        self.logs = {p: [] for p in ("fcm", "apns", "twilio", "sendgrid")}
        self.statuses: list[dict] = []
        self.switches: list = []
        self.seq = 0

    def note(self, tenant: str, nid: str, user: str = "u1", *, seq=None, order=0,
             channels=("push",), life="long", ttl_ms=600_000, copies=1) -> Note:
        n = Note(tenant, nid, user, "critical", channels, life, ttl_ms, 0.0, [0.0] * copies,
                 seq=seq, order=seq if seq is not None else order)
        n.record = record_of(self.scenario, n, T0)
        n.produced_ms = [T0] * copies
        self.scenario.notes.append(n)
        return n

    def request(self, n: Note, t_ms: int, result: str = "accepted", *, channel="push",
                to_tenant=None, to_user=None, reason=None, mark=None) -> None:
        c = self.scenario.contacts[(to_tenant or n.tenant, to_user or n.user)]
        provider = provider_for(channel, c["platform"])
        to = {"push": c["push_token"], "sms": c["phone"], "email": c["email"]}[channel]
        self.seq += 1
        body = mark if mark is not None else n.record["content"]["body"]
        self.logs[provider].append({"seq": self.seq, "t_ms": t_ms, "provider": provider,
                                    "result": result, "herald_id": n.id, "to": to,
                                    "reason": reason, "request": {"body": body}})

    def status(self, n: Note, state: str, at: int, *, channel="push", provider="fcm",
               detail=None, tenant=None, nid=None) -> None:
        self.statuses.append({"id": nid or n.id, "tenant_id": tenant or n.tenant, "state": state,
                              "channel": channel, "provider": provider, "at": at,
                              "detail": detail})

    def switch(self, provider: str, mode: str, at: int, **config) -> None:
        full = {"latency_ms": 0, "failure_rate": 0.0, "quota_rps": None, "outage": None, **config}
        self.switches.append((provider, mode, full, at, at + 5))

    def delivered(self, n: Note, t_ms: int) -> None:
        self.request(n, t_ms)
        self.status(n, "delivered", t_ms + 2)

    def counts(self) -> dict:
        data = RunData(self.scenario, self.statuses, self.logs, self.switches, 10_000, {})
        return {k: v for k, v in check(data).counts.items() if v}


def test_a_clean_run_with_ids_reused_across_tenants_counts_nothing():
    run = Run()
    for tenant in (A, B):  # one id, one user id, two tenants: two notifications
        for i in range(3):
            run.delivered(run.note(tenant, f"x-{i}", seq=i), T0 + 100 + 10 * i)
    replayed = run.note(A, "r", "u2", copies=2)
    run.delivered(replayed, T0 + 200)
    run.status(replayed, "duplicate", T0 + 300)
    gone = run.note(B, "short", "u2", life="short", ttl_ms=3_000)
    run.status(gone, "expired", T0 + 3_000)
    assert run.counts() == {}


def test_order_counts_a_later_seq_first_unless_the_earlier_went_round_the_retry_topic():
    run = Run()
    first, second = run.note(A, "s0", seq=0), run.note(A, "s1", seq=1)
    run.delivered(second, T0 + 100)
    run.delivered(first, T0 + 200)
    assert run.counts() == {"out_of_order": 1}
    run.statuses.insert(0, {"id": "s0", "tenant_id": A, "state": "retrying", "at": T0 + 50,
                            "channel": "push", "provider": "fcm", "detail": "fcm: 503"})
    assert run.counts() == {}
    # Another tenant's user of the same id is another stream: no order between them.
    run = Run()
    run.delivered(run.note(A, "s1", seq=1), T0 + 100)
    run.delivered(run.note(B, "s0", seq=0), T0 + 200)
    assert run.counts() == {}


def test_an_acceptance_whose_answer_came_after_expiry_excuses_expired_but_not_delivered():
    run = Run()
    run.switch("fcm", "slow", T0 - 1_000, latency_ms=3_000)
    n = run.note(A, "slow", life="short", ttl_ms=2_000)
    run.request(n, T0 + 500)                  # answered at T0 + 3,500, after expiry
    run.status(n, "expired", T0 + 2_000)
    assert run.counts() == {}
    run.statuses[-1]["state"] = "delivered"   # Herald waited for the answer past expires_at
    assert run.counts() == {"answer_after_expiry": 1}


def test_a_failure_counts_unless_the_scenario_made_its_provider_fail():
    run = Run()
    n = run.note(A, "f")
    run.status(n, "failed", T0 + 5_000, detail="push failed (exhausted)")
    assert run.counts() == {"unexcused_failure": 1}
    run.switch("fcm", "failing", T0 + 1_000, failure_rate=0.9)
    assert run.counts() == {}


def plant(kind: str, run: Run) -> None:
    """One violation of ``kind``, and nothing else wrong."""
    if kind == "lost":
        run.status(run.note(A, "l"), "expired", T0 + 600_000)
    elif kind == "duplicate_delivery":
        n = run.note(A, "d")
        run.delivered(n, T0 + 100)
        run.request(n, T0 + 900)
    elif kind == "out_of_order":
        run.delivered(run.note(A, "o1", order=1), T0 + 100)
        run.delivered(run.note(A, "o0", order=0), T0 + 200)
    elif kind == "delivered_after_expiry":
        run.delivered(run.note(A, "e", life="short", ttl_ms=3_000), T0 + 3_000)
    elif kind == "request_after_expiry":
        n = run.note(A, "e", life="short", ttl_ms=3_000)
        run.request(n, T0 + 3_001, "rejected", reason="random_failure")
        run.status(n, "expired", T0 + 3_010)
    elif kind == "answer_after_expiry":
        run.switch("fcm", "slow", T0 - 1_000, latency_ms=6_000)
        run.delivered(run.note(A, "a", life="short", ttl_ms=3_000), T0 + 100)
    elif kind == "false_delivered":
        n = run.note(A, "fd", channels=("push", "sms"))
        run.request(n, T0 + 100, channel="sms")
        run.status(n, "delivered", T0 + 110, channel="push", provider="fcm")
    elif kind == "unreported_delivery":
        n = run.note(A, "u", life="short", ttl_ms=3_000)
        run.request(n, T0 + 100)
        run.status(n, "expired", T0 + 3_000)
    elif kind == "missing_final":
        run.status(run.note(A, "m", life="short", ttl_ms=3_000), "retrying", T0 + 100)
    elif kind == "conflicting_final":
        n = run.note(A, "c")
        run.delivered(n, T0 + 100)
        run.status(n, "expired", T0 + 200)
    elif kind == "false_duplicate":
        run.delivered(run.note(A, "x-1"), T0 + 100)
        n = run.note(B, "x-1", life="short", ttl_ms=3_000)  # taken for a replay of acme's
        run.status(n, "duplicate", T0 + 150)
        run.status(n, "expired", T0 + 3_000)
    elif kind == "unexcused_failure":
        n = run.note(A, "f", life="short", ttl_ms=3_000)
        run.status(n, "failed", T0 + 1_000)
    elif kind == "unexpected_state":
        run.status(run.note(A, "s", life="short", ttl_ms=3_000), "opted_out", T0 + 100)
    elif kind == "cross_tenant":
        n = run.note(A, "x-9")
        run.delivered(n, T0 + 100)
        run.request(n, T0 + 200, to_tenant=B)  # globex's contact, and globex has no x-9
    elif kind == "misaddressed":
        n = run.note(A, "m2")
        run.delivered(n, T0 + 100)
        run.request(n, T0 + 150, to_user="u2", result="rejected", reason="random_failure")
    elif kind == "wrong_content":
        n = run.note(A, "w")
        run.request(n, T0 + 100, mark=f"[{A}|other|u1] not this one")
        run.status(n, "delivered", T0 + 110)
    elif kind == "unknown_status":
        run.delivered(run.note(A, "k"), T0 + 100)
        run.status(run.scenario.notes[-1], "delivered", T0 + 200, tenant=B)
    else:
        raise AssertionError(f"no plant for {kind}")


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_planted_alone_is_counted_as_that_kind(kind):
    run = Run()
    plant(kind, run)
    assert run.counts() == {kind: 1}
