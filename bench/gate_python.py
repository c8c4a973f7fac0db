"""The gate operator's Python per notification, outside Flink: what the interpreter costs
before the JVM, PEMJA and the other threads of a job are added.

`operators.gate.GateFunction` runs as in the job (the same `open`, batches, parts, call stage,
Redis claims, markers and tokens) on stand-ins for Flink's state and timer service (plain
dicts), fed with batches of load-generator notifications (1M users, Zipf s=0.6, 300–600
bytes, FCM push) as the SQL window hands them over. Per transport (``null``: answered
in-process; ``http``: the lean client to the FCM mock answering at once) and batch size, in
turn: this process's user and system CPU per notification (`getrusage`), and wall time.
Comparing the two transports gives the HTTP path's own cost per call; comparing with
`delivery_throughput.md`'s table by part gives what the job adds around the same Python.

    python bench/gate_python.py [--n 60000] [--batches 240,2000] [--repeat 2]
Writes bench/results/gate_python.{json,md}; needs Redis (the stack is started if it is down).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench.common import BENCH_DEDUP_TTL_MS, RESULTS, Mock, machine, write_markdown  # noqa: E402
from bench.loadgen import TENANTS, RecordFactory  # noqa: E402
from herald.settings import load_settings  # noqa: E402
from herald_stack.components import Stack  # noqa: E402

TRANSPORTS = ("null", "http")
LANE_KEY = 7  # any lane: one GateFunction holds one lane's users here


# ---------------------------------------------------------------- stand-ins for Flink

class _MapState(dict):
    def get(self, key):  # MapState.get: None when absent
        return dict.get(self, key)

    def put_all(self, entries: dict) -> None:
        self.update(entries)

    def remove(self, key) -> None:
        self.pop(key, None)


class _ValueState:
    def __init__(self):
        self._value = None

    def value(self):
        return self._value

    def update(self, value) -> None:
        self._value = value


class _Metric:
    def inc(self, n: int = 1) -> None:
        pass

    def update(self, value) -> None:
        pass


class _MetricGroup:
    def add_group(self, *_):
        return self

    def counter(self, _name):
        return _Metric()

    def distribution(self, _name):
        return _Metric()


class _RuntimeContext:
    def get_map_state(self, _descriptor):
        return _MapState()

    def get_state(self, _descriptor):
        return _ValueState()

    def get_metrics_group(self):
        return _MetricGroup()


class _Timers:
    def register_processing_time_timer(self, _t: int) -> None:
        pass

    def delete_processing_time_timer(self, _t: int) -> None:
        pass


class _Context:
    def get_current_key(self) -> int:
        return LANE_KEY

    def timer_service(self) -> _Timers:
        return _Timers()


class _Row:
    def __init__(self, batch: str, shard: int = 0):
        self.batch, self.shard = batch, shard  # the window's batch and its lane


# ---------------------------------------------------------------- one run

def batches(n: int, size: int, run: str, tenants: int = 0) -> list[_Row]:
    """``n`` notifications as the SQL window's JSON batches of ``size`` (sql/batches.sql), from
    ``tenants`` tenants (0: the load generator's four)."""
    factory = RecordFactory(run=run, seed=1, tenants=tenants)
    ranks, sizes, draws = factory.chunk(n)
    now = int(time.time() * 1000)
    records = []
    for i in range(n):
        key, value = factory.record(i, int(ranks[i]), int(sizes[i]), draws[i], now)
        records.append({"p": 0, "o": i, "k": key.decode(), "v": value.decode()})
    return [_Row(orjson.dumps(records[i:i + size]).decode()) for i in range(0, n, size)]


def redis_scripts(settings) -> int:
    """Script calls (EVALSHA and EVAL) the Redis server has run so far: the gate's round trips
    that run Lua (claims, markers, token takes)."""
    import redis
    client = redis.Redis(host=settings.redis_host, port=settings.redis_port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))


