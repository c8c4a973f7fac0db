"""The audit consumer against the real Kafka and Redis: every Status event of a notification is
readable afterwards, in order, and replaying the topic (or crashing before the commit) changes
nothing. Catch-up is ``AuditConsumer.drain()``: it returns once every record that was on the
topic when it was called is stored and committed, so nothing here waits on a clock."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from herald.settings import settings_env
from herald_api.audit import AuditConsumer
from herald_api.store import AuditStore, attempts_key, audit_key, campaign_counts_key
from tests.integration.kafka_io import produce, read_until

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_764_000_000_000


@pytest.fixture
def settings(test_settings, unique):
    return test_settings.replace(audit_consumer_group=f"audit-{unique}", audit_retention_s=3600)


@pytest.fixture
def tenant(unique) -> str:
    return f"tenant{unique}"


@pytest.fixture
def rclient(stack, base_settings):
    client = redis.Redis(host=base_settings.redis_host, port=base_settings.redis_port)
    yield client
    client.close()


@pytest.fixture
def consumers(settings):
    made: list[AuditConsumer] = []

    def make(**changes) -> AuditConsumer:
        consumer = AuditConsumer(settings.replace(**changes) if changes else settings)
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()


def event(tenant: str, nid: str, state: str, at: int, attempt: int = 1, **extra) -> dict:
    doc = {"id": nid, "tenant_id": tenant, "user_id": f"user-{nid}", "priority": "critical",
           "channel": "push", "provider": "fcm", "state": state, "attempt": attempt, "at": at}
    doc.update(extra)
    return {k: v for k, v in doc.items() if v is not None}


def history(tenant: str, nid: str) -> list[dict]:
    """An attempt history as the contract's Status events go out: retry, fallback, delivered."""
    return [
        event(tenant, nid, "accepted", T0 + 1, attempt=0, channel=None, provider=None),
        event(tenant, nid, "retrying", T0 + 100, attempt=1, latency_ms=90, detail="503"),
        event(tenant, nid, "retrying", T0 + 400, attempt=2, latency_ms=80, detail="503"),
        event(tenant, nid, "fallback", T0 + 900, attempt=3, detail="push exhausted"),
        event(tenant, nid, "delivered", T0 + 1_000, attempt=1, channel="sms", provider="twilio",
              latency_ms=120),
    ]


def publish(settings, events: list[dict]) -> None:
    produce(settings.kafka_bootstrap, settings.topic_status,
            [(e["id"], orjson.dumps(e)) for e in events])


def read_notification(settings, tenant: str, nid: str) -> dict | None:
    """What ``GET /v1/notifications/{id}`` answers, read through the API's own store class."""
    async def go():
        client = aioredis.Redis(host=settings.redis_host, port=settings.redis_port)
        try:
            return await AuditStore(client, settings.audit_retention_s).notification(tenant, nid)
        finally:
            await client.aclose()
    return asyncio.run(go())


def read_campaign(settings, tenant: str, cid: str) -> dict | None:
    async def go():
        client = aioredis.Redis(host=settings.redis_host, port=settings.redis_port)
        try:
            return await AuditStore(client, settings.audit_retention_s).campaign(tenant, cid)
        finally:
            await client.aclose()
    return asyncio.run(go())


def snapshot(client: redis.Redis, tenant: str) -> dict:
    """Every audit and campaign key of the tenant with its full content (not its TTL)."""
    out = {}
    for pattern in (f"herald:audit:{tenant}:*", f"herald:campaign:{tenant}:*"):
        for key in client.scan_iter(match=pattern):
            out[key] = client.hgetall(key)
    return out


def strip(e: dict) -> dict:
    return {k: v for k, v in e.items() if not k.startswith("_")}


# ---------------------------------------------------------------- every attempt, readable

def test_every_attempt_of_every_notification_is_stored_in_order(settings, tenant, consumers):
    events = history(tenant, "n-1") + history(tenant, "n-2")[:3]
    publish(settings, events)
    consumer = consumers()
    assert consumer.drain() == len(events)
    assert (consumer.written, consumer.replayed) == (len(events), 0)

    one = read_notification(settings, tenant, "n-1")
    assert one["attempts"] == history(tenant, "n-1")
    assert (one["state"], one["updated_at"], one["user_id"], one["priority"]) == (
        "delivered", T0 + 1_000, "user-n-1", "critical")
    two = read_notification(settings, tenant, "n-2")
    assert two["attempts"] == history(tenant, "n-2")[:3]
    assert two["state"] == "retrying" and two["updated_at"] == T0 + 400


