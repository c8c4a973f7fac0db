"""End-to-end delivery: Kafka → the delivery job (every semantic on) → the provider mock.

Two measurements per mock latency, each bounded in count and time:
* backlog: N notifications produced flat out (librdkafka) once the job has made its first call;
  calls/s at the mock (steady: first to last call; total: from the first produce);
* paced: a producer at a fixed rate while the job runs; added latency = the mock's receive time
  − the notification's created_at (p50/p95/p99), after a warm-up at the same rate
  (``--warmup-seconds``), and for the whole run.
Every run checks at the mock that each id was accepted exactly once. The backlog runs and the
null-provider run also give the job's CPU by part once their first quarter is through.

    python bench/delivery_throughput.py [--n 200000] [--latencies 0,10] [--rate 2000]
Writes bench/results/delivery_throughput.{json,md}. ``--lanes 1,8`` runs each measurement once
per `gate_lanes` value, in turn, and writes bench/results/delivery_throughput_lanes.{json,md}
(what more lanes than subtasks cost: docs/decisions/021-gate-lanes.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench.loadgen import make_producer  # noqa: E402
from bench.common import (BENCH_DEDUP_TTL_MS, Mock, drop_topics, exactness,  # noqa: E402
                          machine, cpu_between, per_user_order_ok, percentile,
                          stack_cpu_seconds, start_system, stop_system,
                          tree_cpu_by_component, tree_cpu_seconds, write_markdown)
from herald.settings import load_settings  # noqa: E402
from herald_stack.components import Stack  # noqa: E402

RESULTS = ROOT / "bench" / "results"
NULL_QUOTA = 1_000_000.0  # FCM requests/s for the null-provider run: far above any ceiling here


def note(run: str, i: int, users: int, created_at: int) -> bytes:
    user = f"u{(i * 7919) % users}"
    return user, orjson.dumps({
        "id": f"{run}-{i}", "tenant_id": "acme", "user_id": user, "priority": "critical",
        "to": {"push_token": f"tok-{user}", "platform": "android"},
        "content": {"title": "Your code", "body": f"{i:06d} is your code",
                    "data": {"c": str(created_at)}},
        "created_at": created_at, "expires_at": created_at + 600_000})


def produce(settings, run: str, n: int, users: int, rate: float | None) -> None:
    """librdkafka (confluent-kafka, bench/requirements.txt): kafka-python's producer costs
    ≈ 60 µs of CPU per record, and a backlog produced while the job runs took that from the
    job's two cores (bench/results/loadgen.md)."""
    producer = make_producer("confluent", settings.kafka_bootstrap)
    started = time.monotonic()
    for i in range(n):
        if rate:
            due = started + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.poll()
        user, value = note(run, i, users, time.time_ns() // 1_000_000)
        producer.send(settings.topic_critical, user.encode(), value)
    producer.close()


def one_run(base, latency_ms: int, n: int, users: int, rate: float | None, timeout_s: float,
            warm_n: int = 0) -> dict:
    """``warm_n`` (paced runs): that many records at the same rate first; latency is reported
    for the records after them (the JIT and Flink's first seconds add up to ≈ 10 s of
    queueing, measured: per-second p99 of 0.4–1.2 s for 15–20 s, then 60–200 ms) and
    for the whole run."""
    run = uuid.uuid4().hex[:8]
    topics = {f"topic_{role}": f"b{run}.{name}" for role, name in base.topics().items()}
    with Mock("fcm", latency_ms=latency_ms) as mock:
        settings = base.replace(consumer_group=f"bench-{run}", flink_rest_port=0,
                                fcm_url=mock.url, dedup_ttl_ms=BENCH_DEDUP_TTL_MS,
                                flink_checkpoint_dir=f"/tmp/herald-bench-ck/{run}",
                                **topics)
        Stack(settings).create_topics(list(settings.topics().values()))
        job = start_system([sys.executable, "-m", "jobs.delivery"], settings,
                           f"/tmp/herald-bench-{run}.log")
        # Warm up: one notification through, so Flink's start-up is not counted as latency.
        produce(settings, f"{run}w", 1, users, None)
        while mock.stats()["accepted"] < 1:
            if job.poll() is not None:
                raise RuntimeError(f"job died, see /tmp/herald-bench-{run}.log")
            time.sleep(0.1)
        mock.reset()
        job_cpu_at_start = tree_cpu_seconds(job.pid)
        stack_at_start = stack_cpu_seconds(settings)
        started = time.monotonic()
        total = warm_n + n
        producer = threading.Thread(target=produce, args=(settings, run, total, users, rate))
        producer.start()
        at_quarter = None  # backlog runs: the job's CPU by part once a quarter is through
        try:
            while (got := mock.stats()["accepted"]) < total:
                if job.poll() is not None:
                    raise RuntimeError(f"job died, see /tmp/herald-bench-{run}.log")
                if time.monotonic() - started > timeout_s:
                    break
                if rate is None and at_quarter is None and got >= total // 4:
                    at_quarter = (got, tree_cpu_by_component(job.pid))
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            at_end = tree_cpu_by_component(job.pid)
            job_cpu = tree_cpu_seconds(job.pid) - job_cpu_at_start
            mock_cpu = mock.cpu()
            stack_cpu = {k: v - stack_at_start[k] for k, v in stack_cpu_seconds(settings).items()}
        finally:
            stop_system(job)
            producer.join()
            drop_topics(settings.kafka_bootstrap, f"b{run}.")  # thousands left filled Kafka's fds
        records = mock.records()
    accepted = [r for r in records if r.get("result") == "accepted"]
    times = sorted(r["t_ms"] for r in accepted)
    # (index in the run, added latency) per call; the index says whether it was a warm-up record
    indexed = [(int(r["herald_id"].rsplit("-", 1)[1]), r["t_ms"] - int(r["request"]["data"]["c"]))
               for r in accepted]
    lat = [latency for _, latency in indexed]
    warm = [latency for i, latency in indexed if i >= warm_n]
    steady = (len(times) - 1) / ((times[-1] - times[0]) / 1000) if len(times) > 1 else 0
    return {"mode": "paced" if rate else "backlog", "rate": rate, "latency_ms": latency_ms,
            **lanes_of(settings), "load_1m": round(os.getloadavg()[0], 2),
            "n": total, "users": users, "accepted": len(accepted),
            "calls_per_s_total": round(len(accepted) / elapsed),
            "calls_per_s_steady": round(steady), "elapsed_s": round(elapsed, 1),
            "job_cpu_s": round(job_cpu, 1), "mock_cpu_s": round(mock_cpu, 1),
            "kafka_cpu_s": round(stack_cpu["kafka"], 1), "redis_cpu_s": round(stack_cpu["redis"], 1),
            "calls_per_job_cpu_s": round(len(accepted) / job_cpu) if job_cpu else None,
            "p50_ms": percentile(warm, 0.50), "p95_ms": percentile(warm, 0.95),
            "p99_ms": percentile(warm, 0.99), "warmup_records": warm_n,
            "whole_run_p50_ms": percentile(lat, 0.50), "whole_run_p99_ms": percentile(lat, 0.99),
            "per_user_order": per_user_order_ok(records),
            **(steady_part(at_quarter, at_end, len(accepted)) if at_quarter else {}),
            **exactness(records, total)}


def lanes_of(settings) -> dict:
    """The run's gate lanes, input partitions and critical window: at parallelism 1 a window
    makes one batch per non-empty lane, min(lanes, partitions) of them, and the window grows
    with the lanes a subtask works (jobs/delivery.py)."""
    lanes = settings.gate_lanes or settings.flink_parallelism
    return {"gate_lanes": settings.gate_lanes, "partitions": settings.kafka_partitions,
            "critical_window_ms": settings.critical_batch_window_ms
            * -(-lanes // settings.flink_parallelism)}


def label(r: dict) -> str:
    """A run's name in the tables; its lanes when the runs compare lanes."""
    name = "null provider" if r["mode"].startswith("null") else f"{r['latency_ms']} ms mock"
    return name + (f", {r['gate_lanes']} lanes, {r['critical_window_ms']} ms window"
                   if r.get("compare_lanes") else "")


def steady_part(at_quarter: tuple[int, dict], at_end: dict, done: int) -> dict:
    """The job's CPU after the first quarter of a run (start-up and most of the JIT behind
    it), by part: ``at_quarter`` is (done by then, `tree_cpu_by_component`)."""
    quarter_n, quarter_cpu = at_quarter
    components = cpu_between(quarter_cpu, at_end)
    steady_cpu = sum(components.values())
    return {"steady_from": quarter_n, "steady_job_cpu_s": round(steady_cpu, 1),
            "steady_per_job_cpu_second": (round((done - quarter_n) / steady_cpu)
                                          if steady_cpu else None),
            "steady_cpu_by_component": components}


def null_run(base, n: int, users: int, timeout_s: float) -> dict:
    """The pipeline's own ceiling: the same job and semantics with the null transport (every
    call answered in-process, no provider, no mock); measured on the status topic. The FCM
    quota is lifted (the limiter still takes its tokens in Redis): at FCM's default 10,000/s
    the ceiling would be the quota's."""
    from kafka import KafkaConsumer
    run = uuid.uuid4().hex[:8]
    topics = {f"topic_{role}": f"b{run}.{name}" for role, name in base.topics().items()}
    settings = base.replace(consumer_group=f"bench-{run}", flink_rest_port=0,
                            dedup_ttl_ms=BENCH_DEDUP_TTL_MS, provider_transport="null",
                            quota_fcm_rate_per_s=NULL_QUOTA,
                            quota_fcm_burst=NULL_QUOTA / 10,
                            flink_checkpoint_dir=f"/tmp/herald-bench-ck/{run}", **topics)
    Stack(settings).create_topics(list(settings.topics().values()))
    produce(settings, run, n, users, None)  # a backlog first: the job starts on a full topic
    consumer = KafkaConsumer(settings.topic_status, bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    job = start_system([sys.executable, "-m", "jobs.delivery"], settings,
                       f"/tmp/herald-bench-{run}.log")
    delivered, times = set(), []
    started = time.monotonic()
    # CPU readings per component: at the first status, once a quarter is delivered (the
    # steady part starts: the JIT compilers are still busy for ≈ 20 s after the start, a
    # cost a long-running job pays once), at the end.
    at_first = at_quarter = None
    try:
        while len(delivered) < n and time.monotonic() - started < timeout_s:
            if job.poll() is not None:
                raise RuntimeError(f"job died, see /tmp/herald-bench-{run}.log")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    status = orjson.loads(record.value)
                    if status["state"] == "delivered" and status["id"] not in delivered:
                        delivered.add(status["id"])
                        times.append(status["at"])
                        if at_first is None:
                            at_first = tree_cpu_by_component(job.pid)
            if at_quarter is None and len(delivered) >= n // 4:
                at_quarter = (len(delivered), tree_cpu_by_component(job.pid))
        at_end = tree_cpu_by_component(job.pid)
    finally:
        stop_system(job)
        consumer.close()
        drop_topics(settings.kafka_bootstrap, f"b{run}.")
    job_cpu = sum(cpu_between(at_first or {}, at_end).values())
    span_s = (max(times) - min(times)) / 1000 if len(times) > 1 else 0
    steady = round((len(times) - 1) / span_s) if span_s else 0
    return {"mode": "null provider, backlog", "rate": None, "latency_ms": None,
            **lanes_of(settings), "load_1m": round(os.getloadavg()[0], 2), "n": n, "users": users,
            "accepted": len(delivered), "calls_per_s_total": None,
            "calls_per_s_steady": steady, "elapsed_s": round(time.monotonic() - started, 1),
            "job_cpu_s": round(job_cpu, 1), "mock_cpu_s": 0.0,
            "per_job_cpu_second": round(len(delivered) / job_cpu) if job_cpu else None,
            **steady_part(at_quarter or (0, {}), at_end, len(delivered)),
            "p50_ms": None, "p95_ms": None, "p99_ms": None, "per_user_order": None,
            "exact": len(delivered) == n}


def component_table(results: list[dict]) -> list[str]:
    """Where each run's job CPU went once a quarter of it was through (start-up and most of
    the JIT behind it), per part of the job (`bench.common.JOB_COMPONENTS`), side by side: the
    null run against the backlog runs shows what the HTTP path adds to each part."""
    runs = [r for r in results if r.get("steady_cpu_by_component")]
    if not runs:
        return []
    labels = [label(r) for r in runs]
    parts = list(dict.fromkeys(c for r in runs for c in r["steady_cpu_by_component"]))
    per = [max(r["accepted"] - r["steady_from"], 1) for r in runs]
    lines = ["", "The job's CPU by part (its threads, by name) after each run's first quarter,"
             " in µs per notification (CPU seconds in brackets):", "",
             "| part of the job | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(runs)]
    for part in parts:
        cells = [f"{1e6 * r['steady_cpu_by_component'].get(part, 0) / k:.0f}"
                 f" ({r['steady_cpu_by_component'].get(part, 0):.1f})" for r, k in zip(runs, per)]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append("| **all** | " + " | ".join(
        f"**{1e6 * r['steady_job_cpu_s'] / k:.0f}** ({r['steady_job_cpu_s']})"
        for r, k in zip(runs, per)) + " |")
    lines.append("| notifications per job CPU-second | " + " | ".join(
        f"**{r['steady_per_job_cpu_second']:,}**" for r in runs) + " |")
    return lines


# Issue 6's bars on this 2-core machine: calls/s end to end with real HTTP calls (and its
# stretch), and the pipeline's own ceiling per Flink core with the null provider.
TARGET_CALLS_PER_S, STRETCH_CALLS_PER_S = 5_000, 10_000
TARGET_NULL_PER_CORE = 20_000
JAVA_PARTS = ("Kafka sources", "SQL window (batches, JSON)", "sinks (stream→table, Kafka writers)",
              "Kafka producer I/O", "Flink runtime and the rest", "garbage collector")


def against_targets(results: list[dict]) -> list[str]:
    """Each bar, met or not, and for a missed ceiling what bounds it: the µs per notification
    of the job's parts (the null run's table) against the µs the bar allows."""
    lines = ["", "Against the targets:", ""]
    backlog = [r for r in results if r["mode"] == "backlog" and r.get("exact")]
    if backlog:
        best = max(r["calls_per_s_steady"] for r in backlog)
        verdict = ("met" if best >= TARGET_CALLS_PER_S else "MISSED") + (
            f", stretch {STRETCH_CALLS_PER_S:,} " + ("met" if best >= STRETCH_CALLS_PER_S
                                                     else "not met"))
        lines.append(f"- ≥ {TARGET_CALLS_PER_S:,} notifications/s end to end, every semantic on,"
                     f" real HTTP calls: best backlog run **{best:,} calls/s** ({verdict}).")
    null = next((r for r in results if r["mode"].startswith("null")
                 and r.get("steady_cpu_by_component")), None)
    if null:
        per_core = null["steady_per_job_cpu_second"]
        line = (f"- ≥ {TARGET_NULL_PER_CORE:,}/s per Flink core with the null provider:"
                f" **{per_core:,} per job CPU-second** after the first quarter"
                f" ({'met' if per_core >= TARGET_NULL_PER_CORE else 'MISSED'}).")
        if per_core < TARGET_NULL_PER_CORE:
            n = max(null["accepted"] - null["steady_from"], 1)
            parts = null["steady_cpu_by_component"]

            def us(names) -> float:
                return 1e6 * sum(parts.get(k, 0.0) for k in names) / n
            line += (f" Bound: the bar allows {1e6 / TARGET_NULL_PER_CORE:.0f} µs per"
                     f" notification in all; the job took {1e6 * null['steady_job_cpu_s'] / n:.0f}:"
                     f" the gate's Python {us([k for k in parts if k.startswith('gate')]):.0f},"
                     f" the Java parts (sources, window, sinks, producer, runtime, GC)"
                     f" {us(JAVA_PARTS):.0f}, the JIT compilers {us(['JIT compilers']):.0f}.")
        lines.append(line)
    return lines if len(lines) > 3 else []


def write(results: list[dict], measured: dict | None = None,
          name: str = "delivery_throughput") -> None:
    """The JSON and Markdown results under ``name``; ``measured``: when and on what (a
    re-render keeps the JSON's)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {**(measured or {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "machine": machine()}), "runs": results}
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2))
    lanes = any(r.get("compare_lanes") for r in results)
    lines = ["# End-to-end delivery throughput and latency"
             + (": gate lanes against one subtask" if lanes else ""), "",
             f"Measured {doc['measured_at']}: Kafka, Redis, the FCM mock, the producer and the"
             " delivery job (MiniCluster, parallelism 1, thread mode, checkpoints every 5 s)"
             " on the same 2 cores. CPU seconds are counted from the first measured call (the"
             " job's start-up and JIT warm-up excluded) to the last; the null-provider row from"
             " its first status. Kafka and Redis CPU is the whole broker's and server's (other"
             " runs on the machine use them too). Every semantic on: parse and validate, keyed gate (dedup,"
             " order, expiry), Redis claim/sent markers, SQL-window batches, the lean client,"
             " status events to Kafka. `python bench/delivery_throughput.py` reproduces it."
             " `load 1m` is the load average after the run: above 2, something else competed"
             " for the 2 cores and the figure is low.", "",
             *([f"Runs by `gate_lanes` (`--lanes`), one after another in one session: at"
                f" parallelism 1 a window makes one batch per non-empty lane, i.e."
                f" min(lanes, partitions) batches; the input topics have"
                f" {results[0]['partitions']} partitions.", ""] if lanes else []),
             "| mode | mock latency | calls/s steady | calls/s from first produce | p50 / p95 / p99 added ms"
             " | job CPU s (calls per job CPU-s) | mock / Kafka / Redis CPU s | exact, order | load 1m |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["mode"].startswith("null"):
            lines.append(f"| {label(r)}, backlog {r['n']} | – | {r['calls_per_s_steady']} calls/s"
                         f" | – | – | {r['job_cpu_s']} ({r['per_job_cpu_second']}) | – |"
                         f" {'yes' if r['exact'] else 'NO'}, – | {r['load_1m']} |")
            continue
        mode = f"paced {r['rate']:.0f}/s" if r["rate"] else f"backlog {r['n']}"
        if r.get("compare_lanes"):
            mode += f", {r['gate_lanes']} lanes, {r['critical_window_ms']} ms window"
        if r.get("warmup_records"):
            mode += (f" (after {r['warmup_records']} warm-up records; whole run p50/p99"
                     f" {r['whole_run_p50_ms']}/{r['whole_run_p99_ms']} ms)")
        lines.append(f"| {mode} | {r['latency_ms']} ms | {r['calls_per_s_steady']} calls/s"
                     f" | {r['calls_per_s_total']} calls/s | {r['p50_ms']} / {r['p95_ms']} /"
                     f" {r['p99_ms']} | {r['job_cpu_s']} ({r.get('calls_per_job_cpu_s')}) |"
                     f" {r['mock_cpu_s']} / {r.get('kafka_cpu_s')} / {r.get('redis_cpu_s')} |"
                     f" {'yes' if r.get('exact') else 'NO'}, {'yes' if r['per_user_order'] else 'NO'}"
                     f" | {r['load_1m']} |")
    for r in [r for r in results if r["mode"].startswith("null")][:1]:  # the first
        if r.get("per_job_cpu_second"):
            lines += ["", f"Null provider: the job's own CPU, from its first status to its last,"
                      f" gives {r['per_job_cpu_second']:,} notifications per job CPU-second (the"
                      " pipeline's ceiling per Flink core: Kafka source, window, gate, Redis"
                      " claims and markers, rate-limiter tokens, statuses; no HTTP; the FCM"
                      f" quota lifted to {NULL_QUOTA:,.0f}/s so that the quota is not the"
                      " ceiling)."]
    lines += component_table(results)
    lines += against_targets(results)
    write_markdown(RESULTS / f"{name}.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--latencies", default="0,10")
    parser.add_argument("--modes", default="backlog,paced")
    parser.add_argument("--rate", type=float, default=2_000)
    parser.add_argument("--paced-seconds", type=float, default=20)
    parser.add_argument("--warmup-seconds", type=float, default=20,
                        help="paced runs: this long at the rate before the measured records")
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--null-n", type=int, default=200_000,
                        help="notifications for the null-provider ceiling run (0: skip it)")
    parser.add_argument("--lanes", default="",
                        help="gate_lanes values, e.g. 1,8: every run once per value, in turn;"
                             " results to delivery_throughput_lanes.*")
    parser.add_argument("--append", action="store_true",
                        help="keep the result file's runs and add these after them")
    parser.add_argument("--dry", action="store_true", help="print the runs, write no results")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: write the Markdown again from the JSON results")
    args = parser.parse_args(argv)
    name = "delivery_throughput_lanes" if args.lanes else "delivery_throughput"
    if args.render:
        doc = json.loads((RESULTS / f"{name}.json").read_text())
        write(doc["runs"], {k: doc[k] for k in ("measured_at", "machine")}, name)
        return
    base = load_settings()
    Stack(base).up(mocks=False)
    variants = ([base.replace(gate_lanes=int(x)) for x in args.lanes.split(",")] if args.lanes
                else [base])
    results = (json.loads((RESULTS / f"{name}.json").read_text())["runs"]
               if args.append and (RESULTS / f"{name}.json").exists() else [])

    def record(result: dict) -> None:
        results.append({**result, "compare_lanes": bool(args.lanes)})
        print(results[-1], flush=True)
        if not args.dry:  # after every run: a later failure keeps what was measured
            write(results, name=name)
    if args.null_n:
        for settings in variants:
            record(null_run(settings, args.null_n, args.users, args.timeout))
    for latency in [int(x) for x in args.latencies.split(",") if x]:
        for settings in variants:
            if "backlog" in args.modes:
                record(one_run(settings, latency, args.n, args.users, None, args.timeout))
            if "paced" in args.modes:
                paced_n = int(args.rate * args.paced_seconds)
                record(one_run(settings, latency, paced_n, args.users, args.rate, args.timeout,
                               warm_n=int(args.rate * args.warmup_seconds)))


if __name__ == "__main__":
    main()