def one_run(base, transport: str, n: int, size: int, tenants: int = 0) -> dict:
    from operators.gate import GateFunction
    with (Mock("fcm", latency_ms=0) if transport == "http" else nullcontext()) as mock:
        settings = base.replace(provider_transport=transport, dedup_ttl_ms=BENCH_DEDUP_TTL_MS,
                                quota_fcm_rate_per_s=1_000_000.0, quota_fcm_burst=100_000.0,
                                **({"fcm_url": mock.url} if mock else {}))
        gate = GateFunction(settings, "critical")
        gate.open(_RuntimeContext())
        rows, ctx, out = batches(n, size, uuid.uuid4().hex[:8], tenants), _Context(), 0
        scripts_before = redis_scripts(settings)
        try:
            before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for row in rows:
                for _ in gate.process_element(row, ctx):
                    out += 1
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_SELF)
            scripts = redis_scripts(settings) - scripts_before
        finally:
            gate.close()
        accepted = mock.stats()["accepted"] if mock else None
    user_us = 1e6 * (after.ru_utime - before.ru_utime) / n
    sys_us = 1e6 * (after.ru_stime - before.ru_stime) / n
    result = {"transport": transport, "batch": size, "tenants": tenants or len(TENANTS),
              "n": n, "rows_out": out, "redis_scripts_per_1000": round(1000 * scripts / n, 1),
              "accepted_at_mock": accepted, "user_us": round(user_us, 1),
              "sys_us": round(sys_us, 1), "cpu_us": round(user_us + sys_us, 1),
              "wall_us": round(1e6 * wall / n, 1),
              "voluntary_switches": after.ru_nvcsw - before.ru_nvcsw}
    print(json.dumps(result), flush=True)
    return result


# ---------------------------------------------------------------- results

def summary(runs: list[dict]) -> list[dict]:
    """Per batch size: the best (lowest CPU) run of each transport, and the HTTP path's cost
    per call as the difference."""
    def kind(r):  # runs written before the tenants column had the load generator's
        return r["batch"], r.get("tenants", len(TENANTS))

    out = []
    for size, tenants in sorted({kind(r) for r in runs}):
        best = {t: min((r for r in runs if kind(r) == (size, tenants) and r["transport"] == t),
                       key=lambda r: r["cpu_us"], default=None) for t in TRANSPORTS}
        if best["null"] and best["http"]:
            out.append({"batch": size, "tenants": tenants, "null_cpu_us": best["null"]["cpu_us"],
                        "http_cpu_us": best["http"]["cpu_us"],
                        "http_path_us": round(best["http"]["cpu_us"] - best["null"]["cpu_us"], 1),
                        "http_path_sys_us": round(best["http"]["sys_us"] - best["null"]["sys_us"],
                                                  1)})
    return out


def write(runs: list[dict], at_start: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"machine": at_start, "runs": runs, "summary": summary(runs)}
    (RESULTS / "gate_python.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# The gate's Python per notification, outside Flink", "",
             f"Measured {at_start['when']} (load 1m at the start {at_start['loadavg_1m_at_start']},"
             f" {at_start['cpus']} cores shared with Redis and the mock): `GateFunction` as in the"
             " job, on dict stand-ins for Flink's state and timers, fed with the SQL window's JSON"
             " batches of load-generator notifications; this process's CPU per notification."
             " `python bench/gate_python.py` reproduces it.", "",
             "| transport | batch | tenants | user µs | system µs | CPU µs | wall µs |"
             " Redis scripts per 1,000 | exact at the mock |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        exact = "-" if r["accepted_at_mock"] is None else (
            "yes" if r["accepted_at_mock"] == r["n"] else f"NO ({r['accepted_at_mock']})")
        lines.append(f"| {r['transport']} | {r['batch']:,} | {r.get('tenants', len(TENANTS))} |"
                     f" {r['user_us']} | {r['sys_us']} | **{r['cpu_us']}** | {r['wall_us']} |"
                     f" {r.get('redis_scripts_per_1000', '-')} | {exact} |")
    lines += ["", "The HTTP path per call (best run of each transport, http − null):", "",
              "| batch | tenants | null µs | http µs | HTTP path µs (of which system) |",
              "|---|---|---|---|---|"]
    for s in doc["summary"]:
        lines.append(f"| {s['batch']:,} | {s.get('tenants', len(TENANTS))} |"
                     f" {s['null_cpu_us']} | {s['http_cpu_us']} | **{s['http_path_us']}**"
                     f" ({s['http_path_sys_us']}) |")
    write_markdown(RESULTS / "gate_python.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--batches", default="240,2000",
                        help="batch sizes (240: the job's at ≈ 6k/s and a 40 ms window)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of every run, in turn")
    parser.add_argument("--tenants", default="4",
                        help="tenants the notifications come from, e.g. 4,64 (a part's users"
                             " spread over them)")
    args = parser.parse_args(argv)
    base = load_settings()
    Stack(base).up(mocks=False)
    at_start, runs = machine(), []
    for _ in range(args.repeat):
        for size in [int(b) for b in args.batches.split(",")]:
            for tenants in [int(t) for t in args.tenants.split(",")]:
                for transport in TRANSPORTS:
                    runs.append(one_run(base, transport, args.n, size,
                                        0 if tenants == len(TENANTS) else tenants))
                    write(runs, at_start)


if __name__ == "__main__":
    main()
