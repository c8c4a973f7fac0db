"""The per-user gate: dedup, per-user order by ``seq``, expiry, ``send_at`` and cancellation.

Plain Python so the Flink keyed operator stays a thin wrapper: it keeps one ``GateState`` per
(user, class) in a ValueState (it pickles; ``Types.PICKLED_BYTE_ARRAY()``), calls
``Gate.process`` per record and ``Gate.on_timer`` when its one event-time timer fires, and
applies the returned ``Decision`` (emit these, status-event those, move the timer).

Rules, decided here once:

* **Dedup.** An id is remembered from its arrival (held or emitted) until
  ``max(arrival + dedup_ttl_ms, expires_at)``, so a replay is recognised for at least the TTL
  and always for as long as the original could still be delivered. Records dropped as expired
  or cancelled are not remembered: a replay of them meets the same fate anyway.
* **Order.** A record with ``seq`` takes its place in the user's sequence: the next expected
  seq is released, later ones are held. A gap (missing seq) is waited for until the log has
  moved ``gap_timeout_ms`` past the arrival of the oldest held record; then the gate moves on
  and reports the skipped ranges. Holds count on the log's clock (``log_ms``: the caller's
  clock of the user's partition, from the records' log timestamps), not the wall clock: when
  the job is seconds behind the log, a missing predecessor appended a few ms after the held
  record has not even been read yet, and a wall-clock hold would give up on it. Without a
  ``log_ms`` the wall clock stands in. A seq'd record whose ``send_at`` is still ahead keeps
  its place and holds the ones behind it (the producer asked for that order).
* **Start of a sequence.** A fresh state has no expected seq. A first arrival at or below
  ``first_seq`` (0 by default) starts the sequence at once; a higher one is held up to
  ``start_hold_ms`` (default: ``gap_timeout_ms``) for a lower seq, then the lowest seq held
  starts the sequence (no gap is reported: nothing is known about what came before).
  ``start_hold_ms=0`` trades that order for no added latency on a fresh state.
* **Late or clashing seq.** A seq below the expected one (its gap was given up) or one whose
  place is already taken by another id is never dropped for it: it is released like a record
  without seq. Delivering out of order beats losing a message.
* **No seq.** Records without seq pass in arrival order and do *not* wait behind held seq'd
  records: they have no place in that producer's sequence, and holding them would let one
  producer's gap delay everything else for the user. Only their own ``send_at`` holds them.
* **Expiry and cancellation** are checked on arrival and again at release; held records that
  expire are dropped when the timer at their ``expires_at`` fires. Their seq stays taken (a
  tombstone, no gap) while other held records wait; once nothing live is held the tombstones
  go, to keep the state small. A record whose ``send_at``
  is not before ``expires_at`` can never be delivered and is dropped as expired on arrival.
* **Timers.** Only held records need one. ``Decision.timer_ms`` is on the wall clock (a hold's
  deadline as if the log kept pace with it); ``hold_ms`` is the hold's deadline on the log's
  clock, so a caller whose log clock runs ahead (a backlog draining) can come back earlier.
  The state remembers the timer it asked for, and each Decision says which timer to register
  and which stale one to delete, so the caller keeps at most one per user. A stale timer that
  fires anyway is harmless.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection

from herald import states
from herald.models import Notification

EMIT = "emit"
HOLD = "hold"
DROP = "drop"

NEVER = (1 << 63) - 1  # Java Long.MAX_VALUE: "no deadline", and it fits a Flink timer long

_NO_CANCELLED: frozenset[str] = frozenset()
_NOTHING: tuple = ()
_GONE = None  # the tombstone in GateState.held: the seq arrived and was dropped; skip it, no gap


@dataclass(slots=True)
class GateState:
    """Everything the gate knows about one user and class; plain containers, so it pickles.

    ``held`` maps seq → ``(arrived_ms, notification)`` or ``None`` (a tombstone for a seq
    that arrived and was dropped while held). ``scheduled`` holds records without a usable seq
    that wait for their ``send_at``, in arrival order.
    """
    seen: dict[str, int] = field(default_factory=dict)
    seen_prune_ms: int = NEVER
    next_seq: int | None = None
    held: dict[int, tuple[int, Notification] | None] = field(default_factory=dict)
    scheduled: list[Notification] = field(default_factory=list)
    timer_ms: int | None = None

    def holds_anything(self) -> bool:
        return bool(self.held) or bool(self.scheduled)


class Decision:
    """What to do after one call.

    ``verdict``/``reason`` are the fate of the arriving record (``None`` for a timer call).
    ``emit`` is ready now, in order; ``dropped`` is ``(notification, reason)`` pairs (the
    arriving record too, when dropped); ``skipped`` is inclusive ``(first, last)`` seq ranges
    given up on. ``register_timer_ms``/``delete_timer_ms`` keep the caller's single timer right.
    """
    __slots__ = ("verdict", "reason", "emit", "dropped", "skipped", "timer_ms",
                 "register_timer_ms", "delete_timer_ms", "hold_ms")

    def __init__(self, verdict, reason, emit, dropped, skipped, timer_ms, register_timer_ms,
                 delete_timer_ms, hold_ms=None):
        self.verdict: str | None = verdict
        self.reason: str | None = reason
        self.emit: tuple[Notification, ...] | list[Notification] = emit
        self.dropped: tuple | list[tuple[Notification, str]] = dropped
        self.skipped: tuple | list[tuple[int, int]] = skipped
        self.timer_ms: int | None = timer_ms
        self.register_timer_ms: int | None = register_timer_ms
        self.delete_timer_ms: int | None = delete_timer_ms
        self.hold_ms: int | None = hold_ms  # a seq hold's deadline on the log's clock

    def __repr__(self) -> str:
        return (f"Decision(verdict={self.verdict!r}, reason={self.reason!r}, "
                f"emit={[n.id for n in self.emit]}, "
                f"dropped={[(n.id, r) for n, r in self.dropped]}, skipped={list(self.skipped)}, "
                f"timer_ms={self.timer_ms})")


class Gate:
    """The decision logic; holds only configuration, so one instance serves every key."""

    __slots__ = ("gap_timeout_ms", "start_hold_ms", "dedup_ttl_ms", "first_seq")

    def __init__(self, *, gap_timeout_ms: int = 2_000, start_hold_ms: int | None = None,
                 dedup_ttl_ms: int = 86_400_000, first_seq: int = 0):
        """``start_hold_ms`` defaults to ``gap_timeout_ms``."""
        if start_hold_ms is None:
            start_hold_ms = gap_timeout_ms
        for name, value in (("gap_timeout_ms", gap_timeout_ms), ("start_hold_ms", start_hold_ms),
                            ("dedup_ttl_ms", dedup_ttl_ms), ("first_seq", first_seq)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        self.gap_timeout_ms = gap_timeout_ms
        self.start_hold_ms = start_hold_ms
        self.dedup_ttl_ms = dedup_ttl_ms
        self.first_seq = first_seq

    @staticmethod
    def new_state() -> GateState:
        return GateState()

    # ------------------------------------------------------------------ per record

    def process(self, state: GateState, n: Notification, now_ms: int,
                cancelled: Collection[str] = _NO_CANCELLED, log_ms: int | None = None
                ) -> Decision:
        """Decide the fate of one arriving record; ``now_ms`` is the wall clock, ``log_ms`` the
        log's clock of the user's partition (default: the wall clock)."""
        if now_ms >= state.seen_prune_ms:
            self._prune_seen(state, now_ms)
        seen = state.seen
        until = seen.get(n.id)
        if until is not None and until > now_ms:
            return self._drop_arriving(state, n, states.DUPLICATE, now_ms, cancelled, log_ms)
        expires_at = n.expires_at
        send_at = n.send_at
        if now_ms >= expires_at or (send_at is not None and send_at >= expires_at):
            return self._drop_arriving(state, n, states.EXPIRED, now_ms, cancelled, log_ms)
        if cancelled and n.campaign_id is not None and n.campaign_id in cancelled:
            return self._drop_arriving(state, n, states.CANCELLED, now_ms, cancelled, log_ms)

        until = now_ms + self.dedup_ttl_ms
        if expires_at > until:
            until = expires_at
        seen[n.id] = until
        if until < state.seen_prune_ms:
            state.seen_prune_ms = until

        seq = n.seq
        ready = send_at is None or send_at <= now_ms
        if not state.held and not state.scheduled and state.timer_ms is None:
            # Fast path: nothing held for this user, so nothing else can change.
            if seq is None:
                if ready:
                    return Decision(EMIT, None, (n,), _NOTHING, _NOTHING, None, None, None)
            elif ready and (seq == state.next_seq or
                            (state.next_seq is None and seq <= self.first_seq)):
                state.next_seq = seq + 1
                return Decision(EMIT, None, (n,), _NOTHING, _NOTHING, None, None, None)

        held = state.held
        next_seq = state.next_seq
        clock = now_ms if log_ms is None else log_ms
        if seq is not None and seq not in held and (next_seq is None or seq >= next_seq):
            held[seq] = (clock, n)
        elif ready:
            seq = None  # late or clashing seq: released like a record without one
        else:
            state.scheduled.append(n)
            seq = None

        emit: list[Notification] = []
        dropped: list[tuple[Notification, str]] = []
        skipped: list[tuple[int, int]] = []
        self._release(state, now_ms, clock, cancelled, emit, dropped, skipped)
        if seq is None and ready:
            emit.append(n)  # after anything already due: that came earlier in the log
        verdict = EMIT if any(e is n for e in emit) else HOLD
        return self._decide(state, verdict, None, emit, dropped, skipped, now_ms, clock)

    # ------------------------------------------------------------------ per timer

    def on_timer(self, state: GateState, now_ms: int,
                 cancelled: Collection[str] = _NO_CANCELLED, log_ms: int | None = None
                 ) -> Decision:
        """Release what is ready, drop what expired or was cancelled, give up overdue gaps."""
        if state.timer_ms is not None and state.timer_ms <= now_ms:
            state.timer_ms = None  # that timer has fired; nothing to delete
        if now_ms >= state.seen_prune_ms:
            self._prune_seen(state, now_ms)
        emit: list[Notification] = []
        dropped: list[tuple[Notification, str]] = []
        skipped: list[tuple[int, int]] = []
        clock = now_ms if log_ms is None else log_ms
        self._release(state, now_ms, clock, cancelled, emit, dropped, skipped)
        return self._decide(state, None, None, emit, dropped, skipped, now_ms, clock)

    # ------------------------------------------------------------------ internals

    def _drop_arriving(self, state: GateState, n: Notification, reason: str, now_ms: int,
                       cancelled: Collection[str], log_ms: int | None) -> Decision:
        if not state.held and not state.scheduled and state.timer_ms is None:
            return Decision(DROP, reason, _NOTHING, ((n, reason),), _NOTHING, None, None, None)
        emit: list[Notification] = []
        dropped: list[tuple[Notification, str]] = [(n, reason)]
        skipped: list[tuple[int, int]] = []
        clock = now_ms if log_ms is None else log_ms
        self._release(state, now_ms, clock, cancelled, emit, dropped, skipped)
        return self._decide(state, DROP, reason, emit, dropped, skipped, now_ms, clock)

    def _prune_seen(self, state: GateState, now_ms: int) -> None:
        """Forget ids past their window; at most ~16 full scans per TTL, however many ids."""
        live = {k: u for k, u in state.seen.items() if u > now_ms}
        state.seen = live
        if live:
            state.seen_prune_ms = max(min(live.values()), now_ms + self.dedup_ttl_ms // 16)
        else:
            state.seen_prune_ms = NEVER

    def _release(self, state: GateState, now_ms: int, clock: int, cancelled: Collection[str],
                 emit: list, dropped: list, skipped: list) -> None:
        held = state.held
        if held:
            # Drop what expired or was cancelled while held; keep its place as a tombstone.
            for seq, entry in held.items():
                if entry is _GONE:
                    continue
                n = entry[1]
                if now_ms >= n.expires_at:
                    held[seq] = _GONE
                    dropped.append((n, states.EXPIRED))
                elif cancelled and n.campaign_id is not None and n.campaign_id in cancelled:
                    held[seq] = _GONE
                    dropped.append((n, states.CANCELLED))
            self._advance(state, now_ms, clock, emit, skipped)
        if state.scheduled:
            waiting = []
            for n in state.scheduled:
                if now_ms >= n.expires_at:
                    dropped.append((n, states.EXPIRED))
                elif cancelled and n.campaign_id is not None and n.campaign_id in cancelled:
                    dropped.append((n, states.CANCELLED))
                elif n.send_at <= now_ms:
                    emit.append(n)
                else:
                    waiting.append(n)
            state.scheduled = waiting

    def _advance(self, state: GateState, now_ms: int, clock: int, emit: list,
                 skipped: list) -> None:
        """Release the sequence head while it is present and ready (``send_at`` on the wall
        clock); give up gaps overdue on the log's ``clock``."""
        held = state.held
        while held:
            next_seq = state.next_seq
            if next_seq is None:
                lowest = min(held)
                if lowest > self.first_seq:
                    oldest = _oldest_arrival(held)
                    if oldest is None or oldest + self.start_hold_ms > clock:
                        return
                state.next_seq = lowest  # start here; what came before is unknown
                continue
            if next_seq in held:
                entry = held[next_seq]
                if entry is not _GONE:
                    n = entry[1]
                    if n.send_at is not None and n.send_at > now_ms:
                        return  # the head keeps its place until its send_at
                    emit.append(n)
                del held[next_seq]
                state.next_seq = next_seq + 1
                continue
            oldest = _oldest_arrival(held)
            if oldest is None or oldest + self.gap_timeout_ms > clock:
                return
            lowest = min(held)
            skipped.append((next_seq, lowest - 1))
            state.next_seq = lowest

    def _deadline(self, state: GateState, now_ms: int,
                  clock: int) -> tuple[int | None, int | None]:
        """The earliest wall-clock time anything held can change (an expiry, a send_at, or a
        gap timeout as if the log kept pace with the wall clock), and the gap timeout on the
        log's ``clock`` (None: no seq hold)."""
        earliest = NEVER
        hold = None
        held = state.held
        if held:
            oldest = NEVER
            for entry in held.values():
                if entry is _GONE:
                    continue
                arrived, n = entry
                if n.expires_at < earliest:
                    earliest = n.expires_at
                if arrived < oldest:
                    oldest = arrived
            next_seq = state.next_seq
            if oldest != NEVER:
                if next_seq is None:
                    hold = oldest + self.start_hold_ms
                elif next_seq in held:
                    # _advance stopped at a present head: it is live and waits for its send_at
                    send_at = held[next_seq][1].send_at
                    if send_at < earliest:
                        earliest = send_at
                else:
                    hold = oldest + self.gap_timeout_ms
                if hold is not None and now_ms + (hold - clock) < earliest:
                    earliest = now_ms + (hold - clock)
        for n in state.scheduled:
            if n.send_at < earliest:
                earliest = n.send_at
        return (None if earliest == NEVER else earliest), hold

    def _decide(self, state: GateState, verdict: str | None, reason: str | None, emit: list,
                dropped: list, skipped: list, now_ms: int, clock: int) -> Decision:
        held = state.held
        if held and all(entry is _GONE for entry in held.values()):
            held.clear()  # nobody waits behind the tombstones any more
        timer, hold = self._deadline(state, now_ms, clock)
        previous = state.timer_ms
        register = delete = None
        if timer != previous:
            register = timer
            if previous is not None and previous > now_ms:
                delete = previous
            state.timer_ms = timer
        return Decision(verdict, reason, emit or _NOTHING, dropped or _NOTHING,
                        skipped or _NOTHING, timer, register, delete, hold)


def _oldest_arrival(held: dict) -> int | None:
    oldest = None
    for entry in held.values():
        if entry is not _GONE and (oldest is None or entry[0] < oldest):
            oldest = entry[0]
    return oldest
