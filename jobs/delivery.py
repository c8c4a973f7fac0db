"""Herald's delivery job: Kafka (critical, promo) → parse → gate per user → provider → status.

Run embedded:   python -m jobs.delivery
On a cluster:   flink run -py jobs/delivery.py   (the connector jar from .stack/flink-jars)
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `flink run -py jobs/delivery.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from herald import states
from herald.settings import Settings, load_settings
from jobs.common import register_tables, run_job, sql_statements


def build_pipeline(env, t_env, settings: Settings) -> None:
    """Wire both classes; sources and sinks are the tables in sql/kafka_tables.sql."""
    from pyflink.common import Types
    from operators.calls import RETRY_TAG, CallBatchFunction
    from operators.control import ApplyQuotaFunction
    from operators.gate import GateFunction
    from operators.retries import RetryWaitFunction
    from operators.rows import DLQ_TAG, KEYED_PAYLOAD, RELEASED, STATUS_TAG

    register_tables(t_env, "kafka_tables.sql", settings)
    statements = t_env.create_statement_set()
    classes = (("critical_in", "retry_critical", states.CRITICAL, settings.critical_batch_window_ms),
               ("promo_in", "retry_promo", states.PROMOTIONAL, settings.promo_batch_window_ms))
    # One chain per class, each in its own slot sharing group: a campaign's backlog backs up
    # its own chain and never the critical one.
    for table, retry, priority, window_ms in classes:
        window_s = f"{window_ms / 1000:.3f}"
        batches = t_env.sql_query(sql_statements("batches.sql", settings, table=table,
                                                 window_s=window_s)[0])
        released = (t_env.to_data_stream(batches)
                    .key_by(lambda r: r.shard, key_type=Types.INT())
                    .process(GateFunction(settings, priority), output_type=RELEASED)
                    .name(f"gate-{priority}").uid(f"gate-{priority}")
                    .slot_sharing_group(priority))
        # Retries come back from the class's retry topic, past the gate (its dedup would drop
        # them), and wait for their not_before in the retry wait.
        retry_batches = t_env.sql_query(sql_statements("batches.sql", settings,
                                                       table=f"{retry}_in", window_s=window_s)[0])
        retried = (t_env.to_data_stream(retry_batches)
                   .key_by(lambda r: r.shard, key_type=Types.INT())
                   .process(RetryWaitFunction(settings), output_type=RELEASED)
                   .name(f"retry-wait-{priority}").uid(f"retry-wait-{priority}")
                   .slot_sharing_group(priority))
        sent = (released.union(retried)
                .process(CallBatchFunction(settings, priority), output_type=KEYED_PAYLOAD)
                .name(f"call-{priority}").uid(f"call-{priority}")
                .slot_sharing_group(priority))
        for stream, sink in ((sent, "status_out"),
                             (sent.get_side_output(RETRY_TAG), f"{retry}_out"),
                             (sent.get_side_output(DLQ_TAG), "dlq_out"),
                             (released.get_side_output(STATUS_TAG), "status_out"),
                             (released.get_side_output(DLQ_TAG), "dlq_out"),
                             (retried.get_side_output(DLQ_TAG), "dlq_out")):
            statements.add_insert(sink, t_env.from_data_stream(stream))
    # Quota changes from herald.control go into the limiter's Redis config (operators/control.py
    # says why there and not in broadcast state).
    quotas = t_env.sql_query("SELECT k, v FROM control_quota_in "
                             "WHERE JSON_VALUE(v, '$.kind') = 'quota'")
    rejected = (t_env.to_data_stream(quotas)
                .process(ApplyQuotaFunction(settings), output_type=KEYED_PAYLOAD)
                .name("apply-quota").uid("apply-quota").set_parallelism(1))
    statements.add_insert("dlq_out", t_env.from_data_stream(rejected))
    statements.attach_as_datastream()


def main(argv: list[str] | None = None) -> None:
    run_job("herald-delivery", build_pipeline, load_settings(), argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
