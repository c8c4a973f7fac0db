"""The benchmarks' CPU per part of the delivery job: thread names (as Linux keeps them, 15
characters) map to parts, and a thread's CPU is counted in its part."""
import os
import threading
import time

from bench.common import cpu_between, cpu_seconds, job_component, tree_cpu_by_component


def test_flink_thread_names_map_to_the_part_of_the_job_they_run():
    assert job_component("gate-critical -") == job_component("gate-promotiona")
    assert job_component("gate-critical -").startswith("gate")
    assert job_component("WindowAggregate").startswith("SQL window")
    assert job_component("Source Data Fet") == job_component("Source: critica") == "Kafka sources"
    assert job_component("C2 CompilerThre") == job_component("C1 CompilerThre") == "JIT compilers"
    assert job_component("flink-pekko.act") == "Flink runtime and the rest"


def test_a_busy_threads_cpu_is_counted_in_its_part():
    spun, done = threading.Event(), threading.Event()

    def spin():  # named as Flink names a gate's task thread (the OS's name, not Python's)
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write("gate-critical -")
        stop = time.thread_time() + 0.3
        while time.thread_time() < stop:
            pass
        spun.set()
        done.wait()  # alive while it is read: /proc forgets an ended thread

    before = tree_cpu_by_component(os.getpid())
    worker = threading.Thread(target=spin)
    worker.start()
    spun.wait()
    after = tree_cpu_by_component(os.getpid())
    done.set()
    worker.join()
    spent = cpu_between(before, after)
    gate = job_component("gate-critical -")
    assert list(spent)[0] == gate  # the busiest part first
    assert spent[gate] >= 0.25
    assert sum(after.values()) <= cpu_seconds(os.getpid()) + 0.05
