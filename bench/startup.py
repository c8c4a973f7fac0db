"""Critical latency in the first seconds after the delivery job starts (issue 15.3).

A restart or a failover is exactly when critical traffic has queued, so the job's first
seconds count. Per variant (fresh topics, a fresh job on the MiniCluster, an FCM mock at
10 ms): the job is started, and from the moment Flink's REST API reports the job and every
one of its tasks RUNNING, critical notifications are produced at ``--rate`` per second (open
loop, ``created_at`` stamped at send) for ``--seconds``. Latency = the mock's receive time −
created_at, per second since RUNNING; the target is p99 ≤ 300 ms from the 5th second on.

    python bench/startup.py [--rate 500] [--seconds 30] [--variants base,...] [--out startup]

``--failover``: the same job on the local standalone cluster (`make cluster-up`'s, from
flink-conf/) under a steady ``--rate``; once a checkpoint has completed the TaskManager is
killed (-9) and started again, as a supervisor would; measured: the time from the kill to the
TaskManager back, to the job RUNNING again, and to the first delivery after the kill, and
critical p99 per second after it. Nothing may be lost (the mock's log).
Writes bench/results/startup.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (BENCH_DEDUP_TTL_MS, RESULTS, Mock, bench_settings,  # noqa: E402
                          drop_topics, machine, percentile, start_system, stop_system,
                          wait_accepted, write_markdown)
from bench.loadgen import RecordFactory, generate  # noqa: E402
from herald_stack.components import Stack  # noqa: E402
from herald_stack.processes import free_port  # noqa: E402

TARGET_P99_MS = 300
FROM_SECOND = 5
# Per variant: settings changes (HERALD_* names without the prefix, lower case) and extra
# environment for the job (JVM_ARGS reaches the MiniCluster's JVM through PyFlink's launcher).
VARIANTS: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    "c1-only": ({}, {"JVM_ARGS": "-XX:TieredStopAtLevel=1"}),
    # the expansion job started at the same moment, as latency_campaign's runs do
    "beside-expansion": ({"expansion_rest_port": 0}, {}),
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rest(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def wait_running(port: int, proc, timeout_s: float = 240) -> int:
    """Epoch ms at which the job and every task of it are RUNNING (polled every 20 ms)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the job exited before it was running")
        try:
            jobs = [j for j in rest(port, "/jobs/overview")["jobs"] if j["state"] == "RUNNING"]
            if jobs:
                job = rest(port, f"/jobs/{jobs[0]['jid']}")
                if all(v["status"] == "RUNNING" for v in job["vertices"]):
                    return now_ms()
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError("the job was not running in time")


