"""FCM HTTP v1: ``POST {fcm_url}/v1/projects/{project}/messages:send`` with an OAuth bearer.

The access token comes from Settings (``HERALD_FCM_ACCESS_TOKEN``); minting it from a service
account is outside Herald. ``android.ttl`` is what is left until ``expires_at``, so FCM drops
the message rather than deliver it late; ``data.herald_id`` carries Herald's id.

FCM errors name a canonical ``status`` and, in ``details``, an FcmError ``errorCode``; the
errorCode is the more precise of the two, so it is looked up first.
"""
from __future__ import annotations

import functools
from types import MappingProxyType
from typing import Iterable, Mapping
from urllib.parse import quote

import orjson

from herald import states
from herald.models import Contacts, Notification
from herald.providers.base import (OK, PERMANENT, RETRYABLE, THROTTLED, Outcome,
                                   ProviderAdapter, ProviderRequest, Rule, credential, http_rule,
                                   clock_ms, lower_headers, outcome_from_rule, parse_retry_after)
from herald.providers.exceptions import EmptyContentError, MissingContactError
from herald.settings import Settings

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"

# FcmError.errorCode → rule (https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode)
FCM_ERROR_CODES: dict[str, Rule] = {
    "UNREGISTERED": Rule(PERMANENT, "token is no longer registered", token_invalid=True),
    "SENDER_ID_MISMATCH": Rule(PERMANENT, "token belongs to another sender", token_invalid=True),
    "INVALID_ARGUMENT": Rule(PERMANENT, "invalid request"),
    "QUOTA_EXCEEDED": Rule(THROTTLED, "sending quota exceeded"),
    "UNAVAILABLE": Rule(RETRYABLE, "FCM unavailable"),
    "INTERNAL": Rule(RETRYABLE, "FCM internal error"),
    "THIRD_PARTY_AUTH_ERROR": Rule(PERMANENT, "APNs or web push credentials rejected"),
    "UNSPECIFIED_ERROR": Rule(RETRYABLE, "unspecified FCM error"),
}

# Google's canonical status → rule, for answers without an FcmError detail.
GOOGLE_STATUSES: dict[str, Rule] = {
    "INVALID_ARGUMENT": Rule(PERMANENT, "invalid request"),
    "UNAUTHENTICATED": Rule(PERMANENT, "OAuth token rejected (check HERALD_FCM_ACCESS_TOKEN)"),
    "PERMISSION_DENIED": Rule(PERMANENT, "permission denied for this project"),
    "NOT_FOUND": Rule(PERMANENT, "project or resource not found"),
    "RESOURCE_EXHAUSTED": Rule(THROTTLED, "quota exhausted"),
    "UNAVAILABLE": Rule(RETRYABLE, "FCM unavailable"),
    "INTERNAL": Rule(RETRYABLE, "FCM internal error"),
    "DEADLINE_EXCEEDED": Rule(RETRYABLE, "FCM deadline exceeded"),
}

TOKEN_FIELD = "message.token"


def ttl(remaining_ms: int) -> str:
    """A protobuf Duration string: ``"30s"``, ``"29.873s"``; never negative."""
    remaining_ms = max(0, remaining_ms)
    seconds, millis = divmod(remaining_ms, 1000)
    return f"{seconds}s" if not millis else f"{seconds}.{millis:03d}".rstrip("0") + "s"


@functools.lru_cache(maxsize=16)  # per request, its URL and headers were ≈ 1/3 of building it
def endpoint(fcm_url: str, project: str, access_token: str) -> tuple[str, Mapping[str, str]]:
    """The send URL and the (read-only, shared) headers of one project and token."""
    base = fcm_url.rstrip("/")
    token = credential(access_token, base, "fcm_access_token")
    return (f"{base}/v1/projects/{quote(project, safe='')}/messages:send",
            MappingProxyType({"Authorization": f"Bearer {token}",
                              "Content-Type": "application/json; charset=UTF-8"}))


class FcmAdapter(ProviderAdapter):
    name = "fcm"
    channel = states.PUSH

    def build_request(self, notification: Notification, contacts: Contacts, settings: Settings,
                      *, now_ms: int | None = None) -> ProviderRequest:
        if not contacts.push_token:
            raise MissingContactError("no push token for FCM", "to.push_token")
        content = notification.content
        if not content.body and not content.title:
            raise EmptyContentError(f"notification {notification.id} has no rendered body")
        now = clock_ms() if now_ms is None else now_ms
        message: dict = {"token": contacts.push_token}
        shown = {k: v for k, v in (("title", content.title), ("body", content.body)) if v}
        message["notification"] = shown
        message["data"] = {**content.data, "herald_id": notification.id}
        message["android"] = {
            "ttl": ttl(notification.expires_at - now),
            "priority": "HIGH" if notification.priority == states.CRITICAL else "NORMAL"}
        url, headers = endpoint(settings.fcm_url, settings.fcm_project,
                                 settings.fcm_access_token.get_secret_value())
        return ProviderRequest("POST", url, headers, orjson.dumps({"message": message}))

    def classify(self, status: int, headers: Mapping | Iterable | None, body: bytes) -> Outcome:
        h = lower_headers(headers)
        retry_after = parse_retry_after(h.get("retry-after"))
        try:
            doc = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            doc = None
        if 200 <= status < 300:
            name = doc.get("name") if isinstance(doc, dict) else None
            return Outcome(OK, "accepted", status=status, message_id=name)
        error = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(error, dict):  # an HTML 502 from a proxy, an empty body...
            return outcome_from_rule(http_rule(status), status, retry_after_s=retry_after)
        error_code, token_violation = _details(error.get("details"))
        canonical = error.get("status")
        message = str(error.get("message", ""))
        rule = FCM_ERROR_CODES.get(error_code) or GOOGLE_STATUSES.get(canonical) \
            or http_rule(status)
        if rule.kind is PERMANENT and not rule.token_invalid and (
                token_violation or "registration token" in message.lower()):
            rule = Rule(PERMANENT, "invalid registration token", token_invalid=True)
        return outcome_from_rule(rule, status, error_code or canonical, message, retry_after)


def _details(details: object) -> tuple[str | None, bool]:
    """(FcmError errorCode, whether a BadRequest violation names the token)."""
    error_code, token_violation = None, False
    if isinstance(details, list):
        for d in details:
            if not isinstance(d, dict):
                continue
            if d.get("@type") == FCM_ERROR_TYPE:
                error_code = d.get("errorCode")
            elif d.get("@type") == BAD_REQUEST_TYPE:
                for v in d.get("fieldViolations") or ():
                    if isinstance(v, dict) and v.get("field") == TOKEN_FIELD:
                        token_violation = True
    return error_code, token_violation

