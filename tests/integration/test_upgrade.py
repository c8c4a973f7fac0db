"""A savepoint-based upgrade on the standalone cluster: stop the delivery job with a savepoint
mid-stream, submit a new version (a changed setting) from it, and check at the provider that
every notification arrived exactly once and that the keyed state came across."""
from __future__ import annotations

from collections import Counter

import requests

from herald.settings import settings_env
from tests.integration.jobs import restored_from, wait_for
from tests.integration.kafka_io import produce, read_until
from tests.integration.records import note


def test_stop_with_savepoint_and_redeploy_loses_nothing_and_repeats_nothing(
        cluster, test_settings, unique, tmp_path):
    from tests.helpers_mocks import MockProcess
    mock = MockProcess("--provider", "fcm")
    v1 = test_settings.replace(fcm_url=mock.url, flink_checkpoint_dir=str(tmp_path / "ck"),
                               flink_checkpoint_interval_ms=2_000, critical_batch_window_ms=10)
    # The new version: the same job and uids, a different batch window.
    v2 = v1.replace(critical_batch_window_ms=25)
    rest = f"http://{cluster.flink_address()}"
    total, chunk = 6_000, 2_000
    notes = [note(unique, i, f"u-{i % 397}") for i in range(total)]
    repeated = notes[:200]  # sent again after the upgrade: the restored gate state knows them

    def send(batch):
        produce(v1.kafka_bootstrap, v1.topic_critical, [(n["user_id"], n) for n in batch])

    send(notes[:chunk])
    job_v1 = cluster.submit("jobs/delivery.py", settings_env(v1))
    job_v2 = None
    try:
        wait_for(lambda: mock.stats()["accepted"] >= chunk // 2, "the first half-chunk")
        send(notes[chunk:2 * chunk])  # in flight while the job is stopped
        savepoint = cluster.stop_with_savepoint(job_v1, f"file://{tmp_path / 'savepoints'}")
        at_stop = mock.stats()["accepted"]
        send(notes[2 * chunk:])  # produced while no job runs
        send(repeated)
        job_v2 = cluster.submit("jobs/delivery.py", settings_env(v2), savepoint=savepoint)
        # Restored without allowNonRestoredState: every operator state of the savepoint found
        # its operator by uid in the new version, or the job would not have started.
        assert wait_for(lambda: restored_from(rest, job_v2), "the restore") \
            .rstrip("/").endswith(savepoint.rstrip("/").rsplit("/", 1)[-1])
        statuses = read_until(
            v1.kafka_bootstrap, v1.topic_status,
            lambda seen: (len({s["id"] for s in seen if s["state"] == "delivered"}) >= total
                          and sum(s["state"] == "duplicate" for s in seen) >= len(repeated)),
            timeout_s=300)
    finally:
        for job in (job_v1, job_v2):
            if job is not None:
                requests.patch(f"{rest}/jobs/{job}?mode=cancel", timeout=10)
        at_provider = Counter(r["herald_id"] for r in mock.log())
        mock.stop()

    assert 0 < at_stop < total, "the stop was not mid-stream"
    assert set(at_provider) == {n["id"] for n in notes}, "lost at the provider"
    assert max(at_provider.values()) == 1, "sent twice"
    duplicates = Counter(s["id"] for s in statuses if s["state"] == "duplicate")
    assert set(duplicates) == {n["id"] for n in repeated}  # the gate's state came across
    delivered = [s for s in statuses if s["state"] == "delivered"]
    assert not [s for s in delivered if "before a restart" in (s.get("detail") or "")]
