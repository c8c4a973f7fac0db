"""Row types that cross between Python operators and the Java (SQL) Kafka sinks."""
from __future__ import annotations

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag

# (id, payload): the Kafka key and the JSON value of a status or dead-letter record.
KEYED_PAYLOAD = Types.ROW_NAMED(["id", "payload"], [Types.STRING(), Types.STRING()])
DLQ_TAG = OutputTag("dlq", KEYED_PAYLOAD)


def keyed_payload(key: str, payload: bytes) -> Row:
    return Row(key, payload.decode("utf-8"))
