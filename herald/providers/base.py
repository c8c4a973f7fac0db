"""The provider interface: build one HTTP request, classify one HTTP answer. No I/O here.

The delivery engine owns the client and the sending loop; an adapter only turns a notification
into bytes for the wire and the provider's answer into one of four outcomes:

- ``OK``: the provider accepted it (``message_id`` is the provider's id, when it gives one);
- ``THROTTLED``: slow down and retry after ``retry_after_s``; never loses the message;
- ``RETRYABLE``: a transient fault (5xx, timeouts); retry with backoff;
- ``PERMANENT``: retrying cannot help; ``token_invalid`` says the recipient's token, number or
  address is dead, so the caller can mark it invalid on the user record.

Each provider module maps its codes with tables plus one small function, the way GOV.UK
Notify maps Firetext's codes, so classification is testable with no network.
"""
from __future__ import annotations

import email.utils
import functools
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Iterable, Mapping
from urllib.parse import urlsplit

from herald.models import Contacts, Notification
from herald.settings import Settings

DEFAULT_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 3600.0


class Kind(str, Enum):
    OK = "ok"
    THROTTLED = "throttled"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


OK, THROTTLED, RETRYABLE, PERMANENT = Kind.OK, Kind.THROTTLED, Kind.RETRYABLE, Kind.PERMANENT


@dataclass(slots=True)  # made per call: not frozen, as herald.models says why
class ProviderRequest:
    """One HTTP call, ready for any client. ``http2`` is set where the provider requires it.
    ``deadline`` (epoch ms; None: none): the clients never write the request at or after it,
    and stop waiting for its answer there, or at ``answer_by`` (epoch ms) when that is set:
    the call stage writes no later than the trip before ``expires_at`` and awaits the answer
    until ``expires_at``."""
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    http2: bool = False
    deadline: int | None = None
    answer_by: int | None = None


@dataclass(slots=True)  # made per call: not frozen, as herald.models says why
class Outcome:
    kind: Kind
    detail: str = ""
    code: str | None = None            # the provider's own error code, e.g. "UNREGISTERED"
    status: int | None = None          # HTTP status; None for transport errors
    retry_after_s: float | None = None  # always set for THROTTLED; optional for RETRYABLE
    token_invalid: bool = False        # PERMANENT because the recipient's contact is dead
    message_id: str | None = None      # the provider's id for an accepted message

    @property
    def ok(self) -> bool:
        return self.kind is Kind.OK

    @property
    def retryable(self) -> bool:
        """THROTTLED or RETRYABLE: the message must be tried again."""
        return self.kind in (Kind.THROTTLED, Kind.RETRYABLE)


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of a provider's code table."""
    kind: Kind
    detail: str
    token_invalid: bool = False


# The fallback when a provider's answer carries no code we know: HTTP semantics alone.
HTTP_RULES: dict[int, Rule] = {
    400: Rule(PERMANENT, "bad request"),
    401: Rule(PERMANENT, "credentials rejected"),
    403: Rule(PERMANENT, "forbidden"),
    404: Rule(PERMANENT, "not found"),
    405: Rule(PERMANENT, "method not allowed"),
    408: Rule(RETRYABLE, "request timeout"),
    410: Rule(PERMANENT, "gone", token_invalid=True),
    413: Rule(PERMANENT, "payload too large"),
    425: Rule(RETRYABLE, "too early"),
    429: Rule(THROTTLED, "too many requests"),
    500: Rule(RETRYABLE, "provider internal error"),
    502: Rule(RETRYABLE, "bad gateway"),
    503: Rule(RETRYABLE, "provider unavailable"),
    504: Rule(RETRYABLE, "gateway timeout"),
}


def http_rule(status: int) -> Rule:
    if 200 <= status < 300:
        return Rule(OK, "accepted")
    rule = HTTP_RULES.get(status)
    if rule is not None:
        return rule
    if status >= 500:
        return Rule(RETRYABLE, f"provider error {status}")
    return Rule(PERMANENT, f"unexpected HTTP {status}")


def lower_headers(headers: Mapping | Iterable[tuple[Any, Any]] | None) -> dict[str, str]:
    """Any client's headers (dict, multidict, list of pairs, bytes or str) → lower-case dict."""
    if not headers:
        return {}
    items = headers.items() if hasattr(headers, "items") else headers
    out: dict[str, str] = {}
    for name, value in items:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        out[name.lower()] = value
    return out


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or HTTP-date), clamped to [0, 1 h]."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now_s is None else now_s)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def outcome_from_rule(rule: Rule, status: int, code: str | None = None, detail: str = "",
                      retry_after_s: float | None = None, message_id: str | None = None
                      ) -> Outcome:
    """The one small function every adapter ends in: a table row plus what the answer said."""
    if rule.kind is THROTTLED and retry_after_s is None:
        retry_after_s = DEFAULT_RETRY_AFTER_S
    text = rule.detail if not detail else f"{rule.detail}: {detail}"
    return Outcome(rule.kind, text, code, status, retry_after_s, rule.token_invalid, message_id)


@functools.lru_cache(maxsize=64)  # asked once per request built: a URL parse each was ≈ 3 µs
def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def credential(value: str, url: str, what: str) -> str:
    """A secret from Settings. Empty is allowed only against a loopback URL (the mocks), where
    a placeholder is sent; against a real host it raises so a missing secret fails loudly."""
    if value:
        return value
    if is_loopback(url):
        return "herald-mock-credential"
    from herald.providers.exceptions import ProviderConfigError
    raise ProviderConfigError(f"{what} is not set (needed for {urlsplit(url).hostname})")


def clock_ms() -> int:
    """Wall-clock epoch ms, the clock of ``created_at``/``expires_at``."""
    return time.time_ns() // 1_000_000


class ProviderAdapter(ABC):
    """One provider behind Herald's interface. Adapters hold no connections; the APNs one
    keeps its signed provider token between calls, as Apple requires."""

    name: ClassVar[str]
    channel: ClassVar[str]

    @abstractmethod
    def build_request(self, notification: Notification, contacts: Contacts, settings: Settings,
                      *, now_ms: int | None = None) -> ProviderRequest:
        """The HTTP call for this notification to these contacts. Raises MissingContactError
        (fall back), EmptyContentError or ProviderConfigError; never does I/O."""

    @abstractmethod
    def classify(self, status: int, headers: Mapping | Iterable | None, body: bytes) -> Outcome:
        """The provider's answer as an Outcome. Never raises, whatever the body holds."""

    def transport_error(self, exc: BaseException) -> Outcome:
        """No HTTP answer at all (refused, reset, timed out): always worth another try."""
        return Outcome(RETRYABLE, f"transport error: {type(exc).__name__}: {exc}", None, None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}/{self.channel}>"

