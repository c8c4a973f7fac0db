"""Scale-out of the delivery job on the standalone Flink cluster (issue 17): parallelism 1 on
one TaskManager against parallelism 2 on two, each TaskManager its own JVM and Python
interpreter, and the CPU each part of the machine spends per notification.

The job is `jobs/delivery.py` with every semantic on, submitted with `flink run -py`
(`Stack.submit`, as tests/integration/test_rescale.py does) to a standalone cluster of the
stack's own recipe (`Stack.start_flink_cluster`, a cluster named `scaleout` on free ports, so a
test session's cluster on 8081 is left alone), started fresh for each run and stopped after it:
P TaskManagers for parallelism P. A TaskManager has one slot per slot sharing group of the job
(the sources and windows; the class's gate, calls and sinks): the job cannot run on a single
slot, so "one slot" here is one subtask of every part per TaskManager; the job delivers the
critical class only (`HERALD_DELIVERY_CLASSES=critical`, the one-job-per-class deployment
docs/SIZING.md sizes). Input topics have at least 4 partitions, so with the default 2 gate
lanes both gate subtasks at parallelism 2 get partitions; which TaskManager each gate subtask
ran on and how many batches it read (REST, `tests/integration/jobs.subtask_records`) are
recorded, and a run whose gates did not take one TaskManager each says so.

Two provider settings, as bench/delivery_throughput.py runs them:
* null provider: the null transport (every call answered in-process), the FCM quota lifted; a
  backlog of N produced first, the job started on the full topic, measured on the status topic;
* FCM mock at 10 ms (``--providers 10``; any latency in ms): one notification through (the
  job's first call), then N produced flat out (librdkafka); measured at the mock.
The FCM quota is lifted in the mock runs too (Herald's default 10,000/s would cap a
parallelism-2 run) and each run has a rate-limiter namespace of its own.

Per run: notifications (calls) per second at the mock or the status topic (first to last, and
after the first quarter), exactly once at the mock (`bench.common.exactness`; the null run:
each id delivered once), per-user order, and the CPU seconds after the first quarter (start-up
and most of the JIT behind) of each part: each TaskManager's process tree (and by thread, as
`bench.common.tree_cpu_by_component` names them), the JobManager, the Kafka broker and
redis-server (the whole processes: `stack_cpu_seconds`), the mock, the load generator (its own
process; its whole production, a backlog being produced in the run's first seconds), this
script (status reader, polling) and the rest of the machine (/proc/stat minus all of those).
The Markdown then works out, from the measured CPU per notification of each part, what a third
core would add: an extrapolation, not a measurement.

    python bench/scaleout.py [--n 200000] [--parallelisms 1,2] [--providers null,10]
                             [--repeat 1] [--dry] [--render]
Writes bench/results/scaleout.{json,md} (the Markdown's ``## Reading`` is kept). Each run's
topics are dropped after it. The shared stack's Kafka and Redis are started if down and left
as they are; the standalone cluster is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import requests  # noqa: E402

from bench.common import (BENCH_DEDUP_TTL_MS, CLK_TCK, RESULTS, Mock, bench_settings,  # noqa: E402
                          cpu_between, drop_topics, exactness, machine, per_user_order_ok,
                          stack_cpu_seconds, tree_cpu_by_component, tree_cpu_seconds,
                          tree_tasks, write_markdown)
from bench.delivery_throughput import NULL_QUOTA, note, produce  # noqa: E402
from herald.settings import settings_env  # noqa: E402
from herald_stack.components import Stack  # noqa: E402
from herald_stack.processes import free_port  # noqa: E402
from tests.integration.jobs import subtask_records, wait_for  # noqa: E402

NAME = "scaleout"
CLUSTER = "scaleout"       # the standalone cluster's process names (pid files, log dir)
MIN_PARTITIONS = 4         # both gate subtasks get lanes at parallelism 2 (2 lanes)
SHARED = ("jobmanager", "kafka", "redis", "mock", "load generator")


# ------------------------------------------------------------------ CPU readings

def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def threads_named(pid: int, prefix: str) -> int:
    """Threads of a process tree whose (15-character) name starts with ``prefix``."""
    count = 0
    for task in tree_tasks(pid):
        try:
            with open(f"{task}/comm") as fh:
                count += fh.read().startswith(prefix)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return count


class Readings:
    """CPU seconds so far of every part of the machine a run involves."""

    def __init__(self, stack: Stack, settings, mock: Mock | None):
        self.stack, self.settings, self.mock = stack, settings, mock
        self.loadgen_pid: int | None = None
        self.loadgen_final: float | None = None  # its own total, sent when it is done

    def take(self) -> dict:
        tms = [tree_cpu_by_component(tm.pid()) if tm.pid() else {}
               for tm in self.stack.taskmanagers]
        jm = self.stack.jobmanager.pid()
        loadgen = self.loadgen_final
        if loadgen is None and self.loadgen_pid:
            loadgen = tree_cpu_seconds(self.loadgen_pid)
        return {"t": time.monotonic(), "taskmanagers": tms,
                "jobmanager": tree_cpu_seconds(jm) if jm else 0.0,
                **stack_cpu_seconds(self.settings),
                "mock": self.mock.cpu() if self.mock else 0.0,
                "load generator": loadgen or 0.0, "bench": own_cpu_seconds(),
                "machine": machine_busy_seconds()}


def steady_cpu(at_quarter: dict, at_end: dict) -> dict:
    """CPU seconds per part between two readings; `unattributed`: the machine's busy time
    that none of the parts account for (other processes, the kernel's own threads)."""
    tms = [cpu_between(q, e) for q, e in zip(at_quarter["taskmanagers"], at_end["taskmanagers"])]
    parts = {f"taskmanager {i + 1}": round(sum(c.values()), 2) for i, c in enumerate(tms)}
    for key in (*SHARED, "bench"):
        parts[key] = round(max(0.0, at_end[key] - at_quarter[key]), 2)
    machine_s = at_end["machine"] - at_quarter["machine"]
    parts["unattributed"] = round(max(0.0, machine_s - sum(parts.values())), 2)
    return {"steady_wall_s": round(at_end["t"] - at_quarter["t"], 2),
            "steady_machine_cpu_s": round(machine_s, 2), "steady_cpu_s": parts,
            "taskmanager_components": tms}


# ------------------------------------------------------------------ the load generator

def _loadgen(conn, settings, run: str, n: int, users: int) -> None:
    """bench/delivery_throughput.produce in a process of its own (its CPU is the load
    generator's); sends back (its total CPU, that of the production alone)."""
    before = own_cpu_seconds()
    produce(settings, run, n, users, None)
    after = own_cpu_seconds()
    conn.send((after, after - before))
    conn.close()


class LoadGen:
    def __init__(self, settings, run: str, n: int, users: int):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_loadgen, args=(child, settings, run, n, users),
                                daemon=True)
        self.proc.start()
        child.close()
        self.total = self.production = None

    def poll(self) -> bool:
        """True once it has produced everything (its CPU figures then known)."""
        if self.total is None and self.conn.poll():
            self.total, self.production = self.conn.recv()
        return self.total is not None

    def join(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.poll() and time.monotonic() < deadline and self.proc.is_alive():
            time.sleep(0.05)
        self.poll()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
        if self.total is None:
            raise RuntimeError("the load generator did not finish")


# ------------------------------------------------------------------ the cluster

def start_cluster(base, taskmanagers: int, slots: int) -> Stack:
    """A fresh standalone cluster of ``taskmanagers`` TaskManagers of ``slots`` slots each,
    named CLUSTER, on ports of its own (a test session's cluster is left alone)."""
    stack = Stack(base.replace(flink_rest_port=free_port()), cluster=CLUSTER,
                  cluster_rpc_port=free_port())
    for i in range(4):  # a cluster this bench left behind (interrupted): by its pid files
        stack.taskmanager_at(i)
    stack.stop_flink_cluster()
    stack.taskmanagers = stack.taskmanagers[:1]
    stack.start_flink_cluster(taskmanagers=taskmanagers, slots=slots)
    return stack


def rest(stack: Stack, path: str):
    answer = requests.get(f"http://{stack.flink_address()}{path}", timeout=10)
    answer.raise_for_status()
    return answer.json()


def gate_placement(stack: Stack, job_id: str, operator: str) -> list[dict]:
    """Each subtask of the gate: the TaskManager it ran on and the batches it read."""
    vertex = next(v for v in rest(stack, f"/jobs/{job_id}")["vertices"] if operator in v["name"])
    subtasks = rest(stack, f"/jobs/{job_id}/vertices/{vertex['id']}").get("subtasks", [])
    return [{"subtask": s.get("subtask", i),
             "taskmanager": s.get("taskmanager-id") or s.get("endpoint"),
             "batches": s.get("metrics", {}).get("read-records", 0)}  # as subtask_records reads
            for i, s in enumerate(subtasks)]


def cancel(stack: Stack, job_id: str) -> None:
    try:
        stack.cancel(job_id)
        wait_for(lambda: rest(stack, f"/jobs/{job_id}")["state"] in
                 ("CANCELED", "FAILED", "FINISHED"), "the job to end", 60, 0.5)
    except Exception as exc:  # noqa: BLE001 - the cluster is stopped after the run anyway
        print(f"cancel {job_id}: {exc}", file=sys.stderr)


def job_failures(stack: Stack, job_id: str) -> list[str]:
    """The first failures Flink recorded for the job (each one a restart); [] if none or
    the REST API did not answer."""
    try:
        history = rest(stack, f"/jobs/{job_id}/exceptions").get("exceptionHistory", {})
    except (requests.RequestException, ValueError):
        return []
    return [e.get("exceptionName", "?") for e in history.get("entries", [])[:3]]


# ------------------------------------------------------------------ one run

def run_settings(base, run: str, parallelism: int, classes: str, **more):
    topics = {f"topic_{role}": f"s{run}.{name}" for role, name in base.topics().items()}
    return base.replace(consumer_group=f"scaleout-{run}", flink_rest_port=0,
                        flink_parallelism=parallelism, delivery_classes=classes,
                        kafka_partitions=max(MIN_PARTITIONS, base.kafka_partitions),
                        dedup_ttl_ms=BENCH_DEDUP_TTL_MS, ratelimit_namespace=f"herald:rl:s{run}",
                        quota_fcm_rate_per_s=NULL_QUOTA, quota_fcm_burst=NULL_QUOTA / 10,
                        flink_checkpoint_dir=f"/tmp/herald-bench-ck/{run}", **topics, **more)


def one_run(base, parallelism: int, provider: str, n: int, users: int, classes: str,
            timeout_s: float) -> dict:
    """One measurement on a cluster of its own (started, then stopped)."""
    run = uuid.uuid4().hex[:8]
    slots = 1 + len([c for c in classes.split(",") if c.strip()])
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_before = [round(x, 2) for x in os.getloadavg()]
    stack = start_cluster(base, parallelism, slots)
    try:
        if provider == "null":
            result = null_run(stack, base, run, parallelism, n, users, classes, timeout_s)
        else:
            result = mock_run(stack, base, run, parallelism, int(provider), n, users, classes,
                              timeout_s)
    finally:
        stack.stop_flink_cluster()
        shutil.rmtree(f"/tmp/herald-bench-ck/{run}", ignore_errors=True)
    gates = result.get("gate_subtasks", [])
    tms = {g["taskmanager"] for g in gates}
    result.update(
        run=run, parallelism=parallelism, taskmanagers=parallelism, slots_per_taskmanager=slots,
        classes=classes, started_at=started_at,
        ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        load_before=load_before, load_after=[round(x, 2) for x in os.getloadavg()],
        every_gate_took_batches=bool(gates) and all((g["batches"] or 0) > 0 for g in gates),
        one_gate_per_taskmanager=len(gates) == parallelism and len(tms) == parallelism
        and all(c == 1 for c in result.get("gate_threads_per_taskmanager", [])))
    return result


def _common(settings, readings: Readings, at_quarter: dict | None, at_end: dict,
            stack: Stack, job_id: str, loadgen: LoadGen) -> dict:
    operator = f"gate-{settings.delivery_classes.split(',')[0].strip()}"
    try:  # the REST API's metrics lag by up to metrics.fetcher.update-interval (10 s)
        wait_for(lambda: (lambda b: len(b) == settings.flink_parallelism and min(b) > 0)(
            subtask_records(f"http://{stack.flink_address()}", job_id, operator)),
            "every gate subtask's batches in the REST metrics", 25, 1)
    except AssertionError:
        pass  # recorded as they are: a subtask without batches shows 0
    try:
        gates = gate_placement(stack, job_id, operator)
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        gates = [{"error": f"{type(exc).__name__}: {exc}"}]
    out = {"partitions": settings.kafka_partitions, "gate_lanes": settings.gate_lanes,
           "critical_window_ms": settings.critical_batch_window_ms
           * -(-(settings.gate_lanes or settings.flink_parallelism) // settings.flink_parallelism),
           "gate_subtasks": gates,
           "gate_threads_per_taskmanager": [threads_named(tm.pid(), "gate-") if tm.pid() else 0
                                            for tm in stack.taskmanagers],
           "loadgen_production_cpu_s": round(loadgen.production, 2),
           "job_restarts": job_failures(stack, job_id)}
    if at_quarter is not None:
        out.update(steady_cpu(at_quarter, at_end))
    return out


def rate_after(times: list[int], quarter: int) -> tuple[int, int | None]:
    """(first to last, after the first ``quarter``) per second, from sorted ms times."""
    whole = round((len(times) - 1) / ((times[-1] - times[0]) / 1000)) \
        if len(times) > 1 and times[-1] > times[0] else 0
    tail = times[quarter:]
    after = round((len(tail) - 1) / ((tail[-1] - tail[0]) / 1000)) \
        if len(tail) > 1 and tail[-1] > tail[0] else None
    return whole, after


def mock_run(stack: Stack, base, run: str, parallelism: int, latency_ms: int, n: int,
             users: int, classes: str, timeout_s: float) -> dict:
    """As delivery_throughput.one_run's backlog: one notification through (the job's first
    call), then ``n`` produced flat out; measured at the mock."""
    with Mock("fcm", latency_ms=latency_ms) as mock:
        settings = run_settings(base, run, parallelism, classes, fcm_url=mock.url)
        Stack(settings).create_topics(list(settings.topics().values()))
        readings = Readings(stack, settings, mock)
        job_id = None
        try:
            produce(settings, f"{run}w", 1, users, None)
            job_id = stack.submit("jobs/delivery.py", settings_env(settings))
            wait_for(lambda: mock.stats()["accepted"] >= 1 or job_failures(stack, job_id),
                     "the job's first call", 300, 0.2)
            if mock.stats()["accepted"] < 1:
                raise RuntimeError(f"the job failed: {job_failures(stack, job_id)}")
            mock.reset()
            started = time.monotonic()
            loadgen = LoadGen(settings, run, n, users)
            readings.loadgen_pid = loadgen.proc.pid
            at_quarter = None
            while (got := mock.stats()["accepted"]) < n and time.monotonic() - started < timeout_s:
                if loadgen.poll():
                    readings.loadgen_final = loadgen.total
                if at_quarter is None and got >= n // 4:
                    at_quarter = readings.take()
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            loadgen.join()
            readings.loadgen_final = loadgen.total
            at_end = readings.take()
            common = _common(settings, readings, at_quarter, at_end, stack, job_id, loadgen)
        finally:
            if job_id:
                cancel(stack, job_id)
            drop_topics(settings.kafka_bootstrap, f"s{run}.")
        records = mock.records()
    accepted = [r for r in records if r.get("result") == "accepted"]
    times = sorted(r["t_ms"] for r in accepted)
    whole, after = rate_after(times, n // 4)
    done = len(accepted)
    return {"provider": f"{latency_ms} ms mock", "latency_ms": latency_ms, "n": n, "users": users,
            "done": done, "rate_first_to_last": whole, "rate_after_quarter": after,
            "rate_from_first_produce": round(done / elapsed) if elapsed else None,
            "elapsed_s": round(elapsed, 1), "steady_from": n // 4 if at_quarter else None,
            "steady_n": done - n // 4 if at_quarter else None,
            "per_user_order": per_user_order_ok(records), **exactness(records, n), **common}


def null_run(stack: Stack, base, run: str, parallelism: int, n: int, users: int, classes: str,
             timeout_s: float) -> dict:
    """As delivery_throughput.null_run: the null transport, the FCM quota lifted, a backlog of
    ``n`` first, the job started on the full topic, measured on the status topic (read here
    with librdkafka, a few µs per status, so the reader takes little from the two cores)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    settings = run_settings(base, run, parallelism, classes, provider_transport="null")
    Stack(settings).create_topics(list(settings.topics().values()))
    readings = Readings(stack, settings, None)
    job_id = consumer = None
    try:
        loadgen = LoadGen(settings, run, n, users)
        loadgen.join(600)
        readings.loadgen_final = loadgen.total
        consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                             "group.id": f"scaleout-reader-{run}", "enable.auto.commit": False})
        consumer.assign([TopicPartition(settings.topic_status, p, OFFSET_BEGINNING)
                         for p in range(settings.kafka_partitions)])
        job_id = stack.submit("jobs/delivery.py", settings_env(settings))
        delivered: dict[str, int] = {}  # id → its status time
        repeats = other = 0
        at_first = at_quarter = None
        started = time.monotonic()
        while len(delivered) < n and time.monotonic() - started < timeout_s:
            for msg in consumer.consume(num_messages=2000, timeout=0.5):
                if msg.error():
                    continue
                status = orjson.loads(msg.value())
                if status["state"] != "delivered":
                    other += 1
                elif status["id"] in delivered:
                    repeats += 1
                else:
                    delivered[status["id"]] = status["at"]
                    if at_first is None:
                        at_first = readings.take()
            if at_quarter is None and len(delivered) >= n // 4:
                at_quarter = readings.take()
            if not delivered and time.monotonic() - started > 30 and job_failures(stack, job_id):
                raise RuntimeError(f"the job failed: {job_failures(stack, job_id)}")
        elapsed = time.monotonic() - started
        at_end = readings.take()
        common = _common(settings, readings, at_quarter, at_end, stack, job_id, loadgen)
    finally:
        if consumer is not None:
            consumer.close()
        if job_id:
            cancel(stack, job_id)
        drop_topics(settings.kafka_bootstrap, f"s{run}.")
    times = sorted(delivered.values())
    whole, after = rate_after(times, n // 4)
    # Per-user order by the status times (ms): no user's later notification before an earlier.
    last: dict[str, tuple[int, int]] = {}
    in_order = True
    for key, at in sorted(delivered.items(), key=lambda kv: int(kv[0].rsplit("-", 1)[1])):
        i = int(key.rsplit("-", 1)[1])
        user = f"u{(i * 7919) % users}"
        if user in last and at < last[user][1]:
            in_order = False
            break
        last[user] = (i, at)
    done = len(delivered)
    return {"provider": "null provider", "latency_ms": None, "n": n, "users": users,
            "done": done, "rate_first_to_last": whole, "rate_after_quarter": after,
            "rate_from_first_produce": None, "elapsed_s": round(elapsed, 1),
            "steady_from": n // 4 if at_quarter else None,
            "steady_n": done - n // 4 if at_quarter else None,
            "job_cpu_from_first_status_s": round(sum(
                sum(cpu_between(f, e).values()) for f, e in
                zip(at_first["taskmanagers"], at_end["taskmanagers"])), 1) if at_first else None,
            "per_user_order": in_order, "expected": n, "accepted": done, "unique_ids": done,
            "repeated_status_events": repeats, "other_status_events": other,
            "exact": done == n, **common}


# ------------------------------------------------------------------ the Markdown

def us_per(r: dict) -> dict[str, float]:
    """µs per notification of each part after the first quarter; the load generator's over
    its whole production (a backlog is produced in the run's first seconds)."""
    k = max(r.get("steady_n") or 0, 1)
    out = {p: 1e6 * s / k for p, s in r["steady_cpu_s"].items()}
    out["load generator"] = 1e6 * r["loadgen_production_cpu_s"] / r["n"]
    return out


def gate_share(r: dict, i: int) -> float:
    """How much of a core the gate threads of TaskManager ``i`` took after the first quarter."""
    tm = r["taskmanager_components"][i] if i < len(r["taskmanager_components"]) else {}
    return sum(v for c, v in tm.items() if c.startswith("gate")) / r["steady_wall_s"]


def tm_us(u: dict) -> float:
    return sum(v for p, v in u.items() if p.startswith("taskmanager"))


def label(r: dict) -> str:
    return f"{r['provider']}, P{r['parallelism']}"


def placement(r: dict) -> str:
    gates = r.get("gate_subtasks") or []
    if any("error" in g for g in gates):
        return "?"
    names = {tm: f"TM{i + 1}" for i, tm in enumerate(dict.fromkeys(g["taskmanager"] for g in gates))}
    cells = [f"{g['batches']:,} ({names[g['taskmanager']]})" for g in gates]
    flag = "" if r.get("one_gate_per_taskmanager") else " **not one per TM**"
    return " / ".join(cells) + flag


def third_core(results: list[dict]) -> list[str]:
    """Per provider, from the runs at parallelism 1 and 2 (means over repeats): what the
    second TaskManager added, and what a third core would add by the measured CPU per
    notification of each part."""
    lines = ["", "## What a third core would add (extrapolated)", "",
             "Computed from the runs above (means over repeats), after each run's first quarter."
             " **An extrapolation from the measured CPU per notification of each part, not a"
             " measurement**: it assumes each part keeps its µs per notification on a third"
             " core and that something can use that core.", ""]
    any_line = False
    for provider in dict.fromkeys(r["provider"] for r in results):
        by_p = {}
        for p in (1, 2):
            runs = [r for r in results if r["provider"] == provider and r["parallelism"] == p
                    and r.get("steady_cpu_s") and r.get("rate_after_quarter")]
            if runs:
                us = [us_per(r) for r in runs]
                keys = set().union(*us)
                by_p[p] = {"rate": sum(r["rate_after_quarter"] for r in runs) / len(runs),
                           "us": {k: sum(u.get(k, 0) for u in us) / len(us) for k in keys},
                           "busy": sum(r["steady_machine_cpu_s"] / r["steady_wall_s"]
                                       for r in runs) / len(runs),
                           "gate_busy": [sum(gate_share(r, i) for r in runs) / len(runs)
                                         for i in range(p)]}
        if 2 not in by_p:
            continue
        any_line = True
        two = by_p[2]
        u = two["us"]
        c_tm = tm_us(u)
        c_shared = sum(u.get(k, 0) for k in SHARED)
        c_sys = c_tm + c_shared
        lines += [f"**{provider}.**", ""]
        if 1 in by_p:
            one = by_p[1]
            lines.append(
                f"- Measured shape: parallelism 1 {one['rate']:,.0f}/s, parallelism 2"
                f" {two['rate']:,.0f}/s (×{two['rate'] / one['rate']:.2f}); TaskManager CPU"
                f" {tm_us(one['us']):.0f} → {c_tm:.0f} µs per notification; the machine"
                f" {one['busy']:.2f} → {two['busy']:.2f} cores busy of 2; the gate threads"
                f" {', '.join(f'{g:.2f}' for g in one['gate_busy'])} →"
                f" {', '.join(f'{g:.2f}' for g in two['gate_busy'])} of a core each.")
        lines += [
            f"- At parallelism 2, per notification: TaskManagers {c_tm:.0f} µs"
            f" (**{1e6 / c_tm:,.0f} notifications per TaskManager CPU-second**); the shared parts"
            f" {c_shared:.0f} µs (" + ", ".join(f"{k} {u.get(k, 0):.0f}" for k in SHARED) + ");"
            f" this script {u.get('bench', 0):.0f}, the rest of the machine"
            f" {u.get('unattributed', 0):.0f}.",
            f"- A third core given to TaskManager work alone would add at most"
            f" {1e6 / c_tm:,.0f}/s if the shared parts cost nothing; on this machine each of"
            f" those notifications also takes {c_shared:.0f} µs of Kafka, Redis, the mock, the"
            f" load generator and the JobManager from the same cores, so a third core adds"
            f" **≈ {1e6 / c_sys:,.0f} notifications/s** (1 s / {c_sys:.0f} µs), of which"
            f" {100 * c_tm / c_sys:.0f} % of the core is TaskManager work and"
            f" {100 * c_shared / c_sys:.0f} % the shared parts': ≈ {two['rate'] + 1e6 / c_sys:,.0f}/s"
            " in all (this script and the rest of the machine left out: not part of a"
            " deployment)."]
        if two["busy"] < 1.85:
            lines.append(f"- The two cores were {two['busy']:.2f} busy at parallelism 2: not"
                         " CPU-bound, so the figure above is an upper bound (what holds the rate"
                         " is not the CPU).")
        lines.append("- Only as many gate subtasks as lanes can work: with `gate_lanes` = 2 a third"
                     " TaskManager gets no gate; using a third core for gates needs more lanes"
                     " (a job started with them: the lanes are fixed in its state).")
        lines.append("")
    return lines if any_line else []


def write(results: list[dict], measured: dict | None = None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {**(measured or {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "machine": machine(), "code": code_state()}), "runs": results}
    (RESULTS / f"{NAME}.json").write_text(json.dumps(doc, indent=2))
    code = doc.get("code") or {}
    lines = [
        "# Scale-out: the delivery job at parallelism 1 and 2 on the standalone cluster", "",
        f"Measured {doc['measured_at']} on {doc['machine'].get('cpus')} cores (commit"
        f" {code.get('commit', '?')[:12]}{', job code changed since' if code.get('dirty') else ''}):"
        " `jobs/delivery.py` (every semantic on, the critical class) submitted with `flink run"
        " -py` to a standalone cluster started fresh per run, one TaskManager (its own JVM and"
        " Python interpreter) per subtask, one slot per slot sharing group; Kafka, Redis, the"
        " FCM mock and the load generator on the same cores. Backlogs of N: the null provider's"
        " produced before the job starts and measured on the status topic, the mock's produced"
        " flat out after the job's first call and measured at the mock. CPU after each run's"
        " first quarter; Kafka's and Redis's is the whole broker's and server's. `python"
        " bench/scaleout.py` reproduces it.", "",
        "| run | notifications/s after ¼ (first→last) | exact, order | gate subtasks' batches"
        " (TaskManager) | cores busy | load before → after | when |",
        "|---|---|---|---|---|---|---|"]
    for r in results:
        busy = (f"{r['steady_machine_cpu_s'] / r['steady_wall_s']:.2f}"
                if r.get("steady_wall_s") else "–")
        lines.append(
            f"| {label(r)}, {r['n']:,} ({r['done']:,} done) | **{r['rate_after_quarter'] or 0:,}**"
            f" ({r['rate_first_to_last']:,}) | {'yes' if r['exact'] else 'NO'},"
            f" {'yes' if r['per_user_order'] else 'NO'} | {placement(r)} | {busy} |"
            f" {r['load_before'][0]} → {r['load_after'][0]} | {r['started_at']} |")
    runs = [r for r in results if r.get("steady_cpu_s")]
    if runs:
        found = {p for r in runs for p in us_per(r)}
        parts = [*sorted(p for p in found if p.startswith("taskmanager")),
                 *(p for p in (*SHARED, "bench", "unattributed") if p in found)]
        lines += ["", "CPU per notification of each part, µs (CPU seconds after the first quarter"
                  " in brackets; the load generator: its whole production ÷ N):", "",
                  "| part | " + " | ".join(label(r) for r in runs) + " |",
                  "|---|" + "---|" * len(runs)]
        for part in parts:
            cells = []
            for r in runs:
                us = us_per(r).get(part)
                secs = (r["loadgen_production_cpu_s"] if part == "load generator"
                        else r["steady_cpu_s"].get(part))
                cells.append("–" if us is None else f"{us:.0f} ({secs:.1f})")
            lines.append(f"| {part} | " + " | ".join(cells) + " |")
        lines.append("| **TaskManagers** | " + " | ".join(
            f"**{tm_us(us_per(r)):.0f}** ({1e6 / max(tm_us(us_per(r)), 1e-9):,.0f} per TM CPU-s)"
            for r in runs) + " |")
        comps = list(dict.fromkeys(c for r in runs for tm in r["taskmanager_components"]
                                   for c in tm))
        lines += ["", "Each TaskManager's CPU by thread (`bench.common.JOB_COMPONENTS`), µs per"
                  " notification:", "",
                  "| part of the job | " + " | ".join(
                      f"{label(r)} TM{i + 1}" for r in runs
                      for i in range(len(r["taskmanager_components"]))) + " |",
                  "|---|" + "---|" * sum(len(r["taskmanager_components"]) for r in runs)]
        for comp in comps:
            lines.append(f"| {comp} | " + " | ".join(
                f"{1e6 * tm.get(comp, 0) / max(r['steady_n'], 1):.0f}"
                for r in runs for tm in r["taskmanager_components"]) + " |")
    lines += third_core(results)
    write_markdown(RESULTS / f"{NAME}.md", "\n".join(lines).rstrip("\n") + "\n")


def code_state() -> dict:
    """The commit measured, and whether the job's code differs from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = git("status", "--porcelain", "--", "jobs", "operators", "udfs", "herald", "sql").strip()
    return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(dirty)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--parallelisms", default="1,2")
    parser.add_argument("--providers", default="null,10",
                        help="null and/or FCM mock latencies in ms, e.g. null,10")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--classes", default="critical",
                        help="HERALD_DELIVERY_CLASSES of the job (slots per TaskManager follow)")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds per run, from the backlog's start")
    parser.add_argument("--dry", action="store_true", help="print the runs, write no results")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: write the Markdown again from the JSON results")
    args = parser.parse_args(argv)
    if args.render:
        doc = json.loads((RESULTS / f"{NAME}.json").read_text())
        write(doc["runs"], {k: doc[k] for k in ("measured_at", "machine", "code") if k in doc})
        return
    base = bench_settings()
    Stack(base).up(mocks=False)
    measured = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": machine(), "code": code_state()}
    results: list[dict] = []
    for _ in range(args.repeat):
        for provider in [x.strip() for x in args.providers.split(",") if x.strip()]:
            for parallelism in [int(x) for x in args.parallelisms.split(",") if x.strip()]:
                result = one_run(base, parallelism, provider, args.n, args.users, args.classes,
                                 args.timeout)
                results.append(result)
                print(json.dumps({k: v for k, v in result.items()
                                  }), flush=True)
                if not args.dry:  # after every run: a later failure keeps what was measured
                    write(results, measured)
    if args.dry and results:
        print("\n".join(f"{label(r)}: {r['rate_after_quarter']}/s after ¼, exact {r['exact']},"
                        f" order {r['per_user_order']}, gates {placement(r)}, gate threads' share"
                        f" of a core per TaskManager " + ", ".join(
                            f"{gate_share(r, i):.2f}" for i in range(r["parallelism"]))
                        if r.get("steady_wall_s") else f"{label(r)}: no steady part"
                        for r in results))


if __name__ == "__main__":
    main()
