"""Campaign expansion end to end: the real job (MiniCluster) against real Kafka, segments as
Parquet files. What reaches herald.promo is read as a delivery job would (read_committed: the
promo sink is transactional), and checked record by record with the contract's parser.

One job serves the scenario tests of this module (each uses its own campaign ids); the crash
test runs its own job, kills it with -9 mid-expansion and restores it from its checkpoint.
"""
from __future__ import annotations

import os
import time
import uuid
from collections import Counter

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from herald.campaigns import recipient_id
from herald.models import parse_notification
from herald.segments import SegmentFiles
from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import messages_to_end, produce, read_until

TENANT = "acme"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def campaign(cid: str, segment: str | None = None, user_ids: list[str] | None = None,
             **extra) -> dict:
    t = now_ms()
    record = {"campaign_id": cid, "tenant_id": TENANT,
              "audience": {"segment": segment} if segment else {"user_ids": user_ids},
              "channels": ["push", "email"],
              "content": {"title": "Spring sale", "body": "20% off", "data": {"k": "v"}},
              "created_at": t, "expires_at": t + 3_600_000}
    record.update(extra)
    return record


def cancel(cid: str) -> dict:
    return {"kind": "cancel_campaign", "campaign_id": cid, "tenant_id": TENANT, "at": now_ms()}


def read_committed(settings, topic: str, done, job=None, timeout_s: float = 120.0) -> list[dict]:
    """``read_until`` for a transactional topic: only committed records, as a delivery job
    with ``isolation.level=read_committed`` sees them; ``_key`` and ``_ts`` added."""
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, isolation_level="read_committed",
                             max_poll_records=20_000, fetch_max_bytes=32 << 20)
    records: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(map(decoded, batch))
            if done(records):
                return records
            if job is not None:
                job.check_alive()
    finally:
        consumer.close()
    raise AssertionError(f"{topic}: condition not met after {timeout_s}s; saw {len(records)}")


def decoded(message) -> dict:
    value = orjson.loads(message.value)
    value["_key"] = message.key.decode()
    value["_ts"] = message.timestamp
    return value


def committed_now(settings, topic: str) -> list[dict]:
    """Every record a read_committed reader can see on ``topic`` right now, to the end of
    every partition (``read_committed`` stops at its condition, with other partitions
    perhaps not read to their end)."""
    return [decoded(m) for m in messages_to_end(settings.kafka_bootstrap, topic,
                                                isolation_level="read_committed", timeout_s=180)]


def committed_after(settings, marker_cid: str, job, count: int = 1) -> list[dict]:
    """Everything committed on the promo topic once ``count`` of ``marker_cid``'s records are:
    what the job emitted before the marker was committed with it or earlier."""
    read_committed(settings, settings.topic_promo,
                   lambda seen: len(of(marker_cid, seen)) >= count, job=job)
    return committed_now(settings, settings.topic_promo)


