"""Herald's Flink metrics for one operator instance: counters and last-batch latency gauges
under a ``priority`` group, so the Prometheus reporter labels them ``priority="critical"``.

Registered in ``open()``; fed once per batch with the increments `herald.metrics` computed, so
the Java side is entered once per counter that moved, never once per record. The latency gauges
are Java-side values set by Python (PyFlink's ``distribution``): a reporter thread reading them
never calls into the interpreter.
"""
from __future__ import annotations

from typing import Mapping

from herald.metrics import COUNTERS, PREFIX, QUANTILES, latency_summary



class OperatorMetrics:
    def __init__(self, runtime_context, priority: str):
        group = runtime_context.get_metrics_group().add_group("priority", priority)
        self.counters = {name: group.counter(PREFIX + name) for name in COUNTERS}
        self.latency = {name: group.distribution(f"{PREFIX}latency_{name}_ms")
                        for name in (*(q for q, _ in QUANTILES), "max")}

    def add(self, counts: Mapping[str, int], latencies: list[int] = ()) -> None:
        for name, n in counts.items():
            if n:
                self.counters[name].inc(n)
        for name, value in latency_summary(list(latencies)).items():
            self.latency[name].update(value)