def test_replaying_the_whole_topic_changes_nothing(settings, tenant, consumers, rclient, unique):
    cid = f"cmp-{unique}"
    events = [e for i in range(3) for e in history(tenant, f"{cid}:u{i}")]
    events = [dict(e, campaign_id=cid) for e in events]
    publish(settings, events)
    consumers().drain()
    before = snapshot(rclient, tenant)
    progress = read_campaign(settings, tenant, cid)

    replay = consumers(audit_consumer_group=f"audit-replay-{unique}")  # reads it all again
    assert replay.drain() == len(events)
    assert (replay.written, replay.replayed) == (0, len(events))
    assert snapshot(rclient, tenant) == before
    assert read_campaign(settings, tenant, cid) == progress
    assert progress["progress"] == {"expanded": 3, "total": 3, "delivered": 3, "failed": 0,
                                    "expired": 0, "cancelled": 0, "opted_out": 0, "pending": 0,
                                    "sent": 3}


def test_a_crash_between_write_and_commit_replays_without_double_counting(
        settings, tenant, consumers, rclient, unique):
    cid = f"cmp-{unique}"
    events = [dict(e, campaign_id=cid) for i in range(4) for e in history(tenant, f"{cid}:u{i}")]
    publish(settings, events)

    crashing = consumers()
    crashing.consumer.commit = lambda *a, **k: None  # writes land, the commit never does
    assert crashing.drain() == len(events)
    crashing.close()
    before = snapshot(rclient, tenant)

    restarted = consumers()  # same group: nothing committed, so the whole batch comes again
    assert restarted.drain() == len(events)
    assert restarted.replayed == len(events) and restarted.written == 0
    assert snapshot(rclient, tenant) == before
    assert read_campaign(settings, tenant, cid)["states"] == {
        "accepted": 4, "delivered": 4, "fallback": 4, "retrying": 4}

    restarted.close()  # leave the group, so the next member does not wait on a rebalance
    again = consumers()  # and now it was committed: a third member finds nothing left
    assert again.drain() == 0


def test_identical_events_within_one_batch_are_stored_once(settings, tenant, consumers):
    e = event(tenant, "n-dup", "retrying", T0 + 5)
    publish(settings, [e, e, dict(e), event(tenant, "n-dup", "retrying", T0 + 5, attempt=2)])
    consumer = consumers()
    consumer.drain()
    assert (consumer.written, consumer.replayed) == (2, 2)
    assert [a["attempt"] for a in read_notification(settings, tenant, "n-dup")["attempts"]] == [1, 2]


# ---------------------------------------------------------------- latest state

def test_latest_state_follows_event_time_not_arrival(settings, tenant, consumers):
    late_first = [event(tenant, "n-ooo", "delivered", T0 + 500),
                  event(tenant, "n-ooo", "retrying", T0 + 100),
                  event(tenant, "n-ooo", "duplicate", T0 + 9_000, attempt=0),  # later resubmit
                  event(tenant, "n-tie", "retrying", T0 + 7),
                  event(tenant, "n-tie", "failed", T0 + 7, attempt=2),
                  event(tenant, "n-tie", "retrying", T0 + 7, attempt=3)]
    publish(settings, late_first)
    consumers().drain()
    ooo = read_notification(settings, tenant, "n-ooo")
    assert ooo["state"] == "delivered"  # a dropped duplicate does not undo a delivery
    assert [a["state"] for a in ooo["attempts"]] == ["retrying", "delivered", "duplicate"]
    assert read_notification(settings, tenant, "n-tie")["state"] == "failed"


def test_another_tenants_events_are_not_readable(settings, tenant, consumers):
    publish(settings, [event(tenant, "n-own", "delivered", T0)])
    consumers().drain()
    assert read_notification(settings, tenant, "n-own") is not None
    assert read_notification(settings, tenant + "x", "n-own") is None


def test_audit_keys_expire_after_the_retention(settings, tenant, consumers, rclient, unique):
    cid = f"cmp-{unique}"
    publish(settings, [event(tenant, f"{cid}:u1", "delivered", T0, campaign_id=cid)])
    consumers().drain()
    for key in (audit_key(tenant, f"{cid}:u1"), attempts_key(tenant, f"{cid}:u1"),
                campaign_counts_key(tenant, cid)):
        assert 0 < rclient.ttl(key) <= settings.audit_retention_s, key


# ---------------------------------------------------------------- campaigns

