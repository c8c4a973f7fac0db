"""Connection faults: critical delivery while the provider resets connections beyond a cap per
client (issue 15.2), then after the cap is lifted.

The delivery job (MiniCluster, critical class, every semantic on) calls one FCM mock (10 ms)
whose ``max_client_connections`` is switched on for ``--fault`` seconds and off again: at the
fault's start a burst of ``--burst`` critical notifications (produced at once, as a backlog
lands), then ``--rate`` per second until the fault ends and ``--after`` seconds more. Each variant
runs in turn in the same invocation: ``adaptive`` (the code as it is) and ``fixed``
(``provider_concurrency_adaptive=false``: the pool and classification before issue 15.2).
Latency = the mock's receive time − created_at. Lost = produced and never accepted by the end
of the wait; duplicated = accepted more than once (the mock's log); retrying = status events.

    python bench/connection_faults.py [--burst 3000] [--rate 200] [--fault 10] [--after 10]
                                      [--cap 8]
Writes bench/results/connection_faults.{json,md}. ``scenario()`` is the one run, for
bench/stress.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

from bench.common import (BENCH_DEDUP_TTL_MS, RESULTS, Mock, machine, percentile,  # noqa: E402
                          start_system, stop_system, write_markdown)
from herald.settings import load_settings  # noqa: E402
from herald_stack.components import Stack  # noqa: E402


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def record(run: str, phase: str, i: int) -> tuple[bytes, bytes]:
    t = now_ms()
    user = f"u{i % 5000}"
    return user.encode(), orjson.dumps({
        "id": f"{run}-{phase}-{i}", "tenant_id": "acme", "user_id": user,
        "priority": "critical", "channels": ["push"],
        "to": {"push_token": f"tok-{user}", "platform": "android"},
        "content": {"title": "Code", "body": f"{phase} {i}", "data": {"c": str(t)}},
        "created_at": t, "expires_at": t + 600_000})


def paced(producer: KafkaProducer, topic: str, run: str, phase: str, rate: float,
          seconds: float, burst: int = 0) -> list[str]:
    """``burst`` at once, then ``rate`` per second for ``seconds``; the ids."""
    ids, started = [], time.monotonic()
    for i in range(burst):
        key, value = record(run, f"{phase}b", i)
        producer.send(topic, key=key, value=value)
        ids.append(f"{run}-{phase}b-{i}")
    n = int(rate * seconds)
    for i in range(n):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        key, value = record(run, phase, i)
        producer.send(topic, key=key, value=value)
        ids.append(f"{run}-{phase}-{i}")
    producer.flush()
    return ids


def statuses(settings) -> list[dict]:
    """Every status event of the run's topic, read to its end."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    parts = [TopicPartition(settings.topic_status, p)
             for p in consumer.partitions_for_topic(settings.topic_status) or ()]
    consumer.assign(parts)
    end = consumer.end_offsets(parts)
    out = []
    while any(consumer.position(p) < end[p] for p in parts):
        for batch in consumer.poll(timeout_ms=1000).values():
            out += [orjson.loads(m.value) for m in batch]
    consumer.close()
    return out


