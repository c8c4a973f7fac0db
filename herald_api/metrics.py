"""The Prometheus metrics of the API and of the webhook dispatcher, on prometheus_client: one
registry per app or dispatcher (so two in one process, as the tests run them, keep their own
counts). Label values come from route
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

        self.receipts = Counter("herald_api_receipts",
                                "Delivery receipts received, by provider and outcome: recorded "
                                "(a status event written), unmatched (no notification of "
                                "Herald's; acknowledged and dropped), not_filed_yet (answered "
                                "409 for the provider to send again)",
                                ("provider", "outcome"), registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class WebhookMetrics:
    """What the webhook dispatcher (``python -m herald_api.webhooks --metrics-port N``) shows."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.calls = Counter("herald_webhook_calls",
                             "Calls to tenants' webhooks, by outcome: sent (2xx) or failed "
                             "(another answer or none; retried or given up)", ("outcome",),
                             registry=registry)
        self.given_up = Counter("herald_webhook_given_up",
                                "Events whose webhook call failed webhook_max_attempts times "
                                "(kept in herald:webhook:dead:{tenant})", registry=registry)

    def totals(self) -> dict[str, int]:
        """The counts so far: sent, failed (calls) and given_up (events)."""
        value = self.registry.get_sample_value
        return {"sent": int(value("herald_webhook_calls_total", {"outcome": "sent"}) or 0),
                "failed": int(value("herald_webhook_calls_total", {"outcome": "failed"}) or 0),
                "given_up": int(value("herald_webhook_given_up_total") or 0)}
