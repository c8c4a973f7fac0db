"""One delivery job per class: each delivers its own class exactly once, the promotional one runs
niced, and each keeps its own checkpoints."""
from __future__ import annotations

import os
import time
from collections import Counter

from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import produce, read_until
from tests.integration.test_delivery_skeleton import notification


def delivered(statuses: list[dict]) -> Counter:
    return Counter(s["id"] for s in statuses if s["state"] == "delivered")


def test_a_job_per_class_delivers_each_class_once_with_promotional_niced(test_settings, unique,
                                                                         tmp_path):
    settings = test_settings.replace(flink_checkpoint_dir=str(tmp_path / "ck"),
                                     flink_checkpoint_interval_ms=1_000, promo_job_rest_port=0,
                                     promo_job_nice=7)
    critical = [notification(unique, i) for i in range(200)]
    promo = [notification(unique, 1000 + i, priority="promotional") for i in range(200)]
    produce(settings.kafka_bootstrap, settings.topic_critical, ((n["user_id"], n) for n in critical))
    produce(settings.kafka_bootstrap, settings.topic_promo, ((n["user_id"], n) for n in promo))
    wanted = {n["id"] for n in critical + promo}
    (tmp_path / "critical").mkdir()
    (tmp_path / "promo").mkdir()

    with RunningJob("jobs.delivery", settings.replace(delivery_classes="critical"),
                    tmp_path / "critical") as critical_job, \
            RunningJob("jobs.delivery", settings.replace(delivery_classes="promotional"),
                       tmp_path / "promo") as promo_job:
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              lambda seen: wanted <= set(delivered(seen)), job=critical_job)
        promo_job.check_alive()
        # the promotional job's client thread was niced before its JVM started (it inherits)
        assert os.getpriority(os.PRIO_PROCESS, promo_job.proc.pid) >= 7
        assert os.getpriority(os.PRIO_PROCESS, critical_job.proc.pid) < 7
        # each job checkpoints into its own folder, so `--restore latest` finds its own
        folders = [tmp_path / "ck" / f"herald-delivery-{c}" for c in ("critical", "promotional")]
        deadline = time.monotonic() + 60
        while not all(list(f.glob("*/chk-*/_metadata")) for f in folders):
            critical_job.check_alive()
            promo_job.check_alive()
            assert time.monotonic() < deadline, "no completed checkpoint in each job's folder"
            time.sleep(0.1)

    counts = delivered(statuses)
    assert set(counts) == wanted and max(counts.values()) == 1
    assert {s["priority"] for s in statuses if s["id"] in {n["id"] for n in promo}} == \
        {"promotional"}
