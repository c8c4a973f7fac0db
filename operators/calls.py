"""The call operator: one batch of released notifications in, their status events out.

The batch is one row from the gate (`operators.gate`), already in per-user order (the gate's
release counter prefixes each payload); the calls are made by `udfs.call_stage.BatchCalls`.
"""
from __future__ import annotations

from pyflink.datastream.functions import FlatMapFunction, RuntimeContext

from herald.models import parse_notification
from herald.settings import Settings
from operators.gate import ORDER_DIGITS
from operators.rows import keyed_payload


class CallBatchFunction(FlatMapFunction):
    def __init__(self, settings: Settings):
        self.settings = settings
        self.calls = None

    def open(self, runtime_context: RuntimeContext):
        from udfs.call_stage import make_call_stage
        self.calls = make_call_stage(self.settings)

    def close(self):
        if self.calls is not None:
            self.calls.close()

    def flat_map(self, row):
        batch = [parse_notification(p[ORDER_DIGITS:]) for p in sorted(row.batch)]
        for status in self.calls.send_all(batch):
            yield keyed_payload(status.id, status.to_json())
