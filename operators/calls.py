"""The retry call operator: one batch of retry records that are due in; status events out,
retry records and dead letters as side outputs.

A batch is one row from the retry wait (`operators.retries`), in order (a release counter
prefixes each payload); the calls are made by `udfs.call_stage.BatchCalls`. Fresh
notifications do not come this way: the gate calls the providers itself (`operators.gate`
says why). While a provider's tokens are short the operator blocks inside `process_element`,
which is Flink backpressure: the retry wait and its source slow down, nothing is dropped.
"""
from __future__ import annotations

import operators.libraries  # noqa: F401  (first: see its docstring)

import time

from pyflink.datastream.functions import ProcessFunction, RuntimeContext

from herald import states
from herald.errors import ValidationError
from herald.models import dead_letter
from herald.settings import Settings
from operators.metrics import OperatorMetrics
from operators.rows import DLQ_TAG, ORDER_DIGITS, keyed_payload, stage_rows
from operators.threads import class_turns, run_at_class_priority


class CallBatchFunction(ProcessFunction):
    def __init__(self, settings: Settings, priority: str = states.CRITICAL):
        self.settings = settings
        self.priority = priority
        self.calls = None
        self.metrics = None
        self.turn = self.pause = None

    def open(self, runtime_context: RuntimeContext):
        from udfs.call_stage import make_call_stage
        run_at_class_priority(self.settings, self.priority)
        self.turn, self.pause = class_turns(self.settings, self.priority)
        self.calls = make_call_stage(self.settings, self.priority, pause=self.pause)
        self.metrics = OperatorMetrics(runtime_context, self.priority)

    def close(self):
        if self.calls is not None:
            self.calls.close()

    def process_element(self, row, ctx: ProcessFunction.Context):
        with self.turn():
            yield from self._batch(row)

    def _batch(self, row):
        from udfs.requeue import task_from_payload
        tasks = []
        for payload in sorted(row.batch):
            try:
                tasks.append(task_from_payload(payload[ORDER_DIGITS:]))
            except ValidationError as exc:  # parsed upstream already: a bug, kept, not lost
                yield DLQ_TAG, keyed_payload("(call stage)", dead_letter(
                    payload[ORDER_DIGITS:], str(exc), states.STAGE_DELIVERY,
                    time.time_ns() // 1_000_000))
        yield from stage_rows(self.calls.send_all(tasks), self.metrics, self.pause)
