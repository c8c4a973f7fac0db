"""Local stand-ins for FCM, APNs, Twilio and SendGrid that speak each provider's wire format.

They exist so Herald's end-to-end tests and benchmarks can run with no network, while still
exercising real status codes, real error bodies, throttling and outages. Each mock logs exactly
what it accepted and rejected (``GET /_mock/log``), so tests can count deliveries per Herald id.

This package may import ``herald``; the ``herald`` core must never import it.
"""
from herald_mocks.core import MockConfig, MockState, Reply, Request

PROVIDERS = ("fcm", "apns", "twilio", "sendgrid")

__all__ = ["MockConfig", "MockState", "PROVIDERS", "Reply", "Request"]
