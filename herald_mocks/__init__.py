"""Local stand-ins for FCM, APNs, Twilio and SendGrid that speak each provider's wire format.

They exist so Herald's end-to-end tests and benchmarks can run with no network, while still
exercising real status codes, real error bodies, throttling and outages. Each mock logs exactly
what it accepted and rejected, so tests can count deliveries per Herald id and per second.

    python -m herald_mocks --provider fcm --port 18101 [--log FILE] [--quota N] ...
    python -m herald_mocks --all                    # four mocks, ports from Settings

Admin API, on each mock's own port (HTTP/1.1; the APNs port also speaks h2c):

    GET  /_mock/log[?what=accepted|rejected|all][&since=SEQ][&herald_id=ID][&limit=N]
         → {"provider", "what", "count", "next_since", "records": [record, ...]}
    GET  /_mock/rejected[?...]      same as what=rejected
    GET  /_mock/stats   → {"provider", "received", "accepted", "rejected", "by_reason",
                           "by_status", "accepted_unique_ids", "accepted_duplicate_ids",
                           "max_accepted_per_second", "since_ms", "started_ms", "log_file",
                           "config"}
    GET  /_mock/rate    → {"provider", "accepted_per_second": {"<epoch s>": n}, "max"}
    GET  /_mock/config  → config;  POST /_mock/config (partial config) → config
    POST /_mock/reset   {} clears log and counters; {"config": true} also restores defaults
    GET  /_mock/health  → {"ok": true, "provider"}

A record: ``{"seq", "t_ms" (receive time, epoch ms), "provider", "result": "accepted" |
"rejected", "herald_id", "to", "status", "message_id" (accepted) | "reason", "code"
(rejected), "request": what was sent, ...provider fields}``. ``reason`` is one of outage,
not_found, bad_method, unauthorized, bad_request, http1 (APNs), quota, random_failure,
invalid_recipient. Config: ``{"quota_rps": int|null, "latency_ms", "latency_jitter_ms",
"failure_rate", "seed", "invalid": [...], "outage": null | {"mode": "503"|"refuse",
"start_ms", "end_ms"}, "max_client_connections": int|null}`` (connections served at once per
client address; one more is reset, its request unread; ``connections_reset`` in the stats);
POST also takes ``invalid_add``/``invalid_remove`` and an outage as
``{"mode", "start_in_s", "duration_s"}``.

Delivery receipts (off by default): ``{"callbacks": true}`` makes the Twilio mock post status
callbacks to each message's ``StatusCallback`` (sent, then delivered, signed with
``X-Twilio-Signature``) and, with ``"callback_url"``, the SendGrid mock post its Event Webhook
(processed, then delivered); a recipient in ``"bounce": [...]`` is accepted and its receipt says
undelivered (Twilio ErrorCode 30005) or bounced. ``callbacks_sent``/``callbacks_failed`` are in
the stats. Dead push tokens are the ``invalid`` list (FCM UNREGISTERED, APNs 410 Unregistered).

This package may import ``herald``; the ``herald`` core must never import it.
"""
from herald_mocks.core import MockConfig, MockState, Reply, Request

PROVIDERS = ("fcm", "apns", "twilio", "sendgrid")

__all__ = ["MockConfig", "MockState", "PROVIDERS", "Reply", "Request"]
