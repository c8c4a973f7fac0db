"""The critical delivery operator of the walking skeleton: parse, validate, call, report.

Keyed by user, so everything one user receives passes through one instance in order. The
decisions live in `herald`; this class only moves records, state and clients.
"""
from __future__ import annotations

import time

from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext

from herald import states
from herald.errors import ValidationError
from herald.models import Status, dead_letter, parse_notification
from herald.settings import Settings
from operators.rows import DLQ_TAG, keyed_payload


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class DeliverFunction(KeyedProcessFunction):
    """Input rows: (k, v, user_id, event_time) from the Kafka table; output: status rows."""

    def __init__(self, settings: Settings, priority: str = states.CRITICAL):
        self.settings = settings
        self.priority = priority
        self.sender = None

    def open(self, runtime_context: RuntimeContext):
        from udfs.provider_calls import BlockingSender
        self.sender = BlockingSender(self.settings)

    def close(self):
        if self.sender is not None:
            self.sender.close()

    def process_element(self, row, ctx: KeyedProcessFunction.Context):
        raw = row.v
        try:
            notification = parse_notification(raw, expected_priority=self.priority,
                                              default_ttl_ms=self.settings.critical_default_ttl_ms)
        except ValidationError as exc:
            key = row.k or "(no key)"
            yield DLQ_TAG, keyed_payload(key, dead_letter(raw or "", str(exc), states.STAGE_PARSE,
                                                          now_ms()))
            return
        at = now_ms()
        if notification.is_expired(at):
            status = Status.of(notification, states.EXPIRED, at, detail="expired before delivery")
        else:
            status = self.sender.send(notification)
        yield keyed_payload(notification.id, status.to_json())
