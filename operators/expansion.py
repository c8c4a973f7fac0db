"""The expansion operator: campaigns and cancels in (keyed by tenant and campaign id), batches
out.

The decisions are `herald.campaigns.Expander`'s; this function keeps its `Expansion` (cursor
included) in keyed, checkpointed state, drives the processing-time timers, and reads the rows
a step names from the segment's Parquet file (`herald.segments`). It does not emit one record
per recipient: each tick emits ONE row per batch (campaign id, the JSON every recipient shares,
the batch's user ids joined into one string), and Flink SQL (Java) splits it and writes one
Notification per user (sql/expansion_records.sql). Python costs per batch, not per recipient.

Cursor and emission change together in one timer call, and a checkpoint barrier is taken only
between calls, so a restore resumes at a batch boundary that matches the checkpointed sink.

Side outputs: campaign-level Status events and dead letters.
"""
from __future__ import annotations

import operators.libraries  # noqa: F401  (first: see its docstring)

import time

import orjson
from pyflink.common import Row, Types
from pyflink.datastream.functions import KeyedCoProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from herald import states
from herald.campaigns import (AudienceSource, Campaign, Expander, Expansion, Step,
                              cancel_from_dict, parse_campaign, recipient_json_head,
                              recipient_json_tail)
from herald.errors import ValidationError
from herald.models import dead_letter, load_object
from herald.segments import (SEPARATOR, SegmentFiles, SegmentReader, check_ids, ids_array,
                             join_ids)
from herald.settings import Settings
from operators.rows import DLQ_TAG, STATUS_TAG

# One batch of recipients: the JSON every recipient's record starts and ends with, and the ids
# joined by herald.segments.SEPARATOR (ids never contain it: segments and inline lists are
# checked). sql/expansion_records.sql turns it into one record per id.
BATCH = Types.ROW_NAMED(["campaign_id", "head", "tail", "ids"],
                        [Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING()])
# Readers of segment files kept open (a file is read by one campaign at a time, mostly).
OPEN_READERS = 8


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ExpandFunction(KeyedCoProcessFunction):
    """Input 1: campaign rows (ckey, k, v); input 2: cancel-control rows (ckey, k, v); both keyed
    by tenant and campaign id, so a cancel meets the state of the campaign it names."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.expander: Expander | None = None
        self.state = None
        self.files: SegmentFiles | None = None
        self.readers: dict[str, SegmentReader] = {}

    def open(self, runtime_context: RuntimeContext):
        s = self.settings
        self.expander = Expander(batch_size=s.expansion_batch_size, tick_ms=s.expansion_tick_ms,
                                 progress_interval_ms=s.expansion_progress_interval_ms,
                                 retention_ms=s.expansion_state_retention_ms,
                                 max_id_length=s.max_id_length)
        self.state = runtime_context.get_state(
            ValueStateDescriptor("expansion", Types.PICKLED_BYTE_ARRAY()))
        self.files = SegmentFiles.from_settings(s)

    # ---- inputs

    def process_element1(self, row, ctx: KeyedCoProcessFunction.Context):
        now = now_ms()
        try:
            c = parse_campaign(row.v, max_id_length=self.settings.max_id_length)
        except ValidationError as exc:
            yield DLQ_TAG, Row(row.k or row.ckey or "(no key)", dead_letter(
                row.v or "", str(exc), states.STAGE_EXPANSION, now).decode())
            return
        yield from self._apply(*self.expander.on_campaign(self.state.value(), c, now), ctx, now)

    def process_element2(self, row, ctx: KeyedCoProcessFunction.Context):
        now = now_ms()
        try:
            cancel = cancel_from_dict(load_object(row.v))
        except ValidationError as exc:
            yield DLQ_TAG, Row(row.k or row.ckey or "(no key)", dead_letter(
                row.v or "", str(exc), states.STAGE_EXPANSION, now).decode())
            return
        yield from self._apply(*self.expander.on_cancel(self.state.value(), cancel, now), ctx, now)

    def on_timer(self, timestamp: int, ctx: KeyedCoProcessFunction.OnTimerContext):
        now = now_ms()
        state, step = self.expander.on_timer(self.state.value(), timestamp, now, self._audience)
        ids = None
        if step.batch is not None:
            try:
                ids = self._read(state, *step.batch)
            except (OSError, ValueError) as exc:  # the file went away or is damaged mid-way
                state.cursor = step.batch[0]
                step = self.expander.fail(state, now, f"reading the audience failed at row "
                                                      f"{step.batch[0]}: {exc}")
        yield from self._apply(state, step, ctx, now)
        if ids is not None:
            c = state.campaign
            yield Row(c.campaign_id, recipient_json_head(c), recipient_json_tail(c), ids)

    # ---- helpers

    def _apply(self, state: Expansion | None, step: Step, ctx, now: int):
        if step.clear or state is None:
            self.state.clear()
        else:
            self.state.update(state)
        timers = ctx.timer_service()
        for t in step.timers:
            timers.register_processing_time_timer(t)
        for event in step.events:
            yield STATUS_TAG, Row(event["id"], orjson.dumps(event).decode())
        for record, reason in step.dead_letters:
            key = record.get("campaign_id") or "(no key)"
            yield DLQ_TAG, Row(key, dead_letter(record, reason, states.STAGE_EXPANSION,
                                                now).decode())

    def _audience(self, c: Campaign) -> AudienceSource:
        """Fix the audience when the expansion starts: the segment's current file (read to the
        end even if the segment is replaced meanwhile), or the inline list."""
        if c.audience.segment is None:
            ids = check_ids(ids_array(list(c.audience.user_ids or ())))  # no control characters
            longest = max((len(u) for u in c.audience.user_ids or ()), default=0)
            return AudienceSource(None, len(ids), longest)
        path = self.files.current(c.tenant_id, c.audience.segment)
        if path is None or not path.exists():
            raise ValidationError(f"segment {c.audience.segment!r} of tenant {c.tenant_id!r} "
                                  "does not exist", "audience.segment")
        try:
            reader = self._reader(str(path))
            return AudienceSource(str(path), reader.count, reader.max_id_length)
        except (OSError, ValueError) as exc:  # damaged, or not Parquet: the campaign fails
            raise ValidationError(f"segment {c.audience.segment!r} of tenant {c.tenant_id!r} "
                                  f"cannot be read ({path.name}): {exc}",
                                  "audience.segment") from None

    def _reader(self, path: str) -> SegmentReader:
        reader = self.readers.pop(path, None) or SegmentReader(path)
        self.readers[path] = reader  # most recently used last
        while len(self.readers) > OPEN_READERS:
            self.readers.pop(next(iter(self.readers)))
        return reader

    def _read(self, state: Expansion, start: int, count: int) -> str:
        if state.source is None:
            return SEPARATOR.join(state.campaign.audience.user_ids[start:start + count])
        return join_ids(self._reader(state.source).read(start, count))
