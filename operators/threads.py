"""CPU priority of a class's operator threads.

On one TaskManager (the embedded MiniCluster, or a small cluster) both classes' operators share
the machine's cores and one Python interpreter. A promotional backlog keeps its gate busy all
the time; the critical gate needs the CPU for a few milliseconds per batch, but at once. The
promotional operators' threads therefore run niced (`promo_thread_nice`): the kernel gives the
critical threads the core first, and the promotional ones everything left, so a campaign is
never slowed by this when critical traffic is quiet. A thread may lower its own priority
without privileges; nothing here raises one.

Both classes' Python operators also share one interpreter, so one GIL: a promotional batch of
thousands of records keeps it for a second of work, and the critical thread gets it back only
every switch interval. The interval is shortened (`python_switch_interval_ms`, process-wide)
so critical work waits for the GIL half a millisecond at a time instead of five
(measured beside a 200k backlog: critical p99 1.3 s with 5 ms, 0.7 s with 0.5 ms; one run
each, bench/results/isolation.md has the current figure).

Niceness and a short switch interval still share the GIL half and half while both classes have
Python work: a critical batch then takes twice as long, and at a few hundred batches a second
the critical gate queues. So the promotional operators also step aside (`CRITICAL_FIRST`):
while a critical operator is inside a batch, the promotional ones wait at their next step (the
next record, output row or round of calls) until it is done, or `promo_yield_max_ms` at most, so
a promotional batch always moves on and its checkpoints are never held for long. Critical work
then has the interpreter to itself; a campaign uses what critical leaves.

And the cycle collector stops the whole interpreter for its full collections, in proportion to
the objects it tracks: ≈ 150k right after the operators' imports (modules, classes, functions),
0.1–0.15 s per collection on a busy machine. Each operator's `open` moves what exists then into
the collector's permanent generation (`gc.freeze`), so later collections walk only what the job
made since (a frozen object still goes when its last reference does; only a reference cycle
among frozen objects would stay). Its young collections are made rarer too
(`python_gc_gen0_threshold`): a batch's records, states and requests are thousands of
containers that die with the batch, and at Python's threshold of 700 the collector walked the
survivors every few dozen notifications (≈ 5 µs per notification, measured with a gc callback
in the job; a collection of 20,000 young objects takes a millisecond or two).
"""
from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager, nullcontext

from herald import states
from herald.settings import Settings

log = logging.getLogger(__name__)


def run_at_class_priority(settings: Settings, priority: str) -> int:
    """Nice the calling (operator) thread if its class is promotional; the niceness in effect
    (0 for a class that is not lowered). Sets the interpreter's GIL switch interval and
    collector threshold, and freezes what it holds so far out of the collector's way, too."""
    if settings.python_switch_interval_ms > 0:
        sys.setswitchinterval(settings.python_switch_interval_ms / 1000)
    if settings.python_gc_gen0_threshold > 0:
        gc.set_threshold(settings.python_gc_gen0_threshold, *gc.get_threshold()[1:])
    gc.freeze()
    if priority != states.PROMOTIONAL or settings.promo_thread_nice <= 0:
        return 0
    return lower_priority(settings.promo_thread_nice)


def lower_priority(nice: int) -> int:
    """Lower the calling thread's CPU priority to at least ``nice``; what it starts afterwards
    (threads, and processes such as the embedded MiniCluster's JVM with every operator thread
    in it) inherits it. Nothing here raises a priority. The niceness in effect."""
    tid = threading.get_native_id()
    try:
        if nice > 0 and os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:  # not Linux-like, or a sandbox that forbids it: run unniced
        log.warning("could not lower this thread's priority: %s", exc)
    return os.getpriority(os.PRIO_PROCESS, tid)


class CriticalFirst:
    """Promotional Python work waits while critical Python work is under way, in one interpreter.

    `critical()` brackets a critical operator's batch; `step_aside()` is called by promotional
    operators before each step. Without critical work it costs one attribute read (≈ 0.1 µs
    against tens of µs of work per record). A batch under way for longer than `stale_after_s`
    no longer counts: a batch abandoned by a failing task (its generator never closed, in an
    interpreter that outlives the task's restart) must not slow promotional work for good.
    """

    def __init__(self, max_wait_ms: float = 200.0, stale_after_s: float = 30.0):
        self.max_wait_ms = max_wait_ms
        self.stale_after_s = stale_after_s
        self._active: dict[object, float] = {}  # batch under way → when it started (monotonic)
        self._idle = threading.Condition()
        self.waiting = 0  # promotional steps waiting now

    @contextmanager
    def critical(self):
        batch = object()
        with self._idle:
            self._active[batch] = time.monotonic()
        try:
            yield
        finally:
            with self._idle:
                del self._active[batch]
                if not self._active:
                    self._idle.notify_all()

    def step_aside(self) -> float:
        """Wait while critical work is under way (at most `max_wait_ms`); the ms waited."""
        if not self._active or self.max_wait_ms <= 0:
            return 0.0
        started = time.monotonic()
        deadline = started + self.max_wait_ms / 1000
        with self._idle:
            self.waiting += 1
            try:
                while self._active:
                    now = time.monotonic()
                    stale_at = max(self._active.values()) + self.stale_after_s
                    if now >= min(deadline, stale_at):
                        break
                    self._idle.wait(min(deadline, stale_at) - now)
            finally:
                self.waiting -= 1
        return (time.monotonic() - started) * 1000


CRITICAL_FIRST = CriticalFirst()


def no_pause() -> float:
    return 0.0


def class_turns(settings: Settings, priority: str):
    """(a context for one batch, a pause between steps) for an operator of ``priority``:
    critical batches mark themselves under way; promotional ones step aside for them."""
    CRITICAL_FIRST.max_wait_ms = settings.promo_yield_max_ms
    if priority == states.CRITICAL:
        return CRITICAL_FIRST.critical, no_pause
    return nullcontext, CRITICAL_FIRST.step_aside