def wait_all(mock: Mock, ids: set[str], job, timeout_s: float) -> float | None:
    """Until the mock has accepted every id (None: not by ``timeout_s``); raises if the job
    died."""
    started, seen, offset = time.monotonic(), set(), 0
    while True:
        mock.stats()  # the mock flushes its log file
        with open(mock.log_path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
        done = chunk.rfind(b"\n") + 1
        offset += done
        for line in chunk[:done].splitlines():
            r = orjson.loads(line)
            if r.get("result") == "accepted":
                seen.add(r.get("herald_id"))
        if ids <= seen:
            return time.monotonic() - started
        if job.poll() is not None:
            raise RuntimeError("the delivery job died")
        if time.monotonic() - started > timeout_s:
            return None
        time.sleep(0.5)


def summary(values: list[int]) -> dict:
    return {"n": len(values), "p50_ms": percentile(values, 0.5),
            "p99_ms": percentile(values, 0.99), "max_ms": max(values) if values else None}


def scenario(base, *, adaptive: bool, burst: int = 3000, rate: float = 200, fault_s: float = 10,
             after_s: float = 10, cap: int = 8, latency_ms: float = 10, warmup_s: float = 5,
             wait_s: float = 300) -> dict:
    """One run: warm-up, ``fault_s`` with the cap on, ``after_s`` with it off; the figures."""
    run = uuid.uuid4().hex[:8]
    topics = {f"topic_{role}": f"cf{run}.{name}" for role, name in base.topics().items()}
    load_before = os.getloadavg()[0]
    with Mock("fcm", latency_ms=latency_ms) as mock:
        settings = base.replace(consumer_group=f"cf-{run}", flink_rest_port=0, fcm_url=mock.url,
                                delivery_classes="critical", dedup_ttl_ms=BENCH_DEDUP_TTL_MS,
                                ratelimit_namespace=f"rl{run}",
                                provider_concurrency_adaptive=adaptive,
                                flink_checkpoint_dir=f"/tmp/herald-bench-ck/{run}", **topics)
        Stack(settings).create_topics(list(settings.topics().values()))
        job = start_system([sys.executable, "-m", "jobs.delivery"], settings,
                           f"/tmp/herald-connection-faults-{run}.log")
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=2,
                                 acks=1)
        try:
            warm = paced(producer, settings.topic_critical, run, "warm", rate, warmup_s)
            if wait_all(mock, set(warm), job, 180) is None:
                raise RuntimeError("the warm-up did not arrive")
            mock.configure(max_client_connections=cap)
            fault_from = now_ms()
            during = paced(producer, settings.topic_critical, run, "fault", rate, fault_s, burst)
            mock.configure(max_client_connections=None)
            fault_to = now_ms()
            after = paced(producer, settings.topic_critical, run, "after", rate, after_s)
            waited = wait_all(mock, set(during) | set(after), job, wait_s)
        finally:
            producer.close()
            stop_system(job)
        records = mock.records()
        mock_stats = mock.stats()
    events = statuses(settings)
    return analyse(records, events, during, after, fault_from, fault_to, rate, {
        "variant": "adaptive" if adaptive else "fixed", "run": run, "burst": burst, "rate": rate,
        "fault_s": fault_s, "after_s": after_s, "cap": cap, "mock_latency_ms": latency_ms,
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "drained_in_s": None if waited is None else round(waited, 1),
        "connections_reset": mock_stats["connections_reset"]})


