"""Herald's delivery job: Kafka (critical, promo) → parse → gate per user → provider → status.

Run embedded:   python -m jobs.delivery
On a cluster:   flink run -py jobs/delivery.py   (the connector jar from .stack/flink-jars)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `flink run -py jobs/delivery.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from herald import states
from herald.settings import Settings, load_settings
from jobs.common import latest_checkpoint, make_environments, register_tables


def build_pipeline(env, t_env, settings: Settings) -> None:
    """Wire the critical delivery path; sources and sinks are the tables in sql/kafka_tables.sql."""
    from pyflink.common import Types
    from operators.delivery import DeliveryFunction
    from operators.rows import DLQ_TAG, KEYED_PAYLOAD

    register_tables(t_env, "kafka_tables.sql", settings)
    statements = t_env.create_statement_set()
    # One chain per class, each in its own slot sharing group: a campaign's backlog backs up
    # its own chain and never the critical one.
    for table, priority in (("critical_in", states.CRITICAL), ("promo_in", states.PROMOTIONAL)):
        delivered = (t_env.to_data_stream(t_env.from_path(table))
                     .key_by(lambda r: r.user_id or r.k or "", key_type=Types.STRING())
                     .process(DeliveryFunction(settings, priority), output_type=KEYED_PAYLOAD)
                     .name(f"deliver-{priority}").uid(f"deliver-{priority}")
                     .slot_sharing_group(priority))
        statements.add_insert("status_out", t_env.from_data_stream(delivered))
        statements.add_insert("dlq_out", t_env.from_data_stream(delivered.get_side_output(DLQ_TAG)))
    statements.attach_as_datastream()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallelism", type=int, default=None)
    parser.add_argument("--restore", metavar="PATH", default=None,
                        help="a checkpoint or savepoint to start from ('latest': the newest"
                             " retained checkpoint of an earlier run)")
    args, _ = parser.parse_known_args(argv)
    settings = load_settings()
    restore = latest_checkpoint(settings) if args.restore == "latest" else args.restore
    if restore:
        print(f"herald-delivery: restoring from {restore}", flush=True)
    env, t_env = make_environments(settings, "herald-delivery", restore_from=restore,
                                   parallelism=args.parallelism)
    build_pipeline(env, t_env, settings)
    env.execute("herald-delivery")


if __name__ == "__main__":
    main()
