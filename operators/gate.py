"""The gate operator: a batch of one lane's records in (the Kafka partitions of one gate
subtask, `operators/lanes.py`); what may be sent goes to the providers from here.

The batch comes from the SQL window in `sql/batches.sql`: Python is entered once per batch.
Records are keyed by user in Kafka, so a partition (and so a lane) holds all of a user's records;
this operator is keyed by lane and keeps one packed `GateState` per tenant's user in a MapState
(dedup, per-user order, holds). The decisions are `herald.gate.Gate`'s.

Holds for a gap in `seq` count on the log's clock, per Kafka partition: the newest record
timestamp read from it, run on by the wall clock while nothing newer comes (so an idle
partition still releases after `gap_timeout_ms`). When the job is behind, a hold gives up
only once the log has moved `gap_timeout_ms` past the held record, not when the wall clock
has, which would be before the missing records were even read. Expiry and `send_at` are on
the wall clock. One processing-time timer per lane, at the earliest deadline among its held
users (a seq hold's as if the log kept pace); the users with a deadline are listed in a small
ValueState, so a timer visits only them, and those with a seq hold (its partition and its
deadline on the log's clock) in another, so a batch that moves a partition's clock past a
hold's deadline releases it without waiting for the timer.

State costs: users' states are read through a bounded cache (a MapState read is a JNI call;
the operator is the state's only writer, so the cache is never stale, and a restore starts a
new instance with an empty one). The cache and the state hold each `GateState` packed as
bytes (`pack`: JSON, or a pickle while it holds notifications): bytes are invisible to Python's
cycle collector, and 200k cached objects made each of its full collections stop the whole
interpreter, both classes' operators, for 0.15–0.5 s every 4–6 s during a campaign (measured
with a gc callback in the job). States written as objects or pickles by earlier versions are
still read. Expired users leave through Flink's TTL, which is checked on read and applied by a
sweep of each lane's map every `state_sweep_interval_ms` (the same timer): Flink's own
incremental cleanup would copy a lane's whole user map on every access, since the key is the
lane.

What the gate releases from a batch (or a timer) is sent at once by this operator's own call
stage (`udfs.call_stage.BatchCalls`), in per-user order. Measured, a separate call operator
cost more than it gave: the released notifications were written to JSON, crossed to Java and
back and parsed again (≈ 15 µs each), and the two operators' Python threads shared one GIL,
so the gate's work landed in the middle of the call stage's network waits (≈ 48 ms per batch
of 220 against ≈ 24 ms for the stage alone). Retries take their own call operator
(`operators.calls`) after the retry wait.

A large batch goes out in parts (`send_part_records`, a user's notifications all in one
part): a part's calls are started (`BatchCalls.begin`) before the next part is decided, and a
part is completed (answers classified, statuses out) once `send_parts_ahead` later parts are
under way. Sent whole, the thread waited for the provider for about half of each batch
(py-spy: 43-49 % of its time in the event loop's select with a 10 ms mock), because the
provider only saw the batch once all of it had been decided; in parts the provider answers
one part while the next is decided. Measured (`bench/results/delivery_throughput.md`): parts
of 256 with one ahead beat whole batches by 10-15 %; parts of 128 lose it again to the Redis
round trips each part pays (its claim and its tokens; its settle rides in the next claim).

Main output: status events, of the calls and of the gate's own (duplicate, expired, cancelled,
gap notices), each batch's as one row (operators/rows.py: STATUS_BATCH); side outputs: retry
records and dead letters.
"""
from __future__ import annotations

import operators.libraries  # noqa: F401  (first: see its docstring)

import itertools
import pickle
import time
from collections import Counter, deque

