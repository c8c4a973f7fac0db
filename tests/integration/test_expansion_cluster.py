"""The expansion job submitted with `flink run -py jobs/expansion.py` to the standalone cluster."""
from __future__ import annotations

import time


from herald.segments import SegmentFiles
from herald.settings import settings_env
from tests.integration.kafka_io import produce, read_until
from tests.integration.test_expansion import complete, of, read_committed


def test_flink_run_py_expands_a_campaign_on_the_standalone_cluster(cluster, test_settings,
                                                                   tmp_path, unique):
    # the TaskManager runs on this machine: a local segments directory is one it sees
    settings = test_settings.replace(segments_dir=str(tmp_path / "segments"),
                                     flink_checkpoint_dir=str(tmp_path / "ck"),
                                     flink_checkpoint_interval_ms=1_000)
    users = [f"c-{i}" for i in range(5_000)]
    SegmentFiles.from_settings(settings).write("acme", "cluster", users, int(time.time() * 1000))
    t = int(time.time() * 1000)
    cid = f"cl-{unique}"
    produce(settings.kafka_bootstrap, settings.topic_campaigns, [(cid, {
        "campaign_id": cid, "tenant_id": "acme", "audience": {"segment": "cluster"},
        "channels": ["push"], "content": {"body": "from the cluster"}, "created_at": t,
        "expires_at": t + 600_000})])

    job_id = cluster.submit("jobs/expansion.py", settings_env(settings))
    try:
        records = read_committed(settings, settings.topic_promo,
                                 lambda seen: len(of(cid, seen)) >= len(users), timeout_s=180)
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status, complete(cid))
    finally:
        cluster.cancel(job_id)

    assert sorted(r["user_id"] for r in of(cid, records)) == sorted(users)
    assert {r["id"] for r in of(cid, records)} == {f"{cid}:{u}" for u in users}
    assert [e for e in statuses if e["id"] == cid][-1]["expanded"] == len(users)
