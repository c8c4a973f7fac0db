"""The same delivery job, submitted with `flink run -py` to a real standalone Flink cluster."""
from __future__ import annotations

import time
from collections import Counter

import pytest

from herald.settings import settings_env
from tests.integration.kafka_io import produce, read_until
from tests.integration.mock_log import accepted_ids


@pytest.fixture(scope="module")
def cluster(stack):
    """A JobManager and a TaskManager from PyFlink's distribution; stopped if started here."""
    started = not stack.jobmanager.running()
    stack.start_flink_cluster()
    yield stack
    if started:
        stack.taskmanager.stop()
        stack.jobmanager.stop()


def test_flink_run_py_on_the_standalone_cluster_delivers(cluster, test_settings, unique):
    now = int(time.time() * 1000)
    records = [{"id": f"{unique}-c{i}", "tenant_id": "acme", "user_id": f"u-{i % 11}",
                "priority": "critical", "to": {"push_token": f"tok-{i}", "platform": "android"},
                "content": {"body": "cluster"}, "created_at": now} for i in range(200)]
    produce(test_settings.kafka_bootstrap, test_settings.topic_critical,
            [(r["user_id"], r) for r in records] + [("bad", b"not json")])

    job_id = cluster.submit("jobs/delivery.py", settings_env(test_settings))
    try:
        statuses = read_until(test_settings.kafka_bootstrap, test_settings.topic_status,
                              lambda seen: len(seen) >= 200)
        dlq = read_until(test_settings.kafka_bootstrap, test_settings.topic_dlq,
                         lambda seen: len(seen) >= 1)
    finally:
        cluster.cancel(job_id)

    assert Counter(s["state"] for s in statuses) == {"delivered": 200}
    assert {s["id"] for s in statuses} == {r["id"] for r in records}
    assert dlq[0]["raw"] == "not json" and dlq[0]["stage"] == "parse"
    at_mock = Counter(i for i in accepted_ids("fcm", test_settings) if i.startswith(f"{unique}-c"))
    assert len(at_mock) == 200 and max(at_mock.values()) == 1