import orjson
from pyflink.common import Types
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from herald import states
from herald.errors import LanesChanged, ValidationError
from herald.gate import Gate, GateState
from herald.metrics import DLQ, metric_counts
from herald.models import Status, dead_letter, parse_notification
from herald.settings import Settings
from operators.lanes import log_order
from operators.metrics import OperatorMetrics
from operators.rows import DLQ_TAG, keyed_payload, stage_rows, status_batch
from operators.state import sweep, ttl_config
from operators.threads import class_turns, run_at_class_priority
from udfs.call_stage import (ACCEPTED_BEFORE_RESTART, EXPIRED_IN_FLIGHT,
                              split_by_user)
from udfs.markers import marker

EXPIRED_DROP = object()  # an expired drop in a batch's outputs, told once its marker is read
GATE_STATUS = object()  # a status event of the gate's own (a drop, a gap notice) in them
SWEEP = "\x00sweep"  # the lane's next state sweep, kept among the users' deadlines
# A user's state is kept under tenant, this and the user id: ids are chosen by tenants, and
# "\x1f" never occurs in a valid id (herald.models), so no two tenants' users share a state.
TENANT_USER = "\x1f"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def pack(gate_state: GateState) -> bytes:
    """A state as bytes for the cache and keyed state. JSON when nothing is held, the usual
    case (seen ids, next seq): orjson writes it ≈ 5x and reads it ≈ 2x as fast as pickle
    (measured: pickling was 15 % of the gate thread with the null provider). A state that
    holds notifications is pickled."""
    if gate_state.held or gate_state.scheduled:
        return pickle.dumps(gate_state, protocol=pickle.HIGHEST_PROTOCOL)
    return orjson.dumps((gate_state.seen, gate_state.seen_prune_ms, gate_state.next_seq,
                         gate_state.timer_ms))


def unpack(value) -> GateState | None:
    """A stored state: JSON or pickled bytes, or (written by an earlier version) the object
    itself."""
    if not isinstance(value, bytes):
        return value
    if value[:1] == b"[":  # a pickle starts with its protocol byte, never with "["
        seen, seen_prune_ms, next_seq, timer_ms = orjson.loads(value)
        return GateState(seen=seen, seen_prune_ms=seen_prune_ms, next_seq=next_seq,
                         timer_ms=timer_ms)
    return pickle.loads(value)


def expired_status(n, at: int, sent, in_flight) -> Status:
    """The status of a record dropped at the gate as expired, by its `sent` marker."""
    mark = marker(n)
    if mark in sent:
        return Status.of(n, states.DELIVERED, at, detail=ACCEPTED_BEFORE_RESTART)
    return Status.of(n, states.EXPIRED, at, detail="dropped at the gate: expired" + (
        EXPIRED_IN_FLIGHT if mark in in_flight else ""))


