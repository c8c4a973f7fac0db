"""How fast the provider mocks answer, so we know they are never the bottleneck of a benchmark.

Starts a mock (``python -m herald_mocks``) in one process and drives it from another with a lean
keep-alive HTTP/1.1 load generator (C connections, one request in flight on each, no
pipelining), bounded by a request count and a duration. Loopback only. Reports requests/s, the
mock's own CPU use (from /proc, so "per core" is measured, not assumed), latency percentiles,
and checks that the mock's log holds exactly as many records as the client sent.

The FCM mock is also driven, in alternating rounds of the same run, as a twin on aiohttp.web
(``aiohttp_twin``): the same ``MockState`` does the per-request work, only the HTTP/1.1 layer
differs, so the rows show what herald_mocks/http1.py buys over the library (issue 18).

The APNs section compares two HTTP/2 clients against the APNs mock (Herald's own, udfs/h2_client.py,
and, when installed, httpx[http2]); that measurement is what herald/providers/apns.py cites.

    .venv/bin/python bench/mock_throughput.py              # fcm, twilio, sendgrid; apns clients
    .venv/bin/python bench/mock_throughput.py --providers fcm --no-apns --duration 8
    .venv/bin/python bench/mock_throughput.py --library-rounds 3   # more aiohttp.web rounds
    BENCH_EXTRA_PATH=/tmp/httpx .venv/bin/python bench/mock_throughput.py   # httpx from a
        # `pip install --target /tmp/httpx 'httpx[http2]' sniffio` dir, kept out of the venv
        # (without sniffio httpcore retries that import on every request)

Writes bench/results/mock_throughput.md and .json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- request templates

def fcm_request(port: int) -> tuple[bytes, bytes]:
    body = (b'{"message":{"token":"bench-token-%(n)d","notification":{"title":"Your code",'
            b'"body":"482913 is your code"},"data":{"herald_id":"bench-%(n)d"},'
            b'"android":{"ttl":"30s","priority":"HIGH"}}}')
    head = (b"POST /v1/projects/herald-dev/messages:send HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Authorization: Bearer bench\r\nContent-Type: application/json\r\n" % port)
    return head, body


def twilio_request(port: int) -> tuple[bytes, bytes]:
    body = (b"To=%%2B1555%(n)07d&From=%%2B15550000000&Body=482913+is+your+code&StatusCallback="
            b"http%%3A%%2F%%2F127.0.0.1%%3A8080%%2Fcb%%3Fherald_id%%3Dbench-%(n)d")
    head = (b"POST /2010-04-01/Accounts/ACherald0000000000000000000000000/Messages.json HTTP/1.1"
            b"\r\nHost: 127.0.0.1:%d\r\nAuthorization: Basic QUNoZXJhbGQ6dG9rZW4=\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n" % port)
    return head, body


def sendgrid_request(port: int) -> tuple[bytes, bytes]:
    body = (b'{"personalizations":[{"to":[{"email":"u%(n)d@example.com"}]}],'
            b'"from":{"email":"herald@example.com"},"subject":"Your code",'
            b'"content":[{"type":"text/plain","value":"482913 is your code"}],'
            b'"custom_args":{"herald_id":"bench-%(n)d"}}')
    head = (b"POST /v3/mail/send HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Authorization: Bearer bench\r\nContent-Type: application/json\r\n" % port)
    return head, body


TEMPLATES = {"fcm": fcm_request, "twilio": twilio_request, "sendgrid": sendgrid_request}


# ---------------------------------------------------------------- the load generator (child)

class LoadConn(asyncio.Protocol):
    """One keep-alive connection with one request in flight; counts answers by status."""

    def __init__(self, gen: "LoadGen"):
        self.gen = gen
        self.buf = b""
        self.t0 = 0.0

    def connection_made(self, transport):
        self.transport = transport
        self.send()

    def send(self):
        gen = self.gen
        if gen.sent >= gen.max_requests or time.perf_counter() >= gen.deadline:
            self.transport.close()
            return
        gen.sent += 1
        body = gen.body % {b"n": gen.sent}
        self.t0 = time.perf_counter()
        self.transport.write(gen.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def data_received(self, data):
        buf = self.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        i = buf.find(b"Content-Length: ", 0, end)
        length = int(buf[i + 16:buf.index(b"\r\n", i)]) if i >= 0 else 0
        if len(buf) < end + 4 + length:
            self.buf = buf
            return
        self.buf = buf[end + 4 + length:]
        gen = self.gen
        status = buf[9:12]
        gen.statuses[status] = gen.statuses.get(status, 0) + 1
        if gen.sample_every and gen.sent % gen.sample_every == 0:
            gen.latencies.append(time.perf_counter() - self.t0)
        gen.done += 1
        self.send()

    def connection_lost(self, exc):
        self.gen.closed += 1
        if self.gen.closed == self.gen.connections:
            self.gen.finished.set()


class LoadGen:
    def __init__(self, port, provider, connections, max_requests, duration):
        self.port, self.connections = port, connections
        self.max_requests, self.duration = max_requests, duration
        self.head, self.body = TEMPLATES[provider](port)
        self.sent = self.done = self.closed = 0
        self.statuses: dict[bytes, int] = {}
        self.latencies: list[float] = []
        self.sample_every = 7

    async def run(self) -> dict:
        loop = asyncio.get_running_loop()
        self.finished = asyncio.Event()
        self.deadline = time.perf_counter() + self.duration
        t0 = time.perf_counter()
        for _ in range(self.connections):
            await loop.create_connection(lambda: LoadConn(self), "127.0.0.1", self.port)
        await asyncio.wait_for(self.finished.wait(), self.duration + 30)
        elapsed = time.perf_counter() - t0
        lat = sorted(self.latencies)
        pct = (lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 3)) \
            if lat else (lambda q: None)
        return {"sent": self.sent, "answered": self.done, "elapsed_s": round(elapsed, 3),
                "rps": round(self.done / elapsed, 1),
                "statuses": {k.decode(): v for k, v in self.statuses.items()},
                "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)}}


def load_main(args) -> None:
    gen = LoadGen(args.port, args.provider, args.connections, args.requests, args.duration)
    print(json.dumps(asyncio.run(gen.run())))


# ---------------------------------------------------------------- the FCM mock on aiohttp.web

def aiohttp_twin(state):
    """The FCM mock as an aiohttp.web app: ``POST /v1/projects/{project}/messages:send`` (and
    ``/_mock/*`` for the bench's reset and stats), each request handed to the same
    ``MockState.handle`` the hand-written server calls. So the per-request work is the mock's
    own, to the line: path and auth checks, orjson parsing, the whole FCM validation, the
    switches, the counters and the JSON log line (kept in memory; neither server is given a
    ``--log`` file here). Headers go in lower-cased, as http1.py passes them; the reply's
    status, body, headers and content type go out as a ``web.Response``; added latency is an
    ``asyncio.sleep`` in the handler. No access log: the mock keeps its own.

    What it does not do: the per-client connection cap (http1.py counts connections), refuse-
    mode outages (closing the listener), the APNs mock's HTTP/2 sniffing; a wrong method or
    path gets aiohttp's own 405/404, not Google's error body, and is not logged. None of those
    is on the benchmark's path. aiohttp adds what it always adds (routing, ``Date`` and
    ``Server`` headers, its request and response objects): that is the cost measured."""
    from aiohttp import web

    from herald_mocks.core import Request

    async def handle(request: web.Request) -> web.Response:
        req = Request(request.method, request.path, request.query_string,
                      {k.lower(): v for k, v in request.headers.items()}, await request.read())
        reply, delay = state.handle(req)
        if delay > 0:
            await asyncio.sleep(delay)
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers,
                            content_type=reply.content_type)

    app = web.Application()
    app.router.add_post("/v1/projects/{project}/messages:send", handle)
    app.router.add_route("*", "/_mock/{admin:.*}", handle)
    return app


async def serve_aiohttp_twin(provider: str, port: int) -> None:
    """Serve the twin on loopback until SIGTERM; print the mocks' readiness line."""
    import signal

    from aiohttp import web

    from herald_mocks.__main__ import make_provider
    from herald_mocks.core import MockState
    if provider != "fcm":
        raise SystemExit("the aiohttp.web twin is written for the FCM mock only")
    state = MockState(make_provider(provider))
    runner = web.AppRunner(aiohttp_twin(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024, reuse_address=True)
    await site.start()
    port = runner.addresses[0][1]
    print(f"herald-mock {provider} (aiohttp.web) listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    state.close()


# ---------------------------------------------------------------- the driver (parent)

def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


SERVERS = ("herald_mocks", "aiohttp.web")  # the hand-written server, its library twin


def start_mock(provider: str, server: str = "herald_mocks") -> tuple[subprocess.Popen, int]:
    cmd = ([sys.executable, "-m", "herald_mocks", "--provider", provider, "--port", "0"]
           if server == "herald_mocks" else
           [sys.executable, __file__, "--aiohttp-twin", "--provider", provider, "--port", "0"])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the readiness line; the child exits if it cannot listen
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"mock {provider} did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def admin(port: int, method: str, path: str, body: bytes | None = None) -> dict:
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def run_http1(provider: str, connections: int, requests: int, duration: float,
              server: str = "herald_mocks") -> dict:
    proc, port = start_mock(provider, server)
    try:
        # warm-up: connections, caches, the allocator
        subprocess.run([sys.executable, __file__, "--load", "--provider", provider, "--port",
                        str(port), "--connections", str(connections), "--requests", "2000",
                        "--duration", "2"], check=True, capture_output=True)
        admin(port, "POST", "/_mock/reset", b"{}")
        cpu0 = cpu_seconds(proc.pid)
        out = subprocess.run([sys.executable, __file__, "--load", "--provider", provider,
                              "--port", str(port), "--connections", str(connections),
                              "--requests", str(requests), "--duration", str(duration)],
                             check=True, capture_output=True, text=True)
        cpu = cpu_seconds(proc.pid) - cpu0
        result = json.loads(out.stdout)
        stats = admin(port, "GET", "/_mock/stats")
        result.update(provider=provider, server=server, connections=connections,
                      mock_cpu_s=round(cpu, 3),
                      mock_cpu_share=round(cpu / result["elapsed_s"], 3),
                      rps_per_mock_cpu_s=round(result["answered"] / cpu, 1) if cpu else None,
                      mock_logged=stats["received"], mock_accepted=stats["accepted"],
                      log_exact=stats["received"] == result["answered"])
        return result
    finally:
        proc.terminate()
        proc.wait(10)


def run_vs_library(connections: int, requests: int, duration: float, rounds: int) -> list[dict]:
    """The FCM mock and its aiohttp.web twin under the same load, alternating (ABBA: the
    order flips each round, so a drift of the machine's load does not favour one side)."""
    runs = []
    for i in range(rounds):
        for server in (SERVERS if i % 2 == 0 else SERVERS[::-1]):
            load0 = os.getloadavg()[0]
            r = run_http1("fcm", connections, requests, duration, server)
            r.update(round=i + 1, load_1m_before=round(load0, 2),
                     load_1m_after=round(os.getloadavg()[0], 2))
            runs.append(r)
            print(json.dumps({k: r[k] for k in ("round", "server", "rps", "rps_per_mock_cpu_s",
                                                 "mock_cpu_share")}), file=sys.stderr)
    return runs


def library_ratios(runs: list[dict]) -> dict:
    """Per round, the hand-written server's req/s and req per server CPU-second over the
    twin's, and the same over all rounds (totals: requests / seconds, requests / CPU s)."""
    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 2) if b else None
    out: dict = {"rounds": []}
    totals = {s: [0, 0.0, 0.0] for s in SERVERS}  # answered, elapsed s, server CPU s
    for i in sorted({r["round"] for r in runs}):
        pair = {r["server"]: r for r in runs if r["round"] == i}
        if len(pair) < 2:
            continue
        hand, lib = pair[SERVERS[0]], pair[SERVERS[1]]
        out["rounds"].append({"round": i, "rps": ratio(hand["rps"], lib["rps"]),
                              "per_cpu_s": ratio(hand["rps_per_mock_cpu_s"] or 0,
                                                 lib["rps_per_mock_cpu_s"] or 0)})
        for s, r in pair.items():
            totals[s][0] += r["answered"]
            totals[s][1] += r["elapsed_s"]
            totals[s][2] += r["mock_cpu_s"]
    (ha, he, hc), (la, le, lc) = totals[SERVERS[0]], totals[SERVERS[1]]
    if he and le and hc and lc:
        out["rps"] = ratio(ha / he, la / le)
        out["per_cpu_s"] = ratio(ha / hc, la / lc)
    return out


# ---------------------------------------------------------------- APNs: HTTP/2 clients

async def _apns_herald(port: int, n: int, concurrency: int) -> float:
    from herald.providers.base import ProviderRequest
    from udfs.h2_client import H2Client
    client = H2Client()
    sem = asyncio.Semaphore(concurrency)
    headers, body = _apns_request(port)
    url = f"http://127.0.0.1:{port}/3/device/"

    async def one(i: int) -> int:
        async with sem:
            req = ProviderRequest("POST", f"{url}{i:064x}", headers, body, http2=True)
            return (await client.request(req)).status

    t0 = time.perf_counter()
    statuses = await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    await client.close()
    assert statuses.count(200) == n, statuses[:5]
    return elapsed


async def _apns_httpx(port: int, n: int, concurrency: int) -> float:
    import httpx
    sem = asyncio.Semaphore(concurrency)
    headers, body = _apns_request(port)
    async with httpx.AsyncClient(http1=False, http2=True,
                                 base_url=f"http://127.0.0.1:{port}") as client:
        async def one(i: int) -> int:
            async with sem:
                r = await client.post(f"/3/device/{i:064x}", headers=headers, content=body)
                return r.status_code

        t0 = time.perf_counter()
        statuses = await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - t0
    assert statuses.count(200) == n, statuses[:5]
    return elapsed


def _apns_request(port: int) -> tuple[dict[str, str], bytes]:
    """Headers and payload exactly as the APNs adapter builds them (a real ES256 token)."""
    from herald.models import notification_from_dict
    from herald.providers.apns import ApnsAdapter
    from herald.settings import Settings
    now = int(time.time() * 1000)
    n = notification_from_dict({
        "id": "bench", "tenant_id": "acme", "user_id": "u", "priority": "critical",
        "to": {"push_token": "0" * 64, "platform": "ios"}, "created_at": now,
        "content": {"title": "Your code", "body": "482913 is your code"}})
    req = ApnsAdapter().build_request(n, n.to, Settings(apns_url=f"http://127.0.0.1:{port}"))
    return dict(req.headers), req.body


def apns_client_main(args) -> None:
    fn = {"herald-h2": _apns_herald, "httpx": _apns_httpx}[args.apns_client]
    elapsed = asyncio.run(fn(args.port, args.requests, args.connections))
    print(json.dumps({"client": args.apns_client, "requests": args.requests,
                      "concurrency": args.connections, "elapsed_s": round(elapsed, 3),
                      "rps": round(args.requests / elapsed, 1)}))


def run_apns_clients(requests: int, concurrency: int) -> list[dict]:
    results = []
    for client in ("herald-h2", "httpx"):
        if client == "httpx":
            probe = subprocess.run([sys.executable, "-c", "import httpx, h2"],
                                   capture_output=True, env=_env())
            if probe.returncode:
                results.append({"client": client, "skipped": "httpx[http2] not installed"})
                continue
        proc, port = start_mock("apns")
        try:
            cpu0_mock = cpu_seconds(proc.pid)
            usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            child = subprocess.Popen([sys.executable, __file__, "--apns-client", client,
                                      "--port", str(port), "--requests", str(requests),
                                      "--connections", str(concurrency)],
                                     stdout=subprocess.PIPE, text=True, env=_env())
            out, _ = child.communicate(timeout=120)
            usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            client_cpu = round(usage1.ru_utime + usage1.ru_stime
                               - usage0.ru_utime - usage0.ru_stime, 3)
            result = json.loads(out)
            result["mock_cpu_s"] = round(cpu_seconds(proc.pid) - cpu0_mock, 3)
            result["client_cpu_s"] = client_cpu
            results.append(result)
        finally:
            proc.terminate()
            proc.wait(10)
    return results


def _env() -> dict:
    env = dict(os.environ)
    extra = os.environ.get("BENCH_EXTRA_PATH")  # e.g. a --target dir holding httpx, not the venv
    if extra:
        env["PYTHONPATH"] = extra + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------- report

def write_report(results: list[dict], apns: list[dict], args,
                 vs_library: list[dict] | None = None, load_before: float | None = None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "connections": args.connections, "max_requests": args.requests,
            "duration_s": args.duration, "load_1m_at_start": load_before,
            "load_1m_at_end": round(os.getloadavg()[0], 2)}
    ratios = library_ratios(vs_library) if vs_library else None
    (RESULTS / "mock_throughput.json").write_text(json.dumps(
        {"meta": meta, "http1": results, "vs_library": vs_library or [],
         "vs_library_ratios": ratios, "apns_clients": apns}, indent=2) + "\n")
    lines = ["# Mock provider throughput", "",
             f"{meta['when']}, Python {meta['python']}, {meta['cpus']} cores shared with the "
             f"load generator (a separate process) and other work (1-minute load "
             f"{meta['load_1m_at_start']} at the start, {meta['load_1m_at_end']} at the "
             f"end). Keep-alive HTTP/1.1, one request in flight per connection, "
             f"{args.connections} connections, at most {args.requests} requests or "
             f"{args.duration} s. Command: `.venv/bin/python "
             "bench/mock_throughput.py`.", "",
             "| mock | requests | req/s | mock CPU share | req per mock CPU-second | "
             "p50 ms | p99 ms | log exact |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['provider']} | {r['answered']} | {r['rps']:.0f} | "
                     f"{r['mock_cpu_share']:.2f} | {r['rps_per_mock_cpu_s'] or 0:.0f} | "
                     f"{r['latency_ms']['p50']} | {r['latency_ms']['p99']} | "
                     f"{'yes' if r['log_exact'] else 'NO'} |")
    lines += ["", "`req per mock CPU-second` is what one core gives the mock when the load "
              "generator is not the limit; `mock CPU share` near 1.0 means the mock was "
              "saturated, well below 1.0 means the client was the limit."]
    if vs_library:
        lines += ["", "## The FCM mock's server against aiohttp.web (same run)", "",
                  "The same load on the FCM mock (herald_mocks: its hand-written asyncio HTTP/1.1 "
                  "server) and on its twin built on aiohttp.web (`aiohttp_twin` in this file: "
                  "the same `MockState` does each request's parsing, validation and logging, "
                  "only the HTTP layer differs), in alternating rounds (the order flips each "
                  "round). Same connections, bounds and warm-up as above; `server CPU` is the "
                  "server process's, from /proc.", "",
                  "| round | server | requests | req/s | server CPU share | "
                  "req per server CPU-second | p50 ms | p99 ms | log exact | load 1m before → "
                  "after |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in vs_library:
            lines.append(f"| {r['round']} | {r['server']} | {r['answered']} | {r['rps']:.0f} | "
                         f"{r['mock_cpu_share']:.2f} | {r['rps_per_mock_cpu_s'] or 0:.0f} | "
                         f"{r['latency_ms']['p50']} | {r['latency_ms']['p99']} | "
                         f"{'yes' if r['log_exact'] else 'NO'} | {r['load_1m_before']} → "
                         f"{r['load_1m_after']} |")
        per_round = ", ".join(f"round {x['round']}: ×{x['rps']} req/s, ×{x['per_cpu_s']} per "
                              "CPU-second" for x in ratios["rounds"])
        lines += ["", f"herald_mocks over aiohttp.web, all rounds: ×{ratios.get('rps')} req/s, "
                  f"×{ratios.get('per_cpu_s')} requests per server CPU-second ({per_round})."]
    if apns:
        lines += ["", "## APNs over HTTP/2 (h2c): which client", "",
                  f"One connection, {args.apns_concurrency} concurrent streams, "
                  f"{args.apns_requests} requests, the adapter's real headers and ES256 token. "
                  "herald-h2 is Herald's own client (udfs/h2_client.py); httpx is "
                  "httpx[http2] from BENCH_EXTRA_PATH (a `pip install --target` dir, kept out "
                  "of the venv).", "",
                  "| client | req/s | elapsed s | client CPU s | mock CPU s |",
                  "|---|---|---|---|---|"]
        for r in apns:
            if "skipped" in r:
                lines.append(f"| {r['client']} | skipped: {r['skipped']} | | | |")
            else:
                lines.append(f"| {r['client']} | {r['rps']:.0f} | {r['elapsed_s']} | "
                             f"{r['client_cpu_s']} | {r['mock_cpu_s']} |")
    from bench.common import write_markdown  # keeps the file's hand-written Reading
    write_markdown(RESULTS / "mock_throughput.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--providers", default="fcm,twilio,sendgrid")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--requests", type=int, default=300_000)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--apns-requests", type=int, default=8_000)
    ap.add_argument("--apns-concurrency", type=int, default=100)
    ap.add_argument("--no-apns", action="store_true")
    ap.add_argument("--library-rounds", type=int, default=2,
                    help="rounds of the FCM mock against its aiohttp.web twin (0: none)")
    # child modes
    ap.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--apns-client", help=argparse.SUPPRESS)
    ap.add_argument("--aiohttp-twin", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--provider", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load:
        return load_main(args)
    if args.apns_client:
        return apns_client_main(args)
    if args.aiohttp_twin:
        return asyncio.run(serve_aiohttp_twin(args.provider, args.port))
    args.duration = min(args.duration, 20.0)  # the machine is shared: keep every run short
    load_before = round(os.getloadavg()[0], 2)
    results = [run_http1(p, args.connections, args.requests, args.duration)
               for p in args.providers.split(",") if p]
    vs_library = run_vs_library(args.connections, args.requests, args.duration,
                                args.library_rounds)
    apns = [] if args.no_apns else run_apns_clients(args.apns_requests, args.apns_concurrency)
    write_report(results, apns, args, vs_library, load_before)


if __name__ == "__main__":
    main()
