"""A provider that resets new connections beyond a cap per client (issue 15.2), through the
call stage (BatchCalls) against a real FCM mock whose cap is switched on, then off, at run
time. What counts is read from the mock's own log: every notification accepted exactly once,
deliveries going on during the fault, and more connections in use once it has ended."""
from __future__ import annotations

import time
from collections import Counter

from herald.breaker import CLOSED
from herald.models import notification_from_dict
from tests.integration.records import note
from udfs.call_stage import RESENT_AFTER_TURNED_AWAY

CAP = 4


def batch(unique: str, start: int, n: int) -> list:
    return [notification_from_dict(note(unique, i, f"u{i}")) for i in range(start, start + n)]


def fcm_limit(stage) -> int:
    [limit] = stage.transport.http1.stats()["limits"].values()
    return limit


def test_a_connection_cap_slows_nothing_down_and_its_end_is_used(make_stage, fcm, unique):
    fcm.configure(latency_ms=5, max_client_connections=CAP)
    stage = make_stage(fcm_url=fcm.url)
    sent = 0
    during, resent = [], []
    for _ in range(4):  # the fault: every batch is delivered, none waits for a retry
        out = stage.send_all(batch(unique, sent, 300))
        sent += 300
        during.append(Counter(s.state for s in out.statuses))
        resent += [s for s in out.statuses if s.detail == RESENT_AFTER_TURNED_AWAY.format("fcm")]
        assert not out.retries and not out.dead
        assert stage.breakers["fcm"].state == CLOSED
    assert during == [Counter(delivered=300)] * 4
    resets = fcm.stats()["connections_reset"]
    assert resets >= 1  # the fault did bite; each turned-away call was sent again and says so
    assert 1 <= len(resent) <= resets and all(s.state == "delivered" for s in resent)
    assert fcm_limit(stage) <= CAP + 1

    fcm.configure(max_client_connections=None)  # the fault ends
    deadline = time.monotonic() + 30
    while fcm_limit(stage) <= CAP + 1:  # the next probe finds the cap gone, within 2 s
        assert time.monotonic() < deadline, stage.transport.http1.stats()
        out = stage.send_all(batch(unique, sent, 300))
        sent += 300
        assert Counter(s.state for s in out.statuses) == Counter(delivered=300)
    out = stage.send_all(batch(unique, sent, 300))
    sent += 300
    assert Counter(s.state for s in out.statuses) == Counter(delivered=300)
    assert fcm.stats()["client_connections"] > CAP + 1

    accepted = Counter(r["herald_id"] for r in fcm.log())
    assert set(accepted) == {f"{unique}-{i}" for i in range(sent)}  # nothing lost
    assert set(accepted.values()) == {1}  # nothing twice


def test_with_the_fixed_pool_the_same_cap_opens_the_circuit(make_stage, fcm, unique):
    """The behaviour issue 15.2 reported, kept by provider_concurrency_adaptive=false for
    comparisons: the burst's resets count as provider faults, the circuit opens and the
    batch waits on the retry topic for the probe."""
    fcm.configure(latency_ms=5, max_client_connections=CAP)
    stage = make_stage(fcm_url=fcm.url, provider_concurrency_adaptive=False)
    out = stage.send_all(batch(unique, 0, 300))
    states = Counter(s.state for s in out.statuses)
    # the four connections that work serve the batch's last 44 calls too, at most
    assert states["delivered"] <= CAP + 44 and states["retrying"] >= 300 - CAP - 44
    assert stage.breakers["fcm"].state != CLOSED
    assert len(out.retries) == states["retrying"]
