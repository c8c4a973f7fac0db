"""Choose Herald's provider-call stage by measurement (issue 3, section 1).

Every run talks to an FCM mock in its own process on loopback (``python -m herald_mocks``, added
latency 0 or 10 ms), is bounded in count and in time (a child process killed after
``--timeout`` s), and is read back from the mock's own log: calls, exactness (each id accepted
once), per-user order, and the added latency of each call (record's ``created_at`` → the
mock's receive ``t_ms``).

    .venv/bin/python bench/call_stage.py clients            # HTTP clients alone, no Flink:
        # udfs/http_client.py against aiohttp, httpx, curl-cffi and pycurl, alternating rounds,
        # written to bench/results/http_clients.{md,json}
    .venv/bin/python bench/call_stage.py stages             # the call-stage designs
    .venv/bin/python bench/call_stage.py restore            # kill -9 after a checkpoint, restart
    .venv/bin/python bench/call_stage.py one --design sql --batch 5000 --latency-ms 10 --n 300000
    .venv/bin/python bench/call_stage.py all                # both, then the report
    .venv/bin/python bench/call_stage.py report             # rewrite the .md from the .json
    BENCH_EXTRA_PATH=/tmp/herald-bench-extra ...            # uvloop / pycurl / curl-cffi /
        # httpx from a `pip install --target` dir, kept out of the venv (with sniffio: without
        # it httpcore retries the import on every request)

Designs (all with udfs/http_client.py, calls of one user chained, at most --in-flight at once):

- ``sql``: Flink SQL record path, process mode: datagen → filter (Java) → a vectorized pandas
  UDF that sends its whole Arrow batch and returns each call's status → blackhole.
- ``ds``: thread mode DataStream, key_by(user) → KeyedProcessFunction buffering N records or
  T ms in Python memory, then sending the batch on an event loop it owns inside the same
  ``process_element`` and emitting statuses; an event-time timer at the end of time flushes
  the last batch of a bounded input.
- ``gateway``: no Flink: a plain Kafka consumer loop (poll → send the batch → produce statuses
  → commit), the "provider gateway behind a Kafka topic", for reference.

Writes bench/results/call_stage.json and bench/results/call_stage.md (the clients: their own
bench/results/http_clients.json and .md, so a clients run leaves the stage figures alone).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (RESULTS, ROOT, Mock, added_latencies, bench_env, exactness,  # noqa: E402
                          fcm_requests, machine, per_user_order_ok, percentile, tree_cpu_seconds,
                          write_markdown)

JSON_PATH = RESULTS / "call_stage.json"
MD_PATH = RESULTS / "call_stage.md"
CLIENTS_JSON = RESULTS / "http_clients.json"
CLIENTS_MD = RESULTS / "http_clients.md"
BAR_CALLS_PER_S = 8000


# ================================================================ part 1: the HTTP clients alone

def _usage() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


async def _run_herald(reqs, keys, in_flight: int) -> list[int]:
    from udfs.http_client import HttpClient, Response
    client = HttpClient(max_connections=in_flight)
    answers = await client.send_batch(reqs, in_flight, keys=keys)
    await client.close()
    return [a.status if isinstance(a, Response) else -1 for a in answers]


async def _workers(n: int, in_flight: int, one) -> list[int]:
    """``in_flight`` workers taking indexes 0..n-1 in turn, each awaiting ``one(i)`` (a status):
    how the libraries are normally driven (cheaper than a task per request), per-user chaining
    left out (it only lowers their rate)."""
    statuses = [0] * n
    it = iter(range(n))

    async def worker():
        for i in it:
            statuses[i] = await one(i)
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return statuses


async def _run_aiohttp(reqs, keys, in_flight: int) -> list[int]:
    """aiohttp as it is normally used: one session, a connector bounded to ``in_flight``."""
    import aiohttp
    connector = aiohttp.TCPConnector(limit=in_flight, limit_per_host=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(i: int) -> int:
            r = reqs[i]
            async with session.request(r.method, r.url, data=r.body, headers=r.headers) as resp:
                await resp.read()
                return resp.status
        return await _workers(len(reqs), in_flight, one)


async def _run_httpx(reqs, keys, in_flight: int) -> list[int]:
    """httpx's AsyncClient (HTTP/1.1, h11), its pool bounded to ``in_flight``."""
    import httpx
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def one(i: int) -> int:
            r = reqs[i]
            resp = await client.request(r.method, r.url, content=r.body, headers=r.headers)
            return resp.status_code
        return await _workers(len(reqs), in_flight, one)


async def _run_curl_cffi(reqs, keys, in_flight: int) -> list[int]:
    from curl_cffi.requests import AsyncSession
    async with AsyncSession(max_clients=in_flight) as session:
        async def one(i: int) -> int:
            r = reqs[i]
            resp = await session.request(r.method, r.url, data=r.body, headers=dict(r.headers))
            return resp.status_code
        return await _workers(len(reqs), in_flight, one)


def _run_pycurl(reqs, keys, in_flight: int) -> list[int]:
    """libcurl's multi interface driven from Python: ``in_flight`` easy handles, reused, so
    connections are kept alive in the multi handle's cache."""
    import io

    import pycurl
    multi = pycurl.CurlMulti()
    multi.setopt(pycurl.M_MAXCONNECTS, in_flight)
    free = []
    for _ in range(in_flight):
        h = pycurl.Curl()
        h.setopt(pycurl.NOSIGNAL, 1)
        free.append(h)
    statuses = [0] * len(reqs)
    todo = iter(range(len(reqs)))
    active = 0
    pending = True
    while pending or active:
        while pending and free:
            i = next(todo, None)
            if i is None:
                pending = False
                break
            r = reqs[i]
            h = free.pop()
            h.index = i
            h.buf = io.BytesIO()
            h.setopt(pycurl.URL, r.url)
            h.setopt(pycurl.POSTFIELDS, r.body)
            h.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in r.headers.items()])
            h.setopt(pycurl.WRITEDATA, h.buf)
            multi.add_handle(h)
            active += 1
        while True:
            ret, _ = multi.perform()
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break
        while True:
            queued, ok, failed = multi.info_read()
            for h in ok:
                statuses[h.index] = h.getinfo(pycurl.RESPONSE_CODE)
                multi.remove_handle(h)
                free.append(h)
                active -= 1
            for h, _, _ in failed:
                statuses[h.index] = -1
                multi.remove_handle(h)
                free.append(h)
                active -= 1
            if not queued:
                break
        if active:
            multi.select(0.5)
    return statuses


