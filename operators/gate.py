"""The gate operator: a batch of one Kafka partition's records in, what may be sent out.

The batch comes from the SQL window in `sql/batches.sql`: Python is entered once per batch.
Records are keyed by user in Kafka, so a partition holds all of a user's records; this
operator is keyed by partition and keeps one pickled `GateState` per user in a MapState (dedup,
per-user order, holds). The decisions are `herald.gate.Gate`'s.

Holds (a `send_at`, a gap in `seq`) use processing-time timers: a watermark only moves when
records arrive, so an event-time timer would stall on a quiet topic, and expiry is about the
wall clock. One timer per partition, at the earliest deadline among its held users; the users
with a deadline are listed in a small ValueState, so a timer visits only them.

Main output: one (shard, [released payloads]) row per batch, in per-user order, for
`operators.calls`; side outputs: status events (duplicate, expired, cancelled, gap notices) and
dead letters.
"""
from __future__ import annotations

import time

import orjson
from pyflink.common import Row, Types
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from herald import states
from herald.errors import ValidationError
from herald.gate import Gate
from herald.models import Status, dead_letter, parse_notification
from herald.settings import Settings
from operators.rows import DLQ_TAG, STATUS_TAG, keyed_payload
from operators.state import ttl_config

ORDER_DIGITS = 16  # hex digits of the release counter in front of each released payload


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class GateFunction(KeyedProcessFunction):
    """Input rows: (shard, batch) with batch a JSON array of {"o": offset, "k": key, "v": value}."""

    def __init__(self, settings: Settings, priority: str):
        self.settings = settings
        self.priority = priority
        self.gate = None
        self.users = None
        self.deadlines = None
        self.released = 0

    def open(self, runtime_context: RuntimeContext):
        s = self.settings
        self.gate = Gate(gap_timeout_ms=s.gap_timeout_ms, dedup_ttl_ms=s.dedup_ttl_ms)
        users = MapStateDescriptor("users", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        # An idle user's state goes once nothing of theirs can still be replayed or delivered.
        users.enable_time_to_live(ttl_config(s.dedup_ttl_ms + s.critical_default_ttl_ms))
        self.users = runtime_context.get_map_state(users)
        self.deadlines = runtime_context.get_state(
            ValueStateDescriptor("deadlines", Types.PICKLED_BYTE_ARRAY()))

    def process_element(self, row, ctx: KeyedProcessFunction.Context):
        at = now_ms()
        records = sorted(orjson.loads(row.batch), key=lambda r: r["o"])
        touched: dict[str, object] = {}
        deadlines = self.deadlines.value() or {}
        before = min(deadlines.values(), default=None)
        out: list = []
        for record in records:
            raw = record["v"]
            try:
                n = parse_notification(raw, expected_priority=self.priority,
                                       default_ttl_ms=self.settings.critical_default_ttl_ms)
            except ValidationError as exc:
                yield DLQ_TAG, keyed_payload(record["k"] or "(no key)", dead_letter(
                    raw or "", str(exc), states.STAGE_PARSE, at))
                continue
            user = n.user_id
            gate_state = touched.get(user)
            if gate_state is None:
                gate_state = self.users.get(user) or self.gate.new_state()
                touched[user] = gate_state
            decision = self.gate.process(gate_state, n, at)
            self._collect(decision, user, deadlines, out, at)
        for user, gate_state in touched.items():
            self.users.put(user, gate_state)
        yield from self._finish(out, deadlines, before, ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        at = now_ms()
        deadlines = self.deadlines.value() or {}
        out: list = []
        for user in [u for u, due in deadlines.items() if due <= at]:
            gate_state = self.users.get(user)
            if gate_state is None:  # expired out of state: nothing is held any more
                deadlines.pop(user)
                continue
            self._collect(self.gate.on_timer(gate_state, at), user, deadlines, out, at)
            self.users.put(user, gate_state)
        yield from self._finish(out, deadlines, None, ctx)

    def _collect(self, decision, user: str, deadlines: dict, out: list, at: int) -> None:
        """Turn one gate decision into outputs; keep the user's deadline up to date."""
        if decision.timer_ms is None:
            deadlines.pop(user, None)
        else:
            deadlines[user] = decision.timer_ms
        for n, reason in decision.dropped:
            out.append((STATUS_TAG, keyed_payload(n.id, Status.of(
                n, reason, at, detail=f"dropped at the gate: {reason}").to_json())))
        for first, last in decision.skipped:
            for n in decision.emit[:1]:
                out.append((STATUS_TAG, keyed_payload(n.id, Status.of(n, states.ACCEPTED, at, detail=(
                    f"seq gap {first}..{last} not received within {self.settings.gap_timeout_ms} ms;"
                    " moved on")).to_json())))
        for n in decision.emit:
            self.released += 1
            out.append((None, f"{self.released:0{ORDER_DIGITS}x}{n.to_json().decode()}"))

    def _finish(self, out: list, deadlines: dict, before: int | None, ctx):
        """Emit side outputs, one row of everything released, and keep one timer right."""
        released = []
        for tag, value in out:
            if tag is None:
                released.append(value)
            else:
                yield tag, value
        if released:
            yield Row(ctx.get_current_key(), released)
        self.deadlines.update(deadlines)
        after = min(deadlines.values(), default=None)
        timers = ctx.timer_service()
        if before is not None and before != after and before > now_ms():
            timers.delete_processing_time_timer(before)
        if after is not None and after != before:
            timers.register_processing_time_timer(after)