def test_campaign_progress_counts_each_recipient_once_per_state(settings, tenant, consumers,
                                                                unique):
    cid = f"cmp-{unique}"
    events = []
    for i in range(5):
        nid = f"{cid}:u{i}"
        events.append(event(tenant, nid, "accepted", T0, attempt=0, campaign_id=cid,
                            priority="promotional"))
        final = ["delivered", "delivered", "failed", "expired", "cancelled"][i]
        events.append(event(tenant, nid, "retrying", T0 + 10, campaign_id=cid))
        events.append(event(tenant, nid, "retrying", T0 + 20, attempt=2, campaign_id=cid))
        events.append(event(tenant, nid, final, T0 + 30, attempt=3, campaign_id=cid))
    # a campaign-level event: the expansion's word about the campaign itself
    events.append(event(tenant, cid, "cancelled", T0 + 40, attempt=0, campaign_id=cid,
                        user_id=None))
    publish(settings, events)
    consumers().drain()
    progress = read_campaign(settings, tenant, cid)
    assert progress["progress"] == {"expanded": 5, "total": 5, "delivered": 2, "failed": 1,
                                    "expired": 1, "cancelled": 1, "opted_out": 0, "pending": 0,
                                    "sent": 2}
    assert progress["states"]["retrying"] == 5  # two retries each, one recipient each
    assert progress["state"] == "cancelled"
    assert read_notification(settings, tenant, f"{cid}:u2")["campaign_id"] == cid


def expansion_event(tenant: str, cid: str, at: int, expanded: int, total: int, phase: str,
                    state: str = "accepted", detail: str = "") -> dict:
    """A campaign-level event as the expansion sends it (``herald.campaigns.Expander``)."""
    return {"id": cid, "tenant_id": tenant, "priority": "promotional", "state": state,
            "attempt": 0, "at": at, "detail": detail or f"expanded {expanded}/{total}",
            "campaign_id": cid, "expanded": expanded, "total": total, "expansion": phase}


def recipient(tenant: str, cid: str, i: int, state: str, at: int, **extra) -> dict:
    return event(tenant, f"{cid}:u{i}", state, at, campaign_id=cid, priority="promotional",
                 user_id=f"u{i}", **extra)


def test_expanded_comes_from_the_expansion_and_pending_from_final_states(settings, tenant,
                                                                         consumers, unique):
    """The issue's case: the expansion finished 200/200 while few recipients had an event."""
    cid = f"cmp-{unique}"
    events = [expansion_event(tenant, cid, T0, 0, 0, "waiting", detail="queued for expansion"),
              expansion_event(tenant, cid, T0 + 1, 0, 200, "running"),
              expansion_event(tenant, cid, T0 + 2, 100, 200, "running")]
    events += [recipient(tenant, cid, i, "accepted", T0 + 3, attempt=0) for i in range(30)]
    events += [recipient(tenant, cid, i, "delivered", T0 + 5) for i in range(20)]
    publish(settings, events)
    consumer = consumers()
    consumer.drain()
    midway = read_campaign(settings, tenant, cid)
    assert midway["state"] == "expanding"
    assert midway["progress"] == {"expanded": 100, "total": 200, "delivered": 20, "failed": 0,
                                  "expired": 0, "cancelled": 0, "opted_out": 0, "pending": 80,
                                  "sent": 20}

    publish(settings, [expansion_event(tenant, cid, T0 + 6, 200, 200, "done",
                                       detail="expanded 200/200: expansion complete")])
    consumer.drain()
    sending = read_campaign(settings, tenant, cid)
    assert (sending["state"], sending["progress"]["expanded"],
            sending["progress"]["pending"]) == ("sending", 200, 180)

    finals = ["delivered"] * 150 + ["failed"] * 10 + ["expired"] * 15 + ["opted_out"] * 5
    publish(settings, [recipient(tenant, cid, 20 + i, state, T0 + 10)
                       for i, state in enumerate(finals)])
    consumer.drain()
    done = read_campaign(settings, tenant, cid)
    assert done["state"] == "completed"
    assert done["progress"] == {"expanded": 200, "total": 200, "delivered": 170, "failed": 10,
                                "expired": 15, "cancelled": 0, "opted_out": 5, "pending": 0,
                                "sent": 170}