CLIENTS = {"herald": _run_herald, "aiohttp": _run_aiohttp, "httpx": _run_httpx,
           "curl-cffi": _run_curl_cffi, "pycurl": _run_pycurl}


def client_child(args) -> None:
    """One client, one loop, one measurement; prints a JSON line."""
    url = f"http://127.0.0.1:{args.port}"
    reqs, keys = fcm_requests(url, args.n, args.users)
    fn = CLIENTS[args.client]
    loop_name = "-"
    if asyncio.iscoroutinefunction(fn):
        from udfs.http_client import new_event_loop
        loop = new_event_loop(args.loop == "uvloop")
        loop_name = args.loop
        # warm-up: connections, caches
        loop.run_until_complete(fn(reqs[:2000], keys[:2000], args.in_flight))
        cpu0, t0 = _usage(), time.perf_counter()
        statuses = loop.run_until_complete(fn(reqs, keys, args.in_flight))
    else:
        fn(reqs[:2000], keys[:2000], args.in_flight)
        cpu0, t0 = _usage(), time.perf_counter()
        statuses = fn(reqs, keys, args.in_flight)
    elapsed = time.perf_counter() - t0
    cpu = _usage() - cpu0
    ok = statuses.count(200)
    print(json.dumps({"client": args.client, "loop": loop_name, "n": args.n, "ok": ok,
                      "elapsed_s": round(elapsed, 3), "client_cpu_s": round(cpu, 3),
                      "calls_per_s": round(ok / elapsed), "calls_per_cpu_s": round(ok / cpu)}))


def available(module: str) -> bool:
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                           env=bench_env(), cwd=ROOT)
    return probe.returncode == 0


CLIENT_COMBOS = [("herald", "asyncio"), ("herald", "uvloop"), ("aiohttp", "asyncio"),
                 ("aiohttp", "uvloop"), ("httpx", "asyncio"), ("curl-cffi", "asyncio"),
                 ("pycurl", "-")]
HERALD_CLIENT = "herald"
CLIENTS_IN_FLIGHT = 256
# Calls per run where the default would keep a shared core busy for minutes: httpx's pool
# spends milliseconds of CPU per call at 256 in flight (encode/httpx#3215).
CLIENT_CALLS = {"httpx": 1000}


def client_run(client: str, loop: str, latency: int, n: int, in_flight: int,
               timeout: float) -> dict:
    """One client against a fresh FCM mock: the child's JSON line plus the mock's CPU and the
    1-minute load before and after."""
    load0 = os.getloadavg()[0]
    with Mock("fcm", latency) as mock:
        cpu0 = mock.cpu()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "client-child", "--client", client, "--loop", loop,
                 "--port", str(mock.port), "--n", str(n), "--in-flight", str(in_flight)],
                capture_output=True, text=True, env=bench_env(), cwd=ROOT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
        if proc.returncode:
            return {"error": proc.stderr.strip().splitlines()[-1:]}
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        run["mock_cpu_s"] = round(mock.cpu() - cpu0, 3)
    run.update(load_1m_before=round(load0, 2), load_1m_after=round(os.getloadavg()[0], 2))
    return run


def run_clients(n: int, rounds: int, in_flight: int, timeout: float) -> list[dict]:
    """Every client at 0 and 10 ms mock latency, ``rounds`` times, alternating: each round
    runs every client once, the order reversed every other round (ABBA), so a change in the
    machine's load lands on all of them alike."""
    have = {m: available(m) for m in ("uvloop", "curl_cffi", "pycurl", "httpx")}
    rows = {}
    for latency in (0, 10):
        for client, loop in CLIENT_COMBOS:
            needs = {"uvloop": loop == "uvloop", "curl_cffi": client == "curl-cffi",
                     "pycurl": client == "pycurl", "httpx": client == "httpx"}
            row = {"client": client, "loop": loop, "latency_ms": latency, "runs": []}
            missing = [m for m, need in needs.items() if need and not have[m]]
            if missing:
                row["skipped"] = f"not installed: {', '.join(missing)}"
            rows[client, loop, latency] = row
    for i in range(rounds):
        order = list(rows.values()) if i % 2 == 0 else list(rows.values())[::-1]
        for row in order:
            if "skipped" in row:
                continue
            calls = min(n, CLIENT_CALLS.get(row["client"], n))
            run = client_run(row["client"], row["loop"], row["latency_ms"], calls, in_flight,
                             timeout) | {"round": i + 1}
            row["runs"].append(run)
            print(json.dumps({k: row[k] for k in ("client", "loop", "latency_ms")} | run),
                  flush=True)
    return list(rows.values())


def client_ratios(rows: list[dict]) -> list[dict]:
    """Herald's client over each library, same mock latency and loop (pycurl, which has no
    asyncio loop, against Herald's on asyncio): calls per client CPU-second and calls/s wall,
    per round and over all rounds (total calls / total CPU or wall seconds)."""
    by = {(r["client"], r["loop"], r["latency_ms"]): r for r in rows}

    def totals(runs):
        ok = sum(r["ok"] for r in runs)
        return ok / sum(r["client_cpu_s"] for r in runs), ok / sum(r["elapsed_s"] for r in runs)
    out = []
    for (client, loop, latency), row in by.items():
        if client == HERALD_CLIENT or "skipped" in row:
            continue
        herald = by.get((HERALD_CLIENT, loop if loop != "-" else "asyncio", latency))
        if herald is None or "skipped" in herald:
            continue
        mine = {r["round"]: r for r in herald["runs"] if "error" not in r}
        theirs = {r["round"]: r for r in row["runs"] if "error" not in r}
        both = sorted(set(mine) & set(theirs))
        if not both:
            continue
        (h_cpu, h_wall), (l_cpu, l_wall) = (totals([mine[i] for i in both]),
                                            totals([theirs[i] for i in both]))
        out.append({"library": client, "loop": loop, "herald_loop": herald["loop"],
                    "latency_ms": latency,
                    "per_cpu_s": round(h_cpu / l_cpu, 2), "wall": round(h_wall / l_wall, 2),
                    "per_cpu_s_by_round": [round(mine[i]["calls_per_cpu_s"]
                                                 / theirs[i]["calls_per_cpu_s"], 2)
                                           for i in both]})
    return out


