"""Row types that cross between Python operators and the Java (SQL) parts of a job."""
from __future__ import annotations

import itertools

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag

from operators.threads import no_pause

# (id, payload): the Kafka key and the JSON value of a status or dead-letter record.
KEYED_PAYLOAD = Types.ROW_NAMED(["id", "payload"], [Types.STRING(), Types.STRING()])
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


def stage_rows(out, metrics, pause=no_pause):
    """A call-stage batch's output (udfs.call_stage.StageOutput) as the operators emit it:
    status events on the main output, retry records and dead letters on their side outputs;
    its counts go to the operator's metrics (operators.metrics) once per batch. ``pause`` is
    called before each row (a promotional operator steps aside there: operators/threads.py)."""
    metrics.add(*out.metric_counts())
    rows = itertools.chain(
        (keyed_payload(status.id, status.to_json()) for status in out.statuses),
        ((RETRY_TAG, keyed_payload(user_id, record)) for user_id, record in out.retries),
        ((DLQ_TAG, keyed_payload(key, record)) for key, record in out.dead))
    for row in rows:
        pause()
        yield row
