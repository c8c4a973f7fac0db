"""APNs mock: HTTP/2 ``POST /3/device/{token}``, ``{"reason": ...}`` errors, ``apns-id`` echoed.

Checks what Apple checks before accepting: provider-token JWT present and well-formed (ES256
header with ``kid``, claims with ``iss`` and an ``iat`` under an hour old; the signature is not
verified, the mock has no public key), ``apns-topic`` present, valid ``apns-push-type``,
``apns-priority``, ``apns-expiration`` and ``apns-id``, and a JSON payload of at most 4 KB.
Herald's id is read from the payload's custom ``herald_id`` key; the log also holds
``apns_id`` so a test can check it is the uuid5 Herald derives from that id.

Mock-only behaviour: an HTTP/1.1 request to ``/3/device/`` gets 505 ``HTTP2Required`` (Apple
would drop it), unless ``--apns-allow-http1``; a malformed JSON payload gets 400
``InvalidPayload`` (Apple documents no reason for it).
"""
from __future__ import annotations

import base64
import random
import re
import time
import uuid

import orjson

from herald_mocks.core import MockProvider, Parsed, Reply, Request, json_reply

PUSH_TYPES = frozenset({"alert", "background", "location", "voip", "complication",
                        "fileprovider", "mdm", "liveactivity", "pushtotalk", "widgets"})
PRIORITIES = frozenset({"1", "5", "10"})
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}$")
TOKEN_RE = re.compile(r"^[A-Za-z0-9._~-]{1,200}$")
MAX_PAYLOAD_BYTES = 4096
TOKEN_MAX_AGE_S = 3600


def reason(status: int, why: str, apns_id: str | None = None, **extra) -> Reply:
    headers = (("apns-id", apns_id),) if apns_id else ()
    return json_reply(status, {"reason": why, **extra}, headers, code=why)


def _b64json(part: str) -> dict:
    return orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def check_provider_token(authorization: str, now_s: float) -> str | None:
    """The APNs reason for a bad ``authorization`` header, or None if it would pass."""
    if not authorization:
        return "MissingProviderToken"
    scheme, _, token = authorization.partition(" ")
    parts = token.strip().split(".")
    if scheme.lower() != "bearer" or len(parts) != 3:
        return "InvalidProviderToken"
    try:
        header, claims = _b64json(parts[0]), _b64json(parts[1])
    except (ValueError, orjson.JSONDecodeError):
        return "InvalidProviderToken"
    if not isinstance(header, dict) or not isinstance(claims, dict) \
            or header.get("alg") != "ES256" or not header.get("kid") or not claims.get("iss"):
        return "InvalidProviderToken"
    iat = claims.get("iat")
    if not isinstance(iat, (int, float)):
        return "InvalidProviderToken"
    if now_s - iat > TOKEN_MAX_AGE_S:
        return "ExpiredProviderToken"
    return None


class ApnsMock(MockProvider):
    name = "apns"
    http2 = True

    def __init__(self, allow_http1: bool = False) -> None:
        self.allow_http1 = allow_http1
        self._token_cache: tuple[str, float, str | None] = ("", 0.0, None)

    def _token_problem(self, authorization: str) -> str | None:
        """Decode each provider token once per minute, not once per request."""
        now = time.time()
        cached, checked_at, verdict = self._token_cache
        if authorization == cached and now - checked_at < 60:
            return verdict
        verdict = check_provider_token(authorization, now)
        self._token_cache = (authorization, now, verdict)
        return verdict

    def parse(self, req: Request) -> Parsed:
        h = req.headers
        if not req.path.startswith("/3/device/"):
            return Parsed(error=reason(404, "BadPath"), reason="not_found")
        if req.method != "POST":
            return Parsed(error=reason(405, "MethodNotAllowed"), reason="bad_method")
        token = req.path[len("/3/device/"):]
        apns_id = h.get("apns-id")
        payload = None
        try:
            payload = orjson.loads(req.body) if req.body else None
        except orjson.JSONDecodeError:
            pass
        herald_id = payload.get("herald_id") if isinstance(payload, dict) else None
        info = {"apns_id": apns_id, "apns_topic": h.get("apns-topic"),
                "apns_push_type": h.get("apns-push-type"),
                "apns_priority": h.get("apns-priority"),
                "apns_expiration": h.get("apns-expiration"), "request": payload}
        parsed = Parsed(herald_id if isinstance(herald_id, str) else None, token, info)
        if apns_id is not None and not UUID_RE.match(apns_id):
            why, status, apns_id = "BadMessageId", 400, None
        else:
            if apns_id is None:
                info["apns_id"] = apns_id = str(uuid.uuid4())
            why, status = self._check(req, token, payload)
        if why:
            parsed.error = reason(status, why, apns_id)
            parsed.reason = ("unauthorized" if status == 403 else
                             "http1" if status == 505 else "bad_request")
        return parsed

    def _check(self, req: Request, token: str, payload: object) -> tuple[str | None, int]:
        h = req.headers
        if not req.http2 and not self.allow_http1:
            return "HTTP2Required", 505
        problem = self._token_problem(h.get("authorization", ""))
        if problem:
            return problem, 403
        if not token:
            return "MissingDeviceToken", 400
        if not TOKEN_RE.match(token):
            return "BadDeviceToken", 400
        if not h.get("apns-topic"):
            return "MissingTopic", 400
        push_type = h.get("apns-push-type")
        if push_type is not None and push_type not in PUSH_TYPES:
            return "InvalidPushType", 400
        if h.get("apns-priority", "10") not in PRIORITIES:
            return "BadPriority", 400
        expiration = h.get("apns-expiration")
        if expiration is not None and not expiration.isdigit():
            return "BadExpirationDate", 400
        if not req.body:
            return "PayloadEmpty", 400
        if len(req.body) > MAX_PAYLOAD_BYTES:
            return "PayloadTooLarge", 413
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            return "InvalidPayload", 400
        return None, 200

    def unavailable(self) -> Reply:
        return reason(503, "ServiceUnavailable")

    def throttled(self, retry_after_s: int, quota: int, reset_epoch_s: int) -> Reply:
        reply = reason(429, "TooManyRequests")
        reply.headers = (("retry-after", str(retry_after_s)),)
        return reply

    def failure(self, rng: random.Random) -> Reply:
        return reason(503, "ServiceUnavailable") if rng.random() < 0.5 \
            else reason(500, "InternalServerError")

    def invalid(self, parsed: Parsed, now_ms: int) -> Reply:
        return reason(410, "Unregistered", parsed.info["apns_id"], timestamp=now_ms)

    def accept(self, parsed: Parsed, seq: int, now_ms: int) -> tuple[Reply, str]:
        apns_id = parsed.info["apns_id"]
        expiration = parsed.info["apns_expiration"]
        if expiration and expiration != "0" and int(expiration) * 1000 < now_ms:
            parsed.info["expired_on_arrival"] = True  # Apple accepts it and never delivers it
        return Reply(200, b"", (("apns-id", apns_id),)), apns_id
