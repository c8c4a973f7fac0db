"""The delivery job (embedded MiniCluster) on the local Redis Cluster: exactly once at the
provider's log, with slots resharded under the running job and the job killed and restored
from its checkpoint afterwards, so the replayed records meet their `sent` markers on the nodes
they were moved to."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from herald.redis_conn import key_slot
from herald_cli.quota import set_quota
from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import produce, read_until
from tests.integration.mock_log import in_flight_bound, repeats_after_a_kill
from tests.integration.records import note


@pytest.fixture
def settings(test_settings, fcm, tmp_path, redis_cluster, unique):
    # A quota that keeps the job busy for seconds (the reshard happens while it sends) and
    # takes tokens from the cluster's buckets on every batch.
    return test_settings.replace(fcm_url=fcm.url, redis_address=redis_cluster.address,
                                 ratelimit_namespace=f"rl{unique}",
                                 quota_fcm_rate_per_s=600.0, quota_fcm_burst=300.0,
                                 flink_checkpoint_dir=str(tmp_path / "ck"),
                                 flink_checkpoint_interval_ms=1_000)


def wait_for(check, job: RunningJob, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        job.check_alive()
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# While the slots move, fcm's quota is cut to a crawl (its bucket takes the cut at once), so
# the job is still sending, however long the reshard takes; it is put back afterwards.
CRAWL_RATE_PER_S, CRAWL_BURST = 1.0, 2.0


def test_delivery_on_redis_cluster_resharded_mid_run_and_restored(
        settings, fcm, redis_cluster, cluster_client, unique, tmp_path):
    total = 5_000  # one record per user: what a kill leaves in flight has a bound
    notes = [note(unique, i, f"u{unique}-{i}") for i in range(total)]
    produce(settings.kafka_bootstrap, settings.topic_critical, [(n["user_id"], n) for n in notes])
    checkpoints = Path(settings.flink_checkpoint_dir)
    bucket = f"{settings.ratelimit_namespace}:{{fcm}}"

    first = RunningJob("jobs.delivery", settings, tmp_path)
    try:
        wait_for(lambda: fcm.stats()["accepted"] >= total // 5
                 and list(checkpoints.glob("*/chk-*/_metadata")), first,
                 "the first run never got a fifth through")
        # Under the running job: the buckets' slot moved key by key, then 1,500 slots (and
        # the markers in them) by redis-cli, from the node that serves the most slots.
        before_reshard = fcm.stats()["accepted"]
        set_quota(settings, "fcm", CRAWL_RATE_PER_S, CRAWL_BURST, control=False)
        slot = key_slot(bucket)
        redis_cluster.migrate_slot(slot, next(p for p in redis_cluster.ports
                                              if p != redis_cluster.owner(slot)), batch=1)
        by_slots = sorted(redis_cluster.ports, key=lambda p: len(redis_cluster.slots_of(p)))
        source, target = by_slots[-1], by_slots[0]  # (a kept cluster was resharded before)
        owned_before = redis_cluster.slots_of(source)
        redis_cluster.reshard(source, target, 1_500)
        moved = owned_before - redis_cluster.slots_of(source)
        assert len(moved) == 1_500
        first.check_alive()
        assert fcm.stats()["accepted"] < total, "the job was done before the reshard ended"
        set_quota(settings, "fcm", settings.quota_fcm_rate_per_s, settings.quota_fcm_burst,
                  control=False)
        wait_for(lambda: fcm.stats()["accepted"] >= before_reshard + total // 5, first,
                 "the job stopped sending after the reshard")
    finally:
        first.kill()
    sent_before_kill = fcm.stats()["accepted"]
    assert sent_before_kill < total
    sent_ids = {r["herald_id"] for r in fcm.log()}
    moved_markers = [n for n in notes if n["id"] in sent_ids
                     and key_slot(f"herald:once:acme:{n['id']}") in moved]
    assert moved_markers, "no marker of a sent id was moved"

    with RunningJob("jobs.delivery", settings, tmp_path, "--restore", "latest") as second:
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              lambda seen: len({s["id"] for s in seen
                                                if s["state"] == "delivered"}) >= total,
                              job=second, timeout_s=240)
        assert "restoring from" in second.log_path.read_text()

    accepted = fcm.log()
    assert {r["herald_id"] for r in accepted} == {n["id"] for n in notes}, "lost at the provider"
    bound = in_flight_bound(settings)
    twice = repeats_after_a_kill(accepted, sent_before_kill, bound)
    resent = {s["id"] for s in statuses if "in flight at a crash" in (s.get("detail") or "")}
    print(f"reshard of {len(moved)} slots mid-run, kill after {sent_before_kill} accepted: "
          f"{len(twice)} sent twice, {len(resent)} reported in flight (bound {bound}), "
          f"{len(moved_markers)} markers of sent ids moved")
    assert set(twice) <= resent
    # every marker is where the cluster says: the restored run's claims found them all
    assert all(cluster_client.get(f"herald:once:acme:{n['id']}") == b"1" for n in notes)