class GateFunction(KeyedProcessFunction):
    """Input rows: (shard, batch) with batch a JSON array of
    {"p": partition, "o": offset, "t": log timestamp, "k": key, "v": value}
    (sql/batches.sql)."""

    def __init__(self, settings: Settings, priority: str, lanes: int | None = None):
        self.settings = settings
        self.priority = priority
        self.lanes = lanes  # gate_lanes of this job (None: not checked against the state)
        self.layout = None  # per lane key: "lanes:lane" it was written with
        self.checked: set = set()  # lane keys whose layout this instance has checked
        self.gate = None
        self.users = None
        self.deadlines = None
        self.cache: dict[tuple[int, str], bytes] = {}  # (lane key, user) → packed GateState
        self.calls = None
        self.migrate_until = 0
        self.metrics = None
        self.holds = None
        # partition → [newest record ts read, the gate's idle time when it was read]
        self.clocks: dict[int, list] = {}
        self.idle_ms = 0  # time this instance has spent waiting for input, in all
        self.idle_since: int | None = None  # waiting for input since (None: at work)
        self.turn = self.pause = None  # operators/threads.py: critical first in the interpreter
        self.log_ends = None  # udfs/log_ends.py: has a partition more to read?
        self.drops = Counter()  # this batch's drops by reason, and dead letters: for metrics

    def open(self, runtime_context: RuntimeContext):
        s = self.settings
        self.gate = Gate(gap_timeout_ms=s.gap_timeout_ms, dedup_ttl_ms=s.dedup_ttl_ms)
        users = MapStateDescriptor("users", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        # An idle user's state goes once nothing of theirs can still be replayed or delivered.
        users.enable_time_to_live(ttl_config(s.dedup_ttl_ms + s.critical_default_ttl_ms))
        self.users = runtime_context.get_map_state(users)
        self.deadlines = runtime_context.get_state(
            ValueStateDescriptor("deadlines", Types.PICKLED_BYTE_ARRAY()))
        self.holds = runtime_context.get_state(
            ValueStateDescriptor("holds", Types.PICKLED_BYTE_ARRAY()))
        self.layout = runtime_context.get_state(ValueStateDescriptor("layout", Types.STRING()))
        self.metrics = OperatorMetrics(runtime_context, self.priority)
        run_at_class_priority(s, self.priority)
        self.turn, self.pause = class_turns(s, self.priority)
        from udfs.call_stage import make_call_stage
        from udfs.log_ends import LogEnds
        self.calls = make_call_stage(s, self.priority, pause=self.pause)
        self.log_ends = LogEnds(s.kafka_bootstrap, s.topic_critical
                                if self.priority == states.CRITICAL else s.topic_promo)
        # States kept under a bare user id (before the tenant scope) expire by this time.
        self.migrate_until = (self.calls.markers.old_keys_before + s.dedup_ttl_ms
                              + s.critical_default_ttl_ms)

    def close(self):
        if self.calls is not None:
            self.calls.close()
        if self.log_ends is not None:
            self.log_ends.close()

    def process_element(self, row, ctx: KeyedProcessFunction.Context):
        with self.turn():
            yield from self._batch(row, ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        with self.turn():
            yield from self._due(ctx)

    def _batch(self, row, ctx):
        at = now_ms()
        records = sorted(orjson.loads(row.batch), key=log_order)
        touched: dict[str, object] = {}
        deadlines = self.deadlines.value() or {}
        before = min(deadlines.values(), default=None)
        deadlines.setdefault(SWEEP, at + self.settings.state_sweep_interval_ms)
        shard = ctx.get_current_key()  # the lane key (row.shard is the lane index)
        self._check_layout(shard, row.shard)
        holds = self.holds.value() or {}
        held_before = len(holds)
        self._at_work(at)
        pause = self.pause
        notes = []
        partition_of: dict[str, int] = {}
        log_at: dict[int, int] = {}  # id(notification) → the log's clock at its record
        for record in records:
            pause()
            raw = record["v"]
            log_ms = self._read_clock(record, at)
            try:
                n = parse_notification(raw, expected_priority=self.priority,
                                       default_ttl_ms=self.settings.critical_default_ttl_ms)
                notes.append(n)
                partition_of[f"{n.tenant_id}{TENANT_USER}{n.user_id}"] = record["p"]
                log_at[id(n)] = log_ms
            except ValidationError as exc:
                yield DLQ_TAG, keyed_payload(record["k"] or "(no key)", dead_letter(
                    raw or "", str(exc), states.STAGE_PARSE, at))
                self.drops[DLQ] += 1
        # Part by part, each part's calls go out before the next part is decided: the
        # provider answers one part while this thread works on the next (udfs/call_stage.py),
        # and a part is completed once `send_parts_ahead` later parts are under way.
        flights: deque = deque()
        ahead = self.settings.send_parts_ahead
        # A completed part's statuses leave once its settle is in Redis (with the next part's
        # claim, or the flush): a `delivered` on herald.status with the marker still "in
        # flight" would be contradicted after a crash by an `expired` of its replay.
        landed: list = []
        for part in split_by_user(notes, self.settings.send_part_records):
            out: list = []
            for n in part:
                pause()
                user = f"{n.tenant_id}{TENANT_USER}{n.user_id}"
                gate_state = touched.get(user)
                if gate_state is None:
                    gate_state = (self._load(shard, user) or self._migrate(shard, n.user_id, at)
                                  or self.gate.new_state())
                    touched[user] = gate_state
                partition = partition_of[user]
                decision = self.gate.process(gate_state, n, at, log_ms=log_at[id(n)])
                self._collect(decision, user, deadlines, out, at, holds, partition)
            released = yield from self._emit(out)
            if released:
                flights.append(self.calls.begin(released))
                self.calls.poll()
            if landed and not self.calls.markers.waiting:
                yield from self._landed(landed)
            while len(flights) > ahead:
                landed.append(self.calls.complete(flights.popleft()))
        # Holds whose deadline this batch's records moved the log past: they go now.
        out = []
        for user, (partition, hold_ms) in list(holds.items()):
            if user not in touched and hold_ms <= self._log_clock(partition, at, hold_ms):
                gate_state = self._load(shard, user)
                if gate_state is None:
                    del holds[user]
                    continue
                touched[user] = gate_state
                self._collect(self.gate.on_timer(gate_state, at,
                                                 log_ms=self._log_clock(partition, at)),
                              user, deadlines, out, at, holds, partition)
        released = yield from self._emit(out)
        if released:
            flights.append(self.calls.begin(released))
        self._store(shard, touched)
        if holds or held_before:
            self.holds.update(holds)
        landed.extend(self.calls.complete(flight) for flight in flights)
        self.calls.flush()
        yield from self._landed(landed)
        self._keep_timer(deadlines, before, ctx)
        self.idle_since = now_ms()

    def _landed(self, landed: list):
        """The rows of completed parts whose settles are in Redis; ``landed`` is emptied."""
        for out in landed:
            yield from stage_rows(out, self.metrics, self.pause)
        landed.clear()

    def _due(self, ctx):
        at = now_ms()
        self._at_work(at)  # a timer's work is not waiting for input
        shard = ctx.get_current_key()
        self._check_layout(shard, None)
        deadlines = self.deadlines.value() or {}
        holds = self.holds.value() or {}
        held_before = len(holds)
        out: list = []
        touched: dict[str, object] = {}
        for user in [u for u, due in deadlines.items() if due <= at and u != SWEEP]:
            gate_state = self._load(shard, user)
            if gate_state is None:  # expired out of state: nothing is held any more
                deadlines.pop(user)
                holds.pop(user, None)
                continue
            partition, hold_ms = holds.get(user, (None, None))
            self._collect(self.gate.on_timer(gate_state, at,
                                             log_ms=self._log_clock(partition, at, hold_ms)),
                          user, deadlines, out, at, holds, partition)
            touched[user] = gate_state
        self._store(shard, touched)
        if deadlines.get(SWEEP, at + 1) <= at:
            self._sweep(shard, deadlines, holds)
            deadlines[SWEEP] = at + self.settings.state_sweep_interval_ms
        if holds or held_before:
            self.holds.update(holds)
        yield from self._finish(out, deadlines, None, ctx)
        self.idle_since = now_ms()

    def _check_layout(self, key, lane: int | None) -> None:
        """Stop the job when its lanes differ from those its state was written with (a restore
        with another gate_lanes, or the same lanes placed otherwise): once per lane key and
        instance.
        ``lane`` None (a timer): only the number of lanes is compared."""
        if self.lanes is None or key in self.checked:
            return
        written = self.layout.value()
        if written is None:
            if lane is None:
                return  # a timer before the lane's first batch: the batch writes it
            self.layout.update(f"{self.lanes}:{lane}")
        else:
            lanes_then, _, lane_then = written.partition(":")
            if int(lanes_then) == self.lanes and lane is not None and int(lane_then) != lane:
                raise LanesChanged(  # the same lanes on other keys: the other placement
                    f"the {self.priority} gate's state under lane key {key} was written for lane "
                    f"{lane_then} of {lanes_then}, and this job puts lane {lane} there: the "
                    f"savepoint's lanes were placed otherwise. Restore with HERALD_GATE_LANES_SPREAD"
                    f"={'false' if self.settings.gate_lanes_spread else 'true'} (docs/OPERATIONS.md)")
            if int(lanes_then) != self.lanes or (lane is not None and int(lane_then) != lane):
                raise LanesChanged(
                    f"the {self.priority} gate's state under lane key {key} was written with "
                    f"gate_lanes={lanes_then} (lane {lane_then}); this job has gate_lanes="
                    f"{self.lanes}. Users would lose their dedup, order and holds: restore with "
                    f"HERALD_GATE_LANES={lanes_then} (docs/OPERATIONS.md)")
        self.checked.add(key)

    def _at_work(self, at: int) -> None:
        """Input arrived (or a timer fired): the wait for it counts as idle time."""
        if self.idle_since is not None:
            self.idle_ms += max(0, at - self.idle_since)
            self.idle_since = None

    def _idle_now(self, at: int) -> int:
        return self.idle_ms + (0 if self.idle_since is None else max(0, at - self.idle_since))

    def _read_clock(self, record: dict, at: int) -> int:
        """Move the record's partition's log clock on to it (records come in log order);
        return the clock at the record: a hold taken there must not count the records after
        it in the same batch, which may be the very predecessors it waits for."""
        t = record.get("t", at)
        known = self.clocks.get(record["p"])
        if known is None:
            known = self.clocks[record["p"]] = [t, self.idle_ms, 0]
        else:
            if t > known[0]:
                known[0] = t
            known[1], known[2] = self.idle_ms, 0  # a record read: the log's own time again
        return known[0]

    def _log_clock(self, partition: int | None, at: int, hold_ms: int | None = None) -> int:
        """The log's clock of ``partition`` now: its newest record timestamp, run on by the
        time the gate has waited for input since (so an idle partition's holds still end).
        Time at work does not count: behind the log, its next records may be queued right
        behind the batch just handled. Nor does a wait while the log holds records newer than
        the newest read (udfs/log_ends.py): the source was not giving them (a broker down, a
        restart, a backlog fetched a partition at a time), and a hold given up then would skip
        a predecessor that is in the log within gap_timeout_ms. A partition not read since a
        restore starts from its hold's arrival, as if read at the first look. Without a
        partition (a hold an earlier version stored), the wall clock."""
        known = self.clocks.get(partition)  # [newest read, idle mark, waits counted since]
        if known is None:
            if partition is None or hold_ms is None:
                return at
            known = self.clocks[partition] = [hold_ms - self.gate.gap_timeout_ms,
                                              self._idle_now(at), 0]
        idle = self._idle_now(at)
        if idle > known[1]:
            if not self.log_ends.newer_than(partition, known[0]):
                known[2] += idle - known[1]  # waited with all read: the log's time ran on
            known[1] = idle  # else that wait was for records not read yet: it does not count
        return known[0] + known[2]

    def _load(self, shard: int, user: str):
        """A user's state: from the cache, else from keyed state (None when there is none)."""
        packed = self.cache.pop((shard, user), None)  # popped: re-put as the newest
        if packed is None:
            packed = self.users.get(user)
        return unpack(packed)

    def _migrate(self, shard: int, user_id: str, at: int):
        """A state that a version without the tenant scope kept under the bare user id (it held
        every tenant's user of that id): the first tenant's user to come by after the upgrade
        takes it over, so a restore keeps its dedup, order and holds. Only looked for while
        such states can still be alive."""
        if at >= self.migrate_until:
            return None
        packed = self.cache.pop((shard, user_id), None) or self.users.get(user_id)
        if packed is None:
            return None
        self.users.remove(user_id)
        return unpack(packed)

    def _store(self, shard: int, touched: dict) -> None:
        """Write the batch's changed states through to keyed state and into the cache."""
        if not touched:
            return
        cache = self.cache
        packed = {user: pack(gate_state) for user, gate_state in touched.items()}
        self.users.put_all(packed)  # one crossing into Java for the batch, not one per user
        for user, value in packed.items():
            cache[(shard, user)] = value
        excess = len(cache) - self.settings.gate_cache_users
        if excess > 0:  # the least recently used go (a dict keeps insertion order)
            for key in list(itertools.islice(cache, excess)):
                del cache[key]

    def _sweep(self, shard: int, deadlines: dict, holds: dict) -> None:
        """Apply the TTL to the lane's users; forget the cached, deadline and hold entries of
        users that are gone."""
        live = sweep(self.users)
        for key in [k for k in self.cache if k[0] == shard and k[1] not in live]:
            del self.cache[key]
        for user in [u for u in deadlines if u != SWEEP and u not in live]:
            del deadlines[user]
        for user in [u for u in holds if u not in live]:
            del holds[user]

    def _collect(self, decision, user: str, deadlines: dict, out: list, at: int, holds: dict,
                 partition: int | None) -> None:
        """Turn one gate decision into outputs; keep the user's deadlines up to date."""
        if decision.timer_ms is None:
            deadlines.pop(user, None)
        else:
            deadlines[user] = decision.timer_ms
        if decision.hold_ms is None or partition is None:
            holds.pop(user, None)
        else:
            holds[user] = (partition, decision.hold_ms)
        for n, reason in decision.dropped:
            self.drops[reason] += 1
            if reason == states.EXPIRED:  # its status once the batch's markers are read
                out.append((EXPIRED_DROP, (n, at)))
                continue
            out.append((GATE_STATUS, Status.of(n, reason, at,
                                               detail=f"dropped at the gate: {reason}")))
        for first, last in decision.skipped:
            for n in decision.emit[:1]:
                out.append((GATE_STATUS, Status.of(n, states.ACCEPTED, at, detail=(
                    f"seq gap {first}..{last} not received within {self.settings.gap_timeout_ms} ms;"
                    " moved on"))))
        for n in decision.emit:
            out.append((None, n))

    def _finish(self, out: list, deadlines: dict, before: int | None, ctx):
        """Emit the gate's side outputs, send what was released, keep one timer right."""
        released = yield from self._emit(out)
        if released:
            yield from stage_rows(self.calls.send_all(released), self.metrics, self.pause)
        self._keep_timer(deadlines, before, ctx)

    def _emit(self, out: list):
        """Emit the gate's own status events, as one row (and count its drops); return what
        it released.

        An expired record is checked against its `sent` marker first (one Redis read for the
        batch's, only when it has some): after a restore, the records since the checkpoint
        come again, and one a provider accepted before the crash that has expired since stays
        ``delivered``, as its first status said, instead of being reported ``expired``."""
        expired = [value[0] for tag, value in out if tag is EXPIRED_DROP]
        sent, in_flight = self.calls.markers.sent(expired) if expired else ((), ())
        if sent:
            self.drops[states.EXPIRED] -= len(sent)
        if self.drops:
            self.metrics.add(metric_counts(self.drops))
            self.drops.clear()
        released, statuses = [], []
        for tag, value in out:
            if tag is None:
                released.append(value)
            elif tag is EXPIRED_DROP:
                statuses.append(expired_status(*value, sent, in_flight))
            else:
                statuses.append(value)
        if statuses:
            self.pause()
            yield status_batch(statuses)
        return released

    def _keep_timer(self, deadlines: dict, before: int | None, ctx) -> None:
        """Store the lane's deadlines; one processing-time timer at the earliest of them."""
        self.deadlines.update(deadlines)
        after = min(deadlines.values(), default=None)
        timers = ctx.timer_service()
        if before is not None and before != after and before > now_ms():
            timers.delete_processing_time_timer(before)
        if after is not None and after != before:
            timers.register_processing_time_timer(after)