def write_clients_report(rows: list[dict], meta: dict, n: int, in_flight: int) -> None:
    ratios = client_ratios(rows)
    CLIENTS_JSON.write_text(json.dumps({"meta": meta, "n": n, "in_flight": in_flight,
                                        "clients": rows, "herald_over": ratios}, indent=2)
                            + "\n")
    L = ["# The HTTP/1.1 clients alone (no Flink)", "",
         f"{meta['when']}, Python {meta['python']}, {meta['cpus']} cores shared with other "
         f"work (1-minute load {meta['loadavg_1m_at_start']} at the start, "
         f"{meta['loadavg_1m_at_end']} at the end; per run in the JSON). FCM calls built by "
         f"the real adapter (`calls` per run), from one process, {in_flight} in flight, "
         "keep-alive, against the FCM mock in its own process on loopback (a fresh mock per "
         "run, 2,000 calls of warm-up first). herald = udfs/http_client.py (the client the "
         "delivery job uses; it also chains each user's calls, which the libraries here are "
         "spared). The libraries come from the venv (aiohttp) or BENCH_EXTRA_PATH (uvloop, "
         "httpx, curl-cffi, pycurl). Each client ran once per round; rounds alternate the "
         "order. Command: `BENCH_EXTRA_PATH=… .venv/bin/python bench/call_stage.py clients "
         f"--n {n} --repeats {max((len(r['runs']) for r in rows), default=0)}`.",
         "",
         "| client | loop | mock latency | calls | calls per client CPU-second (by round) | "
         "calls/s wall (by round) |", "|---|---|---|---|---|---|"]
    for row in rows:
        if "skipped" in row:
            L.append(f"| {row['client']} | {row['loop']} | {row['latency_ms']} ms | | "
                     f"skipped: {row['skipped']} | |")
            continue
        calls = min(n, CLIENT_CALLS.get(row["client"], n))
        cells = [", ".join(str(r.get(k, "failed")) for r in row["runs"])
                 for k in ("calls_per_cpu_s", "calls_per_s")]
        L.append(f"| {row['client']} | {row['loop']} | {row['latency_ms']} ms | {calls} | "
                 f"{cells[0]} | {cells[1]} |")
    if ratios:
        L += ["", "Herald's client over each library, same loop and mock latency (pycurl "
              "against herald on asyncio); totals over the rounds, per round in brackets:", "",
              "| library | loop | mock latency | × calls per client CPU-second | "
              "× calls/s wall |", "|---|---|---|---|---|"]
        for r in ratios:
            by_round = ", ".join(f"×{x}" for x in r["per_cpu_s_by_round"])
            L.append(f"| {r['library']} | {r['loop']} | {r['latency_ms']} ms | "
                     f"×{r['per_cpu_s']} ({by_round}) | ×{r['wall']} |")
    write_markdown(CLIENTS_MD, "\n".join(L) + "\n")  # keeps the hand-written Reading


# ================================================================ part 2: the call stages

MAX_TS = 2**63 - 2  # an event-time timer here fires once the bounded input has ended


def flink_environments(mode: str, checkpoint_dir: str, batch: int = 1000, bundle_ms: int = 5,
                       bundle_size: int = 0, checkpoint_ms: int = 5000,
                       restore: str | None = None, parallelism: int = 1):
    """A parallelism-1 MiniCluster job with checkpoints every 5 s, as the delivery job has
    (``restore``: a checkpoint directory to start from)."""
    from jobs.common import python_env_ready
    python_env_ready()
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment
    conf = Configuration()
    conf.set_string("python.execution-mode", mode)
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    conf.set_string("execution.checkpointing.interval", f"{checkpoint_ms} ms")
    if restore:
        conf.set_string("execution.state-recovery.path", f"file://{restore}")
    conf.set_string("execution.checkpointing.mode", "EXACTLY_ONCE")
    conf.set_string("execution.checkpointing.dir", f"file://{checkpoint_dir}")
    conf.set_string("state.backend.type", "hashmap")
    conf.set_string("execution.buffer-timeout", "5 ms")
    conf.set_string("rest.bind-port", "0")
    conf.set_string("python.fn-execution.arrow.batch.size", str(batch))
    # a bundle's end is a sync point (the JVM waits for every result of the bundle), so a
    # bundle of several Arrow batches lets the JVM feed the next batch while Python sends one
    conf.set_string("python.fn-execution.bundle.size", str(max(batch, bundle_size)))
    conf.set_string("python.fn-execution.bundle.time", str(bundle_ms))
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(parallelism)
    t_env = StreamTableEnvironment.create(env)
    return env, t_env


def datagen(t_env, rows: int, users: int, rate: int = 0) -> str:
    """datagen → filter, all in Java; ``c`` is the epoch ms at which the row passed the filter
    (the record's ``created_at`` for the latency figures). Returns the query."""
    t_env.execute_sql(f"""
        CREATE TABLE src (i BIGINT, u INT, ts AS PROCTIME()) WITH (
          'connector' = 'datagen', 'rows-per-second' = '{rate or 100_000_000}',
          'fields.i.kind' = 'sequence', 'fields.i.start' = '0', 'fields.i.end' = '{rows - 1}',
          'fields.u.min' = '0', 'fields.u.max' = '{users - 1}')""")
    t_env.execute_sql("CREATE TABLE sink (s STRING) WITH ('connector' = 'blackhole')")
    return ("SELECT i, u, CAST(EXTRACT(EPOCH FROM ts) AS BIGINT) * 1000 "
            "+ EXTRACT(MILLISECOND FROM ts) AS c FROM src WHERE u >= 0")


