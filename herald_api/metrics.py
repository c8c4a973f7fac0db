"""The API's own Prometheus metrics: counters and histograms rendered as text format 0.0.4.

Small on purpose: one event loop updates them, so no locks; label values come from route
templates and fixed words, never from request data, so the series stay few.
"""
from __future__ import annotations

import bisect
import math
from typing import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

INF_LE = 'le="+Inf"'
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help_text, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"


class Histogram:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.name, self.help, self.label_names = name, help_text, labels
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], list] = {}  # labels → [per-bucket counts, sum, count]

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.setdefault(labels, [[0] * len(self.buckets), 0.0, 0])
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.buckets):
            series[0][i] += 1
        series[1] += value
        series[2] += 1

    def count(self, *labels: str) -> int:
        series = self.series.get(labels)
        return series[2] if series else 0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, (counts, total, n) in sorted(self.series.items()):
            running = 0
            for bound, c in zip(self.buckets, counts):
                running += c
                le = f'le="{_number(bound)}"'
                yield f"{self.name}_bucket{_labels(self.label_names, labels, le)} {running}"
            yield f"{self.name}_bucket{_labels(self.label_names, labels, INF_LE)} {n}"
            yield f"{self.name}_sum{_labels(self.label_names, labels)} {_number(total)}"
            yield f"{self.name}_count{_labels(self.label_names, labels)} {n}"


class ApiMetrics:
    """Everything ``GET /metrics`` shows."""

    def __init__(self) -> None:
        self.requests = Counter("herald_api_requests_total",
                                "HTTP requests answered, by method, route template and status",
                                ("method", "route", "status"))
        self.request_seconds = Histogram("herald_api_request_duration_seconds",
                                         "Time to answer a request, by route template",
                                         ("route",))
        self.produce_seconds = Histogram("herald_api_produce_duration_seconds",
                                         "Kafka produce with acks=all, send to acknowledgement, "
                                         "by topic role", ("topic",))
        self.produce_errors = Counter("herald_api_produce_errors_total",
                                      "Produces that failed or timed out, by topic role",
                                      ("topic",))
        self.idempotent_replays = Counter("herald_api_idempotent_replays_total",
                                          "Requests answered with an earlier answer "
                                          "(Idempotency-Key or repeated id), by route",
                                          ("route",))

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.request_seconds, self.produce_seconds,
                       self.produce_errors, self.idempotent_replays):
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
