"""What the benchmarks share: a provider mock in its own process, CPU accounting from /proc,
FCM requests built by the real adapter, the mock's log read back as latencies, percentiles.

Loopback only; every mock started here is stopped by the same ``with`` block.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# Dedup TTL (keyed state and Redis `sent` markers) in benchmark runs: long enough for any run
# and its restores, short enough that a day of runs does not pile up in the dev stack's Redis
# (at the default 24 h, one afternoon left ≈ 1 GB of markers, and Redis's AOF rewrites, a fork
# and 7–14 s of writing each, landed inside runs).
BENCH_DEDUP_TTL_MS = 600_000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_cpu(path: str) -> tuple[str, float]:
    """(name, user + system CPU seconds) from a /proc stat file: a process's (its threads
    included) or one thread's (/proc/<pid>/task/<tid>/stat)."""
    with open(path) as fh:
        stat = fh.read()
    end = stat.rindex(")")  # the name may hold spaces and parentheses
    fields = stat[end + 2:].split()
    return stat[stat.index("(") + 1:end], (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (its threads included), from /proc."""
    return stat_cpu(f"/proc/{pid}/stat")[1]


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and every live descendant (a Flink client, its JVM, the
    Python workers it forks)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            total += cpu_seconds(p)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


# What a thread of the delivery job does, by its name's first 15 characters (all Linux keeps):
# Flink names a task's thread after its chain of operators. First match wins.
JOB_COMPONENTS = (
    ("gate-", "gate (Python: parse, state, Redis, calls)"),
    ("retry-wait-", "retry wait + retry calls (Python)"),
    ("WindowAggregate", "SQL window (batches, JSON)"),
    ("Source", "Kafka sources"),
    ("*anonymous_data", "sinks (stream→table, Kafka writers)"),
    ("kafka-producer-", "Kafka producer I/O"),
    ("C1 CompilerThre", "JIT compilers"),
    ("C2 CompilerThre", "JIT compilers"),
    ("GC Thread", "garbage collector"),
    ("G1 ", "garbage collector"),
)


def job_component(thread_name: str) -> str:
    for prefix, component in JOB_COMPONENTS:
        if thread_name.startswith(prefix):
            return component
    return "Flink runtime and the rest"


def tree_cpu_by_component(pid: int) -> dict[str, float]:
    """CPU seconds of a process tree's threads so far, summed per `job_component`: which part
    of the job the CPU went to (the per-component figures of the result files)."""
    totals: dict[str, float] = {}
    for task in tree_tasks(pid):
        try:
            name, seconds = stat_cpu(f"{task}/stat")
        except (FileNotFoundError, ProcessLookupError):
            continue
        component = job_component(name)
        totals[component] = totals.get(component, 0.0) + seconds
    return totals


def tree_tasks(pid: int):
    """The /proc directories of a process tree's threads (those gone meanwhile are skipped)."""
    for p in [pid, *descendants(pid)]:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tids:
            yield f"/proc/{p}/task/{tid}"


def cpu_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-component CPU seconds spent between two `tree_cpu_by_component` readings."""
    spent = [(k, v - before.get(k, 0.0)) for k, v in after.items()]
    return {k: round(v, 2) for k, v in sorted(spent, key=lambda kv: -kv[1]) if v > 0}


def pids_matching(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (the stack's Kafka, its redis-server)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if text.encode() in fh.read().replace(b"\0", b" "):
                        out.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return out


def stack_cpu_seconds(settings) -> dict[str, float]:
    """CPU seconds so far of the stack's Kafka broker and redis-server (subtract two readings)."""
    def total(pids):
        return sum(cpu_seconds(p) for p in pids)
    return {"kafka": total(pids_matching(f"kafka.Kafka {settings.stack_dir}/")),
            "redis": total(pids_matching(f"redis-server {settings.redis_host}:{settings.redis_port}"))}


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def bench_env(extra_path: str | None = None) -> dict:
    """The environment for a benchmark child: the venv's bin first on PATH (thread mode embeds
    the interpreter found there), plus an optional extra import dir (uvloop, pycurl, curl-cffi
    installed with ``pip install --target``, kept out of the venv)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    paths = [str(ROOT)]
    extra = extra_path or os.environ.get("BENCH_EXTRA_PATH")
    if extra:
        paths.append(extra)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class Mock:
    """``python -m herald_mocks --provider P --port 0`` in its own process, logging to a file
    (the file, not ``/_mock/log``, is read back: 300k records are 170 MB of JSON)."""

    def __init__(self, provider: str = "fcm", latency_ms: float = 0.0):
        self.provider = provider
        self.dir = tempfile.TemporaryDirectory(prefix="herald-bench-")
        self.log_path = Path(self.dir.name) / f"{provider}.jsonl"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "herald_mocks", "--provider", provider, "--port", "0",
             "--latency-ms", str(latency_ms), "--log", str(self.log_path)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"mock {provider} did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def admin(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/_mock/{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict:
        return self.admin("GET", "stats")

    def reset(self) -> None:
        self.admin("POST", "reset", {})

    def configure(self, **changes) -> dict:
        return self.admin("POST", "config", changes)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def records(self) -> list[dict]:
        """Every logged request, from the log file (flushed through the stats call first)."""
        self.stats()
        time.sleep(0.05)  # the mock flushes its log every 20 ms
        with open(self.log_path, "rb") as fh:
            return [orjson.loads(line) for line in fh if line.strip()]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
        self.dir.cleanup()

    def __enter__(self) -> "Mock":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fcm_settings(url: str):
    from herald.settings import Settings
    return Settings(fcm_url=url)


def notification(i: int, user: str, created_at: int):
    """A valid critical push notification whose ``content.data.c`` carries ``created_at``,
    so the mock's log gives the added latency of each call."""
    from herald.models import Contacts, Content, Notification
    return Notification(
        id=f"b-{i}", tenant_id="acme", user_id=user, priority="critical", channels=("push",),
        to=Contacts(push_token=f"tok-{user}", platform="android"),
        content=Content(title="Your code", body="482913 is your code",
                        data={"c": str(created_at)}),
        created_at=created_at, expires_at=created_at + 300_000)


def fcm_requests(url: str, n: int, users: int, created_at: int | None = None) -> tuple[list, list]:
    """``n`` FCM requests built by the real adapter, and their user keys."""
    from herald.providers.registry import Registry
    adapter = Registry().for_channel("push", "android")
    settings = fcm_settings(url)
    now = created_at or time.time_ns() // 1_000_000
    reqs, keys = [], []
    for i in range(n):
        user = f"u{i % users}"
        note = notification(i, user, now)
        reqs.append(adapter.build_request(note, note.to, settings, now_ms=now))
        keys.append(user)
    return reqs, keys


def added_latencies(records: list[dict]) -> list[int]:
    """Per accepted call: the mock's receive time minus the record's ``created_at``, in ms."""
    out = []
    for r in records:
        if r.get("result") != "accepted":
            continue
        data = (r.get("request") or {}).get("data") or {}
        c = data.get("c")
        if c is not None:
            out.append(r["t_ms"] - int(c))
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def exactness(records: list[dict], expected: int) -> dict:
    """How many calls the mock saw, accepted, and how many ids it saw more than once."""
    seen: dict[str, int] = {}
    accepted = 0
    for r in records:
        if r.get("result") == "accepted":
            accepted += 1
            hid = r.get("herald_id")
            seen[hid] = seen.get(hid, 0) + 1
    return {"expected": expected, "received": len(records), "accepted": accepted,
            "unique_ids": len(seen), "repeated_ids": sum(1 for v in seen.values() if v > 1),
            "exact": accepted == expected and len(seen) == expected}


def per_user_order_ok(records: list[dict]) -> bool:
    """True if, for every user, the mock received that user's ids in increasing index order."""
    last: dict[str, int] = {}
    for r in sorted(records, key=lambda r: r["seq"]):
        to = r.get("to")
        hid = r.get("herald_id") or ""
        try:
            index = int(hid.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if index < last.get(to, -1):
            return False
        last[to] = index
    return True


def machine() -> dict:
    import platform
    load = os.getloadavg()
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "loadavg_1m_at_start": round(load[0], 2)}


def start_system(command: list[str], settings, log_path: str | Path,
                 extra_env: dict | None = None) -> subprocess.Popen:
    """A system under test in its own session (so its whole tree can be stopped), with the
    settings as HERALD_* env vars, its output in ``log_path``."""
    from herald.settings import settings_env
    log = open(log_path, "wb")
    try:
        return subprocess.Popen(command, cwd=ROOT,
                                env={**bench_env(), **settings_env(settings), **(extra_env or {})},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def stop_system(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the process group started by ``start_system``, SIGKILL after ``grace_s``."""
    import signal
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass


def drop_topics(bootstrap: str, prefix: str) -> None:
    """Delete every topic whose name contains ``prefix`` (a run's topics, Quix changelogs)."""
    from kafka.admin import KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        names = [t for t in admin.list_topics() if prefix in t]
        if names:
            admin.delete_topics(names)
    finally:
        admin.close()


def wait_accepted(mock: "Mock", count: int, proc: subprocess.Popen, timeout_s: float,
                  label: str = "", log_path: str = "", on_progress=None) -> bool:
    """Poll the mock until it accepted ``count`` calls; False on timeout; raises if ``proc``
    died. A stderr progress line on long waits; ``on_progress(accepted)`` at every poll."""
    started = time.monotonic()
    last = 0.0
    while True:
        got = mock.stats()["accepted"]
        if got >= count:
            return True
        if on_progress is not None:
            on_progress(got)
        if proc.poll() is not None:
            raise RuntimeError(f"{label} exited with {proc.returncode}, see {log_path}")
        t = time.monotonic() - started
        if t > timeout_s:
            return False
        if sys.stderr.isatty() and t - last >= 1:
            last = t
            sys.stderr.write(f"\r{label}: {got:,}/{count:,} accepted at the mock, {t:.0f} s   ")
            sys.stderr.flush()
        time.sleep(0.2)


def bench_settings():
    """The settings from env, with the Flink jars taken from the stack dir when this checkout
    has none (a worktree sharing another checkout's stack through HERALD_STACK_DIR)."""
    from herald.settings import load_settings
    s = load_settings()
    shared = Path(s.stack_dir) / "flink-jars"
    if not Path(s.flink_jars_dir).exists() and shared.exists():
        s = s.replace(flink_jars_dir=str(shared))
    return s


def flink_hot_operators(port: int) -> list[dict]:
    """Each vertex of the running job: its busiest subtask's busy and backpressured ms/s."""
    def get(path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return json.loads(resp.read())
    try:
        job = next(j for j in get("/jobs/overview")["jobs"] if j["state"] == "RUNNING")
        out = []
        for v in get(f"/jobs/{job['jid']}")["vertices"]:
            metrics = get(f"/jobs/{job['jid']}/vertices/{v['id']}/subtasks/metrics"
                          "?get=busyTimeMsPerSecond,backPressuredTimeMsPerSecond")
            m = {x["id"]: x.get("max") for x in metrics}
            out.append({"operator": v["name"][:90],
                        "busy_ms_per_s": m.get("busyTimeMsPerSecond"),
                        "backpressured_ms_per_s": m.get("backPressuredTimeMsPerSecond")})
        return sorted(out, key=lambda o: -(o["busy_ms_per_s"] or 0))
    except Exception as exc:  # noqa: BLE001 - metrics are a nice-to-have in the report
        return [{"error": f"{type(exc).__name__}: {exc}"}]


def write_markdown(path: Path, text: str) -> None:
    """Write a generated result table, keeping a hand-written ``## Reading`` section of the
    file it replaces (so a rerun does not drop the analysis; update it by hand)."""
    old = path.read_text() if path.exists() else ""
    marker = "\n## Reading"
    if marker in old:
        text = text.rstrip("\n") + "\n" + old[old.index(marker):]
    path.write_text(text)
