"""The retry wait: retry records in (a batch of one lane of retry-topic partitions), released to
the call stage when their ``not_before`` has come.

The records come from the class's retry topic (written by `operators.calls`), through the same
SQL window as fresh records (`sql/batches.sql`), so Python is entered once per batch. This path
bypasses the gate on purpose: the gate's dedup would drop a second try of an id it has seen.
Duplicates of one re-queue (a replay after a crash writes it again) are dropped here by
``(tenant, id, redrive, step)``; anything else is kept by the Redis sent marker in the call stage.

Waiting records sit in a MapState by due time (rounded up to ``BUCKET_MS``), with one
processing-time timer per due time (Flink keeps one timer per key and time), so a timer reads
only what is due and an outage's backlog is not re-pickled on every batch.

The ``seen`` keys expire by Flink's TTL, applied by walking a lane's map every
``state_sweep_interval_ms`` (see `operators.gate` for why not Flink's incremental cleanup).

Output: (shard, [payloads]) rows, each payload prefixed by this operator's
release counter so the call stage keeps their order.
"""
from __future__ import annotations

import operators.libraries  # noqa: F401  (first: see its docstring)

import time

import orjson
from pyflink.common import Row, Types
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from herald import states
from herald.errors import ValidationError
from herald.models import dead_letter, load_object
from herald.settings import Settings
from operators.lanes import log_order
from operators.rows import DLQ_TAG, ORDER_DIGITS, keyed_payload
from operators.state import sweep, ttl_config
from udfs.requeue import decode_retry

BUCKET_MS = 50


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class RetryWaitFunction(KeyedProcessFunction):
    """Input rows: (shard, batch) with batch a JSON array of
    {"p": partition, "o": offset, "t": log timestamp, "k": key, "v": value}
    (sql/batches.sql)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.waiting = None
        self.seen = None
        self.released = 0
        self.sweep_at: dict[int, int] = {}  # shard → when its seen-map is walked next

    def open(self, runtime_context: RuntimeContext):
        self.waiting = runtime_context.get_map_state(
            MapStateDescriptor("waiting", Types.LONG(), Types.PICKLED_BYTE_ARRAY()))
        seen = MapStateDescriptor("seen", Types.STRING(), Types.BOOLEAN())
        seen.enable_time_to_live(ttl_config(self.settings.dedup_ttl_ms))
        self.seen = runtime_context.get_map_state(seen)

    def process_element(self, row, ctx: KeyedProcessFunction.Context):
        at = now_ms()
        shard = ctx.get_current_key()
        if self.sweep_at.setdefault(shard, at + self.settings.state_sweep_interval_ms) <= at:
            sweep(self.seen)
            self.sweep_at[shard] = at + self.settings.state_sweep_interval_ms
        due: list[str] = []
        later: dict[int, list[str]] = {}
        for record in sorted(orjson.loads(row.batch), key=log_order):
            raw = record["v"]
            try:
                task, not_before = decode_retry(load_object(raw))
            except ValidationError as exc:
                yield DLQ_TAG, keyed_payload(record["k"] or "(no key)", dead_letter(
                    raw or "", f"retry record: {exc}", states.STAGE_PARSE, at))
                continue
            key = task.dedup_key()
            if self.seen.contains(key) or self.seen.contains(task.legacy_dedup_key()):
                continue  # the same re-queue written twice (a replay): once is enough
            self.seen.put(key, True)
            if not_before <= at:
                due.append(raw)
            else:
                bucket = -(-not_before // BUCKET_MS) * BUCKET_MS
                later.setdefault(bucket, []).append(raw)
        timers = ctx.timer_service()
        for bucket, raws in later.items():
            held = self.waiting.get(bucket)
            self.waiting.put(bucket, (held or []) + raws)
            if held is None:
                timers.register_processing_time_timer(bucket)
        if due:
            yield self._row(shard, due)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        raws = self.waiting.get(timestamp)
        if raws is None:
            return
        self.waiting.remove(timestamp)
        yield self._row(ctx.get_current_key(), raws)

    def _row(self, shard: int, raws: list[str]) -> Row:
        payloads = []
        for raw in raws:
            self.released += 1
            payloads.append(f"{self.released:0{ORDER_DIGITS}x}{raw}")
        return Row(shard, payloads)
