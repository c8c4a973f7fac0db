"""Herald's delivery job: Kafka (critical, promo) → parse → gate per user → provider → status.

Run embedded:   python -m jobs.delivery
On a cluster:   flink run -py jobs/delivery.py   (the connector jar from .stack/flink-jars)

One job per class (`HERALD_DELIVERY_CLASSES=critical`, `...=promotional`): on one machine each
class then has its own JVM and Python interpreter, and the promotional one runs niced as a
whole, so a campaign's backlog takes neither the GIL nor the cores from critical delivery.
Both in one job share one interpreter: separate slot sharing groups are separate threads, not
separate processes (bench/results/isolation.md measures both).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `flink run -py jobs/delivery.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from herald import states
from herald.settings import Settings, load_settings
from jobs.common import (checkpoint_dir, register_kafka_sources, register_payload_sinks,
                         register_tables, run_job, sql_statements)

CLASSES = (states.CRITICAL, states.PROMOTIONAL)


def job_classes(settings: Settings) -> tuple[str, ...]:
    """The classes this job delivers (`delivery_classes`), in a fixed order."""
    wanted = {c.strip() for c in settings.delivery_classes.split(",") if c.strip()}
    unknown = sorted(wanted - set(CLASSES))
    if unknown or not wanted:
        raise ValueError(f"delivery_classes must name {' and/or '.join(CLASSES)}, "
                         f"not {settings.delivery_classes!r}")
    return tuple(c for c in CLASSES if c in wanted)


def job_settings(settings: Settings) -> tuple[str, Settings]:
    """This job's name and view of the settings. A job for one class of two keeps its own
    checkpoints (`--restore latest` must never pick the other class's job)."""
    classes = job_classes(settings)
    if classes == CLASSES:
        return "herald-delivery", settings
    name = f"herald-delivery-{classes[0]}"
    own = settings.replace(flink_checkpoint_dir=str(checkpoint_dir(settings) / name))
    if classes == (states.PROMOTIONAL,):
        own = own.replace(flink_rest_port=settings.promo_job_rest_port)
    return name, own


def build_pipeline(env, t_env, settings: Settings) -> None:
    """Wire both classes; the sources are sql/kafka_source.sql's tables (and the control
    table of sql/kafka_tables.sql), the sinks sql/payload_sink.sql's."""
    from pyflink.common import Types
    from operators.calls import CallBatchFunction
    from operators.control import KINDS as CONTROL_KINDS
    from operators.control import ApplyControlFunction
    from operators.gate import GateFunction
    from operators.lanes import job_lanes, lane_keys
    from operators.retries import RetryWaitFunction
    from operators.rows import (DLQ_TAG, KEY_END, KEYED_PAYLOAD, RELEASED, RETRY_TAG,
                                STATUS_BATCH, STATUS_END, side_output)

    # Record timestamps convert to epoch ms in UTC (sql/batches.sql: the log's clock).
    t_env.get_config().set("table.local-time-zone", "UTC")
    register_kafka_sources(t_env, settings, {
        "critical_in": (settings.topic_critical, "critical"),
        "promo_in": (settings.topic_promo, "promo"),
        "retry_critical_in": (settings.topic_retry_critical, "retry-critical"),
        "retry_promo_in": (settings.topic_retry_promo, "retry-promo")})
    register_tables(t_env, "kafka_tables.sql", settings)
    wanted = job_classes(settings)
    # Fails here, before anything runs, at a parallelism above the lanes.
    lanes = job_lanes(settings.gate_lanes, env.get_parallelism())
    # lane → its key: one subtask per lane at parallelism = lanes, spread evenly at its divisors
    keys = lane_keys(lanes, settings.flink_max_parallelism, settings.gate_lanes_spread)
    lanes_per_subtask = -(-lanes // env.get_parallelism())
    statements = t_env.create_statement_set()
    classes = [c for c in (
        ("critical_in", "retry_critical", settings.topic_retry_critical, states.CRITICAL,
         settings.critical_batch_window_ms),
        ("promo_in", "retry_promo", settings.topic_retry_promo, states.PROMOTIONAL,
         settings.promo_batch_window_ms))
        if c[3] in wanted]
    # One chain per class, each in its own slot sharing group: a campaign's backlog backs up
    # its own chain and never the critical one.
    for table, retry, retry_topic, priority, window_ms in classes:
        # Each class has sinks of its own, the two of the shared topics included: one sink for
        # both classes took its checkpoint barrier from both, so while a promotional barrier
        # waited behind a campaign's backlog it stopped reading critical's input (barrier
        # alignment), and its flush at each checkpoint waited for the campaign's records too.
        register_payload_sinks(t_env, settings, {
            f"status_out_{priority}": settings.topic_status,
            f"dlq_out_{priority}": settings.topic_dlq,
            f"{retry}_out": retry_topic})
        # A subtask works its lanes' batches one after another, each with a provider round
        # trip: with more lanes than subtasks the window grows with them, so that a subtask
        # still makes about one batch per window_ms (decision 021).
        window_s = f"{window_ms * lanes_per_subtask / 1000:.3f}"
        batches = t_env.sql_query(sql_statements("batches.sql", settings, table=table,
                                                 window_s=window_s, lanes=str(lanes))[0])
        # The gate sends what it releases itself (operators/gate.py says why).
        gated = (t_env.to_data_stream(batches)
                 .key_by(lambda r: keys[r.shard], key_type=Types.INT())
                 .process(GateFunction(settings, priority, lanes), output_type=STATUS_BATCH)
                 .name(f"gate-{priority}").uid(f"gate-{priority}")
                 .slot_sharing_group(priority)
                 .set_buffer_timeout(settings.flink_status_buffer_timeout_ms))
        # Retries come back from the class's retry topic, past the gate (its dedup would drop
        # them), wait for their not_before in the retry wait, and take their own call operator.
        retry_batches = t_env.sql_query(sql_statements("batches.sql", settings,
                                                       table=f"{retry}_in", window_s=window_s,
                                                       lanes=str(lanes))[0])
        waited = (t_env.to_data_stream(retry_batches)
                  .key_by(lambda r: keys[r.shard], key_type=Types.INT())
                  .process(RetryWaitFunction(settings), output_type=RELEASED)
                  .name(f"retry-wait-{priority}").uid(f"retry-wait-{priority}")
                  .slot_sharing_group(priority)
                  .set_buffer_timeout(settings.flink_status_buffer_timeout_ms))
        retried = (waited
                   .process(CallBatchFunction(settings, priority), output_type=STATUS_BATCH)
                   .name(f"call-{priority}").uid(f"call-{priority}")
                   .slot_sharing_group(priority)
                   .set_buffer_timeout(settings.flink_status_buffer_timeout_ms))
        # The operators' status batches are split into records in Java.
        t_env.create_temporary_view(f"status_batches_{priority}",
                                    t_env.from_data_stream(gated.union(retried)))
        statements.add_insert(f"status_out_{priority}", t_env.sql_query(sql_statements(
            "status_records.sql", settings, batches=f"status_batches_{priority}",
            key_end_code=str(ord(KEY_END)), status_end_code=str(ord(STATUS_END)))[0]))
        # One conversion to the Table API per sink and class: each costs Java CPU per record.
        for sink, streams in (
                (f"{retry}_out", (side_output(gated, RETRY_TAG),
                                  side_output(retried, RETRY_TAG))),
                (f"dlq_out_{priority}", (side_output(gated, DLQ_TAG),
                                         side_output(waited, DLQ_TAG),
                                         side_output(retried, DLQ_TAG)))):
            statements.add_insert(sink, t_env.from_data_stream(streams[0].union(*streams[1:])))
    # Quota changes and campaign cancels from herald.control go into Redis, where every call
    # stage reads them (operators/control.py says why there and not in broadcast state). One
    # job applies them: the one with critical traffic when the classes run apart.
    if states.CRITICAL not in wanted:
        statements.attach_as_datastream()
        return
    kinds = ", ".join(f"'{k}'" for k in CONTROL_KINDS)
    control = t_env.sql_query("SELECT k, v FROM control_quota_in "
                              f"WHERE JSON_VALUE(v, '$.kind') IN ({kinds})")
    rejected = (t_env.to_data_stream(control)
                .process(ApplyControlFunction(settings), output_type=KEYED_PAYLOAD)
                .name("apply-control").uid("apply-quota").set_parallelism(1))
    statements.add_insert(f"dlq_out_{states.CRITICAL}", t_env.from_data_stream(rejected))
    statements.attach_as_datastream()


def warn_on_producer_times(settings: Settings) -> None:
    """Say so when an input topic keeps its producers' times: seq holds run on the log's
    append times (udfs/log_ends.py, docs/CONTRACT.md)."""
    from udfs.log_ends import on_producer_times
    topics = [settings.topic_critical if c == states.CRITICAL else settings.topic_promo
              for c in job_classes(settings)]
    try:
        wrong = on_producer_times(settings.kafka_bootstrap, topics)
    except Exception as exc:  # noqa: BLE001 - the job itself will say what is wrong with Kafka
        print(f"could not read the input topics' configs: {exc}", file=sys.stderr)
        return
    for topic in wrong:
        print(f"WARNING: topic {topic} has message.timestamp.type=CreateTime; seq order through"
              f" a producer's retries needs LogAppendTime: kafka-configs.sh --alter --entity-type"
              f" topics --entity-name {topic} --add-config message.timestamp.type=LogAppendTime",
              file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    name, settings = job_settings(load_settings())
    warn_on_producer_times(settings)
    if job_classes(settings) == (states.PROMOTIONAL,):
        # Its own JVM and interpreter, and below critical for the CPU: the MiniCluster's JVM
        # and every thread in it inherit this (operators/threads.py).
        from operators.threads import lower_priority
        lower_priority(settings.promo_job_nice)
    run_job(name, build_pipeline, settings, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
