"""SendGrid v3: ``POST {sendgrid_url}/v3/mail/send`` with a Bearer API key; 202 on success.

SendGrid's error bodies carry no codes, only ``{"errors": [{"message", "field", "help"}]}``,
so the HTTP status decides and the ``field`` tells an invalid recipient address apart.
Herald's id travels as ``custom_args.herald_id`` and comes back in SendGrid's event webhook.
"""
from __future__ import annotations

import functools
import re
import time
from types import MappingProxyType
from typing import Iterable, Mapping

import orjson

from herald import states
from herald.models import Contacts, Notification
from herald.providers.base import (OK, PERMANENT, RETRYABLE, THROTTLED, Outcome,
                                   ProviderAdapter, ProviderRequest, Rule, credential, http_rule,
                                   lower_headers, outcome_from_rule, parse_retry_after)
from herald.providers.exceptions import EmptyContentError, MissingContactError
from herald.settings import Settings

MAX_SUBJECT = 78
RECIPIENT_FIELD = re.compile(r"^personalizations\.\d+\.(to|cc|bcc)\.\d+\.email$")

# HTTP status → rule (https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors).
SENDGRID_STATUSES: dict[int, Rule] = {
    400: Rule(PERMANENT, "bad request"),
    401: Rule(PERMANENT, "API key rejected (check HERALD_SENDGRID_API_KEY)"),
    403: Rule(PERMANENT, "forbidden (sender not verified or key lacks mail.send)"),
    404: Rule(PERMANENT, "not found"),
    413: Rule(PERMANENT, "payload too large"),
    429: Rule(THROTTLED, "rate limited"),
    500: Rule(RETRYABLE, "SendGrid internal error"),
    502: Rule(RETRYABLE, "bad gateway"),
    503: Rule(RETRYABLE, "SendGrid unavailable"),
    504: Rule(RETRYABLE, "gateway timeout"),
}
INVALID_RECIPIENT = Rule(PERMANENT, "invalid recipient address", token_invalid=True)


def subject_of(title: str | None, body: str) -> str:
    """The title, or the body's first line cut to a mail client's width."""
    if title:
        return title
    first = body.strip().splitlines()[0] if body.strip() else body
    return first if len(first) <= MAX_SUBJECT else first[:MAX_SUBJECT - 1] + "…"


@functools.lru_cache(maxsize=16)  # per request, like fcm.endpoint
def endpoint(sendgrid_url: str, api_key: str) -> tuple[str, Mapping[str, str]]:
    """The mail-send URL and the (read-only, shared) headers of one API key."""
    base = sendgrid_url.rstrip("/")
    key = credential(api_key, base, "sendgrid_api_key")
    return (f"{base}/v3/mail/send",
            MappingProxyType({"Authorization": f"Bearer {key}",
                              "Content-Type": "application/json"}))


class SendGridAdapter(ProviderAdapter):
    name = "sendgrid"
    channel = states.EMAIL

    def build_request(self, notification: Notification, contacts: Contacts, settings: Settings,
                      *, now_ms: int | None = None) -> ProviderRequest:
        if not contacts.email:
            raise MissingContactError("no email address", "to.email")
        content = notification.content
        if not content.body:
            raise EmptyContentError(f"notification {notification.id} has no rendered body")
        url, headers = endpoint(settings.sendgrid_url, settings.sendgrid_api_key.get_secret_value())
        mail = {
            "personalizations": [{"to": [{"email": contacts.email}]}],
            "from": {"email": settings.sendgrid_from},
            "subject": subject_of(content.title, content.body),
            "content": [{"type": "text/plain", "value": content.body}],
            "custom_args": {"herald_id": notification.id, "tenant_id": notification.tenant_id},
        }
        return ProviderRequest("POST", url, headers, orjson.dumps(mail))

    def classify(self, status: int, headers: Mapping | Iterable | None, body: bytes) -> Outcome:
        h = lower_headers(headers)
        if 200 <= status < 300:
            return Outcome(OK, "accepted", status=status, message_id=h.get("x-message-id"))
        try:
            doc = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            doc = None
        errors = doc.get("errors") if isinstance(doc, dict) else None
        errors = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
        message = "; ".join(str(e.get("message", "")) for e in errors)
        fields = [str(e.get("field") or "") for e in errors]
        rule = SENDGRID_STATUSES.get(status) or http_rule(status)
        if status == 400 and any(RECIPIENT_FIELD.match(f) for f in fields):
            rule = INVALID_RECIPIENT
        retry_after = parse_retry_after(h.get("retry-after"))
        reset = _float(h.get("x-ratelimit-reset"))
        if retry_after is None and rule.kind is THROTTLED and reset is not None:
            retry_after = parse_retry_after(str(reset - time.time()))
        code = next((f for f in fields if f), None)
        return outcome_from_rule(rule, status, code, message, retry_after)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
