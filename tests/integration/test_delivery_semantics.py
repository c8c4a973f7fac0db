"""Delivery semantics end to end: dedup, per-user order at the provider, expiry, crash/restore.

Each test runs the real job (MiniCluster) against real Kafka and Redis, and a provider mock of
its own (switches set per test); what reached the "provider" is read from the mock's own log.
"""
from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import produce, read_all, read_until
from tests.integration.mock_log import in_flight_bound, repeats_after_a_kill
from tests.integration.records import note, now_ms


@pytest.fixture
def settings(test_settings, fcm, tmp_path):
    return test_settings.replace(fcm_url=fcm.url, flink_checkpoint_dir=str(tmp_path / "ck"),
                                 flink_checkpoint_interval_ms=1_000)


def produce_notes(settings, notes) -> None:
    produce(settings.kafka_bootstrap, settings.topic_critical, [(n["user_id"], n) for n in notes])


def states_by_id(statuses) -> dict[str, Counter]:
    out: dict[str, Counter] = defaultdict(Counter)
    for s in statuses:
        out[s["id"]][s["state"]] += 1
    return out


def test_replays_of_an_id_reach_the_provider_once(settings, fcm, unique, tmp_path):
    replayed = [note(unique, f"r{i}", f"u{i % 50}") for i in range(500)]
    fresh = [note(unique, f"f{i}", f"u{i % 50}") for i in range(500)]
    stream = []
    for copy in range(3):
        for i, n in enumerate(replayed):
            stream.append(n)
            if copy == 1:
                stream.append(fresh[i])
    produce_notes(settings, stream)

    with RunningJob("jobs.delivery", settings, tmp_path) as job:
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              lambda seen: len(seen) >= 2_000, job=job)

    counts = Counter(s["state"] for s in statuses)
    assert counts == {"delivered": 1_000, "duplicate": 1_000}
    dup = Counter(s["id"] for s in statuses if s["state"] == "duplicate")
    assert set(dup) == {n["id"] for n in replayed} and set(dup.values()) == {2}
    at_provider = Counter(r["herald_id"] for r in fcm.log())
    assert len(at_provider) == 1_000 and max(at_provider.values()) == 1


@pytest.mark.parametrize("fcm", [("--latency-ms", "1", "--latency-jitter-ms", "4", "--seed", "7")],
                         indirect=True)
