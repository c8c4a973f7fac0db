"""FCM HTTP v1 mock: ``POST /v1/projects/{project}/messages:send`` with Google's error shapes.

Error bodies follow what FCM really returns: a canonical ``status`` (INVALID_ARGUMENT,
NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE, INTERNAL, UNAUTHENTICATED) plus, in ``details``,
an ``FcmError`` whose ``errorCode`` is FCM's own (UNREGISTERED, QUOTA_EXCEEDED, ...).
"""
from __future__ import annotations

import itertools
import random
import re

import orjson

from herald_mocks.core import MockProvider, Parsed, Reply, Request, json_reply, now_epoch_ms

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
MESSAGE_KEYS = frozenset({"name", "data", "notification", "android", "webpush", "apns",
                          "fcm_options", "token", "topic", "condition"})
NOTIFICATION_KEYS = frozenset({"title", "body", "image"})
ANDROID_KEYS = frozenset({"collapse_key", "priority", "ttl", "restricted_package_name", "data",
                          "notification", "fcm_options", "direct_boot_ok"})
TTL_RE = re.compile(r"^\d{1,9}(\.\d{1,9})?s$")
MAX_TTL_S = 28 * 24 * 3600
MAX_PAYLOAD_BYTES = 4096
RESERVED_DATA_KEYS = frozenset({"from", "notification", "message_type"})
TOKEN_RE = re.compile(r"^[^\s]{1,4096}$")


def google_error(code: int, status: str, message: str, error_code: str | None = None,
                 violations: list[tuple[str, str]] = (), headers: tuple = ()) -> Reply:
    details: list[dict] = []
    if error_code:
        details.append({"@type": FCM_ERROR, "errorCode": error_code})
    if violations:
        details.append({"@type": BAD_REQUEST, "fieldViolations": [
            {"field": f, "description": d} for f, d in violations]})
    err: dict = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return json_reply(code, {"error": err}, headers, code=error_code or status)


def _invalid(message: str, field: str | None = None, fcm: bool = True) -> Reply:
    return google_error(400, "INVALID_ARGUMENT", message, "INVALID_ARGUMENT" if fcm else None,
                        [(field, message)] if field else ())


UNAVAILABLE = google_error(503, "UNAVAILABLE", "The service is currently unavailable.",
                           "UNAVAILABLE")
