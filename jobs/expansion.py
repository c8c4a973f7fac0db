"""Herald's campaign expansion job: herald.campaigns (+ cancels on herald.control) → one
Notification per recipient on herald.promo, with campaign-level Status events.

Run embedded:   python -m jobs.expansion [--restore latest]
On a cluster:   flink run -py jobs/expansion.py   (the connector jar from .stack/flink-jars)

Its checkpoints live in their own directory (<checkpoint dir>/expansion), so `--restore latest`
finds this job's newest checkpoint and never the delivery job's.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `flink run -py jobs/expansion.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from herald.campaigns import CANCEL_CAMPAIGN
from herald.segments import SEPARATOR
from herald.settings import Settings, load_settings
from jobs.common import (checkpoint_dir, register_payload_sinks, register_tables, run_job,
                         sql_statements)

JOB_NAME = "herald-expansion"
# Kafka transactions of the promo sink stay open for one checkpoint interval; the broker's
# transaction.max.timeout.ms (15 min by default) caps this.
TRANSACTION_TIMEOUT_MS = 600_000


@dataclass(frozen=True)
class Tables:
    """The tables the job reads and writes; a benchmark or test may swap any of them."""
    campaigns: str = "expansion_campaigns_in"
    control: str = "expansion_control_in"
    promo: str = "expansion_promo_out"
    status: str = "expansion_status_out"
    dlq: str = "expansion_dlq_out"


def job_settings(settings: Settings) -> Settings:
    """This job's view of the settings: its own checkpoint directory and REST port."""
    return settings.replace(flink_checkpoint_dir=str(checkpoint_dir(settings) / "expansion"),
                            flink_rest_port=settings.expansion_rest_port)


def register_expansion_tables(t_env, settings: Settings) -> None:
    """The job's default `Tables`: sql/expansion_tables.sql's, and the status and dead-letter
    sinks."""
    tables = Tables()
    register_tables(t_env, "expansion_tables.sql", settings,
                    transactional_id_prefix=f"{settings.consumer_group}-expansion",
                    transaction_timeout_ms=str(TRANSACTION_TIMEOUT_MS))
    register_payload_sinks(t_env, settings, {tables.status: settings.topic_status,
                                              tables.dlq: settings.topic_dlq})


def build_pipeline(env, t_env, settings: Settings, tables: Tables = Tables()) -> None:
    """Kafka tables → keyed expansion operator (Python, per batch) → SQL unnest (Java) → sinks.

    With the default ``tables`` they are registered (`register_expansion_tables`);
    otherwise the caller has created the ones it names.
    """
    from pyflink.common import Types
    from operators.expansion import BATCH, ExpandFunction
    from operators.rows import DLQ_TAG, STATUS_TAG, side_output

    # Chained operators hand rows on without a defensive copy, whatever `flink_object_reuse`
    # says: without it, each unnested row's copy re-encodes its batch's whole id string
    # (measured: half the job's CPU).
    env.get_config().enable_object_reuse()
    if tables == Tables():
        register_expansion_tables(t_env, settings)
    # Only the key (tenant and campaign id: ids are chosen by tenants) and the raw record cross
    # into Python.
    tenant = "COALESCE(JSON_VALUE(v, '$.tenant_id'), '')"
    campaigns = t_env.to_data_stream(t_env.sql_query(
        f"SELECT CONCAT({tenant}, CHR(31), COALESCE(JSON_VALUE(v, '$.campaign_id'), k, '')) "
        f"AS ckey, k, v FROM {tables.campaigns}"))
    cancels = t_env.to_data_stream(t_env.sql_query(
        f"SELECT CONCAT({tenant}, CHR(31), COALESCE(JSON_VALUE(v, '$.campaign_id'), '')) "
        f"AS ckey, k, v FROM {tables.control} "
        f"WHERE JSON_VALUE(v, '$.kind') = '{CANCEL_CAMPAIGN}'"))
    batches = (campaigns.connect(cancels)
               .key_by(lambda r: r[0], lambda r: r[0], key_type=Types.STRING())
               .process(ExpandFunction(settings), output_type=BATCH)
               .name("expand").uid("expand"))
    # Batches round-robin to the SQL subtasks: one campaign (one key) spreads over all of them.
    t_env.create_temporary_view("expansion_batches", t_env.from_data_stream(batches.rebalance()))
    records = t_env.sql_query(sql_statements(
        "expansion_records.sql", settings, batches="expansion_batches",
        separator_code=str(ord(SEPARATOR)))[0])
    statements = t_env.create_statement_set()
    statements.add_insert(tables.promo, records)
    statements.add_insert(tables.status, t_env.from_data_stream(
        side_output(batches, STATUS_TAG)))
    statements.add_insert(tables.dlq, t_env.from_data_stream(side_output(batches, DLQ_TAG)))
    statements.attach_as_datastream()


def main(argv: list[str] | None = None) -> None:
    settings = job_settings(load_settings())
    # All of it is promotional work: where it shares a machine with critical delivery (the
    # embedded default), it runs below it for the CPU; the MiniCluster's JVM inherits this.
    from operators.threads import lower_priority
    lower_priority(settings.promo_job_nice)
    run_job(JOB_NAME, build_pipeline, settings, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