class CallStage:
    """What every design runs per batch: build each call with the FCM adapter, send the batch
    through the client (one user's calls chained), classify each answer, one Status JSON each.
    Engine-free, so the three designs differ only in how records reach it."""

    def __init__(self, url: str, in_flight: int):
        self.url = url
        self.in_flight = in_flight
        self.client = None

    def open(self) -> None:
        from herald.providers.registry import Registry
        from udfs.http_client import BlockingBatchClient
        from bench.common import fcm_settings
        self.adapter = Registry().for_channel("push", "android")
        self.settings = fcm_settings(self.url)
        self.client = BlockingBatchClient(max_connections=self.in_flight)
        note = os.environ.get("HERALD_BENCH_NOTE")
        if note:  # which loop the Flink worker ended up with, for the report
            with open(note, "a") as fh:
                fh.write(json.dumps({"pid": os.getpid(), "loop": self.client.loop_name}) + "\n")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def run(self, ids, users, created) -> list[str]:
        import orjson
        from herald import states
        from herald.providers.base import clock_ms
        from udfs.http_client import Response
        from bench.common import notification
        adapter, settings = self.adapter, self.settings
        now = clock_ms()
        notes = [notification(i, f"u{u}", c) for i, u, c in zip(ids, users, created)]
        reqs = [adapter.build_request(n, n.to, settings, now_ms=now) for n in notes]
        answers = self.client.send_batch(reqs, self.in_flight, keys=users)
        done = clock_ms()
        out = []
        dumps, delivered, failed = orjson.dumps, states.DELIVERED, states.FAILED
        for n, a in zip(notes, answers):
            outcome = (adapter.classify(a.status, a.headers, a.body) if isinstance(a, Response)
                       else adapter.transport_error(a))
            # the Status event's fields, dumped directly: Status.to_json goes through
            # dataclasses.asdict, which costs 11 µs a record here (a third of the stage)
            status = {"id": n.id, "tenant_id": n.tenant_id, "user_id": n.user_id,
                      "priority": n.priority, "state": delivered if outcome.ok else failed,
                      "at": done, "channel": "push", "provider": "fcm", "attempt": 1,
                      "latency_ms": done - n.created_at}
            if not outcome.ok:
                status["detail"] = outcome.detail
            out.append(dumps(status).decode())
        return out


def checkpoints(args):
    """The run's checkpoint directory: the one asked for (kept, for the restore runs), else a
    temporary one."""
    import contextlib
    if args.checkpoint_dir:
        return contextlib.nullcontext(args.checkpoint_dir)
    return tempfile.TemporaryDirectory(prefix="herald-bench-ck-")


def sql_stage(args) -> dict:
    """(a) Flink SQL record path, process mode, one pandas UDF per Arrow batch."""
    from pyflink.table import DataTypes
    from pyflink.table.udf import ScalarFunction, udf

    class SendBatch(ScalarFunction):
        def __init__(self, url, in_flight):
            self.stage = CallStage(url, in_flight)

        def open(self, function_context):
            self.stage.open()

        def close(self):
            self.stage.close()

        def eval(self, i, u, c):
            import pandas as pd
            return pd.Series(self.stage.run(i.tolist(), u.tolist(), c.tolist()))

    with checkpoints(args) as ck:
        env, t_env = flink_environments("process", ck, args.batch, args.bundle_ms,
                                        args.bundle_size, args.checkpoint_ms, args.restore,
                                        args.parallelism)
        query = datagen(t_env, args.n, args.users, args.rate)
        t_env.create_temporary_function(
            "send_fcm", udf(SendBatch(f"http://127.0.0.1:{args.port}", args.in_flight),
                            result_type=DataTypes.STRING(), func_type="pandas"))
        t0 = time.perf_counter()
        t_env.execute_sql(f"INSERT INTO sink SELECT send_fcm(i, u, c) FROM ({query})").wait()
        return {"execute_s": time.perf_counter() - t0}


def ds_stage(args) -> dict:
    """(b) thread mode DataStream: key_by(user) → a KeyedProcessFunction that micro-batches."""
    from pyflink.common import Types
    from pyflink.datastream.functions import KeyedProcessFunction

    class MicroBatch(KeyedProcessFunction):
        """Buffers records in Python memory (not in Flink state: see the consistency note)
        and sends a batch once it holds N records or its first record is T ms old."""

        def __init__(self, url, in_flight, size, max_ms):
            self.stage = CallStage(url, in_flight)
            self.size, self.max_s = size, max_ms / 1000

        def open(self, runtime_context):
            self.stage.open()
            self.buf, self.first = [], 0.0

        def close(self):
            self.stage.close()

        def process_element(self, row, ctx):
            if not self.buf:
                self.first = time.monotonic()
                # the last batch of a bounded input leaves when the final watermark arrives
                ctx.timer_service().register_event_time_timer(MAX_TS)
            self.buf.append(row)
            if len(self.buf) >= self.size or time.monotonic() - self.first >= self.max_s:
                yield from self.flush()

        def on_timer(self, timestamp, ctx):
            yield from self.flush()

        def flush(self):
            buf, self.buf = self.buf, []
            if buf:
                yield from self.stage.run([r[0] for r in buf], [r[1] for r in buf],
                                          [r[2] for r in buf])

    with checkpoints(args) as ck:
        env, t_env = flink_environments("thread", ck, checkpoint_ms=args.checkpoint_ms,
                                        restore=args.restore)
        query = datagen(t_env, args.n, args.users, args.rate)
        rows = t_env.to_data_stream(t_env.sql_query(query))
        statuses = (rows.key_by(lambda r: r[1], key_type=Types.INT())
                    .process(MicroBatch(f"http://127.0.0.1:{args.port}", args.in_flight,
                                        args.batch, args.batch_ms),
                             output_type=Types.STRING()))
        statements = t_env.create_statement_set()
        statements.add_insert("sink", t_env.from_data_stream(statuses))
        statements.attach_as_datastream()
        t0 = time.perf_counter()
        env.execute("bench-call-stage-ds")
        return {"execute_s": time.perf_counter() - t0}


