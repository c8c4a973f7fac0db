"""What one Python hop per record costs in PyFlink thread mode, against one hop per batch.

Both jobs read the same datagen rows (400-byte values) and do trivial Python work: (record) a
Python map per row; (batch) a SQL TUMBLE window per shard collects the rows with ARRAY_AGG in
Java and a Python map sees one row per window. Rate = rows / execute time (start-up included).

    python bench/python_hops.py [--rows 500000]     → bench/results/python_hops.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def child(mode: str, rows: int) -> None:
    sys.path.insert(0, str(ROOT))
    from jobs.common import python_env_ready
    python_env_ready()
    from pyflink.common import Configuration, Types
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment
    conf = Configuration()
    conf.set_string("python.execution-mode", "thread")
    conf.set_string("python.executable", sys.executable)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    t = StreamTableEnvironment.create(env)
    t.execute_sql(f"""CREATE TABLE src (id BIGINT, v STRING, pt AS PROCTIME()) WITH (
      'connector'='datagen', 'number-of-rows'='{rows}', 'rows-per-second'='10000000',
      'fields.id.kind'='sequence', 'fields.id.start'='1', 'fields.id.end'='{rows}',
      'fields.v.length'='400')""")
    if mode == "batch":
        table = t.sql_query("""SELECT MOD(id, 4) AS shard, ARRAY_AGG(v) AS vs
          FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(pt), INTERVAL '0.02' SECOND))
          GROUP BY MOD(id, 4), window_start, window_end""")
        out = t.to_data_stream(table).map(lambda r: len(r.vs), output_type=Types.INT())
    else:
        out = t.to_data_stream(t.from_path("src")).map(lambda r: 1, output_type=Types.INT())
    t.create_temporary_view("o", t.from_data_stream(out))
    t.execute_sql("CREATE TABLE bh (n INT) WITH ('connector'='blackhole')")
    started = time.time()
    t.execute_sql("INSERT INTO bh SELECT * FROM o").wait()
    print(json.dumps({"mode": mode, "rows": rows, "seconds": round(time.time() - started, 2),
                      "rows_per_s": round(rows / (time.time() - started))}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--child", choices=["record", "batch"])
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.rows)
        return
    runs = []
    for mode in ("record", "batch", "record", "batch"):
        done = subprocess.run([sys.executable, __file__, "--child", mode, "--rows", str(args.rows)],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        line = [x for x in done.stdout.splitlines() if x.startswith("{")]
        if not line:
            raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
        runs.append({**json.loads(line[-1]), "load": round(os.getloadavg()[0], 2)})
        print(runs[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "python_hops.json").write_text(json.dumps(runs, indent=2))
    lines = ["# One Python hop per record vs one per batch (PyFlink thread mode)", "",
             f"Measured {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, 2 cores, "
             "parallelism 1, datagen 400-byte values, trivial Python work, start-up included. "
             "`load` is the 1-minute load average after the run (above 2: others competed).", "",
             "| mode | rows | rows/s | load |", "|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['rows']} | {r['rows_per_s']} | {r['load']} |" for r in runs]
    (RESULTS / "python_hops.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
