"""Per-user order through a backlog: the job seconds behind the log, each user's records
produced out of seq order a little apart, replays of some landing before their originals.
A seq hold counts on the log's clock, so a missing predecessor that is a few hundred ms behind
in the log is waited for however long the job takes to read it. Checked at the provider."""
from __future__ import annotations

import random
import time
from collections import defaultdict

import orjson
import pytest
from kafka import KafkaProducer

from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import read_until
from tests.integration.records import note

SEQS = 10
ROUNDS_APART_S = 0.1  # a user's next record lands about this far behind in the log


@pytest.mark.parametrize("seed", [20261205])
def test_order_holds_when_the_job_is_seconds_behind_the_log(test_settings, fcm, unique,
                                                            tmp_path, seed):
    rng = random.Random(seed)
    # Herald's own quota drains the backlog at 200/s: a round of the producer's takes the job
    # over a second, so a held record's predecessor, at most two rounds (a few hundred ms)
    # behind it in the log, is read seconds after it: longer than the gap timeout.
    settings = test_settings.replace(
        fcm_url=fcm.url, flink_checkpoint_dir=str(tmp_path / "ck"), gap_timeout_ms=1_000,
        ratelimit_namespace=f"rl{unique}", quota_fcm_rate_per_s=200.0, quota_fcm_burst=20.0)
    users = [f"u{unique}-{u}" for u in range(200)]
    order = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]  # adjacent pairs swapped
    rounds: list[list[dict]] = [[] for _ in range(SEQS + 1)]
    for u in users:
        records = [note(unique, f"{u}-{s}", u, seq=s) for s in order]
        for j, record in enumerate(records):
            rounds[j].append(record)
            if rng.random() < 0.2:  # a replay, a round before or after its original
                rounds[j + rng.choice((-1, 1)) if j > 0 else j + 1].append(record)
    for batch in rounds:
        rng.shuffle(batch)

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    with RunningJob("jobs.delivery", settings, tmp_path) as job:
        for batch in rounds:
            for r in batch:
                producer.send(settings.topic_critical, key=r["user_id"].encode(),
                              value=orjson.dumps(r))
            producer.flush()
            time.sleep(ROUNDS_APART_S)  # pacing the producer, not waiting for Herald
        producer.close()
        statuses = read_until(
            settings.kafka_bootstrap, settings.topic_status,
            lambda seen: sum(s["state"] == "delivered" for s in seen) >= len(users) * SEQS,
            job=job, timeout_s=300)

    arrived: dict[str, list[int]] = defaultdict(list)
    for record in sorted(fcm.log(), key=lambda r: r["seq"]):
        arrived[record["to"]].append(int(record["herald_id"].rsplit("-", 1)[1]))
    out_of_order = [t for t, seqs in arrived.items() if seqs != list(range(SEQS))]
    gaps = [s["detail"] for s in statuses if "seq gap" in (s.get("detail") or "")]
    assert len(arrived) == len(users)
    assert not out_of_order, (f"{len(out_of_order)} users out of seq order or not exactly once, "
                              f"e.g. {out_of_order[0]}: {arrived[out_of_order[0]]}; "
                              f"{len(gaps)} gaps given up, e.g. {gaps[:1]}")