def test_each_users_messages_reach_the_provider_in_seq_order(settings, fcm, unique, tmp_path):
    # Each user's seqs are produced shuffled, one per round, a round of 200 users every 0.1 s
    # into the running job. Herald's own quota (160 calls/s) takes 1.25 s per round, so the
    # job falls seconds behind: a user's records reach the gate up to 25 s apart while the log
    # holds them within the gap timeout of each other (8 s: producing takes 2-3 s, more on a
    # loaded machine). A hold that counted wall-clock time instead of the log's would give the
    # gap up and send out of order.
    settings = settings.replace(gap_timeout_ms=8_000, ratelimit_namespace=f"rl{unique}",
                                quota_fcm_rate_per_s=160.0, quota_fcm_burst=16.0)
    rng = random.Random(11)
    users = [f"u{unique}-{u}" for u in range(200)]
    per_user = {u: [note(unique, f"{u}-{s}", u, seq=s) for s in range(20)] for u in users}
    for records in per_user.values():
        rng.shuffle(records)
    warm = note(unique, "warm", f"u{unique}-warm")
    produce_notes(settings, [warm])

    with RunningJob("jobs.delivery", settings, tmp_path) as job:
        read_until(settings.kafka_bootstrap, settings.topic_status,
                   lambda seen: any(s["state"] == "delivered" for s in seen), job=job,
                   timeout_s=180)
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        started = now_ms()
        for r in range(20):
            round_ = [per_user[u][r] for u in users]
            rng.shuffle(round_)
            for record in round_:
                producer.send(settings.topic_critical, key=record["user_id"].encode(),
                              value=orjson.dumps(record))
            producer.flush()
            time.sleep(0.1)  # pacing the producer, not waiting for Herald
        produced_in = now_ms() - started
        producer.close()
        assert produced_in < settings.gap_timeout_ms  # the log holds a user's records within it
        read_until(settings.kafka_bootstrap, settings.topic_status,
                   lambda seen: sum(s["state"] == "delivered" for s in seen) >= 4_001, job=job,
                   timeout_s=240)

    arrived: dict[str, list[int]] = defaultdict(list)
    log = sorted((r for r in fcm.log() if r["herald_id"] != warm["id"]), key=lambda r: r["seq"])
    for record in log:
        user, _, seq = record["herald_id"].removeprefix(f"{unique}-").rpartition("-")
        arrived[user].append(int(seq))
    spans = sorted(max(r["t_ms"] for r in log if r["to"] == f"tok-{u}") -
                   min(r["t_ms"] for r in log if r["to"] == f"tok-{u}") for u in users)
    print(f"a user's calls spread over {spans[len(spans) // 2]} ms (median) at the provider, "
          f"all {len(log)} over {log[-1]['t_ms'] - log[0]['t_ms']} ms")
    assert spans[len(spans) // 2] > settings.gap_timeout_ms  # the backlog held them apart
    assert len(arrived) == 200
    assert all(seqs == list(range(20)) for seqs in arrived.values()), \
        {u: s for u, s in arrived.items() if s != list(range(20))}


def test_nothing_expired_reaches_the_provider(settings, fcm, unique, tmp_path):
    t = now_ms()
    settings = settings.replace(gap_timeout_ms=20_000)
    before_ingest = note(unique, "old", "u1", created_at=t - 60_000, expires_at=t - 30_000)
    head = note(unique, "g0", "u2", seq=0)
    behind_gap = note(unique, "g2", "u2", seq=2, expires_at=t + 3_000)   # seq 1 never comes
    send_at_too_late = note(unique, "late", "u3", send_at=t + 30_000, expires_at=t + 5_000)
    scheduled = note(unique, "sched", "u4", send_at=t + 3_000)
    # Released 1.5 s before its expiry: delivered inside [send_at, expires_at) by the
    # provider's clock, or expired and never at the provider.
    tight = note(unique, "tight", "u5", send_at=t + 3_000, expires_at=t + 4_500)
    notes = {n["id"]: n for n in (before_ingest, head, behind_gap, send_at_too_late, scheduled,
                                  tight)}
    produce_notes(settings, list(notes.values()))

    with RunningJob("jobs.delivery", settings, tmp_path) as job:
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              lambda seen: set(notes) <= {s["id"] for s in seen if s["state"]
                                                          in ("delivered", "expired")}, job=job)

    by_id = {s["id"]: s for s in statuses}
    for n in (before_ingest, behind_gap, send_at_too_late):
        assert by_id[n["id"]]["state"] == "expired", by_id[n["id"]]
    assert by_id[behind_gap["id"]]["at"] >= behind_gap["expires_at"]  # dropped by its timer
    assert by_id[head["id"]]["state"] == "delivered"
    assert by_id[scheduled["id"]]["state"] == "delivered"
    log = {r["herald_id"]: r for r in fcm.log()}
    delivered = {head["id"], scheduled["id"]} | (
        {tight["id"]} if by_id[tight["id"]]["state"] == "delivered" else set())
    assert set(log) == delivered
    assert log[scheduled["id"]]["t_ms"] >= scheduled["send_at"]
    # At the provider, by its own clock: every request it received (accepted or not) came
    # before the notification's expires_at (and after its send_at), none for the expired ones.
    received = fcm.log(what="all")
    assert {r["herald_id"] for r in received} == delivered
    assert all(notes[r["herald_id"]].get("send_at", 0) <= r["t_ms"]
               < notes[r["herald_id"]]["expires_at"] for r in received), received


def test_state_sweeps_keep_live_users_their_holds_and_their_dedup(settings, fcm, unique,
                                                                  tmp_path):
    # A sweep every 300 ms walks each partition's user map (applying the TTL) while a record
    # is held for its send_at and another user's id is remembered; neither may be lost.
    settings = settings.replace(state_sweep_interval_ms=300)
    t = now_ms()
    first = note(unique, "once", "u1")
    scheduled = note(unique, "sched", "u2", send_at=t + 2_500)
    produce_notes(settings, [first, scheduled])
    with RunningJob("jobs.delivery", settings, tmp_path) as job:
        read_until(settings.kafka_bootstrap, settings.topic_status,
                   lambda seen: {first["id"], scheduled["id"]} <= {
                       s["id"] for s in seen if s["state"] == "delivered"}, job=job)
        produce_notes(settings, [first])  # a replay, after several sweeps
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              lambda seen: any(s["state"] == "duplicate" for s in seen), job=job)

    assert [s["id"] for s in statuses if s["state"] == "duplicate"] == [first["id"]]
    log = {r["herald_id"]: r for r in fcm.log()}
    assert set(log) == {first["id"], scheduled["id"]}
    assert log[scheduled["id"]]["t_ms"] >= scheduled["send_at"]


