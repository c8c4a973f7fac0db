"""The delivery operator: parse, gate (dedup · order · expiry), call the provider, report.

Keyed by user, so one instance sees all of one user's traffic of one class, in log order. The
decisions are `herald.gate.Gate`'s; sending is the call stage's (`udfs.call_stage`). State is one
pickled `GateState` per user; a processing-time timer exists only while the gate holds something.

Why processing time for the hold timers: a watermark only moves when records arrive, so an
event-time timer for a `send_at` or an expiry would stall on a quiet topic. Expiry is about the
wall clock ("never after expires_at"), and the call stage checks it again before every attempt.
"""
from __future__ import annotations

import time

from pyflink.common import Time, Types
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor

from herald import states
from herald.errors import ValidationError
from herald.gate import Gate
from herald.models import Status, dead_letter, parse_notification
from herald.settings import Settings
from operators.rows import DLQ_TAG, keyed_payload


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class DeliveryFunction(KeyedProcessFunction):
    """Input rows: (k, v, user_id, event_time) from the Kafka table; output: status rows."""

    def __init__(self, settings: Settings, priority: str):
        self.settings = settings
        self.priority = priority
        self.gate = None
        self.state = None
        self.calls = None

    def open(self, runtime_context: RuntimeContext):
        from udfs.call_stage import make_call_stage
        s = self.settings
        self.gate = Gate(gap_timeout_ms=s.gap_timeout_ms, dedup_ttl_ms=s.dedup_ttl_ms)
        descriptor = ValueStateDescriptor("gate", Types.PICKLED_BYTE_ARRAY())
        # Idle users' state goes once nothing of theirs can still be replayed or delivered.
        ttl = s.dedup_ttl_ms + s.critical_default_ttl_ms
        descriptor.enable_time_to_live(StateTtlConfig.new_builder(Time.milliseconds(ttl))
                                       .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
                                       .build())
        self.state = runtime_context.get_state(descriptor)
        self.calls = make_call_stage(s)

    def close(self):
        if self.calls is not None:
            self.calls.close()

    def process_element(self, row, ctx: KeyedProcessFunction.Context):
        try:
            n = parse_notification(row.v, expected_priority=self.priority,
                                   default_ttl_ms=self.settings.critical_default_ttl_ms)
        except ValidationError as exc:
            yield DLQ_TAG, keyed_payload(row.k or "(no key)", dead_letter(
                row.v or "", str(exc), states.STAGE_PARSE, now_ms()))
            return
        gate_state = self.state.value() or self.gate.new_state()
        decision = self.gate.process(gate_state, n, now_ms())
        yield from self._apply(decision, gate_state, ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        gate_state = self.state.value()
        if gate_state is None:
            return
        decision = self.gate.on_timer(gate_state, now_ms())
        yield from self._apply(decision, gate_state, ctx)

    def _apply(self, decision, gate_state, ctx):
        self.state.update(gate_state)
        timers = ctx.timer_service()
        if decision.delete_timer_ms is not None:
            timers.delete_processing_time_timer(decision.delete_timer_ms)
        if decision.register_timer_ms is not None:
            timers.register_processing_time_timer(decision.register_timer_ms)
        at = now_ms()
        for n, reason in decision.dropped:
            yield keyed_payload(n.id, Status.of(n, reason, at, detail=f"dropped at the gate: {reason}")
                                .to_json())
        for first, last in decision.skipped:
            for n in decision.emit[:1]:
                yield keyed_payload(n.id, Status.of(n, states.ACCEPTED, at, detail=(
                    f"seq gap {first}..{last} not received within {self.settings.gap_timeout_ms} ms;"
                    " moved on")).to_json())
        if decision.emit:
            for status in self.calls.send_all(decision.emit):
                yield keyed_payload(status.id, status.to_json())