def consumed_and_checkpointed(settings, group: str, topic: str) -> bool:
    """Every record now on ``topic`` is behind ``group``'s committed offsets (a Flink source
    commits them when a checkpoint completes, so what it read is in the job's state)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group,
                             enable_auto_commit=False)  # never subscribes: reads offsets only
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        end = consumer.end_offsets(partitions)
        return all((consumer.committed(tp) or 0) >= end[tp] for tp in partitions)
    finally:
        consumer.close()


def of(cid: str, records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("campaign_id") == cid]


def events_of(cid: str, statuses: list[dict]) -> list[dict]:
    return [s for s in statuses if s["id"] == cid]


def complete(cid: str):
    return lambda seen: any(s["id"] == cid and "expansion complete" in (s.get("detail") or "")
                            for s in seen)


def assert_one_record_per_user(cid: str, records: list[dict], users: list[str], c: dict) -> None:
    mine = of(cid, records)
    assert Counter(r["user_id"] for r in mine) == Counter(users), "not one record per user"
    assert len(mine) == len(users)
    for r in mine:
        raw = {k: v for k, v in r.items() if not k.startswith("_")}
        n = parse_notification(orjson.dumps(raw), expected_priority="promotional")
        assert r["_key"] == n.user_id and n.id == recipient_id(cid, n.user_id)
        assert (n.expires_at, n.created_at, n.tenant_id) == (c["expires_at"], c["created_at"],
                                                             TENANT)
        assert n.channels == ("push", "email") and n.content.body == "20% off"


# ---------------------------------------------------------------- one job for the scenarios

@pytest.fixture(scope="module")
def scenario_settings(stack, base_settings, tmp_path_factory):
    unique = uuid.uuid4().hex[:10]
    topics = {f"topic_{role}": f"x{unique}.{name}" for role, name in base_settings.topics().items()}
    work = tmp_path_factory.mktemp("expansion")
    settings = base_settings.replace(
        consumer_group=f"herald-{unique}", expansion_rest_port=0,
        segments_dir=str(work / "segments"), flink_checkpoint_dir=str(work / "ck"),
        flink_checkpoint_interval_ms=1_000,
        # paced (10k recipients/s) so that a cancel can land mid-expansion
        expansion_batch_size=1_000, expansion_tick_ms=100, expansion_progress_interval_ms=0,
        **topics)
    stack.create_topics(list(settings.topics().values()))
    return settings


@pytest.fixture(scope="module")
def job(scenario_settings, tmp_path_factory):
    with RunningJob("jobs.expansion", scenario_settings, tmp_path_factory.mktemp("logs")) as j:
        yield j


@pytest.fixture
def segment(scenario_settings):
    files = SegmentFiles.from_settings(scenario_settings)

    def write(name: str, users: list[str]) -> list[str]:
        files.write(TENANT, name, users, now_ms())
        return users
    return write


def produce_campaigns(settings, *records: dict) -> None:
    produce(settings.kafka_bootstrap, settings.topic_campaigns,
            [(r.get("campaign_id") if isinstance(r, dict) else None, r) for r in records])


def test_a_segment_campaign_becomes_one_notification_per_user(scenario_settings, job, segment,
                                                              unique):
    users = segment(f"seg-{unique}", [f"user-{i}" for i in range(2_500)] + ['odd"\\ünï'])
    c = campaign(f"cmp-{unique}", f"seg-{unique}")
    produce_campaigns(scenario_settings, c)
    statuses = read_until(scenario_settings.kafka_bootstrap, scenario_settings.topic_status,
                          complete(c["campaign_id"]), job=job)
    records = read_committed(scenario_settings, scenario_settings.topic_promo,
                             lambda seen: len(of(c["campaign_id"], seen)) >= len(users), job=job)
    assert_one_record_per_user(c["campaign_id"], records, users, c)
    events = events_of(c["campaign_id"], statuses)
    assert {e["state"] for e in events} == {"accepted"}
    assert events[-1]["expanded"] == events[-1]["total"] == len(users)
    assert [e["at"] for e in events] == sorted({e["at"] for e in events})


def test_the_expansion_job_runs_below_critical_delivery_for_the_cpu(scenario_settings, job):
    # all of its work is promotional; its JVM inherits the client thread's niceness
    assert os.getpriority(os.PRIO_PROCESS, job.proc.pid) >= scenario_settings.promo_job_nice > 0


def test_an_inline_audience_is_expanded_too(scenario_settings, job, unique):
    users = [f"inline-{i}" for i in range(30)]
    c = campaign(f"inl-{unique}", user_ids=users)
    produce_campaigns(scenario_settings, c)
    records = read_committed(scenario_settings, scenario_settings.topic_promo,
                             lambda seen: len(of(c["campaign_id"], seen)) >= 30, job=job)
    assert_one_record_per_user(c["campaign_id"], records, users, c)


def test_an_expired_campaign_is_one_expired_event_and_nothing_else(scenario_settings, job,
                                                                   segment, unique):
    segment(f"exp-{unique}", [f"e-{i}" for i in range(5_000)])
    t = now_ms()
    expired = campaign(f"old-{unique}", f"exp-{unique}", created_at=t - 7_200_000,
                       expires_at=t - 1_000)
    after = campaign(f"after-{unique}", user_ids=["a", "b"])  # processed after it: a marker
    produce_campaigns(scenario_settings, expired, expired, after)  # replayed too
    statuses = read_until(scenario_settings.kafka_bootstrap, scenario_settings.topic_status,
                          lambda seen: complete(after["campaign_id"])(seen) and events_of(
                              expired["campaign_id"], seen), job=job)
    records = committed_after(scenario_settings, after["campaign_id"], job, count=2)
    events = events_of(expired["campaign_id"], statuses)
    assert [(e["state"], e["id"], e["campaign_id"]) for e in events] == [
        ("expired", expired["campaign_id"], expired["campaign_id"])]
    assert "expired before its expansion" in events[0]["detail"]
    assert of(expired["campaign_id"], records) == []


def test_invalid_campaign_records_go_to_the_dlq_with_reason_stage_and_at(scenario_settings, job,
                                                                         unique):
    no_expiry = campaign(f"bad-{unique}", user_ids=["u1"])
    del no_expiry["expires_at"]
    unknown_segment = campaign(f"nos-{unique}", f"missing-{unique}")
    produce(scenario_settings.kafka_bootstrap, scenario_settings.topic_campaigns, [
        (f"junk-{unique}", b"{not json"), (no_expiry["campaign_id"], no_expiry),
        (unknown_segment["campaign_id"], unknown_segment)])
    dlq = read_until(scenario_settings.kafka_bootstrap, scenario_settings.topic_dlq,
                     lambda seen: len([d for d in seen if unique in d["_key"]]) >= 3, job=job)
    by_key = {d["_key"]: d for d in dlq if unique in d["_key"]}
    assert "malformed JSON" in by_key[f"junk-{unique}"]["reason"]
    assert by_key[f"junk-{unique}"]["raw"] == "{not json"
    assert "'expires_at'" in by_key[no_expiry["campaign_id"]]["reason"]
    assert "does not exist" in by_key[unknown_segment["campaign_id"]]["reason"]
    for d in by_key.values():
        assert d["stage"] == "expansion" and isinstance(d["at"], int)
    statuses = read_until(scenario_settings.kafka_bootstrap, scenario_settings.topic_status,
                          lambda seen: any(e["state"] == "failed" for e in events_of(
                              unknown_segment["campaign_id"], seen)), job=job)
    assert [e["state"] for e in events_of(unknown_segment["campaign_id"], statuses)] == [
        "accepted", "failed"]


def test_a_future_send_at_holds_the_expansion_until_then(scenario_settings, job, segment,
                                                         unique):
    users = segment(f"later-{unique}", [f"l-{i}" for i in range(1_500)])
    send_at = now_ms() + 3_000
    c = campaign(f"sched-{unique}", f"later-{unique}", send_at=send_at)
    produce_campaigns(scenario_settings, c)
    records = read_committed(scenario_settings, scenario_settings.topic_promo,
                             lambda seen: len(of(c["campaign_id"], seen)) >= 1_500, job=job)
    assert_one_record_per_user(c["campaign_id"], records, users, c)
    mine = of(c["campaign_id"], records)
    assert all(r["send_at"] == send_at for r in mine)
    assert min(r["_ts"] for r in mine) >= send_at  # none was written before its send_at
    statuses = read_until(scenario_settings.kafka_bootstrap, scenario_settings.topic_status,
                          complete(c["campaign_id"]), job=job)
    first = events_of(c["campaign_id"], statuses)[0]
    assert "waits for send_at" in first["detail"] and first["at"] < send_at


def test_a_cancel_mid_expansion_stops_it(scenario_settings, job, segment, unique):
    segment(f"big-{unique}", [f"b-{i}" for i in range(60_000)])  # 6 s at the paced rate
    c = campaign(f"cxl-{unique}", f"big-{unique}")
    produce_campaigns(scenario_settings, c)
    read_until(scenario_settings.kafka_bootstrap, scenario_settings.topic_status,
               lambda seen: any(s["id"] == c["campaign_id"] and s.get("expanded", 0) >= 3_000
                                for s in seen), job=job)
    produce(scenario_settings.kafka_bootstrap, scenario_settings.topic_control,
            [("cancel_campaign", cancel(c["campaign_id"]))])
    statuses = read_until(scenario_settings.kafka_bootstrap, scenario_settings.topic_status,
                          lambda seen: any(s["id"] == c["campaign_id"] and s["state"] ==
                                           "cancelled" for s in seen), job=job)
    cancelled = [s for s in events_of(c["campaign_id"], statuses) if s["state"] == "cancelled"]
    assert len(cancelled) == 1 and "expansion stopped" in cancelled[0]["detail"]
    stopped_at = cancelled[0]["expanded"]
    assert 3_000 <= stopped_at < 60_000
    # a marker campaign after the cancel: once its records are committed, anything the
    # cancelled campaign could still have emitted would be committed too
    marker = campaign(f"mark-{unique}", user_ids=["m"])
    produce_campaigns(scenario_settings, marker)
    mine = of(c["campaign_id"], committed_after(scenario_settings, marker["campaign_id"], job))
    assert len(mine) == len({r["user_id"] for r in mine}) == stopped_at
    statuses = read_until(scenario_settings.kafka_bootstrap, scenario_settings.topic_status,
                          complete(marker["campaign_id"]), job=job)
    later = events_of(c["campaign_id"], statuses)
    assert later[-1]["state"] == "cancelled"  # no progress after the cancel


def test_a_cancel_that_arrives_first_drops_the_campaign(scenario_settings, job, unique):
    c = campaign(f"pre-{unique}", user_ids=["p1", "p2"])
    produce(scenario_settings.kafka_bootstrap, scenario_settings.topic_control,
            [("cancel_campaign", cancel(c["campaign_id"])),
             ("quota", {"kind": "quota", "provider": "fcm", "rate": 10.0, "burst": 1.0})])
    group = f"{scenario_settings.consumer_group}-expansion-control"
    deadline = time.monotonic() + 120
    while not consumed_and_checkpointed(scenario_settings, group,
                                        scenario_settings.topic_control):
        job.check_alive()
        assert time.monotonic() < deadline, "the job never consumed the control topic"
        time.sleep(0.2)
    produce_campaigns(scenario_settings, c)
    statuses = read_until(scenario_settings.kafka_bootstrap, scenario_settings.topic_status,
                          lambda seen: events_of(c["campaign_id"], seen), job=job)
    assert [(e["state"], e["detail"]) for e in events_of(c["campaign_id"], statuses)] == [
        ("cancelled", "cancelled before its expansion started")]


def test_the_audit_store_shows_each_campaigns_expansion(scenario_settings, job, segment, unique):
    import asyncio

    import redis.asyncio as aioredis

    from herald_api.audit import AuditConsumer
    from herald_api.store import AuditStore
    segment(f"aud-{unique}", [f"a-{i}" for i in range(3_000)])
    t = now_ms()
    done = campaign(f"aud-{unique}", f"aud-{unique}")
    expired = campaign(f"audx-{unique}", f"aud-{unique}", created_at=t - 7_200_000,
                       expires_at=t - 1)
    produce_campaigns(scenario_settings, done, expired)
    read_until(scenario_settings.kafka_bootstrap, scenario_settings.topic_status,
               lambda seen: complete(done["campaign_id"])(seen)
               and events_of(expired["campaign_id"], seen), job=job)
    consumer = AuditConsumer(scenario_settings.replace(audit_consumer_group=f"audit-{unique}"))
    try:
        consumer.drain()
    finally:
        consumer.close()

    async def views(cid: str):
        client = aioredis.Redis(host=scenario_settings.redis_host,
                                port=scenario_settings.redis_port)
        try:
            store = AuditStore(client, scenario_settings.audit_retention_s)
            return await store.campaign(TENANT, cid), await store.notification(TENANT, cid)
        finally:
            await client.aclose()
    summary, history = asyncio.run(views(done["campaign_id"]))
    # expanded to the end, no recipient delivered yet (no delivery job here): sending
    assert summary["state"] == "sending"
    assert (summary["progress"]["expanded"], summary["progress"]["pending"]) == (3_000, 3_000)
    progress = [(a["detail"], a["expanded"], a["total"]) for a in history["attempts"]]
    assert progress[0] == ("queued for expansion", 0, 0)
    assert progress[-1] == ("expanded 3000/3000: expansion complete", 3_000, 3_000)
    assert [e for _, e, _ in progress] == sorted(e for _, e, _ in progress)
    summary, history = asyncio.run(views(expired["campaign_id"]))
    assert summary["state"] == "expired" and len(history["attempts"]) == 1


# ---------------------------------------------------------------- crash and restore

def test_a_100k_campaign_reaches_promo_exactly_once_across_a_kill_and_restore(
        test_settings, tmp_path):
    total = 100_000
    settings = test_settings.replace(
        expansion_rest_port=0, segments_dir=str(tmp_path / "segments"),
        flink_checkpoint_dir=str(tmp_path / "ck"), flink_checkpoint_interval_ms=1_000,
        # paced to 20k/s, so the kill lands mid-way whatever the machine's speed
        expansion_batch_size=2_000, expansion_tick_ms=100)
    users = [f"user-{i:06d}" for i in range(total)]
    SegmentFiles.from_settings(settings).write(TENANT, "everyone", users, now_ms())
    c = campaign("cmp-crash", "everyone")
    produce_campaigns(settings, c)

    first = RunningJob("jobs.expansion", settings, tmp_path)
    try:
        # mid-way: a checkpoint has committed part of the campaign, and not all of it
        read_committed(settings, settings.topic_promo, lambda s: len(s) >= 10_000, job=first,
                       timeout_s=180)
    finally:
        first.kill()
    before = committed_now(settings, settings.topic_promo)
    assert 10_000 <= len(before) < total, "the kill did not land mid-expansion"

    with RunningJob("jobs.expansion", settings, tmp_path, "--restore", "latest") as second:
        records = read_committed(settings, settings.topic_promo,
                                 lambda s: len(s) >= total, job=second, timeout_s=180)
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              complete("cmp-crash"), job=second)
        # a checkpoint after the end: anything re-emitted twice would be committed by now
        after = campaign("cmp-after", user_ids=["late"])
        produce_campaigns(settings, after)
        records = committed_after(settings, "cmp-after", second)
        assert "restoring from" in second.log_path.read_text()

    assert_one_record_per_user("cmp-crash", records, users, c)
    done = [e for e in events_of("cmp-crash", statuses) if "complete" in e["detail"]]
    assert done and done[-1]["expanded"] == total


def test_two_tenants_campaigns_of_one_id_both_expand_and_a_cancel_stops_only_its_own(
        scenario_settings, job, segment, unique):
    """Campaign ids are chosen by tenants: globex's `c-1` after acme's is a campaign of its
    own, not "already taken", and acme's cancel of `c-1` leaves globex's running."""
    cid = f"c-1-{unique}"
    segment(f"big2-{unique}", [f"b-{i}" for i in range(40_000)])  # 4 s at the paced rate
    acme = campaign(cid, f"big2-{unique}")
    globex = campaign(cid, user_ids=[f"b-{i}" for i in range(500)], tenant_id="globex",
                      content={"title": "globex", "body": "globex offer"})
    produce_campaigns(scenario_settings, acme, globex)
    read_until(scenario_settings.kafka_bootstrap, scenario_settings.topic_status,
               lambda seen: any(s["id"] == cid and s["tenant_id"] == TENANT
                                and s.get("expanded", 0) >= 2_000 for s in seen), job=job)
    produce(scenario_settings.kafka_bootstrap, scenario_settings.topic_control,
            [("cancel_campaign", cancel(cid))])  # acme's
    statuses = read_until(
        scenario_settings.kafka_bootstrap, scenario_settings.topic_status,
        lambda seen: any(s["id"] == cid and s["tenant_id"] == TENANT and s["state"] == "cancelled"
                         for s in seen) and complete(cid)(
            [s for s in seen if s["tenant_id"] == "globex"]), job=job)
    by_tenant = {t: [s for s in events_of(cid, statuses) if s["tenant_id"] == t]
                 for t in (TENANT, "globex")}
    assert {s["state"] for s in by_tenant["globex"]} == {"accepted"}  # never taken, cancelled
    assert by_tenant["globex"][-1]["expanded"] == 500
    assert by_tenant[TENANT][-1]["state"] == "cancelled"
    stopped_at = by_tenant[TENANT][-1]["expanded"]
    assert stopped_at < 40_000
    marker = campaign(f"mark2-{unique}", user_ids=["m"])
    produce_campaigns(scenario_settings, marker)
    mine = of(cid, committed_after(scenario_settings, marker["campaign_id"], job))
    globex_records = [r for r in mine if r["tenant_id"] == "globex"]
    assert sorted(r["user_id"] for r in globex_records) == sorted(f"b-{i}" for i in range(500))
    assert {r["content"]["body"] for r in globex_records} == {"globex offer"}
    assert len([r for r in mine if r["tenant_id"] == TENANT]) == stopped_at
