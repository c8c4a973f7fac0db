"""The same delivery job, submitted with `flink run -py` to a real standalone Flink cluster."""
from __future__ import annotations

import time
from collections import Counter


from herald.settings import settings_env
from tests.integration.kafka_io import produce, read_until
from tests.integration.mock_log import accepted_ids


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


def test_a_killed_taskmanager_resumes_from_the_checkpoint_without_loss_or_repeat(
        cluster, test_settings, unique, tmp_path):
    from tests.helpers_mocks import MockProcess
    mock = MockProcess("--provider", "fcm")
    settings = test_settings.replace(fcm_url=mock.url, flink_checkpoint_dir=str(tmp_path / "ck"),
                                     flink_checkpoint_interval_ms=1_000)
    total = 8_000
    now = int(time.time() * 1000)
    notes = [{"id": f"{unique}-k{i}", "tenant_id": "acme", "user_id": f"u-{i % 501}",
              "priority": "critical", "to": {"push_token": "t", "platform": "android"},
              "content": {"body": "kill"}, "created_at": now} for i in range(total)]
    produce(settings.kafka_bootstrap, settings.topic_critical, [(n["user_id"], n) for n in notes])

    job_id = cluster.submit("jobs/delivery.py", settings_env(settings))
    try:
        deadline = time.monotonic() + 180
        while mock.stats()["accepted"] < total // 4:
            assert time.monotonic() < deadline, "the job never got a quarter through"
            time.sleep(0.05)
        cluster.taskmanager.kill()
        killed_at = mock.stats()["accepted"]
        cluster.start_taskmanager()
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              lambda seen: len({s["id"] for s in seen
                                                if s["state"] == "delivered"}) >= total,
                              timeout_s=300)
    finally:
        cluster.cancel(job_id)
        at_provider = Counter(r["herald_id"] for r in mock.log())
        mock.stop()

    assert killed_at < total
    assert set(at_provider) == {n["id"] for n in notes}, "lost at the provider"
    twice = {i for i, c in at_provider.items() if c > 1}
    resent = {s["id"] for s in statuses if "in flight at a crash" in (s.get("detail") or "")}
    assert twice <= resent  # every duplicate was a call in flight at the crash, and said so
