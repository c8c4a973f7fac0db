"""The crash window, measured: how many calls are repeated when the job is killed -9 mid-stream.

A paced critical stream runs while the delivery job (MiniCluster) is killed with SIGKILL
--kills times, each 1–3 s (at random) after it is delivering again, and restarted each time from its latest retained checkpoint
(`--restore latest`). At the end every id must be at the mock at least once (none lost); the
ids accepted more than once are the calls that were in flight at a kill (claimed in Redis,
no `sent` marker yet), which Herald re-sends on purpose and reports as such.

    python bench/crash_window.py [--n 30000] [--rate 1500] [--kills 5]
Writes bench/results/crash_window.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (RESULTS, Mock, exactness, machine, start_system,  # noqa: E402
                          stop_system, write_markdown)
from bench.delivery_throughput import produce  # noqa: E402
from herald.settings import load_settings  # noqa: E402
from herald_stack.components import Stack  # noqa: E402


def start_job(settings, run: str, start: int) -> subprocess.Popen:
    """The delivery job; every start after the first restores from the latest checkpoint."""
    args = [sys.executable, "-m", "jobs.delivery", *(["--restore", "latest"] if start else [])]
    return start_system(args, settings, f"/tmp/herald-crash-{run}-{start}.log")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--rate", type=float, default=1_500)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    base = load_settings()
    Stack(base).up(mocks=False)
    run = uuid.uuid4().hex[:8]
    topics = {f"topic_{role}": f"crash{run}.{name}" for role, name in base.topics().items()}
    kills = []
    with Mock("fcm", latency_ms=args.latency_ms) as mock:
        settings = base.replace(consumer_group=f"crash-{run}", flink_rest_port=0, fcm_url=mock.url,
                                flink_checkpoint_dir=f"/tmp/herald-bench-ck/{run}",
                                flink_checkpoint_interval_ms=1_000, **topics)
        Stack(settings).create_topics(list(settings.topics().values()))
        job = start_job(settings, run, 0)
        producer = threading.Thread(target=produce,
                                    args=(settings, run, args.n, 20_000, args.rate))
        producer.start()
        started = time.monotonic()
        try:
            for k in range(args.kills):
                # Kill only a job that is delivering: wait until calls arrive again after the
                # (re)start, then let it run 1–3 s more, a random moment within a batch's life.
                resumed_from = mock.stats()["accepted"]
                while mock.stats()["accepted"] < resumed_from + 200:
                    if job.poll() is not None:
                        raise RuntimeError(f"the job died: /tmp/herald-crash-{run}-*.log")
                    time.sleep(0.05)
                time.sleep(rng.uniform(1.0, 3.0))
                accepted_before = mock.stats()["accepted"]
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
                kills.append({"at_s": round(time.monotonic() - started, 1),
                              "accepted_before": accepted_before})
                job = start_job(settings, run, k + 1)
            producer.join()
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                records = mock.records()
                if len({r.get("herald_id") for r in records
                        if r.get("result") == "accepted"}) >= args.n:
                    break
                if job.poll() is not None:
                    raise RuntimeError(f"the job died: /tmp/herald-crash-{run}-*.log")
                time.sleep(2)
        finally:
            stop_system(job)
        records = mock.records()
    ex = exactness(records, args.n)
    accepted: dict[str, int] = {}
    for r in records:
        if r.get("result") == "accepted":
            accepted[r["herald_id"]] = accepted.get(r["herald_id"], 0) + 1
    repeats = sum(v - 1 for v in accepted.values())
    result = {"machine": machine(), "load_after": round(os.getloadavg()[0], 2), "n": args.n,
              "rate": args.rate, "kills": kills, "mock_latency_ms": args.latency_ms,
              "lost": args.n - ex["unique_ids"], "repeated_calls": repeats,
              "repeated_ids": ex["repeated_ids"],
              "repeats_per_kill": round(repeats / max(1, len(kills)), 1)}
    write(result)
    print(json.dumps(result, indent=2))


def write(r: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "crash_window.json").write_text(json.dumps(r, indent=2))
    text = "\n".join([
        "# The crash window: calls repeated by kill -9", "",
        f"Measured {r['machine']['when']}: {r['n']:,} critical notifications paced at"
        f" {r['rate']:g}/s into the delivery job (MiniCluster, checkpoints every 1 s, FCM mock at"
        f" {r['mock_latency_ms']:g} ms); the job killed with SIGKILL {len(r['kills'])} times, each"
        " 1–3 s (at random) after it was delivering again, and restarted each time with"
        " `--restore latest`. Load average after the run:"
        f" {r['load_after']}."
        " `python bench/crash_window.py` reproduces it.", "",
        "| kills | lost ids | repeated calls | repeated ids | repeated calls per kill |",
        "|---|---|---|---|---|",
        f"| {len(r['kills'])} | {r['lost']} | {r['repeated_calls']} | {r['repeated_ids']} |"
        f" {r['repeats_per_kill']} |", "",
        "A repeat is a call that was on the wire when the job died: claimed in Redis, no `sent`"
        " marker yet, so after the restore Herald cannot know whether the provider has it and"
        " sends it again (reported with the detail \"in flight at a crash\"). Everything accepted"
        " before the kill and replayed from Kafka after the restore is stopped by its `sent`"
        " marker. The bound, per killed gate subtask: the calls of the batch it was working on"
        " (one SQL window of its lane) whose claims were not settled yet, i.e. the parts under"
        " way and the completed part whose settle waits for the next part's claim; never more"
        " than the batch (`operators/gate.py`).", ""])
    write_markdown(RESULTS / "crash_window.md", text)


if __name__ == "__main__":
    main()
