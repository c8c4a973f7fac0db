"""Twilio SMS: ``POST {twilio_url}/2010-04-01/Accounts/{sid}/Messages.json``, basic auth, form.

``StatusCallback`` is Settings' callback URL plus ``herald_id=<id>&tenant_id=<tenant>``, so
delivery receipts name the notification (ids are per tenant). ``ValidityPeriod`` is what is left until ``expires_at`` (whole seconds,
1..36000), so Twilio drops a message its queue could only deliver late.
"""
from __future__ import annotations

import base64
import functools
from types import MappingProxyType
from typing import Iterable, Mapping
from urllib.parse import quote, urlencode

import orjson

from herald import states
from herald.models import Contacts, Notification
from herald.providers.base import (OK, PERMANENT, RETRYABLE, THROTTLED, Outcome,
                                   ProviderAdapter, ProviderRequest, Rule, clock_ms, credential,
                                   http_rule, lower_headers, outcome_from_rule,
                                   parse_retry_after)
from herald.providers.exceptions import EmptyContentError, MissingContactError
from herald.settings import Settings

MAX_VALIDITY_S = 36_000

# Twilio error code → rule (https://www.twilio.com/docs/api/errors).
TWILIO_CODES: dict[int, Rule] = {
    20429: Rule(THROTTLED, "too many requests"),
    14107: Rule(THROTTLED, "SMS send rate limit exceeded"),
    20003: Rule(PERMANENT, "authentication failed (check account sid and auth token)"),
    20404: Rule(PERMANENT, "resource not found"),
    20500: Rule(RETRYABLE, "Twilio internal error"),
    20503: Rule(RETRYABLE, "Twilio unavailable"),
    21211: Rule(PERMANENT, "invalid 'To' number", token_invalid=True),
    21614: Rule(PERMANENT, "'To' is not a mobile number", token_invalid=True),
    21610: Rule(PERMANENT, "recipient unsubscribed (STOP)", token_invalid=True),
    21612: Rule(PERMANENT, "'To' and 'From' cannot be connected"),
    21408: Rule(PERMANENT, "sending to this region is not enabled"),
    21602: Rule(PERMANENT, "message body is required"),
    21603: Rule(PERMANENT, "'From' is required"),
    21604: Rule(PERMANENT, "'To' is required", token_invalid=True),
    21606: Rule(PERMANENT, "'From' is not a valid sender for this account"),
    21212: Rule(PERMANENT, "invalid 'From' number"),
    21617: Rule(PERMANENT, "body exceeds 1600 characters"),
    21609: Rule(PERMANENT, "invalid StatusCallback"),
    90007: Rule(PERMANENT, "ValidityPeriod out of range"),
    90014: Rule(PERMANENT, "ValidityPeriod not a positive integer"),
}


def status_callback(settings: Settings, herald_id: str, tenant_id: str) -> str:
    base = settings.twilio_status_callback_url
    query = urlencode({"herald_id": herald_id, "tenant_id": tenant_id})
    return f"{base}{'&' if '?' in base else '?'}{query}"


@functools.lru_cache(maxsize=16)  # per request, like fcm.endpoint
def endpoint(twilio_url: str, sid: str, auth_token: str) -> tuple[str, Mapping[str, str]]:
    """The Messages URL and the (read-only, shared) headers of one account."""
    base = twilio_url.rstrip("/")
    secret = credential(auth_token, base, "twilio_auth_token")
    auth = base64.b64encode(f"{sid}:{secret}".encode()).decode("ascii")
    return (f"{base}/2010-04-01/Accounts/{quote(sid, safe='')}/Messages.json",
            MappingProxyType({"Authorization": f"Basic {auth}",
                              "Content-Type": "application/x-www-form-urlencoded"}))


class TwilioAdapter(ProviderAdapter):
    name = "twilio"
    channel = states.SMS

    def build_request(self, notification: Notification, contacts: Contacts, settings: Settings,
                      *, now_ms: int | None = None) -> ProviderRequest:
        if not contacts.phone:
            raise MissingContactError("no phone number for SMS", "to.phone")
        if not notification.content.body:
            raise EmptyContentError(f"notification {notification.id} has no rendered body")
        now = clock_ms() if now_ms is None else now_ms
        validity = min(MAX_VALIDITY_S, max(1, (notification.expires_at - now) // 1000))
        url, headers = endpoint(settings.twilio_url, settings.twilio_account_sid,
                                settings.twilio_auth_token.get_secret_value())
        form = {"To": contacts.phone, "From": settings.twilio_from,
                "Body": notification.content.body,
                "StatusCallback": status_callback(settings, notification.id,
                                                   notification.tenant_id),
                "ValidityPeriod": str(validity)}
        return ProviderRequest("POST", url, headers, urlencode(form).encode("ascii"))

    def classify(self, status: int, headers: Mapping | Iterable | None, body: bytes) -> Outcome:
        h = lower_headers(headers)
        retry_after = parse_retry_after(h.get("retry-after"))
        try:
            doc = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            doc = None
        if 200 <= status < 300:
            sid = doc.get("sid") if isinstance(doc, dict) else None
            return Outcome(OK, "accepted", status=status, message_id=sid)
        code = doc.get("code") if isinstance(doc, dict) else None
        rule = TWILIO_CODES.get(code) if isinstance(code, int) else None
        message = str(doc.get("message", "")) if isinstance(doc, dict) else ""
        return outcome_from_rule(rule or http_rule(status), status,
                                 str(code) if code is not None else None, message, retry_after)