def analyse(records, events, during, after, fault_from, fault_to, rate, out: dict) -> dict:
    fault_ids = set(during)
    ids = fault_ids | set(after)
    accepted = Counter(r["herald_id"] for r in records
                       if r.get("result") == "accepted" and r["herald_id"] in ids)
    latency = {r["herald_id"]: r["t_ms"] - int(r["request"]["data"]["c"]) for r in records
               if r.get("result") == "accepted" and r["herald_id"] in ids}
    # Time to full rate: from the fault's end to the first second in which the mock accepts
    # at least 90 % of the produce rate with every notification of the fault accepted.
    last_fault = max((r["t_ms"] for r in records if r["herald_id"] in fault_ids
                      and r.get("result") == "accepted"), default=None)
    per_second = Counter((r["t_ms"] - fault_to) // 1000 for r in records
                         if r.get("result") == "accepted" and r["herald_id"] in ids
                         and r["t_ms"] >= fault_to)
    full = None
    if last_fault is not None and len([i for i in during if i in accepted]) == len(during):
        drained = max(0, (last_fault - fault_to) // 1000)
        full = next((s for s in sorted(per_second) if s >= drained
                     and per_second[s] >= 0.9 * rate), None)
    by_state = Counter(e["state"] for e in events if e.get("id") in ids)
    out.update({
        "notifications": len(ids),
        "critical_during_fault": summary([latency[i] for i in during if i in latency]),
        "critical_after_fault": summary([latency[i] for i in after if i in latency]),
        "waited_over_10s": sum(1 for v in latency.values() if v > 10_000),
        "time_to_full_rate_s": None if full is None else full + 1,
        "retrying_events": by_state.get("retrying", 0),
        "states": dict(by_state),
        "lost": len(ids - set(accepted)),
        "duplicated": sum(1 for n in accepted.values() if n > 1),
        "accepted_per_second_after_fault_end": [per_second.get(s, 0) for s in range(0, 15)],
        "fault_window_ms": [fault_from, fault_to],
    })
    return out


def write(doc: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "connection_faults.json").write_text(json.dumps(doc, indent=2) + "\n")
    r0 = doc["runs"][0]
    rows = []
    for r in doc["runs"]:
        d, a = r["critical_during_fault"], r["critical_after_fault"]
        rows.append(
            f"| {r['variant']} | {r['notifications']:,} | {d['p50_ms']} / {d['p99_ms']} | "
            f"{a['p50_ms']} / {a['p99_ms']} | {r['time_to_full_rate_s']} | "
            f"{r['retrying_events']:,} | {r['waited_over_10s']:,} | {r['lost']} | "
            f"{r['duplicated']} | {r['connections_reset']:,} | {r['load_before']} / "
            f"{r['load_after']} |")
    text = "\n".join([
        "# Connection faults: a provider that resets connections beyond a cap per client", "",
        f"Measured {doc['machine']['when']} on {doc['machine']['cpus']} cores shared with Kafka,"
        " Redis, the mock, the producer and other work (load average per run in the table):"
        " the delivery job (MiniCluster, critical class) against one FCM mock at"
        f" {r0['mock_latency_ms']:g} ms. The mock resets every connection beyond {r0['cap']}"
        f" per client (`max_client_connections`) for {r0['fault_s']:g} s: at its start a burst"
        f" of {r0['burst']:,} critical notifications lands on the topic, then {r0['rate']:g}/s"
        f" until its end and {r0['after_s']:g} s more with the cap off, after an unmeasured"
        " warm-up. `adaptive`: the code as it is; `fixed`:"
        " `provider_concurrency_adaptive=false` (the fixed pool of `provider_max_in_flight`"
        " connections and connection resets counted as provider faults, as before issue"
        " 15.2), in the same invocation. Latency = mock receive time − created_at, by the"
        " phase a notification was produced in. Time to full rate: from the cap's end to the"
        " end of the first second in which the mock accepted ≥ 90 % of the produce rate with"
        " the fault's notifications all accepted. Lost: never accepted by the end of the wait"
        " (drained in, s); duplicated: accepted more than once. `python bench/"
        "connection_faults.py` reproduces it.", "",
        "| variant | notifications | p50 / p99 ms during the fault | p50 / p99 ms after |"
        " time to full rate s | retrying events | waited > 10 s | lost | duplicated |"
        " connections reset | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        "Accepted per second from the cap's end (JSON `accepted_per_second_after_fault_end`):",
        *[f"- {r['variant']}: {r['accepted_per_second_after_fault_end']}"
          for r in doc["runs"]], ""])
    write_markdown(RESULTS / "connection_faults.md", text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--fault", type=float, default=10)
    parser.add_argument("--after", type=float, default=10)
    parser.add_argument("--cap", type=int, default=8)
    parser.add_argument("--variants", default="adaptive,fixed")
    parser.add_argument("--wait", type=float, default=300,
                        help="longest wait for every notification after the last is produced")
    args = parser.parse_args(argv)
    base = load_settings()
    Stack(base).up(mocks=False)
    doc = {"machine": machine(), "runs": []}
    for variant in args.variants.split(","):
        doc["runs"].append(scenario(base, adaptive=variant == "adaptive", burst=args.burst,
                                    rate=args.rate,
                                    fault_s=args.fault, after_s=args.after, cap=args.cap,
                                    wait_s=args.wait))
        write(doc)
        print(json.dumps(doc["runs"][-1], indent=2), flush=True)


if __name__ == "__main__":
    main()
