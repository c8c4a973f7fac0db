"""The gate operator: parse, then dedup · per-user order · expiry · holds, per user.

Keyed by user, so one instance sees all of one user's traffic of one class, in log order. The
decisions are `herald.gate.Gate`'s; state is one pickled `GateState` per user, and a
processing-time timer exists only while the gate holds something for that user.

Why processing time for the hold timers: a watermark only moves when records arrive, so an
event-time timer for a `send_at` or an expiry would stall on a quiet topic. Expiry is about the
wall clock ("never after expires_at"), and the call stage checks it again before each call.

Main output: released notifications as (shard, payload) rows for the batching window; side
outputs: status events (duplicate, expired, cancelled, gap notices) and dead letters.
"""
from __future__ import annotations

import time
import zlib

from pyflink.common import Row, Time, Types
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor

from herald import states
from herald.errors import ValidationError
from herald.gate import Gate
from herald.models import Status, dead_letter, parse_notification
from herald.settings import Settings
from operators.rows import DLQ_TAG, STATUS_TAG, keyed_payload


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def shard_of(user_id: str, shards: int) -> int:
    """Stable across processes (Python's own hash() is salted per process)."""
    return zlib.crc32(user_id.encode()) % shards


class GateFunction(KeyedProcessFunction):
    """Input rows: (k, v, user_id, event_time) from the Kafka table."""

    def __init__(self, settings: Settings, priority: str, shards: int):
        self.settings = settings
        self.priority = priority
        self.shards = shards
        self.gate = None
        self.state = None
        self.released = 0

    def open(self, runtime_context: RuntimeContext):
        s = self.settings
        self.gate = Gate(gap_timeout_ms=s.gap_timeout_ms, dedup_ttl_ms=s.dedup_ttl_ms)
        descriptor = ValueStateDescriptor("gate", Types.PICKLED_BYTE_ARRAY())
        # Idle users' state goes once nothing of theirs can still be replayed or delivered.
        # Cleanup strategies named explicitly: PyFlink's default one builds a java Duration
        # through a py4j gateway that a TaskManager's embedded Python does not have.
        ttl = s.dedup_ttl_ms + s.critical_default_ttl_ms
        descriptor.enable_time_to_live(StateTtlConfig.new_builder(Time.milliseconds(ttl))
                                       .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
                                       .cleanup_incrementally(10, False)
                                       .cleanup_full_snapshot()
                                       .disable_cleanup_in_background()
                                       .build())
        self.state = runtime_context.get_state(descriptor)

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
        yield from self._apply(self.gate.on_timer(gate_state, now_ms()), gate_state, ctx)

    def _apply(self, decision, gate_state, ctx):
        self.state.update(gate_state)
        timers = ctx.timer_service()
        if decision.delete_timer_ms is not None:
            timers.delete_processing_time_timer(decision.delete_timer_ms)
        if decision.register_timer_ms is not None:
            timers.register_processing_time_timer(decision.register_timer_ms)
        at = now_ms()
        for n, reason in decision.dropped:
            yield STATUS_TAG, keyed_payload(n.id, Status.of(
                n, reason, at, detail=f"dropped at the gate: {reason}").to_json())
        for first, last in decision.skipped:
            for n in decision.emit[:1]:
                yield STATUS_TAG, keyed_payload(n.id, Status.of(n, states.ACCEPTED, at, detail=(
                    f"seq gap {first}..{last} not received within {self.settings.gap_timeout_ms} ms;"
                    " moved on")).to_json())
        for n in decision.emit:
            # The order number keeps one user's releases in order inside a batch: a user is
            # always on this instance, so this counter only grows for them.
            self.released += 1
            yield Row(shard_of(n.user_id, self.shards), f"{self.released:016x}{n.to_json().decode()}")
