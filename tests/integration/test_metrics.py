"""Herald's Flink metrics through the Prometheus reporter: the delivery job on the MiniCluster,
scraped at the reporter's port while it runs."""
from __future__ import annotations

import re
import time

import requests

from herald.metrics import PREFIX
from herald_stack.processes import free_port
from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import produce, read_until
from tests.integration.records import note, now_ms

SERIES = re.compile(r'^(\w+)\{([^}]*)\}\s+(\S+)$')


def scrape(port: int) -> dict[tuple[str, str], float]:
    """{(metric name, priority label): value summed over subtasks} of Herald's metrics."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        found = SERIES.match(line)
        if not found or PREFIX not in found.group(1):
            continue
        name = found.group(1).split(PREFIX, 1)[1]
        priority = re.search(r'priority="([^"]*)"', found.group(2))
        key = (name, priority.group(1) if priority else "")
        values[key] = values.get(key, 0.0) + float(found.group(3))
    return values


def wait_for_metrics(port: int, want: dict[tuple[str, str], float], job,
                     timeout_s: float = 60.0) -> dict:
    """Scrape until every wanted series has its value (the reporter reads them on a scrape)."""
    deadline = time.monotonic() + timeout_s
    seen: dict = {}
    while time.monotonic() < deadline:
        job.check_alive()
        try:
            seen = scrape(port)
        except requests.ConnectionError:
            seen = {}
        if all(seen.get(k) == v for k, v in want.items()):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"metrics never reached {want}; last scrape: {seen}")


def test_prometheus_shows_sends_duplicates_expiry_and_dead_letters(test_settings, unique,
                                                                   tmp_path, fcm):
    port = free_port()
    settings = test_settings.replace(fcm_url=fcm.url, flink_prometheus_port=str(port),
                                     flink_checkpoint_dir=str(tmp_path / "ck"))
    sent, duplicated, expired, malformed = 300, 40, 25, 3
    good = [note(unique, i, f"u-{i % 29}") for i in range(sent)]
    past = now_ms() - 60_000
    stale = [note(unique, f"x{i}", f"u-{i % 29}", created_at=past, expires_at=past + 1_000)
             for i in range(expired)]
    records = [(n["user_id"], n) for n in good + stale]
    records += [(n["user_id"], n) for n in good[:duplicated]]  # the same ids again
    records += [(f"bad-{i}", b"{not json") for i in range(malformed)]
    produce(settings.kafka_bootstrap, settings.topic_critical, records)

    with RunningJob("jobs.delivery", settings, tmp_path) as job:
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              lambda seen: len(seen) >= sent + duplicated + expired, job=job)
        metrics = wait_for_metrics(port, {("sends", "critical"): sent,
                                          ("duplicates", "critical"): duplicated,
                                          ("expired", "critical"): expired,
                                          ("dlq", "critical"): malformed}, job)

    states = [s["state"] for s in statuses]
    assert states.count("delivered") == sent and states.count("duplicate") == duplicated
    assert fcm.stats()["accepted"] == sent
    assert metrics.get(("sends", "promotional"), 0) == 0
    assert metrics.get(("retries", "critical"), 0) == 0
    latencies = [s["latency_ms"] for s in statuses if s["state"] == "delivered"]
    assert 0 < metrics[("latency_max_ms", "critical")] <= max(latencies)
    assert metrics[("latency_p50_ms", "critical")] <= metrics[("latency_p99_ms", "critical")]
