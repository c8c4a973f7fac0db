"""Rescaling the delivery job mid-backlog on the standalone cluster, with the default gate lanes:
stop with a savepoint at parallelism 1, restore at 2, stop again, restore at 1. Seq'd users
(some with a gap held across a stop: the missing seq is produced only after it), replays of
earlier ids after each restore, records with `send_at` due after the first stop, and some
expiring during the backlog. Judged at the provider mock's log: nothing lost, nothing sent
twice, each user's seqs in order, nothing at or after `expires_at`, nothing before `send_at`.

    HERALD_RESCALE_SEED=<seed> .venv/bin/python -m pytest tests/integration/test_rescale.py -s
replays a seed (each run prints its own).
"""
from __future__ import annotations

import os
import random
import time
from collections import Counter, defaultdict

import requests

from herald.settings import settings_env
from tests.integration.jobs import restored_from, subtask_records, wait_for
from tests.integration.kafka_io import produce, read_until
from tests.integration.records import note, now_ms

SEED = int(os.environ.get("HERALD_RESCALE_SEED", random.randrange(1 << 30)))
SEQS = 9                    # seqs 0-8 per seq'd user: 0-3 before the first stop, 4-6, 7-8
PHASE_OF_SEQ = [0, 0, 0, 0, 1, 1, 1, 2, 2]
SEND_AT_S = 45              # after the first stop (asserted), while the restores run


