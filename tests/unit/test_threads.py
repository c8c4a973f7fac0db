"""Promotional operator threads run niced; critical ones and the rest of the process do not."""
import gc
import os
import sys
import threading
import time

from herald import states
from herald.settings import Settings
from operators.threads import CRITICAL_FIRST, CriticalFirst, class_turns, run_at_class_priority


def in_a_thread(settings: Settings, priority: str) -> tuple[int, int]:
    """(what run_at_class_priority reported, the thread's niceness the kernel reports)."""
    seen = {}

    def body():
        seen["applied"] = run_at_class_priority(settings, priority)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    return seen["applied"], seen["nice"]


def test_a_promotional_operator_thread_is_niced_and_only_that_thread():
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    applied, nice = in_a_thread(Settings(promo_thread_nice=7), states.PROMOTIONAL)
    assert applied == nice == max(before, 7)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_a_critical_operator_thread_keeps_its_priority():
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert in_a_thread(Settings(promo_thread_nice=7), states.CRITICAL) == (0, before)


def test_zero_turns_it_off():
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert in_a_thread(Settings(promo_thread_nice=0), states.PROMOTIONAL) == (0, before)


def test_the_gil_switch_interval_is_set_from_settings():
    before = sys.getswitchinterval()
    try:
        in_a_thread(Settings(python_switch_interval_ms=0.5), states.CRITICAL)
        assert sys.getswitchinterval() == 0.0005
    finally:
        sys.setswitchinterval(before)


def test_the_collectors_young_threshold_is_set_from_settings_and_zero_keeps_it():
    before = gc.get_threshold()
    try:
        in_a_thread(Settings(python_gc_gen0_threshold=12_345), states.CRITICAL)
        assert gc.get_threshold() == (12_345, *before[1:])
        in_a_thread(Settings(python_gc_gen0_threshold=0), states.CRITICAL)
        assert gc.get_threshold() == (12_345, *before[1:])
    finally:
        gc.set_threshold(*before)


def test_a_niced_job_process_passes_its_priority_to_what_it_starts():
    # In a child process, so this test's own priority is untouched.
    import subprocess
    script = ("import subprocess, sys; from operators.threads import lower_priority;"
              "print(lower_priority(6)); sys.stdout.flush();"
              "subprocess.run([sys.executable, '-c', 'import os; print(os.getpriority(0, 0))'])")
    before = os.getpriority(os.PRIO_PROCESS, 0)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=root).stdout.split()
    assert out == [str(max(before, 6))] * 2


# Critical first in one interpreter: promotional steps wait while a critical batch is under way.

def until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_without_critical_work_a_promotional_step_does_not_wait():
    first = CriticalFirst(max_wait_ms=10_000)
    assert first.step_aside() == 0.0


def test_a_promotional_step_waits_until_the_critical_batch_is_done():
    first = CriticalFirst(max_wait_ms=60_000)
    events: list[str] = []
    waited: list[float] = []
    promo = threading.Thread(target=lambda: (waited.append(first.step_aside()),
                                             events.append("promo")))
    with first.critical():
        promo.start()
        until(lambda: first.waiting == 1)  # blocked inside step_aside, critical still under way
        events.append("critical done")
    promo.join()
    assert events == ["critical done", "promo"]
    assert waited[0] > 0 and first.waiting == 0


def test_overlapping_critical_batches_keep_promotional_work_waiting_until_the_last_ends():
    first = CriticalFirst(max_wait_ms=60_000)
    events: list[str] = []
    promo = threading.Thread(target=lambda: (first.step_aside(), events.append("promo")))
    outer = first.critical()
    outer.__enter__()
    with first.critical():
        promo.start()
        until(lambda: first.waiting == 1)
    events.append("one of two done")
    assert first.waiting == 1 and promo.is_alive()
    events.append("both done")
    outer.__exit__(None, None, None)
    promo.join()
    assert events == ["one of two done", "both done", "promo"]


def test_a_promotional_step_waits_no_longer_than_its_bound():
    # The critical batch stays under way until the step has returned (or 30 s have passed):
    # the step must give up on its own, at its bound, neither at the batch's end nor when the
    # batch turns stale (10 minutes here).
    first = CriticalFirst(max_wait_ms=50, stale_after_s=600)
    waited: list[float] = []
    promo = threading.Thread(target=lambda: waited.append(first.step_aside()))
    with first.critical():
        promo.start()
        promo.join(timeout=30)
        returned_under_way = bool(waited)
    assert returned_under_way, "the step was still waiting 30 s into a 50 ms bound"
    assert 50 <= waited[0] < 30_000
    assert first.waiting == 0


def test_a_batch_abandoned_under_way_stops_holding_promotional_work_once_stale():
    first = CriticalFirst(max_wait_ms=60_000, stale_after_s=0.05)
    abandoned = first.critical()
    abandoned.__enter__()  # never exited: a task failed with its batch's generator open
    started = time.monotonic()
    first.step_aside()
    assert time.monotonic() - started < 30  # released by staleness, far before max_wait_ms
    assert first.waiting == 0


def test_zero_bound_means_promotional_work_never_waits():
    first = CriticalFirst(max_wait_ms=0)
    with first.critical():
        assert first.step_aside() == 0.0


def test_class_turns_critical_marks_its_batches_promotional_steps_aside():
    settings = Settings(promo_yield_max_ms=123)
    turn, pause = class_turns(settings, states.CRITICAL)
    assert pause() == 0.0
    with turn():
        assert len(CRITICAL_FIRST._active) == 1
    assert not CRITICAL_FIRST._active
    turn, pause = class_turns(settings, states.PROMOTIONAL)
    assert CRITICAL_FIRST.max_wait_ms == 123
    with turn():
        assert not CRITICAL_FIRST._active
    assert pause == CRITICAL_FIRST.step_aside


def test_an_operator_thread_freezes_what_the_interpreter_holds_out_of_the_cycle_collector():
    gc.unfreeze()
    try:
        in_a_thread(Settings(), states.CRITICAL)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
