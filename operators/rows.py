"""Row types that cross between Python operators and the Java (SQL) parts of a job."""
from __future__ import annotations

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag

# (id, payload): the Kafka key and the JSON value of a status or dead-letter record.
KEYED_PAYLOAD = Types.ROW_NAMED(["id", "payload"], [Types.STRING(), Types.STRING()])
# (shard, batch): what the gate released from one batch, in order, for the call stage.
RELEASED = Types.ROW_NAMED(["shard", "batch"], [Types.INT(), Types.LIST(Types.STRING())])
DLQ_TAG = OutputTag("dlq", KEYED_PAYLOAD)
STATUS_TAG = OutputTag("status", KEYED_PAYLOAD)


def keyed_payload(key: str, payload: bytes) -> Row:
    return Row(key, payload.decode("utf-8"))
