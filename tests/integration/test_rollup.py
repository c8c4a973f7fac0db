"""The status rollup job (jobs/rollup.py, sql/status_rollup.sql) on the MiniCluster against real
Kafka: a known set of status events over two minutes in, per-minute rows out, and every row
equal to what Python computes from the same events."""
from __future__ import annotations

import random
from collections import defaultdict

import orjson
import pytest
from kafka import KafkaProducer

from herald.metrics import percentile
from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import read_until
from tests.integration.records import now_ms

WINDOW_MS = 60_000
STATES = ("delivered", "delivered", "delivered", "expired", "failed", "retrying", "duplicate")
PROVIDERS = {"push": ("fcm", "apns"), "sms": ("twilio",), "email": ("sendgrid",)}


def status_events(unique: str, first_window: int, count: int) -> list[dict]:
    rng = random.Random(unique)
    events = []
    for i in range(count):
        state = rng.choice(STATES)
        channel = rng.choice(list(PROVIDERS))
        provider = None if state in ("expired", "duplicate") else rng.choice(PROVIDERS[channel])
        event = {"id": f"{unique}-{i}", "tenant_id": "acme", "user_id": f"u-{i % 37}",
                 "priority": rng.choice(("critical", "promotional")), "channel": channel,
                 "state": state, "attempt": 1,
                 "at": first_window + rng.randrange(2 * WINDOW_MS)}
        if provider:
            event["provider"] = provider
        if state == "delivered":
            event["latency_ms"] = rng.randrange(5, 3_000)
        events.append(event)
    # In `at` order give or take 2 s: out of order, but within the watermark's lateness.
    events.sort(key=lambda e: e["at"] + rng.randrange(2_000))
    return events


def expected_rows(events: list[dict]) -> dict[tuple, dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        start = e["at"] - e["at"] % WINDOW_MS
        groups[(start, e["priority"], e.get("provider"), e["state"])].append(e)
    rows = {}
    for key, group in groups.items():
        latencies = [e["latency_ms"] for e in group if "latency_ms" in e]
        rows[key] = {"events": len(group),
                     "latency_avg_ms": sum(latencies) / len(latencies) if latencies else None,
                     "latency_max_ms": max(latencies) if latencies else None,
                     "latency_p50_ms": percentile(latencies, 0.5) if latencies else None,
                     "latency_p99_ms": percentile(latencies, 0.99) if latencies else None}
    return rows


def test_rollup_rows_equal_the_counts_and_latencies_computed_from_the_same_events(
        test_settings, unique, tmp_path):
    settings = test_settings.replace(rollup_rest_port=0, rollup_window_s=WINDOW_MS // 1000,
                                     rollup_max_out_of_orderness_ms=5_000,
                                     # Every partition gets a closing event, so none needs to go
                                     # idle; a short idle timeout on a loaded machine could let
                                     # one partition's watermark fire windows before another
                                     # partition's records were read.
                                     flink_watermark_idle_ms=300_000,
                                     flink_checkpoint_dir=str(tmp_path / "ck"))
    first_window = now_ms() // WINDOW_MS * WINDOW_MS - 3 * WINDOW_MS
    events = status_events(unique, first_window, 1_500)
    expected = expected_rows(events)

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for e in events:
        producer.send(settings.topic_status, key=e["id"].encode(), value=orjson.dumps(e))
    producer.send(settings.topic_status, key=b"garbage", value=b"{not json")  # skipped
    # One later event on every partition moves each partition's watermark past both windows
    # (its own window stays open and is not expected).
    closing_at = first_window + 2 * WINDOW_MS + settings.rollup_max_out_of_orderness_ms + 1_000
    for partition in producer.partitions_for(settings.topic_status):
        closer = {"id": f"{unique}-close-{partition}", "priority": "critical",
                  "state": "delivered", "at": closing_at}
        producer.send(settings.topic_status, key=closer["id"].encode(),
                      value=orjson.dumps(closer), partition=partition)
    producer.flush()
    producer.close()

    with RunningJob("jobs.rollup", settings, tmp_path) as job:
        rows = read_until(settings.kafka_bootstrap, settings.topic_rollup,
                          lambda seen: len(seen) >= len(expected), timeout_s=180, job=job)

    got = {(r["window_start"], r["priority"], r["provider"], r["state"]): r for r in rows}
    assert len(got) == len(rows), "a window's row was written twice"
    assert set(got) == set(expected)
    assert {r["window_start"] for r in rows} == {first_window, first_window + WINDOW_MS}
    for key, want in expected.items():
        row = got[key]
        assert row["window_end"] == key[0] + WINDOW_MS
        assert row["_key"] == "|".join([str(key[0]), key[1], key[2] or "-", key[3]])
        assert row["events"] == want["events"], key
        for field in ("latency_avg_ms", "latency_max_ms", "latency_p50_ms", "latency_p99_ms"):
            assert row[field] == pytest.approx(want[field]), (key, field)
    assert sum(r["events"] for r in rows) == len(events)