def gateway_stage(args) -> dict:
    """(c) no Flink: poll a batch from Kafka → send it → produce its statuses → commit."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic
    from herald.models import parse_notification
    from herald.providers.base import clock_ms
    from herald.settings import load_settings
    bootstrap = load_settings().kafka_bootstrap
    topic = f"bench.cs.{os.getpid()}.{int(time.time())}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1), NewTopic(topic + ".status", 1, 1)])
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1,
                                 batch_size=256 * 1024)
        now = clock_ms()
        from bench.common import notification
        for i in range(args.n):
            u = i % args.users
            producer.send(topic, key=f"u{u}".encode(),
                          value=notification(i, f"u{u}", now).to_json())
        producer.flush()
        stage = CallStage(f"http://127.0.0.1:{args.port}", args.in_flight)
        stage.open()
        consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=topic,
                                 enable_auto_commit=False, auto_offset_reset="earliest",
                                 max_poll_records=args.batch, fetch_max_bytes=64 * 1024 * 1024,
                                 max_partition_fetch_bytes=16 * 1024 * 1024)
        done = 0
        t0 = time.perf_counter()
        deadline = t0 + args.timeout - 10
        while done < args.n and time.perf_counter() < deadline:
            polled = consumer.poll(timeout_ms=100, max_records=args.batch)
            records = [m for batch in polled.values() for m in batch]
            if not records:
                continue
            at = clock_ms()  # added latency counts from the poll, as Flink's from the filter
            notes = [parse_notification(m.value) for m in records]
            users = [int(n.user_id[1:]) for n in notes]
            statuses = stage.run([int(n.id[2:]) for n in notes], users, [at] * len(notes))
            for n, s in zip(notes, statuses):
                producer.send(topic + ".status", key=n.id.encode(), value=s.encode())
            producer.flush()
            consumer.commit()
            done += len(records)
        elapsed = time.perf_counter() - t0
        consumer.close()
        producer.close()
        stage.close()
        return {"execute_s": elapsed, "consumed": done}
    finally:
        admin.delete_topics([topic, topic + ".status"])
        admin.close()


STAGES = {"sql": sql_stage, "ds": ds_stage, "gateway": gateway_stage}


def stage_child(args) -> None:
    out = STAGES[args.design](args)
    print("RESULT " + json.dumps(out), flush=True)


def run_stage(design: str, latency: int, n: int, users: int, in_flight: int, timeout: float,
              batch: int, bundle_ms: int = 5, batch_ms: int = 20, rate: int = 0,
              bundle_size: int = 0, parallelism: int = 1) -> dict:
    """One measurement: a fresh mock, the design in a child process group (killed at the
    timeout), then the mock's log read back."""
    run: dict = {"design": design, "latency_ms": latency, "n": n, "batch": batch,
                 "bundle_ms": bundle_ms if design == "sql" else None,
                 "batch_ms": batch_ms if design == "ds" else None, "in_flight": in_flight,
                 "rate": rate or None, "bundle_size": bundle_size or None,
                 "parallelism": parallelism}
    with Mock("fcm", latency) as mock:
        cmd = [sys.executable, __file__, "stage-child", "--design", design, "--port",
               str(mock.port), "--n", str(n), "--users", str(users), "--in-flight",
               str(in_flight), "--batch", str(batch), "--bundle-ms", str(bundle_ms),
               "--batch-ms", str(batch_ms), "--timeout", str(timeout), "--rate", str(rate),
               "--bundle-size", str(bundle_size), "--parallelism", str(parallelism)]
        log = tempfile.TemporaryFile(mode="w+")
        note = Path(mock.dir.name) / "note.jsonl"
        env = bench_env()
        env["HERALD_BENCH_NOTE"] = str(note)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        cpu_seen = 0.0
        try:
            while proc.poll() is None and time.perf_counter() - t0 < timeout:
                cpu_seen = max(cpu_seen, tree_cpu_seconds(proc.pid))
                time.sleep(0.5)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                run["error"] = f"killed at the {timeout} s bound"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.seek(0)
        output = log.read()
        log.close()
        result = next((json.loads(line[7:]) for line in output.splitlines()
                       if line.startswith("RESULT ")), None)
        if result is None and "error" not in run:
            run["error"] = "no result: " + " | ".join(output.strip().splitlines()[-6:])[-1500:]
        records = mock.records()
        if note.exists():
            lines = note.read_text().splitlines()
            run["loops"] = sorted({json.loads(x)["loop"] for x in lines if x})
        run["mock_cpu_s"] = round(mock.cpu(), 2)
    run["job_cpu_s_sampled"] = round(cpu_seen, 2)
    ex = exactness(records, n)
    run.update(ex)
    run["per_user_order"] = per_user_order_ok(records)
    lat = added_latencies(records)
    run["p50_ms"], run["p99_ms"] = percentile(lat, 0.5), percentile(lat, 0.99)
    accepted_t = sorted(r["t_ms"] for r in records if r.get("result") == "accepted")
    if result is not None:
        run["execute_s"] = round(result["execute_s"], 2)
        run["calls_per_s"] = round(ex["accepted"] / result["execute_s"])
    if len(accepted_t) > 1:
        span = (accepted_t[-1] - accepted_t[0]) / 1000
        run["first_to_last_call_s"] = round(span, 2)
        run["steady_calls_per_s"] = round(len(accepted_t) / span) if span > 0 else None
    return run


def best_of(runs: list[dict]) -> dict:
    good = [r for r in runs if "error" not in r and r.get("calls_per_s")]
    return max(good, key=lambda r: r["calls_per_s"]) if good else runs[-1]


# ================================================================ restore: lost or repeated?

