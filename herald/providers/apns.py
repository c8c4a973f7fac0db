"""APNs: HTTP/2 ``POST {apns_url}/3/device/{token}`` with an ES256 provider token (JWT).

Headers: ``apns-id`` is a uuid5 of the tenant and Herald's id, so a retried send carries the
same id and Apple's answers and logs line up with ours; ``apns-expiration`` is ``expires_at`` in whole
seconds (floored, so never later than Herald's own deadline); ``apns-priority`` is 10 for
critical, 5 for promotional. The payload carries Herald's id as the custom key ``herald_id``.

The provider token is signed once and reused for 50 minutes: Apple rejects tokens older than
an hour (ExpiredProviderToken) and throttles refreshes more often than every 20 minutes
(TooManyProviderTokenUpdates). ``classify`` drops the cached token on ExpiredProviderToken.

HTTP/2 client for APNs: Herald's own small client on ``h2`` (udfs/h2_client.py), one
connection per APNs host and many streams; bench/results/mock_throughput.md measures it against
httpx[http2] (about five times the requests per client CPU-second), so httpx only if its extras
(proxies, pooling) are ever needed.
"""
from __future__ import annotations

import base64
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import quote

import orjson

from herald import states
from herald.models import Contacts, Notification
from herald.providers.base import (OK, PERMANENT, RETRYABLE, THROTTLED, Outcome,
                                   ProviderAdapter, ProviderRequest, Rule, clock_ms, http_rule,
                                   is_loopback, lower_headers, outcome_from_rule,
                                   parse_retry_after)
from herald.providers.exceptions import (EmptyContentError, MissingContactError,
                                         ProviderConfigError)
from herald.settings import Settings

# Fixed forever: changing it would change every apns-id Herald derives.
APNS_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "herald:apns-id")
TOKEN_REFRESH_S = 50 * 60

# APNs reason → rule (Apple's "Handling notification responses from APNs" table).
APNS_REASONS: dict[str, Rule] = {
    "BadCollapseId": Rule(PERMANENT, "bad collapse id"),
    "BadDeviceToken": Rule(PERMANENT, "bad device token", token_invalid=True),
    "BadExpirationDate": Rule(PERMANENT, "bad expiration date"),
    "BadMessageId": Rule(PERMANENT, "bad apns-id"),
    "BadPriority": Rule(PERMANENT, "bad priority"),
    "BadTopic": Rule(PERMANENT, "bad topic"),
    "DeviceTokenNotForTopic": Rule(PERMANENT, "token is for another topic", token_invalid=True),
    "DuplicateHeaders": Rule(PERMANENT, "duplicate headers"),
    "IdleTimeout": Rule(RETRYABLE, "idle timeout"),
    "InvalidPushType": Rule(PERMANENT, "invalid push type"),
    "MissingDeviceToken": Rule(PERMANENT, "missing device token", token_invalid=True),
    "MissingTopic": Rule(PERMANENT, "missing topic"),
    "PayloadEmpty": Rule(PERMANENT, "payload empty"),
    "TopicDisallowed": Rule(PERMANENT, "topic disallowed"),
    "BadCertificate": Rule(PERMANENT, "bad certificate"),
    "BadCertificateEnvironment": Rule(PERMANENT, "certificate for the wrong environment"),
    "ExpiredProviderToken": Rule(RETRYABLE, "provider token expired (re-signed)"),
    "Forbidden": Rule(PERMANENT, "forbidden"),
    "InvalidProviderToken": Rule(PERMANENT, "provider token invalid (check key id, team id)"),
    "MissingProviderToken": Rule(PERMANENT, "provider token missing"),
    "UnrelatedKeyIdInToken": Rule(PERMANENT, "key id unrelated to the topic"),
    "BadEnvironmentKeyInToken": Rule(PERMANENT, "key for the wrong environment"),
    "BadPath": Rule(PERMANENT, "bad path"),
    "MethodNotAllowed": Rule(PERMANENT, "method not allowed"),
    "ExpiredToken": Rule(PERMANENT, "device token expired", token_invalid=True),
    "Unregistered": Rule(PERMANENT, "device token no longer active", token_invalid=True),
    "PayloadTooLarge": Rule(PERMANENT, "payload too large"),
    "TooManyProviderTokenUpdates": Rule(THROTTLED, "provider token refreshed too often"),
    "TooManyRequests": Rule(THROTTLED, "too many requests to this device token"),
    "InternalServerError": Rule(RETRYABLE, "APNs internal error"),
    "ServiceUnavailable": Rule(RETRYABLE, "APNs unavailable"),
    "Shutdown": Rule(RETRYABLE, "APNs server shutting down"),
}