def scenario(unique: str, rng: random.Random, t0: int) -> tuple[list[list[dict]], dict]:
    """Three phases of records (produced once the first job runs, and before each restore),
    and what each record is for; ``t0``: when the first is produced."""
    phases: list[list[dict]] = [[], [], []]
    heads: list[list[dict]] = [[], [], []]  # produced first: read by the gate before the stop
    kinds = {"seq_users": [], "gap_users": [], "send_at": [], "expiring": [], "replays": 0}
    for u in range(40):
        user = f"s{unique}-{u}"
        kinds["seq_users"].append(user)
        records = [note(unique, f"{user}-{s}", user, seq=s) for s in range(SEQS)]
        moved = {}
        if u < 12:    # seq 2 is produced only after the first stop: seq 3 is held across it
            moved[2] = 1
        elif u < 24:  # seq 5 only after the second stop: seq 6 is held across that one
            moved[5] = 2
        if moved:
            kinds["gap_users"].append(user)
        for s, record in enumerate(records):
            phase = moved.get(s, PHASE_OF_SEQ[s])
            (heads if u < 12 and phase == 0 else phases)[phase].append(record)
    for i in range(12):  # due after the first stop; 4 of them with a narrow window to expiry
        send_at = t0 + SEND_AT_S * 1000 + rng.randrange(-3_000, 3_000)
        expiry = {"expires_at": send_at + 1_500} if i < 4 else {}
        record = note(unique, f"at{i}", f"a{unique}-{i}", send_at=send_at, **expiry)
        heads[0].append(record)
        kinds["send_at"].append(record["id"])
    plain = [f"p{unique}-{u}" for u in range(60)]
    for phase, count in enumerate((600, 300, 150)):
        phases[phase] += [note(unique, f"p{phase}-{i}", rng.choice(plain)) for i in range(count)]
    for phase in phases:
        rng.shuffle(phase)
    # At the tail of the first backlog, expiring while the job works through it (or stops).
    expiring = [note(unique, f"x{i}", rng.choice(plain),
                     expires_at=t0 + rng.randrange(2_000, 40_000)) for i in range(30)]
    phases[0] += expiring
    kinds["expiring"] = [r["id"] for r in expiring] + kinds["send_at"][:4]
    # Replays of what came before, anywhere in the same phase (maybe ahead of the original)
    # or after a restore; not of what may expire (a replay of an expired record is expired
    # too, not a duplicate).
    for phase in range(3):
        earlier = [r for p in (*heads[:phase + 1], *phases[:phase + 1]) for r in p
                   if r["id"] not in kinds["expiring"]]
        for record in rng.sample(earlier, len(earlier) // 10):
            later = phases[rng.randrange(phase, 3)]
            later.insert(rng.randrange(len(later) + 1), dict(record))
            kinds["replays"] += 1
    return [heads[p] + phases[p] for p in range(3)], kinds


def test_rescale_1_to_2_to_1_mid_backlog_keeps_every_promise(cluster, test_settings, fcm,
                                                             unique, tmp_path):
    print(f"HERALD_RESCALE_SEED={SEED}")
    rng = random.Random(SEED)
    # The default gate_lanes throughout (a job above its lanes would not start). Herald's own
    # quota keeps the backlog at seconds of work; one class (2 slots a subtask).
    one = test_settings.replace(
        fcm_url=fcm.url, flink_checkpoint_dir=str(tmp_path / "ck"), delivery_classes="critical",
        flink_checkpoint_interval_ms=2_000, ratelimit_namespace=f"rl{unique}",
        quota_fcm_rate_per_s=100.0, quota_fcm_burst=10.0, gap_timeout_ms=300_000)
    two = one.replace(flink_parallelism=2)
    rest = f"http://{cluster.flink_address()}"
    savepoints = f"file://{tmp_path / 'savepoints'}"
    started = time.monotonic()

    def send(phase: list[dict]) -> None:
        produce(one.kafka_bootstrap, one.topic_critical, [(r["user_id"], r) for r in phase])

    def accepted() -> int:
        return fcm.stats()["accepted"]

    def step(what: str) -> None:
        print(f"{time.monotonic() - started:5.1f} s: {what}", flush=True)

    jobs, stops = [], []
    warm = note(unique, "warm", f"w{unique}")
    try:
        send([warm])
        jobs.append(cluster.submit("jobs/delivery.py", settings_env(one)))
        wait_for(lambda: accepted() >= 1, "the first job's first call")
        step("parallelism 1 runs")
        phases, kinds = scenario(unique, rng, now_ms())
        records = {r["id"]: r for phase in [[warm], *phases] for r in phase}
        must_arrive = set(records) - set(kinds["expiring"])
        send(phases[0])
        wait_for(lambda: accepted() >= 250, "a third of the first backlog")
        stops.append((cluster.stop_with_savepoint(jobs[-1], savepoints), now_ms(), accepted()))
        step(f"stopped with a savepoint, {stops[-1][2]} accepted")

        send(phases[1])
        jobs.append(cluster.submit("jobs/delivery.py", settings_env(two), savepoint=stops[0][0]))
        wait_for(lambda: restored_from(rest, jobs[-1]), "the restore at parallelism 2")
        # Both gate subtasks take batches: the default lanes spread over them.
        busy = wait_for(lambda: (lambda n: len(n) == 2 and min(n) > 0 and n)(
            subtask_records(rest, jobs[-1], "gate-critical")), "both gate subtasks", 60)
        step(f"parallelism 2 runs, gate subtasks read {busy}")
        wait_for(lambda: accepted() >= stops[0][2] + 250, "more of the backlog at parallelism 2")
        stops.append((cluster.stop_with_savepoint(jobs[-1], savepoints), now_ms(), accepted()))
        step(f"stopped with a savepoint, {stops[-1][2]} accepted")

        send(phases[2])
        jobs.append(cluster.submit("jobs/delivery.py", settings_env(one), savepoint=stops[1][0]))
        wait_for(lambda: restored_from(rest, jobs[-1]), "the restore at parallelism 1")
        step("parallelism 1 runs again")
        expiring = set(kinds["expiring"])

        def drained(seen: list[dict]) -> bool:  # every copy handled: a final state or a dup
            delivered = {s["id"] for s in seen if s["state"] == "delivered"}
            ended = {s["id"] for s in seen if s["state"] in ("delivered", "expired")}
            return (must_arrive <= delivered and expiring <= ended
                    and sum(s["state"] == "duplicate" for s in seen) >= kinds["replays"])
        read_until(one.kafka_bootstrap, one.topic_status, drained, timeout_s=180)
        step("drained")
    finally:
        for job in jobs:
            requests.patch(f"{rest}/jobs/{job}?mode=cancel", timeout=10)
    log = sorted(fcm.log(), key=lambda r: r["seq"])

    said = f"seed {SEED}"
    times = Counter(r["herald_id"] for r in log)
    assert stops[0][2] < stops[1][2] < len(must_arrive), f"{said}: not mid-backlog: {stops}"
    print(f"{said}: accepted at the stops {[s[2] for s in stops]} of {len(must_arrive)}; "
          f"gate subtasks at parallelism 2 read {busy} batches; {kinds['replays']} replays")
    assert not set(times) - set(records), f"{said}: unknown ids at the provider"
    lost = must_arrive - set(times)
    assert not lost, f"{said}: {len(lost)} lost, e.g. {sorted(lost)[:5]}"
    twice = {i: n for i, n in times.items() if n > 1}
    assert not twice, f"{said}: {len(twice)} sent twice, e.g. {list(twice.items())[:5]}"
    late = [r["herald_id"] for r in log if r["t_ms"] >= records[r["herald_id"]]["expires_at"]]
    assert not late, f"{said}: accepted at or after expires_at: {late[:5]}"
    early = [r["herald_id"] for r in log
             if r["t_ms"] < records[r["herald_id"]].get("send_at", 0)]
    assert not early, f"{said}: accepted before send_at: {early[:5]}"
    # The send_at records were due only after the first stop: each crossed a rescale (read
    # before it, as the first records of the backlog).
    assert stops[0][1] < min(records[i]["send_at"] for i in kinds["send_at"]), (
        f"{said}: the first stop came {SEND_AT_S} s after the backlog (a machine this slow "
        f"needs a later send_at)")
    # Seqs in order at the provider, every one; a gap user's seqs before the held one were
    # sent before the stop it was held across (so the gate had read it and held it).
    seqs = defaultdict(list)
    for r in log:
        record = records[r["herald_id"]]
        if "seq" in record:
            seqs[record["user_id"]].append(record["seq"])
    wrong = {u: seqs[u] for u in kinds["seq_users"] if seqs[u] != list(range(SEQS))}
    assert not wrong, f"{said}: {len(wrong)} users out of seq order, e.g. {list(wrong.items())[:3]}"
    before_stop = {r["herald_id"] for r in log if r["t_ms"] <= stops[0][1]}
    gap_heads = [f"{unique}-{u}-{s}" for u in kinds["gap_users"][:12] for s in (0, 1)]
    assert set(gap_heads) <= before_stop, f"{said}: the held seqs were not read before the stop"
