"""Herald's status rollup job: herald.status → per-window counts and latency per priority,
provider and state (Flink SQL, sql/status_rollup.sql) → herald.rollup.

Run embedded:   python -m jobs.rollup [--print] [--restore latest]
On a cluster:   flink run -py jobs/rollup.py   (the connector jar from .stack/flink-jars)

Windows are tumbling, of event time (the status event's `at`), `rollup_window_s` long; one is
written once the watermark has passed its end (`rollup_max_out_of_orderness_ms` of lateness),
so the last window of a quiet stream waits for the next event. `--print` writes the rows to
stdout instead of herald.rollup.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `flink run -py jobs/rollup.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from herald.settings import Settings, load_settings
from jobs.common import checkpoint_dir, register_tables, run_job

JOB_NAME = "herald-rollup"
SINKS = {"kafka": "rollup_out", "print": "rollup_print"}


def job_settings(settings: Settings) -> Settings:
    """This job's view of the settings: its own checkpoint directory, REST port and lateness."""
    return settings.replace(flink_checkpoint_dir=str(checkpoint_dir(settings) / "rollup"),
                            flink_rest_port=settings.rollup_rest_port,
                            flink_max_out_of_orderness_ms=settings.rollup_max_out_of_orderness_ms)


def build_pipeline(env, t_env, settings: Settings, sink: str = "kafka") -> None:
    """The SQL of sql/status_rollup.sql, its rows inserted into the chosen sink."""
    # Windows align to UTC and window_start converts to epoch ms in UTC.
    t_env.get_config().set("table.local-time-zone", "UTC")
    register_tables(t_env, "status_rollup.sql", settings)
    t_env.create_statement_set().add_insert_sql(
        f"INSERT INTO {SINKS[sink]} SELECT * FROM rollup_rows").attach_as_datastream()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    sink = "print" if "--print" in argv else "kafka"
    run_job(JOB_NAME, lambda env, t_env, s: build_pipeline(env, t_env, s, sink),
            job_settings(load_settings()), [a for a in argv if a != "--print"],
            __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
