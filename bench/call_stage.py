"""Choose Herald's provider-call stage by measurement (issue 3, section 1).

Every run talks to an FCM mock in its own process on loopback (``python -m herald_mocks``, added
latency 0 or 10 ms), is bounded in count and in time (a child process killed after
``--timeout`` s), and is read back from the mock's own log: calls, exactness (each id accepted
once), per-user order, and the added latency of each call (record's ``created_at`` → the
mock's receive ``t_ms``).

    .venv/bin/python bench/call_stage.py clients            # HTTP clients alone, no Flink
    .venv/bin/python bench/call_stage.py stages             # the call-stage designs
    .venv/bin/python bench/call_stage.py all                # both, then the report
    .venv/bin/python bench/call_stage.py report             # rewrite the .md from the .json
    BENCH_EXTRA_PATH=/tmp/herald-bench-extra ...            # uvloop / pycurl / curl-cffi from a
        # `pip install --target` dir, kept out of the venv

Designs (all with udfs/http_client.py, calls of one user chained, at most --in-flight at once):

- ``sql``: Flink SQL record path, process mode: datagen → filter (Java) → a vectorized pandas
  UDF that sends its whole Arrow batch and returns each call's status → blackhole.
- ``ds``: thread mode DataStream, key_by(user) → KeyedProcessFunction buffering N records or
  T ms in Python memory, then sending the batch on an event loop it owns inside the same
  ``process_element`` and emitting statuses; an event-time timer at the end of time flushes
  the last batch of a bounded input.
- ``gateway``: no Flink: a plain Kafka consumer loop (poll → send the batch → produce statuses
  → commit), the "provider gateway behind a Kafka topic", for reference.

Writes bench/results/call_stage.json and bench/results/call_stage.md.
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
                          fcm_requests, machine, per_user_order_ok, percentile, tree_cpu_seconds)

JSON_PATH = RESULTS / "call_stage.json"
MD_PATH = RESULTS / "call_stage.md"
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


async def _run_aiohttp(reqs, keys, in_flight: int) -> list[int]:
    """aiohttp as it is normally used: one session, a bounded pool of workers (cheaper than a
    task per request), per-user chaining left out (it only lowers aiohttp's rate)."""
    import aiohttp
    statuses = [0] * len(reqs)
    it = iter(range(len(reqs)))
    connector = aiohttp.TCPConnector(limit=in_flight, limit_per_host=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker():
            for i in it:
                r = reqs[i]
                async with session.request(r.method, r.url, data=r.body,
                                           headers=r.headers) as resp:
                    await resp.read()
                    statuses[i] = resp.status
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return statuses


async def _run_curl_cffi(reqs, keys, in_flight: int) -> list[int]:
    from curl_cffi.requests import AsyncSession
    statuses = [0] * len(reqs)
    it = iter(range(len(reqs)))
    async with AsyncSession(max_clients=in_flight) as session:
        async def worker():
            for i in it:
                r = reqs[i]
                resp = await session.request(r.method, r.url, data=r.body,
                                             headers=dict(r.headers))
                statuses[i] = resp.status_code
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return statuses


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


CLIENTS = {"herald": _run_herald, "aiohttp": _run_aiohttp, "curl-cffi": _run_curl_cffi,
           "pycurl": _run_pycurl}


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


def run_clients(n: int, repeats: int, in_flight: int, timeout: float) -> list[dict]:
    combos = [("herald", "asyncio"), ("herald", "uvloop"), ("aiohttp", "asyncio"),
              ("aiohttp", "uvloop"), ("curl-cffi", "asyncio"), ("pycurl", "-")]
    have = {m: available(m) for m in ("uvloop", "curl_cffi", "pycurl")}
    out = []
    for latency in (0, 10):
        for client, loop in combos:
            needs = {"uvloop": loop == "uvloop", "curl_cffi": client == "curl-cffi",
                     "pycurl": client == "pycurl"}
            missing = [m for m, need in needs.items() if need and not have[m]]
            row = {"client": client, "loop": loop, "latency_ms": latency, "runs": []}
            if missing:
                row["skipped"] = f"not installed: {', '.join(missing)}"
                out.append(row)
                continue
            for _ in range(repeats):
                with Mock("fcm", latency) as mock:
                    cpu0 = mock.cpu()
                    try:
                        proc = subprocess.run(
                            [sys.executable, __file__, "client-child", "--client", client,
                             "--loop", loop, "--port", str(mock.port), "--n", str(n),
                             "--in-flight", str(in_flight)],
                            capture_output=True, text=True, env=bench_env(), cwd=ROOT,
                            timeout=timeout)
                    except subprocess.TimeoutExpired:
                        row["runs"].append({"error": f"timed out after {timeout} s"})
                        continue
                    if proc.returncode:
                        row["runs"].append({"error": proc.stderr.strip().splitlines()[-1:]})
                        continue
                    run = json.loads(proc.stdout.strip().splitlines()[-1])
                    run["mock_cpu_s"] = round(mock.cpu() - cpu0, 3)
                    row["runs"].append(run)
                print(json.dumps({k: row[k] for k in ("client", "loop", "latency_ms")}
                                 | row["runs"][-1]), flush=True)
            good = [r for r in row["runs"] if "error" not in r]
            if good:
                row["best"] = max(good, key=lambda r: r["calls_per_cpu_s"])
            out.append(row)
    return out


# ================================================================ main

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["clients", "stages", "all", "report", "client-child",
                                     "stage-child"])
    ap.add_argument("--client")
    ap.add_argument("--loop", default="asyncio")
    ap.add_argument("--port", type=int)
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    if args.what == "client-child":
        client_child(args)
    elif args.what == "clients":
        rows = run_clients(args.n, args.repeats, args.in_flight, args.timeout)
        save({"clients": rows})


def save(update: dict) -> dict:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else {}
    doc.update(update)
    doc.setdefault("meta", {}).update(machine())
    JSON_PATH.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


if __name__ == "__main__":
    main()