INTERNAL = google_error(500, "INTERNAL", "Internal error encountered.", "INTERNAL")
NOT_FOUND_PATH = google_error(404, "NOT_FOUND", "Requested entity was not found.")
UNREGISTERED = google_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
UNAUTHENTICATED = google_error(
    401, "UNAUTHENTICATED",
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential.")


class FcmMock(MockProvider):
    name = "fcm"

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._boot = now_epoch_ms()

    def parse(self, req: Request) -> Parsed:
        path = req.path
        if not (path.startswith("/v1/projects/") and path.endswith("/messages:send")) \
                or "/" in path[13:-14] or len(path) == 27:
            return Parsed(error=NOT_FOUND_PATH, reason="not_found")
        if req.method != "POST":
            return Parsed(error=google_error(405, "METHOD_NOT_ALLOWED",
                                             f"Method {req.method} not allowed."),
                          reason="bad_method")
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            return Parsed(error=_invalid("Invalid JSON payload received.", fcm=False),
                          reason="bad_request")
        message = body.get("message") if isinstance(body, dict) else None
        data = message.get("data") if isinstance(message, dict) else None
        herald_id = data.get("herald_id") if isinstance(data, dict) else None
        to = message.get("token") if isinstance(message, dict) else None
        parsed = Parsed(herald_id, to if isinstance(to, str) else None,
                        {"project": path[13:-14], "request": message})
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            parsed.error, parsed.reason = UNAUTHENTICATED, "unauthorized"
            return parsed
        error = self._validate(body)
        if error is not None:
            parsed.error, parsed.reason = error, "bad_request"
        return parsed

    @staticmethod
    def _validate(body: object) -> Reply | None:
        if not isinstance(body, dict):
            return _invalid("Invalid JSON payload received. Expected an object.", fcm=False)
        for key in body:
            if key not in ("message", "validate_only"):
                return _invalid(f'Invalid JSON payload received. Unknown name "{key}": '
                                "Cannot find field.", fcm=False)
        message = body.get("message")
        if not isinstance(message, dict):
            return _invalid("Recipient of the message is not set.", "message")
        for key in message:
            if key not in MESSAGE_KEYS:
                return _invalid(f'Invalid JSON payload received. Unknown name "{key}" at '
                                "'message': Cannot find field.", fcm=False)
        targets = [k for k in ("token", "topic", "condition") if message.get(k) is not None]
        if not targets:
            return _invalid("Recipient of the message is not set.", "message")
        if len(targets) > 1:
            return _invalid("Exactly one of token, topic or condition must be set.", "message")
        token = message.get("token")
        if token is not None and (not isinstance(token, str) or not TOKEN_RE.match(token)):
            return _invalid("The registration token is not a valid FCM registration token",
                            "message.token")
        notification = message.get("notification")
        if notification is not None:
            if not isinstance(notification, dict):
                return _invalid("Invalid value at 'message.notification'", "message.notification")
            for key, value in notification.items():
                if key not in NOTIFICATION_KEYS:
                    return _invalid(f'Invalid JSON payload received. Unknown name "{key}" at '
                                    "'message.notification': Cannot find field.", fcm=False)
                if not isinstance(value, str):
                    return _invalid(f"Invalid value at 'message.notification.{key}' "
                                    f"(TYPE_STRING), {value!r}", f"message.notification.{key}")
        data = message.get("data")
        if data is not None:
            if not isinstance(data, dict):
                return _invalid("Invalid value at 'message.data'", "message.data")
            for i, (key, value) in enumerate(data.items()):
                if not isinstance(value, str):
                    return _invalid(f"Invalid value at 'message.data[{i}].value' (TYPE_STRING), "
                                    f"{value!r}", f"message.data[{i}].value")
                if key in RESERVED_DATA_KEYS or key.startswith(("google", "gcm")):
                    return _invalid(f"Invalid data payload key: {key}", "message.data")
        android = message.get("android")
        if android is not None:
            if not isinstance(android, dict):
                return _invalid("Invalid value at 'message.android'", "message.android")
            for key in android:
                if key not in ANDROID_KEYS:
                    return _invalid(f'Invalid JSON payload received. Unknown name "{key}" at '
                                    "'message.android': Cannot find field.", fcm=False)
            ttl = android.get("ttl")
            if ttl is not None:
                if not isinstance(ttl, str) or not TTL_RE.match(ttl):
                    return _invalid("Invalid value at 'message.android.ttl' "
                                    f"(type.googleapis.com/google.protobuf.Duration), {ttl!r}",
                                    "message.android.ttl")
                if float(ttl[:-1]) > MAX_TTL_S:
                    return _invalid("TTL must not exceed 4 weeks (2419200s)",
                                    "message.android.ttl")
            priority = android.get("priority")
            if priority is not None and (not isinstance(priority, str)
                                         or priority.upper() not in ("NORMAL", "HIGH")):
                return _invalid(f"Invalid value at 'message.android.priority' (TYPE_ENUM), "
                                f"{priority!r}", "message.android.priority")
        if notification or data:
            size = len(orjson.dumps(notification or {})) + len(orjson.dumps(data or {}))
            if size > MAX_PAYLOAD_BYTES:
                return _invalid("Request contains an invalid argument.", fcm=False)
        return None

    def unavailable(self) -> Reply:
        return UNAVAILABLE

    def throttled(self, retry_after_s: int, quota: int, reset_epoch_s: int) -> Reply:
        return google_error(429, "RESOURCE_EXHAUSTED",
                            f"Quota exceeded: at most {quota} messages per second.",
                            "QUOTA_EXCEEDED", headers=(("Retry-After", str(retry_after_s)),))

    def failure(self, rng: random.Random) -> Reply:
        return UNAVAILABLE if rng.random() < 0.5 else INTERNAL

    def invalid(self, parsed: Parsed, now_ms: int) -> Reply:
        return UNREGISTERED

    def accept(self, parsed: Parsed, seq: int, now_ms: int) -> tuple[Reply, str]:
        name = f"projects/{parsed.info['project']}/messages/0:{self._boot}%{next(self._ids):x}"
        return Reply(200, b'{"name":"%s"}' % name.encode()), name
