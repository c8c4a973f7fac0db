"""Tenant webhooks: what is sent, how it is signed, when a failed call is tried again.

Plain Python; the dispatcher (``herald_api.webhooks``) consumes ``herald.status`` and calls
these. A tenant registers one URL and a secret (``PUT /v1/webhook``); Herald POSTs each final
status of the tenant's notifications there, once per (notification, state), as the status
event's JSON, with

    X-Herald-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
    X-Herald-Event-Id:  <a stable id of (tenant, notification id, state)>

(the scheme Stripe's webhooks use: the timestamp is signed, so a receiver refuses replays older
than a few minutes). A call that fails (no 2xx in ``webhook_timeout_s``) is tried again after a
backoff that doubles from ``webhook_backoff_ms`` to ``webhook_backoff_max_ms``, jittered, up to
``webhook_max_attempts`` calls; then it is given up (kept for the operator).

Unless ``webhook_allow_private``, a URL on a loopback, private or link-local address (another
tenant's service, the cloud's metadata endpoint) is refused at registration, and a host that
resolves to one is not called (checked before each call; a DNS answer that changes between
the check and the connection is not caught).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import re
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

import orjson

from herald import states
from herald.errors import ValidationError

# The states a tenant hears about: each notification's outcome, and the receipts after it.
WEBHOOK_STATES = frozenset({states.DELIVERED, states.FAILED, states.EXPIRED, states.CANCELLED,
                            states.OPTED_OUT, states.DELIVERED_TO_HANDSET, states.BOUNCED})
SIGNATURE_HEADER = "X-Herald-Signature"
EVENT_ID_HEADER = "X-Herald-Event-Id"
DEFAULT_TOLERANCE_S = 300
MIN_SECRET, MAX_SECRET = 16, 256
MAX_URL_LENGTH = 2048
_SIG = re.compile(r"^t=(\d{1,12}),v1=([0-9a-f]{64})$")
# What of a status event stays out of the body (a hash of a contact is of no use to a tenant)
INTERNAL_FIELDS = ("contact_sha1",)


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    secret: str


def webhook_from_dict(obj: Any, allow_private: bool = True) -> Webhook:
    """``{"url": "https://...", "secret": "..."}`` as the API takes it; without
    ``allow_private`` a URL whose host is a private address (or localhost) is refused."""
    if not isinstance(obj, Mapping):
        raise ValidationError("the body must be a JSON object", None)
    unknown = sorted(set(obj) - {"url", "secret", "tenant_id"})
    if unknown:
        raise ValidationError(f"unknown field(s) {', '.join(map(repr, unknown))}", unknown[0])
    url, secret = obj.get("url"), obj.get("secret")
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise ValidationError(f"'url' must be a URL string of at most {MAX_URL_LENGTH} "
                              "characters", "url")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        host = None
    if not host or parts.scheme not in ("http", "https") or not url.isprintable():
        raise ValidationError(f"'url' must be an http(s) URL with a host, got {url!r}", "url")
    if not isinstance(secret, str) or not MIN_SECRET <= len(secret) <= MAX_SECRET \
            or not secret.isprintable():
        raise ValidationError(f"'secret' must be {MIN_SECRET}-{MAX_SECRET} printable "
                              "characters", "secret")
    why = None if allow_private else check_public(url)
    if why:
        raise ValidationError(f"'url' must be a public endpoint: {why}", "url")
    return Webhook(url, secret)


def private_address(address: str) -> bool:
    """Loopback, private, link-local (cloud metadata), multicast or unspecified: not a
    tenant's public endpoint. ``address`` is an IP literal; anything else is not one."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
            or ip.is_unspecified or ip.is_reserved)


def check_public(url: str, resolve=None) -> str | None:
    """Why ``url`` may not be called when private addresses are not allowed, or None. The host
    and, with ``resolve`` (host → addresses), every address it resolves to are checked."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost") or private_address(host):
        return f"{host} is a loopback, private or link-local address"
    if resolve is not None:
        try:
            addresses = resolve(host)
        except OSError as exc:
            return f"{host} does not resolve ({exc})"
        bad = sorted(a for a in addresses if private_address(a))
        if bad:
            return f"{host} resolves to a private address ({bad[0]})"
    return None


def wants(event: Mapping[str, Any]) -> bool:
    """Is this status event one a tenant's webhook hears about? (Not campaign-level ones.)"""
    return event.get("state") in WEBHOOK_STATES and event.get("id") != event.get("campaign_id")


def body_of(event: Mapping[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in event.items() if k not in INTERNAL_FIELDS},
                        option=orjson.OPT_SORT_KEYS)


def event_id(tenant: str, notification_id: str, state: str) -> str:
    return hashlib.sha256(f"{tenant}\x00{notification_id}\x00{state}".encode()).hexdigest()[:32]


def sign(secret: str, timestamp_s: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp_s}.".encode() + body, hashlib.sha256)
    return f"t={timestamp_s},v1={mac.hexdigest()}"


def verify(secret: str, header: str | None, body: bytes, now_s: int,
           tolerance_s: int = DEFAULT_TOLERANCE_S) -> bool:
    """What a tenant's receiver checks: the signature, and a timestamp within tolerance."""
    m = _SIG.match(header or "")
    if not m or abs(now_s - int(m.group(1))) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(m.group(1)), body), m.group(0))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, at most ``max_attempts`` calls in all."""
    base_ms: int = 500
    max_ms: int = 60_000
    max_attempts: int = 8

    def __post_init__(self) -> None:
        if self.base_ms < 1 or self.max_ms < self.base_ms or self.max_attempts < 1:
            raise ValueError("webhook retry: need 1 <= base_ms <= max_ms and max_attempts >= 1")

    def next_delay_ms(self, attempts_made: int, rng: random.Random | None = None) -> int | None:
        """The wait before call ``attempts_made + 1``, or None when no call is left."""
        if attempts_made >= self.max_attempts:
            return None
        ceiling = min(self.max_ms, self.base_ms * 2 ** (attempts_made - 1))
        return int(ceiling * (0.5 + 0.5 * (rng or random).random()))


def succeeded(status: int | None) -> bool:
    return status is not None and 200 <= status < 300