def test_each_recipient_counts_once_under_its_latest_final_state(settings, tenant, consumers,
                                                                 unique):
    cid = f"cmp-{unique}"
    events = [expansion_event(tenant, cid, T0, 3, 3, "done",
                              detail="expanded 3/3: expansion complete"),
              # u0: opted out of push, then delivered by the next channel: delivered only
              recipient(tenant, cid, 0, "opted_out", T0 + 1),
              recipient(tenant, cid, 0, "delivered", T0 + 2, channel="sms"),
              # u1: delivered, then a replayed submission is a duplicate: still delivered once
              recipient(tenant, cid, 1, "delivered", T0 + 1),
              recipient(tenant, cid, 1, "duplicate", T0 + 9, attempt=0),
              recipient(tenant, cid, 1, "delivered", T0 + 1),  # the same event again
              # u2: opted out, then retried on the next channel: not final yet
              recipient(tenant, cid, 2, "opted_out", T0 + 1),
              recipient(tenant, cid, 2, "retrying", T0 + 2, channel="sms")]
    publish(settings, events)
    consumers().drain()
    status = read_campaign(settings, tenant, cid)
    assert status["state"] == "sending"
    assert {k: status["progress"][k] for k in ("delivered", "opted_out", "pending")} == {
        "delivered": 2, "opted_out": 0, "pending": 1}
    assert status["states"]["opted_out"] == 2  # reached, though not where they ended

    publish(settings, [recipient(tenant, cid, 2, "failed", T0 + 3, channel="sms")])
    replay = consumers(audit_consumer_group=f"audit-replay-{unique}")
    replay.drain()  # the whole topic again: nothing counts twice
    status = read_campaign(settings, tenant, cid)
    assert status["state"] == "completed"
    assert {k: status["progress"][k] for k in ("delivered", "failed", "opted_out", "pending")} == {
        "delivered": 2, "failed": 1, "opted_out": 0, "pending": 0}


def test_events_written_before_the_expansion_phase_field_are_read_from_their_detail(
        settings, tenant, consumers, unique):
    cid = f"cmp-{unique}"
    old = [{k: v for k, v in e.items() if k != "expansion"} for e in (
        expansion_event(tenant, cid, T0, 0, 2, "running", detail="expanding 2 recipients"),
        expansion_event(tenant, cid, T0 + 1, 2, 2, "done",
                        detail="expanded 2/2: expansion complete"))]
    publish(settings, old + [recipient(tenant, cid, i, "delivered", T0 + 5) for i in range(2)])
    consumers().drain()
    status = read_campaign(settings, tenant, cid)
    assert status["state"] == "completed" and status["progress"]["delivered"] == 2


# ---------------------------------------------------------------- bad records

def test_records_that_are_not_status_events_go_to_the_dlq(settings, tenant, consumers):
    good = event(tenant, "n-ok", "delivered", T0)
    produce(settings.kafka_bootstrap, settings.topic_status, [
        ("bad-1", b"{not json"),
        ("bad-2", orjson.dumps(dict(good, id="n-bad", state="sent"))),
        ("bad-3", orjson.dumps(dict(good, id="n-bad3", at=17))),
        ("bad-4", orjson.dumps(dict(good, id="n-bad4", state={"not": "hashable"}))),
        ("n-ok", orjson.dumps(good)),
    ])
    consumer = consumers()
    assert consumer.drain() == 5
    assert consumer.dead_lettered == 4 and consumer.written == 1
    assert read_notification(settings, tenant, "n-ok")["state"] == "delivered"
    assert read_notification(settings, tenant, "n-bad") is None
    dlq = read_until(settings.kafka_bootstrap, settings.topic_dlq, lambda r: len(r) >= 4)
    by_key = {r["_key"]: r for r in dlq}
    assert set(by_key) == {"bad-1", "bad-2", "bad-3", "bad-4"}
    assert all(r["stage"] == "audit" for r in dlq)
    assert by_key["bad-1"]["raw"] == "{not json" and "malformed JSON" in by_key["bad-1"]["reason"]
    assert "'state' must be one of" in by_key["bad-2"]["reason"]
    assert "looks like seconds" in by_key["bad-3"]["reason"] or "epoch" in by_key["bad-3"]["reason"]


# ---------------------------------------------------------------- the command

def test_the_audit_command_consumes_until_terminated(settings, tenant, unique):
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "herald_api.audit"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        publish(settings, history(tenant, "n-cli"))
        deadline = time.monotonic() + 60
        found = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = read_notification(settings, tenant, "n-cli")
            if found and len(found["attempts"]) == 5:
                break
            time.sleep(0.05)  # polling a condition, bounded: not a timed assertion
        assert found and found["attempts"] == history(tenant, "n-cli"), proc.poll()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "5 events written" in out
