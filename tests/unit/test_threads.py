"""Promotional operator threads run niced; critical ones and the rest of the process do not."""
import os
import sys
import threading

from herald import states
from herald.settings import Settings
from operators.threads import run_at_class_priority


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
