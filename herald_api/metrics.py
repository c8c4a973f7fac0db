"""The API's own Prometheus metrics, on prometheus_client: one registry per app (so two apps in
one process, as the tests run them, keep their own counts). Label values come from route
templates and fixed words, never from request data, so the series stay few."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """Everything ``GET /metrics`` shows."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("herald_api_requests",
                                "HTTP requests answered, by method, route template and status",
                                ("method", "route", "status"), registry=registry)
        self.request_seconds = Histogram("herald_api_request_duration_seconds",
                                         "Time to answer a request, by route template",
                                         ("route",), buckets=LATENCY_BUCKETS_S,
                                         registry=registry)
        self.produce_seconds = Histogram("herald_api_produce_duration_seconds",
                                         "Kafka produce with acks=all, send to acknowledgement, "
                                         "by topic role", ("topic",), buckets=LATENCY_BUCKETS_S,
                                         registry=registry)
        self.produce_errors = Counter("herald_api_produce_errors",
                                      "Produces that failed or timed out, by topic role",
                                      ("topic",), registry=registry)
        self.idempotent_replays = Counter("herald_api_idempotent_replays",
                                          "Requests answered with an earlier answer "
                                          "(Idempotency-Key or repeated id), by route",
                                          ("route",), registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
