"""Row types that cross between Python operators and the Java (SQL) parts of a job."""
from __future__ import annotations

import itertools

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag

from operators.threads import no_pause

# (id, payload): the Kafka key and the JSON value of a status or dead-letter record.
KEYED_PAYLOAD = Types.ROW_NAMED(["id", "payload"], [Types.STRING(), Types.STRING()])
# (statuses): an operator's status events of one batch in one row (the call stage's, and the
# gate's own drops and gap notices), split into (id, payload) records in Java by
# sql/status_records.sql: one crossing out of Python per batch, not one per status.
# Each status is its id, KEY_END and its JSON; STATUS_END ends each. Neither occurs in either:
# ids are printable (herald.models) and JSON escapes control characters.
STATUS_BATCH = Types.ROW_NAMED(["statuses"], [Types.STRING()])
KEY_END, STATUS_END = "\x1f", "\x1e"
# (shard, batch): what the retry wait released from one batch, in order, for the call stage;
# each payload starts with the release counter (ORDER_DIGITS hex digits).
ORDER_DIGITS = 16
RELEASED = Types.ROW_NAMED(["shard", "batch"], [Types.INT(), Types.LIST(Types.STRING())])
DLQ_TAG = OutputTag("dlq", KEYED_PAYLOAD)
STATUS_TAG = OutputTag("status", KEYED_PAYLOAD)
# (user_id, retry record): a notification going round the class's retry topic.
RETRY_TAG = OutputTag("retry", KEYED_PAYLOAD)


def side_output(stream, tag: OutputTag):
    """A Python operator's side output, as the operator emits it. PyFlink's `get_side_output`
    appends a Python identity map: a second Python call per record, and a chained operator
    whose output has a flusher thread of its own."""
    from pyflink.datastream import DataStream
    return DataStream(stream._j_data_stream.getSideOutput(tag.get_java_output_tag()))


def keyed_payload(key: str, payload: bytes) -> Row:
    return Row(key, payload.decode("utf-8"))


def status_batch(statuses) -> Row:
    """Status events as one STATUS_BATCH row."""
    return Row("".join([f"{s.id}{KEY_END}{s.to_json().decode()}{STATUS_END}"
                        for s in statuses]))


def status_records(batch: Row) -> list[tuple[str, str]]:
    """A STATUS_BATCH row's (id, payload) records, as sql/status_records.sql splits it."""
    return [tuple(s.split(KEY_END, 1)) for s in batch[0].split(STATUS_END) if s]


def stage_rows(out, metrics, pause=no_pause):
    """A call-stage batch's output (udfs.call_stage.StageOutput) as the operators emit it:
    its status events as one row on the main output, retry records and dead letters on their
    side outputs; its counts go to the operator's metrics (operators.metrics) once per batch.
    ``pause`` is called before each row (a promotional operator steps aside there:
    operators/threads.py)."""
    metrics.add(*out.metric_counts())
    rows = itertools.chain(
        (status_batch(out.statuses),) if out.statuses else (),
        ((RETRY_TAG, keyed_payload(user_id, record)) for user_id, record in out.retries),
        ((DLQ_TAG, keyed_payload(key, record)) for key, record in out.dead))
    for row in rows:
        pause()
        yield row