def run_restore(design: str, n: int, users: int, in_flight: int, rate: int, batch: int,
                bundle_ms: int, batch_ms: int, timeout: float, latency: int = 10) -> dict:
    """kill -9 the job right after a checkpoint completes (once a quarter of the calls are
    made), restart it from that checkpoint, and count at the mock which ids were never
    accepted (lost) and which were accepted more than once (repeated). No dedup marker here:
    this is the stage's own behaviour."""
    import glob
    from collections import Counter
    out: dict = {"design": design, "n": n, "rate": rate, "batch": batch,
                 "bundle_ms": bundle_ms if design == "sql" else None,
                 "batch_ms": batch_ms if design == "ds" else None, "latency_ms": latency,
                 "checkpoint_ms": 1000}
    with Mock("fcm", latency) as mock, \
            tempfile.TemporaryDirectory(prefix="herald-bench-restore-") as ck:
        cmd = [sys.executable, __file__, "stage-child", "--design", design, "--port",
               str(mock.port), "--n", str(n), "--users", str(users), "--in-flight",
               str(in_flight), "--batch", str(batch), "--bundle-ms", str(bundle_ms),
               "--batch-ms", str(batch_ms), "--rate", str(rate), "--checkpoint-dir", ck,
               "--checkpoint-ms", "1000", "--timeout", str(timeout)]
        log = tempfile.TemporaryFile(mode="w+")

        def spawn(extra: list[str]) -> subprocess.Popen:
            return subprocess.Popen(cmd + extra, cwd=ROOT, env=bench_env(), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

        def metadata() -> set[str]:
            return set(glob.glob(f"{ck}/*/chk-*/_metadata"))
        first = spawn([])
        deadline = time.perf_counter() + timeout
        chk, seen = None, None
        try:
            while time.perf_counter() < deadline and first.poll() is None:
                if seen is None:
                    if mock.stats()["accepted"] >= n // 4:
                        seen = metadata()
                    else:
                        time.sleep(0.2)
                    continue
                new = metadata() - seen
                if new:
                    os.killpg(first.pid, signal.SIGKILL)
                    chk = str(Path(max(new, key=lambda p: int(p.split("chk-")[1].split("/")[0])))
                              .parent)
                    break
                time.sleep(0.005)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        if chk is None:
            log.seek(0)
            out["error"] = "no checkpoint to kill after: " + log.read()[-800:]
            return out
        out["accepted_before_kill"] = mock.stats()["accepted"]
        out["restored_from"] = Path(chk).name
        second = spawn(["--restore", chk])
        try:
            second.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait()
            out["error"] = f"restored run killed at the {timeout} s bound"
        if second.returncode not in (0, None) and "error" not in out:
            log.seek(0)
            out["error"] = "restored run failed: " + log.read()[-800:]
        records = mock.records()
    counts = Counter(r["herald_id"] for r in records if r.get("result") == "accepted")
    expected = {f"b-{i}" for i in range(n)}
    out["lost"] = len(expected - set(counts))
    out["repeated"] = sum(c - 1 for c in counts.values() if c > 1)
    out["unexpected"] = len(set(counts) - expected)
    out["per_user_order_within_runs"] = None  # a replay re-sends earlier ids: order is per run
    return out


RESTORE_CASES = [
    {"design": "sql", "batch": 1000, "bundle_ms": 5, "batch_ms": 20},
    {"design": "ds", "batch": 1000, "bundle_ms": 5, "batch_ms": 20},
    {"design": "ds", "batch": 5000, "bundle_ms": 5, "batch_ms": 1000},
]


def run_restores(repeats: int, in_flight: int, users: int, timeout: float) -> None:
    results = []
    for case in RESTORE_CASES:
        for _ in range(repeats):
            r = run_restore(case["design"], 40_000, users, in_flight, 5000, case["batch"],
                            case["bundle_ms"], case["batch_ms"], timeout)
            print(json.dumps(r), flush=True)
            results.append(r)
    save({"restore": results})


# ================================================================ the matrix and the report

def matrix(quick: bool = False) -> list[dict]:
    """Every configuration measured: design, batch settings, mock latency, rows."""
    scale = 10 if quick else 1
    out = []
    for latency in (0, 10):
        for batch in (100, 1000, 5000):
            for bundle_ms in (5, 50):
                out.append({"design": "sql", "latency": latency, "batch": batch,
                            "bundle_ms": bundle_ms,
                            "n": (100_000 if batch == 100 else 300_000) // scale})
        for batch, batch_ms in ((1000, 20), (5000, 50)):
            out.append({"design": "ds", "latency": latency, "batch": batch,
                        "batch_ms": batch_ms, "n": 100_000 // scale})
        out.append({"design": "gateway", "latency": latency, "batch": 5000,
                    "n": 100_000 // scale})
    # critical-style latency: a paced source well under capacity, small batches
    for batch in (100, 1000):
        out.append({"design": "sql", "latency": 10, "batch": batch, "bundle_ms": 5,
                    "n": 30_000 // scale, "rate": 2000})
    return out


def config_key(c: dict) -> str:
    parts = [c["design"], f"lat{c['latency'] if 'latency' in c else c['latency_ms']}",
             f"b{c['batch']}"]
    if c.get("bundle_ms") is not None and c["design"] == "sql":
        parts.append(f"bundle{c['bundle_ms']}")
    if c.get("batch_ms") is not None and c["design"] == "ds":
        parts.append(f"t{c['batch_ms']}")
    if c.get("rate"):
        parts.append(f"rate{c['rate']}")
    return "-".join(parts)


def run_stages(repeats: int, in_flight: int, users: int, timeout: float, quick: bool,
               only: str | None, append: bool = False) -> None:
    doc = json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else {}
    stages = doc.get("stages", {})
    for c in matrix(quick):
        key = config_key(c)
        if only and only not in key:
            continue
        runs = list(stages[key]["runs"]) if append and key in stages else []
        for _ in range(repeats):
            run = run_stage(c["design"], c["latency"], c["n"], users, in_flight, timeout,
                            c["batch"], c.get("bundle_ms", 5), c.get("batch_ms", 20),
                            c.get("rate", 0))
            run["loadavg_1m"] = round(os.getloadavg()[0], 2)
            runs.append(run)
            print(json.dumps({"config": key} | {k: run.get(k) for k in (
                "calls_per_s", "steady_calls_per_s", "p50_ms", "p99_ms", "exact",
                "per_user_order", "error")}), flush=True)
        stages[key] = {"config": c, "runs": runs, "best": best_of(runs)}
        save({"stages": stages, "in_flight": in_flight, "users": users})


RESTORE = {
    "sql": ("never loses; repeats possible: the Python operator finishes its bundle (every "
            "Arrow batch sent and answered) before the checkpoint barrier passes, so a "
            "checkpoint never covers an unsent record; records after the last checkpoint are "
            "replayed and their calls sent again unless the Redis sent marker stops them"),
    "ds": ("can lose and can repeat: up to N-1 records sit in the function's Python buffer "
           "when a barrier passes; the checkpoint's source offset is already past them and "
           "they are in no state, so a restore never sends them; records after the checkpoint "
           "are replayed as in sql (PyFlink's DataStream functions have no snapshot hook to "
           "flush on; keeping the buffer in keyed state costs a state write per record)"),
    "gateway": ("never loses; repeats possible: offsets are committed after the batch's calls "
                "are answered and its statuses flushed, so a crash before the commit re-sends "
                "the batch (the sent marker stops the re-sends); no Flink checkpoint at all"),
}

DESIGN_NAMES = {
    "sql": "(a) Flink SQL record path, pandas UDF sends its Arrow batch (process mode)",
    "ds": "(b) thread-mode KeyedProcessFunction, micro-batch in Python memory",
    "gateway": "(c) no Flink: Kafka consumer loop gateway (kafka-python)",
}


def choose(stages: dict) -> str | None:
    """The in-job design that is consistent on restore (sql) and cleared the bar at 10 ms in
    at least two runs (the machine is shared, so one lucky run is not enough, and a run under
    someone else's load is not held against it); among those the smallest Arrow batch (the
    least added latency), then the higher second-best rate."""
    picks = []
    for key, s in stages.items():
        c = s["config"]
        if c["design"] != "sql" or c.get("rate") or c["latency"] != 10:
            continue
        runs = [r for r in s["runs"] if "error" not in r]
        if not runs or not all(r.get("exact") and r.get("per_user_order") for r in runs):
            continue
        rates = sorted((r.get("calls_per_s") or 0 for r in runs), reverse=True)
        second = rates[1] if len(rates) > 1 else 0
        picks.append((second < BAR_CALLS_PER_S, c["batch"], -second, key))
    return min(picks)[3] if picks else None


def exact_and_order(run: dict) -> str:
    """The two checks every run makes at the mock, as a table cell."""
    return ("yes" if run.get("exact") else "NO") + ", " + \
        ("yes" if run.get("per_user_order") else "NO")


def job_design_section() -> list[str]:
    """The design Herald runs, with its end-to-end figures (bench/delivery_throughput.py)."""
    path = RESULTS / "delivery_throughput.json"
    if not path.exists():
        return []
    runs = json.loads(path.read_text()).get("runs", [])
    L = ["", "## The design Herald runs (**chosen**)", "",
         "None of the bare stages above holds per-user keyed state (dedup, order, holds) at "
         "speed: the pandas-UDF stage has no keyed state in process mode, and a micro-batch in a "
         "thread-mode function loses its buffer on restore. The delivery job keeps the record "
         "path in Java up to one row per batch: a Flink SQL window collects each lane's records "
         "(`partition mod lanes`, one lane per gate subtask) as a JSON array, and one thread-mode "
         "keyed function per class (the gate) parses them, decides with keyed state and sends "
         "what it releases with the same client as above, in parts of about "
         "`send_part_records` (a user's notifications in one part; a part's calls go out before "
         "the next part is decided, so the provider answers one part while the gate works on "
         "the next), all before it returns, so a checkpoint "
         "never covers an unsent record (the kill tests: 0 lost; calls in flight at the crash are "
         "re-sent and reported). Figures from `bench/delivery_throughput.py`, every semantic on "
         "(dedup, order, expiry, rate limiter, Redis claims and markers, statuses to Kafka), "
         "the producer, Kafka, Redis and the mock on the same two cores:", "",
         "| design | mode | mock latency | calls/s | p50 / p99 ms (created_at → mock) | "
         "exact, order | load | |",
         "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if r.get("latency_ms") is None:
            continue
        mode = f"paced {r['rate']:g}/s" if r.get("rate") else f"backlog {r['n'] // 1000}k"
        if r.get("warmup_records"):
            mode += (f", measured after {r['warmup_records'] / r['rate']:g} s of warm-up (whole "
                     f"run p50/p99 {r['whole_run_p50_ms']}/{r['whole_run_p99_ms']} ms)")
        checks = exact_and_order(r)
        L.append(f"| window batches → keyed gate that sends (jobs/delivery.py) | {mode} | "
                 f"{r['latency_ms']} ms | {r['calls_per_s_steady']} calls/s | "
                 f"{fmt(r.get('p50_ms'))} / {fmt(r.get('p99_ms'))} | {checks} | "
                 f"{fmt(r.get('load_1m'))} | **chosen** |")
    best = max((r["calls_per_s_steady"] for r in runs
                if r.get("latency_ms") == 10 and not r.get("rate")), default=0)
    if best >= BAR_CALLS_PER_S:
        verdict = (f"Against the bar of {BAR_CALLS_PER_S} calls/s at 10 ms the chosen design "
                   f"meets it end to end on this machine ({best} calls/s), every semantic on; "
                   "the noise between runs is in `bench/results/delivery_throughput.md`.")
    else:
        verdict = (f"Against the bar of {BAR_CALLS_PER_S} calls/s at 10 ms the chosen design "
                   f"falls short end to end on this machine ({best} calls/s); the bare stages "
                   "that clear it do so without the semantics (their rows above count only the "
                   "stage). What bounds it is in `bench/results/delivery_throughput.md`.")
    L += ["", verdict]
    return L


def fmt(v, unit="") -> str:
    return "–" if v is None else f"{v}{unit}"


def write_report() -> None:
    doc = json.loads(JSON_PATH.read_text())
    meta = doc.get("meta", {})
    stages = doc.get("stages", {})
    chosen = choose(stages)
    doc["chosen"] = chosen
    JSON_PATH.write_text(json.dumps(doc, indent=2) + "\n")
    L = ["# The provider-call stage, chosen by measurement", "",
         f"Measured {meta.get('when', '?')} on this machine: {meta.get('cpus')} cores shared "
         "with another engineer's test runs (load average noted per run in the JSON), Python "
         f"{meta.get('python')}, PyFlink 2.2.1 MiniCluster, parallelism 1, checkpoints every "
         "5 s. The FCM mock runs in its own process on the same machine (loopback), with 0 or "
         "10 ms added latency. Every run is bounded (≤ 300k rows, killed at 120 s) and ran "
         "at least twice; the best run is shown, the others in brackets, to show the noise. "
         "`python bench/call_stage.py all` reproduces it.", "",
         "All designs use the same call stage (`CallStage` in bench/call_stage.py): build each "
         "call with the FCM adapter, send the batch with `udfs/http_client.py` (one user's "
         f"calls chained, at most {doc.get('in_flight', 512)} in flight, uvloop), classify "
         "each answer, one status JSON per record. Rate = provider calls accepted by the mock "
         "/ execute time (job start to end, so Flink's ≈ 5 s start-up is included); steady = "
         "calls / (last call − first call) at the mock. Added latency = the mock's receive "
         "time − the record's `created_at` (the epoch ms at which the row passed the Java "
         "filter; for the gateway, the poll). Unpaced sources run flat out, so their latency "
         "is mostly queueing in front of a saturated stage; the `paced 2000/s` rows show what a "
         "record sees below capacity. Every run was checked at the mock: each id accepted "
         "exactly once, each user's calls in order. `load` is the 1-minute load average "
         "right after the best run (2 cores: above 2, someone else was competing).", "",
         f"Bar (issue 3): ≥ {BAR_CALLS_PER_S} provider calls/s at 10 ms mock latency.", "",
         "| design | settings | mock latency | calls/s (other runs) | steady calls/s | "
         "p50 / p99 added ms | exact, order | load | |",
         "|---|---|---|---|---|---|---|---|---|"]

    def order(item):
        key, s = item
        c = s["config"]
        return (["sql", "ds", "gateway"].index(c["design"]), bool(c.get("rate")), c["batch"],
                c.get("bundle_ms") or 0, c.get("batch_ms") or 0, c["latency"])
    for key, s in sorted(stages.items(), key=order):
        c, b = s["config"], s["best"]
        others = [r.get("calls_per_s") for r in s["runs"] if r != b]
        settings = f"batch {c['batch']}"
        if c["design"] == "sql":
            settings = f"Arrow batch {c['batch']}, bundle {c['bundle_ms']} ms"
        elif c["design"] == "ds":
            settings = f"N {c['batch']} / T {c['batch_ms']} ms"
        elif c["design"] == "gateway":
            settings = f"poll ≤ {c['batch']}"
        if c.get("rate"):
            settings += f", paced {c['rate']}/s"
        settings += f", {c['n'] // 1000}k rows"
        if "error" in b:
            rate = f"failed: {b['error'][:80]}"
        else:
            other = ", ".join(str(o) if o else "failed" for o in others)
            rate = f"{b['calls_per_s']} calls/s" + (f" ({other})" if other else "")
        checks = exact_and_order(b)
        L.append(f"| {c['design']} | {settings} | {c['latency']} ms | {rate} | "
                 f"{fmt(b.get('steady_calls_per_s'))} | {fmt(b.get('p50_ms'))} / "
                 f"{fmt(b.get('p99_ms'))} | {checks} | {fmt(b.get('loadavg_1m'))} | "
                 f"{'best bare stage' if key == chosen else ''} |")
    L += job_design_section()
    L += ["", "## Restore from a checkpoint: can a call be lost or repeated?", "",
          "| design | lost? repeated? why |", "|---|---|"]
    for d in ("sql", "ds", "gateway"):
        L.append(f"| {DESIGN_NAMES[d]} | {RESTORE[d]} |")
    restores = doc.get("restore") or []
    if restores:
        L += ["", "Measured (`python bench/call_stage.py restore`): 40k rows paced at 5,000/s, "
              "checkpoints every 1 s, mock at 10 ms; once a quarter of the calls were made, "
              "kill -9 the job right after the next checkpoint completed, restart it from that "
              "checkpoint, then count at the mock. No Redis marker in the path: this is the "
              "stage's own behaviour (the gateway was not measured this way).", "",
              "| design | batch | calls before the kill | restored from | lost | repeated |",
              "|---|---|---|---|---|---|"]
        for r in restores:
            batch = (f"Arrow batch {r['batch']}, bundle {r['bundle_ms']} ms" if r["design"] == "sql"
                     else f"N {r['batch']} / T {r['batch_ms']} ms")
            if "error" in r and "lost" not in r:
                L.append(f"| {r['design']} | {batch} | failed: {r['error'][:80]} | | | |")
                continue
            L.append(f"| {r['design']} | {batch} | {r.get('accepted_before_kill')} | "
                     f"{r.get('restored_from')} | {r.get('lost')} | {r.get('repeated')} |")
    par = doc.get("critical_parallelism") or []
    if par:
        L += ["", "## Critical settings with more parallelism (one extra probe)", "",
              "Arrow batch 100, bundle 5 ms, mock at 10 ms, 100k rows, unpaced, with 2 and 4 "
              "subtasks (each its own Python worker). Not keyed by user, so per-user order is "
              "not kept here (the real job partitions by user upstream); run at load averages "
              "of 9–13, so a floor, not a figure.", "",
              "| parallelism | calls/s | steady calls/s | p50 / p99 added ms |",
              "|---|---|---|---|"]
        for r in sorted(par, key=lambda r: r["parallelism"]):
            L.append(f"| {r['parallelism']} | {r.get('calls_per_s')} calls/s | "
                     f"{r.get('steady_calls_per_s')} | {r.get('p50_ms')} / {r.get('p99_ms')} |")
    L += ["", "## The HTTP clients alone (no Flink)", "",
          "In `bench/results/http_clients.md` (`python bench/call_stage.py clients`): "
          "udfs/http_client.py against aiohttp, httpx, curl-cffi and pycurl, measured the same "
          "day."]
    L += ["", "## Reading", ""] + doc.get("reading", ["(written after the runs)"])
    MD_PATH.write_text("\n".join(L) + "\n")


# ================================================================ main

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["clients", "stages", "all", "report", "one", "restore",
                                     "client-child",
                                     "stage-child"])
    ap.add_argument("--client")
    ap.add_argument("--loop", default="asyncio")
    ap.add_argument("--port", type=int)
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--in-flight", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="a tenth of the rows (a smoke run)")
    ap.add_argument("--only", help="run only the configurations whose key contains this")
    ap.add_argument("--append", action="store_true",
                    help="add the new runs to those already in the JSON (a noisy machine)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--design", choices=sorted(STAGES))
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--bundle-ms", type=int, default=5)
    ap.add_argument("--bundle-size", type=int, default=0, help="records per bundle (0: batch)")
    ap.add_argument("--batch-ms", type=int, default=20)
    ap.add_argument("--latency-ms", type=int, default=10)
    ap.add_argument("--checkpoint-dir")
    ap.add_argument("--parallelism", type=int, default=1,
                    help="sql only; > 1 does not key by user, so per-user order is not kept")
    ap.add_argument("--checkpoint-ms", type=int, default=5000)
    ap.add_argument("--restore", help="a chk-N directory to start the job from")
    ap.add_argument("--rate", type=int, default=0, help="datagen rows/s (0: as fast as it goes)")
    args = ap.parse_args(argv)
    if args.what == "client-child":
        client_child(args)
    elif args.what == "stage-child":
        stage_child(args)
    elif args.what == "one":
        print(json.dumps(run_stage(args.design, args.latency_ms, args.n, args.users,
                                   args.in_flight, args.timeout, args.batch, args.bundle_ms,
                                   args.batch_ms, args.rate, args.bundle_size,
                                   args.parallelism), indent=1))
    elif args.what in ("clients", "all"):
        meta = machine()
        rows = run_clients(args.n, args.repeats, CLIENTS_IN_FLIGHT, args.timeout)
        meta["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
        write_clients_report(rows, meta, args.n, CLIENTS_IN_FLIGHT)
    if args.what in ("restore", "all"):
        run_restores(args.repeats, args.in_flight, args.users, args.timeout)
    if args.what in ("stages", "all"):
        run_stages(args.repeats, args.in_flight, args.users, args.timeout, args.quick,
                   args.only, args.append)
    if args.what in ("stages", "all", "report", "restore"):
        write_report()


def save(update: dict) -> dict:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else {}
    doc.update(update)
    doc.setdefault("meta", {}).update(machine())
    JSON_PATH.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


if __name__ == "__main__":
    main()
