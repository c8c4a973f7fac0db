"""The benchmarks' CPU per part of the delivery job: thread names (as Linux keeps them, 15
characters) map to parts, and a thread's CPU is counted in its part."""
import subprocess
import sys

from bench.common import cpu_between, cpu_seconds, job_component, tree_cpu_by_component


def test_flink_thread_names_map_to_the_part_of_the_job_they_run():
    assert job_component("gate-critical -") == job_component("gate-promotiona")
    assert job_component("gate-critical -").startswith("gate")
    assert job_component("WindowAggregate").startswith("SQL window")
    assert job_component("Source Data Fet") == job_component("Source: critica") == "Kafka sources"
    assert job_component("C2 CompilerThre") == job_component("C1 CompilerThre") == "JIT compilers"
    assert job_component("flink-pekko.act") == "Flink runtime and the rest"


# A process with one busy thread named as Flink names a gate's task thread (the OS's name, not
# Python's); it stays alive until told, since /proc forgets an ended thread.
CHILD = """
import sys, threading, time
def spin():
    with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
        comm.write("gate-critical -")
    stop = time.thread_time() + 0.3
    while time.thread_time() < stop:
        pass
    print("spun", flush=True)
    sys.stdin.readline()
worker = threading.Thread(target=spin)
worker.start()
worker.join()
"""


def test_a_busy_threads_cpu_is_counted_in_its_part():
    # A child of its own: the test process's other children (a test session's Flink jobs)
    # would count in its tree.
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "spun"
        spent = cpu_between({}, tree_cpu_by_component(child.pid))
        total = cpu_seconds(child.pid)
    finally:
        child.communicate("\n", timeout=10)
    gate = job_component("gate-critical -")
    assert list(spent)[0] == gate  # the busiest part first
    assert spent[gate] >= 0.25
    assert sum(spent.values()) <= total + 0.05
