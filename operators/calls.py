"""The call operator: one batch of released notifications in; status events out, retry records
and dead letters as side outputs.

A batch is one row from the gate (`operators.gate`) or from the retry wait
(`operators.retries`), in per-user order (a release counter prefixes each payload); the calls
are made by `udfs.call_stage.BatchCalls`. While a provider's tokens are short the operator
blocks inside `process_element`, which is Flink backpressure: the gate, the windows and the
Kafka sources slow down with it, and nothing is dropped.
"""
from __future__ import annotations

import time

from pyflink.datastream import OutputTag
from pyflink.datastream.functions import ProcessFunction, RuntimeContext

from herald import states
from herald.errors import ValidationError
from herald.models import dead_letter
from herald.settings import Settings
from operators.gate import ORDER_DIGITS
from operators.rows import DLQ_TAG, KEYED_PAYLOAD, keyed_payload

# (user_id, retry record): a notification going round the class's retry topic.
RETRY_TAG = OutputTag("retry", KEYED_PAYLOAD)


class CallBatchFunction(ProcessFunction):
    def __init__(self, settings: Settings, priority: str = states.CRITICAL):
        self.settings = settings
        self.priority = priority
        self.calls = None

    def open(self, runtime_context: RuntimeContext):
        from udfs.call_stage import make_call_stage
        self.calls = make_call_stage(self.settings, self.priority)

    def close(self):
        if self.calls is not None:
            self.calls.close()

    def process_element(self, row, ctx: ProcessFunction.Context):
        from udfs.requeue import task_from_payload
        tasks = []
        for payload in sorted(row.batch):
            try:
                tasks.append(task_from_payload(payload[ORDER_DIGITS:]))
            except ValidationError as exc:  # parsed upstream already: a bug, kept, not lost
                yield DLQ_TAG, keyed_payload("(call stage)", dead_letter(
                    payload[ORDER_DIGITS:], str(exc), states.STAGE_DELIVERY,
                    time.time_ns() // 1_000_000))
        out = self.calls.send_all(tasks)
        for status in out.statuses:
            yield keyed_payload(status.id, status.to_json())
        for user_id, record in out.retries:
            yield RETRY_TAG, keyed_payload(user_id, record)
        for key, record in out.dead:
            yield DLQ_TAG, keyed_payload(key, record)
