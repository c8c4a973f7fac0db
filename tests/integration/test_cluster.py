"""The same delivery job, submitted with `flink run -py` to a real standalone Flink cluster."""
from __future__ import annotations

import time
from collections import Counter

import requests

from herald.settings import settings_env
from tests.integration.kafka_io import produce, read_until
from tests.integration.mock_log import accepted_ids, in_flight_bound, repeats_after_a_kill


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


def checkpoints(cluster, job_id: str) -> dict:
    """The job's checkpoint statistics from Flink's REST API."""
    answer = requests.get(f"http://{cluster.flink_address()}/jobs/{job_id}/checkpoints",
                          timeout=10)
    answer.raise_for_status()
    return answer.json()


def test_a_killed_taskmanager_resumes_from_the_checkpoint_without_loss_or_repeat(
        cluster, test_settings, unique, tmp_path):
    from tests.helpers_mocks import MockProcess
    mock = MockProcess("--provider", "fcm")
    # Herald's own quota (1,000 calls/s) keeps the run going for seconds, so the kill lands
    # mid-run after a checkpoint has completed.
    settings = test_settings.replace(fcm_url=mock.url, flink_checkpoint_dir=str(tmp_path / "ck"),
                                     flink_checkpoint_interval_ms=1_000,
                                     ratelimit_namespace=f"rl{unique}",
                                     quota_fcm_rate_per_s=1_000.0, quota_fcm_burst=100.0)
    total = 8_000
    now = int(time.time() * 1000)
    # One record per user: a part of a batch then holds at most send_part_records, so what a
    # kill can leave in flight has a bound (mock_log.in_flight_bound).
    notes = [{"id": f"{unique}-k{i}", "tenant_id": "acme", "user_id": f"u-{i}",
              "priority": "critical", "to": {"push_token": "t", "platform": "android"},
              "content": {"body": "kill"}, "created_at": now} for i in range(total)]
    produce(settings.kafka_bootstrap, settings.topic_critical, [(n["user_id"], n) for n in notes])

    job_id = cluster.submit("jobs/delivery.py", settings_env(settings))
    try:
        deadline = time.monotonic() + 180
        # mid-run by the provider's own count, and with a completed checkpoint to restore from
        while (mock.stats()["accepted"] < total // 4
               or not checkpoints(cluster, job_id)["counts"]["completed"]):
            assert time.monotonic() < deadline, "the job never got a quarter through"
            time.sleep(0.05)
        before_kill = checkpoints(cluster, job_id)["latest"]["completed"]["id"]
        cluster.taskmanager.kill()
        killed_at = mock.stats()["accepted"]  # the TaskManager is dead: nothing more comes
        cluster.start_taskmanager()
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              lambda seen: len({s["id"] for s in seen
                                                if s["state"] == "delivered"}) >= total,
                              timeout_s=300)
        restored = checkpoints(cluster, job_id)["latest"]["restored"]
    finally:
        cluster.cancel(job_id)
        accepted = mock.log()
        mock.stop()

    assert killed_at < total
    # The job came back from a checkpoint completed before the kill, not from the start.
    assert restored is not None and not restored["is_savepoint"], restored
    assert 1 <= restored["id"] and before_kill <= restored["id"], (before_kill, restored)
    assert {r["herald_id"] for r in accepted} == {n["id"] for n in notes}, "lost at the provider"
    # Re-sent: only what was in flight at the kill; what the provider accepted before that
    # window was stopped by its `sent` marker when the restored job read it again.
    bound = in_flight_bound(settings)
    twice = repeats_after_a_kill(accepted, killed_at, bound)
    resent = {s["id"] for s in statuses if "in flight at a crash" in (s.get("detail") or "")}
    print(f"TaskManager killed after {killed_at} accepted; restored checkpoint {restored['id']}"
          f" (latest before the kill: {before_kill}); {len(twice)} sent twice, {len(resent)}"
          f" reported in flight (bound {bound})")
    assert set(twice) <= resent  # every duplicate was a call in flight at the crash, and said so
    assert len(resent) <= bound
