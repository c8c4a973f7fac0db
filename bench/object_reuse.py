"""Flink's object reuse (`flink_object_reuse`) on and off, in turn, in the null-provider run.

The delivery job with every semantic on and the null transport (`delivery_throughput.null_run`:
a backlog, measured on the status topic), once per setting per round, so both see the same
hour of this machine. Per run: notifications per job CPU-second after the first quarter, and
that CPU by part of the job (the Java parts are where a chained hop's copy would show).

    python bench/object_reuse.py [--n 150000] [--rounds 2] [--append]
Writes bench/results/object_reuse.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine, write_markdown  # noqa: E402
from bench.delivery_throughput import null_run  # noqa: E402
from herald.settings import load_settings  # noqa: E402
from herald_stack.components import Stack  # noqa: E402

NAME = "object_reuse"


def write(runs: list[dict], at_start: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(
        json.dumps({"machine": at_start, "runs": runs}, indent=2) + "\n")
    parts = sorted({p for r in runs for p in r["steady_cpu_by_component"]})
    lines = ["# Object reuse in the delivery job, null provider", "",
             f"Measured {at_start['when']} (load 1m at the start {at_start['loadavg_1m_at_start']},"
             f" {at_start['cpus']} cores shared with Kafka and Redis): the delivery job with every"
             " semantic on and the null transport, a backlog measured on the status topic,"
             " `flink_object_reuse` off and on in turn. Notifications per job CPU-second and the"
             " job's CPU seconds by part, after the first quarter.", "",
             "| round | object reuse | n | load | per job CPU-s | steady/s | "
             + " | ".join(parts) + " | exact |",
             "|---|---|---|---|---|---|" + "---|" * len(parts) + "---|"]
    for r in runs:
        by = r["steady_cpu_by_component"]
        lines.append(f"| {r['round']} | {'on' if r['object_reuse'] else 'off'} | {r['n']:,} |"
                     f" {r['load_1m']} | **{r['steady_per_job_cpu_second']:,}** |"
                     f" {r['calls_per_s_steady']:,} | "
                     + " | ".join(f"{by.get(p, 0.0):.1f}" for p in parts)
                     + f" | {'yes' if r['exact'] else 'NO'} |")
    write_markdown(RESULTS / f"{NAME}.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--append", action="store_true",
                        help="add the rounds to the results already written")
    args = parser.parse_args(argv)
    base = load_settings()
    Stack(base).up(mocks=False)
    at_start, runs = machine(), []
    if args.append and (RESULTS / f"{NAME}.json").exists():
        doc = json.loads((RESULTS / f"{NAME}.json").read_text())
        at_start, runs = doc["machine"], doc["runs"]
    first = max((r["round"] for r in runs), default=0) + 1
    for round_ in range(first, first + args.rounds):
        for reuse in (False, True):
            result = null_run(base.replace(flink_object_reuse=reuse), args.n, args.users,
                              args.timeout)
            runs.append({"round": round_, "object_reuse": reuse, **result})
            print(json.dumps(runs[-1]), flush=True)
            write(runs, at_start)  # after every run: a later failure keeps what was measured


if __name__ == "__main__":
    main()
