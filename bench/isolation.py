"""Isolation: critical latency with and without a 200k-notification promotional backlog.

The delivery job runs on the MiniCluster (every semantic on) against one FCM mock (10 ms) that
both classes call, as they would one real provider. Two phases, one job:
* alone: critical notifications paced at --rate for --seconds;
* with promo: --promo promotional notifications produced as fast as the producer goes, and the
  same paced critical stream while the job drains that backlog.
Latency = the mock's receive time − the notification's created_at (set just before it is
produced), so it includes Kafka, the SQL window, the gate and the call. The promotional rate
at the mock during the second phase shows the backlog was really being worked on.

    pip install -r bench/requirements.txt      # once: confluent-kafka for the backlog
    python bench/isolation.py [--rate 300] [--seconds 30] [--promo 200000] [--split]
Writes bench/results/isolation.{json,md} (with --split, one delivery job per class:
isolation_split.{json,md}).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import multiprocessing
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from kafka import KafkaProducer  # noqa: E402

from bench.common import (BENCH_DEDUP_TTL_MS, RESULTS, Mock, machine, percentile,  # noqa: E402
                          start_system, stop_system)
from herald.settings import load_settings  # noqa: E402
from herald_stack.components import Stack  # noqa: E402

USERS = 50_000


def record(run: str, kind: str, i: int, priority: str) -> tuple[bytes, bytes]:
    now = time.time_ns() // 1_000_000
    user = f"u{(i * 7919) % USERS}"
    return user.encode(), orjson.dumps({
        "id": f"{run}-{kind}-{i}", "tenant_id": "acme", "user_id": user, "priority": priority,
        "to": {"push_token": f"tok-{user}", "platform": "android"},
        "content": {"title": "Hello", "body": f"{kind} message {i}", "data": {"c": str(now)}},
        "created_at": now, "expires_at": now + 3_600_000})


def producer(settings) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=2, acks=1,
                         batch_size=256 * 1024)


def paced_critical(settings, run: str, kind: str, rate: float, seconds: float) -> int:
    p = producer(settings)
    n = int(rate * seconds)
    started = time.monotonic()
    for i in range(n):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        key, value = record(run, kind, i, "critical")
        p.send(settings.topic_critical, key=key, value=value)
    p.flush()
    p.close()
    return n


def promo_backlog(settings, run: str, n: int) -> None:
    """The campaign's backlog, produced with librdkafka (bench/loadgen.py's producer): a few
    seconds of one core, as an expansion job's batch writes are, not the half-minute of a
    core kafka-python would take on the same two cores as the job."""
    from bench.loadgen import make_producer
    p = make_producer("confluent", settings.kafka_bootstrap)
    for i in range(n):
        key, value = record(run, "promo", i, "promotional")
        p.send(settings.topic_promo, key, value)
        if i % 1000 == 0:
            p.poll()
    p.close()


def latencies(records: list[dict], prefix: str) -> tuple[list[int], list[int]]:
    """(added latencies, receive times) of accepted calls whose id starts with ``prefix``."""
    lat, times = [], []
    for r in records:
        if r.get("result") == "accepted" and (r.get("herald_id") or "").startswith(prefix):
            lat.append(r["t_ms"] - int(r["request"]["data"]["c"]))
            times.append(r["t_ms"])
    return lat, times


class Arrivals:
    """Counts the mock's accepted calls by id prefix, reading its log file incrementally."""

    def __init__(self, mock: Mock):
        self.mock = mock
        self.offset = 0
        self.counts: dict[str, int] = {}

    def count(self, prefix: str) -> int:
        self.mock.stats()  # makes the mock flush its log
        with open(self.mock.log_path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        complete = chunk.rfind(b"\n") + 1
        self.offset += complete
        for line in chunk[:complete].splitlines():
            r = orjson.loads(line)
            if r.get("result") == "accepted":
                kind = (r.get("herald_id") or "").rsplit("-", 1)[0]
                self.counts[kind] = self.counts.get(kind, 0) + 1
        return self.counts.get(prefix, 0)

    def wait_for(self, prefix: str, n: int, job, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count(prefix) < n:
            if job.poll() is not None:
                raise RuntimeError("the delivery job died")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.count(prefix)} of {n} {prefix} calls arrived")
            time.sleep(0.5)


def by_second(records: list[dict], prefix: str) -> list[list[int]]:
    """[second from the phase's first call, calls, p50 ms, max ms]: where in time it is slow."""
    lat, times = latencies(records, prefix)
    if not times:
        return []
    start, buckets = min(times), {}
    for ms, t in zip(lat, times):
        buckets.setdefault((t - start) // 1000, []).append(ms)
    return [[sec, len(v), percentile(v, 0.5), max(v)] for sec, v in sorted(buckets.items())]


def summary(lat: list[int]) -> dict:
    return {"n": len(lat), "p50_ms": percentile(lat, 0.50), "p95_ms": percentile(lat, 0.95),
            "p99_ms": percentile(lat, 0.99), "max_ms": max(lat) if lat else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--promo", type=int, default=200_000)
    parser.add_argument("--latency-ms", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=5, help="seconds of unmeasured warm-up")
    parser.add_argument("--split", action="store_true",
                        help="one delivery job per class (HERALD_DELIVERY_CLASSES), not one job")
    args = parser.parse_args(argv)
    base = load_settings()
    Stack(base).up(mocks=False)
    run = uuid.uuid4().hex[:8]
    topics = {f"topic_{role}": f"iso{run}.{name}" for role, name in base.topics().items()}
    load_before = os.getloadavg()[0]
    with Mock("fcm", latency_ms=args.latency_ms) as mock:
        settings = base.replace(consumer_group=f"iso-{run}", flink_rest_port=0, fcm_url=mock.url,
                                dedup_ttl_ms=BENCH_DEDUP_TTL_MS,
                                flink_checkpoint_dir=f"/tmp/herald-bench-ck/{run}", **topics)
        Stack(settings).create_topics(list(settings.topics().values()))
        if args.split:  # one job per class: own JVM and interpreter, promotional niced
            job = start_system([sys.executable, "-m", "jobs.delivery"],
                               settings.replace(delivery_classes="critical"),
                               f"/tmp/herald-isolation-{run}.log")
            promo_job = start_system([sys.executable, "-m", "jobs.delivery"],
                                     settings.replace(delivery_classes="promotional",
                                                      promo_job_rest_port=0),
                                     f"/tmp/herald-isolation-{run}-promo.log")
        else:
            job = promo_job = start_system([sys.executable, "-m", "jobs.delivery"], settings,
                                           f"/tmp/herald-isolation-{run}.log")
        arrivals = Arrivals(mock)
        try:
            # Warm-up at the phase's rate, not measured: the first seconds of a fresh JVM
            # run interpreted and JIT-compiling (p50 ≈ 140 ms in second 0, ≈ 36 ms from 3 s on).
            n_warm = paced_critical(settings, run, "warm", args.rate, args.warmup)
            arrivals.wait_for(f"{run}-warm", n_warm, job, 120)
            n_alone = paced_critical(settings, run, "alone", args.rate, args.seconds)
            arrivals.wait_for(f"{run}-alone", n_alone, job, 60)
            promo_started = time.time_ns() // 1_000_000
            # Its own process: a producer thread here would share this process's GIL with the
            # paced critical producer and delay its sends.
            filler = multiprocessing.get_context("spawn").Process(
                target=promo_backlog, args=(settings, run, args.promo))
            filler.start()
            produced: list[int] = []  # when the backlog was all in Kafka
            threading.Thread(target=lambda: (filler.join(),
                                              produced.append(time.time_ns() // 1_000_000)),
                             daemon=True).start()
            n_busy = paced_critical(settings, run, "busy", args.rate, args.seconds)
            arrivals.wait_for(f"{run}-busy", n_busy, job, 120)
            busy_ended = time.time_ns() // 1_000_000
            filler.join()
            while not produced:  # the watcher thread notes the time right after its join
                time.sleep(0.01)
            promo_produced = produced[0]
        finally:
            stop_system(job)
            if promo_job is not job:
                stop_system(promo_job)
        records = mock.records()
    alone, _ = latencies(records, f"{run}-alone")
    busy, _ = latencies(records, f"{run}-busy")
    _, promo_times = latencies(records, f"{run}-promo")
    promo_during = sum(1 for t in promo_times if promo_started <= t <= busy_ended)
    result = {"machine": machine(), "load_before": round(load_before, 2),
              "load_after": round(os.getloadavg()[0], 2), "rate": args.rate,
              "seconds": args.seconds, "warmup_s": args.warmup, "promo": args.promo,
              "split": args.split,
              "mock_latency_ms": args.latency_ms,
              "alone": summary(alone), "with_promo": summary(busy),
              "promo_delivered_during": promo_during,
              "promo_produced_in_ms": promo_produced - promo_started,
              "alone_by_second": by_second(records, f"{run}-alone"),
              "with_promo_by_second": by_second(records, f"{run}-busy"),
              "promo_rate_during": round(promo_during / ((busy_ended - promo_started) / 1000)),
              "critical_complete": len(alone) == n_alone and len(busy) == n_busy}
    write(result)
    print(json.dumps(result, indent=2))


def write(r: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "isolation_split" if r.get("split") else "isolation"
    (RESULTS / f"{stem}.json").write_text(json.dumps(r, indent=2))
    rows = [f"| {name} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | {s['max_ms']} |"
            for name, s in (("critical alone", r["alone"]),
                            (f"critical + {r['promo']:,} promotional backlog", r["with_promo"]))]
    text = "\n".join([
        "# Isolation: critical latency with and without a promotional backlog", "",
        f"Measured {r['machine']['when']}: "
        + ("two delivery jobs, one per class, each its own MiniCluster JVM (the promotional one"
           " niced; `--split`)" if r.get("split") else "the delivery job, both classes in one"
           " MiniCluster JVM") + " (parallelism 1, every semantic on), Kafka, Redis, one FCM mock at"
        f" {r['mock_latency_ms']:g} ms for both classes, and the producers on the same 2 cores."
        f" Critical paced at {r['rate']:g}/s for {r['seconds']:g} s per phase, after"
        f" {r.get('warmup_s', 1):g} s of unmeasured warm-up at that rate; latency = mock"
        " receive time − created_at (Kafka, window, gate, call). Load average before/after:"
        f" {r['load_before']} / {r['load_after']} (above 2, something else competed for the"
        " cores). `python bench/isolation.py" + (" --split" if r.get("split") else "")
        + "` reproduces it.", "",
        "| phase | critical calls | p50 ms | p95 ms | p99 ms | max ms |", "|---|---|---|---|---|---|",
        *rows, "",
        f"Promotional calls accepted while the second phase ran: {r['promo_delivered_during']:,}"
        f" ({r['promo_rate_during']:,}/s); the backlog took {r['promo_produced_in_ms']:,} ms to"
        " produce. Every critical notification arrived:"
        f" {'yes' if r['critical_complete'] else 'NO'}. Per second of each phase (calls, p50,"
        " max ms) in the JSON.", "",
        "| second | " + " | ".join(str(row[0]) for row in r["with_promo_by_second"]) + " |",
        "|---|" + "---|" * len(r["with_promo_by_second"]),
        "| p50 / max ms with promo | " + " | ".join(f"{row[2]} / {row[3]}"
                                                    for row in r["with_promo_by_second"]) + " |",
        ""])
    (RESULTS / f"{stem}.md").write_text(text)


if __name__ == "__main__":
    main()