def one_run(variant: str, rate: float, seconds: float) -> dict:
    base = bench_settings()
    prefix = f"su{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="herald-startup-"))
    topics = {f"topic_{role}": f"{prefix}.{name}" for role, name in base.topics().items()}
    port = free_port()
    with Mock("fcm", latency_ms=10) as mock:
        settings = base.replace(consumer_group=prefix, flink_rest_port=port, fcm_url=mock.url,
                                dedup_ttl_ms=BENCH_DEDUP_TTL_MS,
                                ratelimit_namespace=f"herald:rl:{prefix}",
                                flink_checkpoint_dir=str(work / "checkpoints"), **topics,
                                **VARIANTS[variant][0])
        Stack(settings).create_topics(list(settings.topics().values()))
        load_before = round(os.getloadavg()[0], 2)
        started = now_ms()
        proc = start_system([sys.executable, "-m", "jobs.delivery"], settings,
                            work / "delivery.log", extra_env=VARIANTS[variant][1])
        beside = (start_system([sys.executable, "-m", "jobs.expansion"], settings,
                               work / "expansion.log") if variant == "beside-expansion"
                  else None)
        try:
            running = wait_running(port, proc)
            n = int(rate * seconds)
            generate(settings.topic_critical, n, bootstrap=settings.kafka_bootstrap, rate=rate,
                     factory=RecordFactory(run=prefix, seed=1), progress=False)
            if not wait_accepted(mock, n, proc, 120, "startup", str(work / "delivery.log")):
                raise RuntimeError(f"not every notification arrived: {work}")
            load_after = round(os.getloadavg()[0], 2)
        finally:
            stop_system(proc)
            if beside is not None:
                stop_system(beside)
            drop_topics(settings.kafka_bootstrap, prefix)
        records = [r for r in mock.records() if r.get("result") == "accepted"]
    by_second: dict[int, list[int]] = {}
    for r in records:
        created = int(r["request"]["data"]["c"])
        by_second.setdefault((created - running) // 1000, []).append(r["t_ms"] - created)
    late = [lat for s, lats in by_second.items() if s >= FROM_SECOND for lat in lats]
    return {"variant": variant, "settings": VARIANTS[variant][0], "env": VARIANTS[variant][1],
            "rate": rate,
            "notifications": len(records), "start_to_running_ms": running - started,
            "p50_from_5s_ms": percentile(late, 0.50), "p99_from_5s_ms": percentile(late, 0.99),
            "per_second": [{"second": s, "p50_ms": percentile(v, 0.50),
                            "p99_ms": percentile(v, 0.99), "max_ms": max(v)}
                           for s, v in sorted(by_second.items())],
            "load_before": load_before, "load_after": load_after}


def failover_run(rate: float, before_s: float, after_s: float) -> dict:
    from herald.settings import settings_env
    base = bench_settings()
    stack = Stack(base)
    stack.start_flink_cluster()
    prefix = f"fo{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="herald-failover-"))
    topics = {f"topic_{role}": f"{prefix}.{name}" for role, name in base.topics().items()}
    port = base.flink_rest_port
    with Mock("fcm", latency_ms=10) as mock:
        settings = base.replace(consumer_group=prefix, fcm_url=mock.url,
                                dedup_ttl_ms=BENCH_DEDUP_TTL_MS,
                                ratelimit_namespace=f"herald:rl:{prefix}",
                                flink_checkpoint_dir=str(work / "checkpoints"),
                                flink_checkpoint_interval_ms=1_000, **topics)
        stack.create_topics(list(settings.topics().values()))
        submitted = now_ms()
        job = stack.submit("jobs/delivery.py", settings_env(settings))
        import threading
        stop = threading.Event()
        total = int(rate * (before_s + after_s + 120))
        report: dict = {}
        producer = threading.Thread(target=lambda: report.update(generate(
            settings.topic_critical, total, bootstrap=settings.kafka_bootstrap, rate=rate,
            factory=RecordFactory(run=prefix, seed=1), progress=False, stop=stop)))
        try:
            running = wait_running_job(port, job)
            producer.start()
            time.sleep(before_s)  # steady traffic before the fault
            while not rest(port, f"/jobs/{job}/checkpoints")["counts"]["completed"]:
                time.sleep(0.1)
            killed = now_ms()
            stack.taskmanager.kill()
            stack.start_taskmanager()
            tm_back = now_ms()
            running_again = wait_running_job(port, job, after=killed)
            time.sleep(after_s)
            stop.set()
            producer.join()
            if not wait_accepted(mock, report["n"], _Alive(), 180, "failover drain"):
                raise RuntimeError(f"not every notification arrived: {work}")
        finally:
            stop.set()
            stack.cancel(job)
            drop_topics(settings.kafka_bootstrap, prefix)
        records = [r for r in mock.records() if r.get("result") == "accepted"]
    ids = [r["herald_id"] for r in records]
    first_after = min(r["t_ms"] for r in records if r["t_ms"] > killed)
    by_second: dict[int, list[int]] = {}
    for r in records:
        created = int(r["request"]["data"]["c"])
        by_second.setdefault((created - killed) // 1000, []).append(r["t_ms"] - created)
    return {"rate": rate, "notifications": report["n"], "accepted": len(set(ids)),
            "repeated": len(ids) - len(set(ids)), "submit_to_running_ms": running - submitted,
            "kill_to_taskmanager_back_ms": tm_back - killed,
            "kill_to_running_ms": running_again - killed,
            "kill_to_first_delivery_ms": first_after - killed,
            "per_second_after_kill": [{"second": s, "p50_ms": percentile(v, 0.50),
                                       "p99_ms": percentile(v, 0.99), "max_ms": max(v)}
                                      for s, v in sorted(by_second.items()) if s >= -5]}


def wait_running_job(port: int, job: str, after: int | None = None,
                     timeout_s: float = 240) -> int:
    """Epoch ms at which ``job`` and all its tasks are RUNNING; with ``after``, tasks started
    after it (the job restarted)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            vertices = rest(port, f"/jobs/{job}")["vertices"]
            if all(v["status"] == "RUNNING" and (after is None or v["start-time"] > after)
                   for v in vertices):
                return now_ms()
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"job {job} was not running in time")


class _Alive:
    """``wait_accepted``'s process, for a job on the cluster: it does not exit."""
    def poll(self):
        return None


def render(results: list[dict], meta: dict) -> str:
    lines = ["# Critical latency in the job's first seconds", "",
             f"Measured {meta['at']} on {meta['machine']['cpus']} cores shared with Kafka, "
             "Redis, the mock and the producer: the delivery job (MiniCluster) started fresh, "
             "critical notifications produced from the moment Flink reports the job and all "
             f"its tasks RUNNING, at the rate given, to an FCM mock at 10 ms. Target: p99 ≤ "
             f"{TARGET_P99_MS} ms from the {FROM_SECOND}th second on. "
             "`python bench/startup.py` reproduces it.", "",
             "| variant | rate /s | start → RUNNING s | p50 / p99 ms from 5 s | "
             "p99 ms per second 0-9 | load before / after |",
             "|---|---|---|---|---|---|"]
    for r in results:
        first = ", ".join(f"{s['p99_ms']:.0f}" for s in r["per_second"][:10])
        lines.append(f"| {r['variant']} | {r['rate']:.0f} | {r['start_to_running_ms'] / 1000:.1f}"
                     f" | {r['p50_from_5s_ms']:.0f} / {r['p99_from_5s_ms']:.0f} | {first} | "
                     f"{r['load_before']} / {r['load_after']} |")
    return "\n".join(lines) + "\n"


def render_failover(runs: list[dict], meta: dict) -> str:
    lines = ["# A TaskManager killed: time to the first delivery after the restore", "",
             f"Measured {meta['at']} on {meta['machine']['cpus']} cores: the delivery job on "
             "the local standalone cluster (flink-conf/: heartbeat timeout 10 s, fixed-delay "
             "restart after 2 s, checkpoints every 1 s here) under a steady critical load to "
             "an FCM mock at 10 ms; the TaskManager is killed (-9) and started again at once, "
             "as a supervisor would. `python bench/startup.py --failover` reproduces it.", "",
             "| rate /s | notifications | lost | re-sent (in flight at the kill) | kill → job "
             "RUNNING s | kill → first delivery s | p99 ms from 5 s after the restore |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        back = r["kill_to_first_delivery_ms"] // 1000 + 5
        after = [s["p99_ms"] for s in r["per_second_after_kill"] if s["second"] >= back]
        lines.append(f"| {r['rate']:.0f} | {r['notifications']:,} | "
                     f"{r['notifications'] - r['accepted']} | {r['repeated']} | "
                     f"{r['kill_to_running_ms'] / 1000:.1f} | "
                     f"{r['kill_to_first_delivery_ms'] / 1000:.1f} | "
                     f"{max(after):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default="startup")
    parser.add_argument("--failover", action="store_true")
    parser.add_argument("--before", type=float, default=10)
    parser.add_argument("--after", type=float, default=20)
    args = parser.parse_args()
    if args.failover:
        runs = [failover_run(args.rate, args.before, args.after) for _ in range(args.repeats)]
        for r in runs:
            print(json.dumps({k: v for k, v in r.items() if k != "per_second_after_kill"}))
        meta = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine()}
        (RESULTS / f"{args.out}_failover.json").write_text(
            json.dumps({**meta, "runs": runs}, indent=2))
        write_markdown(RESULTS / f"{args.out}_failover.md", render_failover(runs, meta))
        return
    results = []
    for _ in range(args.repeats):
        for variant in args.variants.split(","):
            results.append(one_run(variant, args.rate, args.seconds))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "per_second"}))
    meta = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine()}
    (RESULTS / f"{args.out}.json").write_text(json.dumps({**meta, "runs": results}, indent=2))
    write_markdown(RESULTS / f"{args.out}.md", render(results, meta))


if __name__ == "__main__":
    main()