def test_a_killed_job_restored_from_its_checkpoint_sends_every_id_once(settings, fcm, unique,
                                                                       tmp_path):
    # One record per user: a part of a batch then holds at most send_part_records, so what a
    # kill can leave in flight has a bound (mock_log.in_flight_bound).
    total = 20_000
    notes = [note(unique, i, f"u{unique}-{i}") for i in range(total)]
    produce_notes(settings, notes)

    first = RunningJob("jobs.delivery", settings, tmp_path)
    checkpoints = Path(settings.flink_checkpoint_dir)
    try:
        deadline = time.monotonic() + 180
        # mid-run by the provider's own count, and with a checkpoint to restore from (a fast
        # first batch can pass the quarter before the first checkpoint completes)
        while (fcm.stats()["accepted"] < total // 4
               or not list(checkpoints.glob("*/chk-*/_metadata"))):
            first.check_alive()
            assert time.monotonic() < deadline, "the first run never got a quarter through"
            time.sleep(0.05)
    finally:
        first.kill()
    sent_before_kill = fcm.stats()["accepted"]  # the job is dead: nothing more comes
    assert sent_before_kill < total

    with RunningJob("jobs.delivery", settings, tmp_path, "--restore", "latest") as second:
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              lambda seen: len({s["id"] for s in seen
                                                if s["state"] == "delivered"}) >= total,
                              job=second, timeout_s=300)
        assert "restoring from" in second.log_path.read_text()

    accepted = fcm.log()
    assert {r["herald_id"] for r in accepted} == {n["id"] for n in notes}, "lost at the provider"
    # The one window left: calls in flight at the kill, re-sent on purpose and reported. Ids
    # the provider accepted before that window were stopped by their `sent` marker.
    bound = in_flight_bound(settings)
    twice = repeats_after_a_kill(accepted, sent_before_kill, bound)
    resent = {s["id"] for s in statuses if "in flight at a crash" in (s.get("detail") or "")}
    print(f"kill after {sent_before_kill} accepted: {len(twice)} sent twice, {len(resent)} "
          f"reported in flight (bound {bound})")
    assert set(twice) <= resent  # every duplicate was a call in flight at the crash, and said so
    assert len(resent) <= bound


def test_a_lane_keeps_one_state_per_user_across_timers_and_batches(settings, fcm, unique,
                                                                   tmp_path):
    # Two lanes on one subtask: lane 1's key is not its index (operators/lanes.py), so a state
    # cached by a batch and updated by a timer must be found under the same key by the next
    # batch. Each user's seq 2 is held for the missing seq 1, released by the timer, and seq 3
    # then goes at once: if the batch read a state from before the timer, seq 2 would be
    # released a second time.
    settings = settings.replace(gate_lanes=2, gap_timeout_ms=300)
    users = [f"u{unique}-{i}" for i in range(40)]
    first = [note(unique, f"a{i}", user, seq=2) for i, user in enumerate(users)]
    then = [note(unique, f"b{i}", user, seq=3) for i, user in enumerate(users)]
    produce_notes(settings, first)
    with RunningJob("jobs.delivery", settings, tmp_path) as job:
        delivered = lambda batch: lambda seen: {n["id"] for n in batch} <= {  # noqa: E731
            s["id"] for s in seen if s["state"] == "delivered"}
        read_until(settings.kafka_bootstrap, settings.topic_status, delivered(first), job=job)
        produce_notes(settings, then)
        read_until(settings.kafka_bootstrap, settings.topic_status, delivered(then), job=job)
        # to every partition's end: a second `delivered` of a first-round id may be on another
        statuses = [v for _, v in read_all(settings.kafka_bootstrap, settings.topic_status)]

    by_id = states_by_id(statuses)
    assert {i: c["delivered"] for i, c in by_id.items() if c["delivered"]} == \
        {n["id"]: 1 for n in first + then}
    at_provider = Counter(r["herald_id"] for r in fcm.log())
    assert set(at_provider) == {n["id"] for n in first + then}
    assert max(at_provider.values()) == 1
