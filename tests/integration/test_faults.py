"""Faults of the parts Herald stands on (issue 15.4), each during a backlog, at a small size:
``kill -9`` of the job (MiniCluster) and of the TaskManager (standalone cluster), a Redis
killed and restarted from its AOF, the Kafka broker killed and restarted, and the providers
down (503) for 10 s, failing 30 %, answering after 2 s and throttling (429 + Retry-After).

``bench/stress.py`` runs each (a backlog of `seq`'d users with replays and expiries, beside a
paced critical stream) and ``bench/contract_fuzz.check`` judges it at the mocks' logs and on
herald.status: nothing lost, nothing accepted twice beyond the calls a status reports as in
flight at a crash (no more of those than a crash can leave in flight), order kept per tenant,
user and class, nothing accepted at or after expires_at, no false status. The Redis and the
broker that are killed are the module's own (the shared ones serve other tests meanwhile).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from bench.stress import (CRASHES, PROVIDER_PHASES, SMALL, TWO_TASKMANAGERS, PrivateStack,
                          run_fault)

SEED = 20261207


@pytest.fixture(scope="module")
def private(stack, base_settings, tmp_path_factory):
    """A Redis (AOF on) and a Kafka broker of this module's own, killed by its tests."""
    own = PrivateStack(base_settings, tmp_path_factory.mktemp("private-stack"))
    yield own
    own.stop()


def judged(result: dict, kind: str) -> dict:
    """The run's row, after the assertions every fault shares."""
    row, report = result["row"], result["report"]
    print(report.summary())
    print({k: v for k, v in row.items() if k not in ("info", "examples", "timings")})
    info = report.info
    # The scenario did what it is for: replays, seq'd streams, expiries, a backlog delivered.
    assert info["duplicate_events"] > 0 and info["streams_with_seq"] > 0, info
    assert info.get("final_expired", 0) > 0, info
    assert info.get("final_delivered", 0) >= info["must_arrive"] * 0.9, info
    assert row["fault"]["accepted_before"] < row["backlog"], "the fault came after the backlog"
    # Every promise held.
    assert report.total == 0, report.summary()
    assert row["lost"] == row["out_of_order"] == row["delivered_after_expiry"] == 0
    if kind in CRASHES or kind == "kafka_kill":
        # What a crash can leave claimed and unsettled: (send_parts_ahead + 2) parts of
        # send_part_records per class's gate (64 at this size, so the bound is not vacuous).
        assert row["in_flight_bound"] == 2 * row["parallelism"] * 3 * 64
        assert row["reported_in_flight"] <= row["in_flight_bound"], row
    return row


def test_job_killed_during_a_backlog_restores_and_keeps_every_promise(stack, base_settings,
                                                                      tmp_path):
    row = judged(run_fault("job_kill", base_settings, tmp_path, SMALL, SEED), "job_kill")
    assert row["fault"]["restored_from_log"]  # the second run started from a checkpoint


def test_taskmanager_killed_during_a_backlog(cluster, base_settings, tmp_path):
    row = judged(run_fault("taskmanager_kill", base_settings, tmp_path, SMALL, SEED + 1,
                           cluster=cluster), "taskmanager_kill")
    restored = row["fault"]["restored"]
    # The job came back by itself from a checkpoint completed before the kill.
    assert restored is not None and not restored["is_savepoint"], restored
    assert restored["id"] >= row["fault"]["checkpoint_before"], row["fault"]


def test_redis_killed_and_restarted_from_its_aof(private, base_settings, tmp_path):
    row = judged(run_fault("redis_kill", base_settings, tmp_path, SMALL, SEED + 2,
                           private=private), "redis_kill")
    # The job failed on Redis and came back by itself from its checkpoint.
    assert row["fault"]["job"]["restarts"] >= 1, row["fault"]


def test_kafka_broker_killed_and_restarted(private, base_settings, tmp_path):
    judged(run_fault("kafka_kill", base_settings, tmp_path, SMALL, SEED + 3, private=private),
           "kafka_kill")


def test_providers_down_failing_slow_and_throttling(stack, base_settings, tmp_path):
    size = replace(SMALL, probe_s=50.0)  # the probes go on through all four phases
    result = run_fault(PROVIDER_PHASES, base_settings, tmp_path, size, SEED + 4)
    row = judged(result, PROVIDER_PHASES)
    assert [p[0] for p in row["fault"]["phases"]] == [
        "provider_outage", "provider_5xx", "provider_slow", "provider_429"]
    # Each fault reached the providers: 503s, random 5xx, 429s, and answers held 2 s.
    reasons = Counter(r.get("reason") for log in result["data"].mock_logs.values() for r in log)
    assert reasons["outage"] and reasons["random_failure"] and reasons["quota"], reasons


@pytest.fixture(scope="module")
def two_taskmanagers(stack, base_settings):
    """A standalone cluster of two TaskManagers, beside the shared one."""
    from bench.stress import two_taskmanager_cluster
    cluster = two_taskmanager_cluster(base_settings)
    yield cluster
    cluster.stop_flink_cluster()


def test_one_of_two_taskmanagers_killed_during_a_backlog(two_taskmanagers, base_settings,
                                                         tmp_path):
    row = judged(run_fault(TWO_TASKMANAGERS, base_settings, tmp_path, SMALL, SEED + 5,
                           cluster=two_taskmanagers), TWO_TASKMANAGERS)
    assert row["parallelism"] == 2
    # The job needed both TaskManagers' slots and ran on both (the killed one among them).
    used = row["fault"]["taskmanagers"]
    assert len({tm for tms in used.values() for tm in tms}) == 2, used
    # Each class's gate ran one subtask on each TaskManager (balanced tasks scheduling), not
    # both on one while the other held only sources and sinks.
    gates = {name: tms for name, tms in used.items() if name.startswith("gate-")}
    assert len(gates) == 2 and all(len(tms) == 2 for tms in gates.values()), used
    restored = row["fault"]["restored"]
    assert restored is not None and not restored["is_savepoint"], restored
    assert restored["id"] >= row["fault"]["checkpoint_before"], row["fault"]
