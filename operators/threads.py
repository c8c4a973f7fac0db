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
"""
from __future__ import annotations

import logging
import os
import sys
import threading

from herald import states
from herald.settings import Settings

log = logging.getLogger(__name__)


def run_at_class_priority(settings: Settings, priority: str) -> int:
    """Nice the calling (operator) thread if its class is promotional; the niceness in effect
    (0 for a class that is not lowered). Sets the interpreter's GIL switch interval too."""
    if settings.python_switch_interval_ms > 0:
        sys.setswitchinterval(settings.python_switch_interval_ms / 1000)
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