def apns_id_for(tenant_id: str, herald_id: str) -> str:
    """The ``apns-id`` Herald sends for a notification: the same on every attempt, and apart
    for two tenants' notifications of the same id (ids are the tenants' own)."""
    return str(uuid.uuid5(APNS_ID_NAMESPACE, f"{tenant_id}\x1f{herald_id}"))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class ProviderTokenSigner:
    """Signs and caches the APNs provider token (ES256 JWT: ``kid`` header, ``iss``/``iat``).

    With no key configured and a loopback APNs URL (the mock), a throwaway P-256 key is made
    once per process; against a real host a missing key raises ProviderConfigError."""

    def __init__(self, refresh_s: float = TOKEN_REFRESH_S):
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._cached: tuple[tuple, float, str] | None = None  # (identity, iat, token)
        self._keys: dict[str, object] = {}

    def token(self, settings: Settings, now_s: float | None = None) -> str:
        now_s = time.time() if now_s is None else now_s
        identity = (settings.apns_key_id, settings.apns_team_id, settings.apns_private_key,
                    is_loopback(settings.apns_url))
        with self._lock:
            cached = self._cached
            if cached and cached[0] == identity and 0 <= now_s - cached[1] < self.refresh_s:
                return cached[2]
            token = self._sign(settings, int(now_s))
            self._cached = (identity, int(now_s), token)
            return token

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def _key(self, settings: Settings):
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        material = settings.apns_private_key.get_secret_value().strip()
        if material in self._keys:
            return self._keys[material]
        if not material:
            if not is_loopback(settings.apns_url):
                raise ProviderConfigError("apns_private_key is not set (needed for "
                                          f"{settings.apns_url})")
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            pem = material.replace("\\n", "\n")
            if not pem.startswith("-----BEGIN"):  # a path to the .p8 file
                try:
                    pem = Path(pem).read_text()
                except OSError as exc:
                    raise ProviderConfigError(f"apns_private_key: cannot read {pem!r}: "
                                              f"{exc.strerror}") from None
            try:
                key = load_pem_private_key(pem.encode(), password=None)
            except ValueError as exc:
                raise ProviderConfigError(f"apns_private_key is not a PEM key: {exc}") from None
            if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
                raise ProviderConfigError("apns_private_key must be a P-256 (ES256) key")
        self._keys[material] = key
        return key

    def _sign(self, settings: Settings, iat: int) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        key = self._key(settings)
        header = _b64url(orjson.dumps({"alg": "ES256", "kid": settings.apns_key_id}))
        claims = _b64url(orjson.dumps({"iss": settings.apns_team_id, "iat": iat}))
        signing_input = f"{header}.{claims}".encode("ascii")
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return f"{header}.{claims}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class ApnsAdapter(ProviderAdapter):
    name = "apns"
    channel = states.PUSH

    def __init__(self, signer: ProviderTokenSigner | None = None):
        self.signer = signer or ProviderTokenSigner()

    def build_request(self, notification: Notification, contacts: Contacts, settings: Settings,
                      *, now_ms: int | None = None) -> ProviderRequest:
        if not contacts.push_token:
            raise MissingContactError("no push token for APNs", "to.push_token")
        content = notification.content
        if not content.body and not content.title:
            raise EmptyContentError(f"notification {notification.id} has no rendered body")
        now = clock_ms() if now_ms is None else now_ms
        alert = {k: v for k, v in (("title", content.title), ("body", content.body)) if v}
        payload = {k: v for k, v in content.data.items() if k != "aps"}
        payload["aps"] = {"alert": alert}
        payload["herald_id"] = notification.id
        base = settings.apns_url.rstrip("/")
        headers = {
            "authorization": f"bearer {self.signer.token(settings, now / 1000)}",
            "apns-push-type": "alert",
            "apns-priority": "10" if notification.priority == states.CRITICAL else "5",
            "apns-expiration": str(max(0, notification.expires_at // 1000)),
            "apns-id": apns_id_for(notification.tenant_id, notification.id),
            "apns-topic": settings.apns_topic,
            "content-type": "application/json",
        }
        return ProviderRequest("POST", f"{base}/3/device/{quote(contacts.push_token, safe='')}",
                               headers, orjson.dumps(payload), http2=True)

    def classify(self, status: int, headers: Mapping | Iterable | None, body: bytes) -> Outcome:
        h = lower_headers(headers)
        retry_after = parse_retry_after(h.get("retry-after"))
        if 200 <= status < 300:
            return Outcome(OK, "accepted", status=status, message_id=h.get("apns-id"))
        try:
            doc = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            doc = None
        reason = doc.get("reason") if isinstance(doc, dict) else None
        if reason == "ExpiredProviderToken":
            self.signer.invalidate()
        rule = APNS_REASONS.get(reason) or http_rule(status)
        detail = ""
        if isinstance(doc, dict) and doc.get("timestamp") is not None:
            detail = f"invalid since {doc['timestamp']} ms"
        return outcome_from_rule(rule, status, reason, detail, retry_after)
