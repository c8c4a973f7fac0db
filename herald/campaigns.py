"""The contract's Campaign record and the cancel Control record, with strict parsers.

Engine-free: the API validates a campaign with this before enqueueing it, and the expansion
stage can parse what it reads off ``herald.campaigns`` with the same rules. Field readers are
the ones ``herald.models`` uses for notifications, so a rule is written once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

import orjson

from herald.errors import ValidationError
from herald.models import (MAX_ID_LENGTH, Content, _channels, _content, _epoch_ms, _object,
                           _string, load_object)

CANCEL_CAMPAIGN = "cancel_campaign"

# A segment name is used in storage keys and file names: keep it to a safe alphabet.
SEGMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SEGMENT_NAME_RULE = "1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
# Latest epoch in ms accepted anywhere (year 2286): keeps arithmetic on epochs within 64 bits.
MAX_EPOCH_MS = 9_999_999_999_999
# The separator of derived recipient ids, ``{campaign_id}:{user_id}``.
RECIPIENT_SEPARATOR = ":"


@dataclass(frozen=True, slots=True)
class Audience:
    """Exactly one of ``segment`` (a stored, named list) or ``user_ids`` (inline)."""
    segment: str | None = None
    user_ids: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        if self.segment is not None:
            return {"segment": self.segment}
        return {"user_ids": list(self.user_ids or ())}


@dataclass(frozen=True, slots=True)
class Campaign:
    campaign_id: str
    tenant_id: str
    audience: Audience
    channels: tuple[str, ...]
    content: Content
    created_at: int
    expires_at: int
    send_at: int | None = None

    def is_expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_at

    def recipient_id(self, user_id: str) -> str:
        """The deterministic notification id of one recipient: a re-run never sends twice."""
        return f"{self.campaign_id}{RECIPIENT_SEPARATOR}{user_id}"

    def to_dict(self) -> dict:
        content = {"title": self.content.title, "body": self.content.body,
                   "data": dict(self.content.data), "template": self.content.template,
                   "vars": dict(self.content.vars)}
        out = {"campaign_id": self.campaign_id, "tenant_id": self.tenant_id,
               "audience": self.audience.to_dict(), "channels": list(self.channels),
               "content": {k: v for k, v in content.items() if v not in (None, {})},
               "created_at": self.created_at, "expires_at": self.expires_at}
        if self.send_at is not None:
            out["send_at"] = self.send_at
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


@dataclass(frozen=True, slots=True)
class CancelCampaign:
    """Control record on ``herald.control``: nothing more of the campaign is sent."""
    campaign_id: str
    tenant_id: str
    at: int
    kind: str = CANCEL_CAMPAIGN

    def to_dict(self) -> dict:
        return {"kind": self.kind, "campaign_id": self.campaign_id, "tenant_id": self.tenant_id,
                "at": self.at}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def _iso(epoch_ms: int) -> str:
    try:
        return datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (OverflowError, OSError, ValueError):
        return f"{epoch_ms} ms"


def check_epoch_range(obj: Mapping, *names: str) -> None:
    """Epochs past ``MAX_EPOCH_MS`` are refused: a TTL added to one must still fit in 64 bits."""
    for name in names:
        value = obj.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_EPOCH_MS:
            raise ValidationError(f"'{name}' is beyond the year 2286 ({value} > {MAX_EPOCH_MS} "
                                  "epoch ms)", name)


def check_campaign_id(value: Any, field: str = "campaign_id") -> str:
    """A campaign id: a non-empty string without the recipient separator, so that
    ``{campaign_id}:{user_id}`` names exactly one (campaign, user) pair."""
    campaign_id = _string({field: value}, field)
    if RECIPIENT_SEPARATOR in campaign_id:
        raise ValidationError(
            f"'{field}' must not contain {RECIPIENT_SEPARATOR!r}: recipient ids are "
            f"'{{campaign_id}}{RECIPIENT_SEPARATOR}{{user_id}}'", field)
    return campaign_id


def check_channel_types(value: Any, field: str = "channels") -> None:
    """Channels must be strings before they meet a set (an object in the list is not hashable)."""
    if isinstance(value, list):
        for ch in value:
            if not isinstance(ch, str):
                raise ValidationError(f"'{field}' must list channel names (strings), got "
                                      f"{type(ch).__name__}", field)


def check_segment_name(value: Any, field: str = "segment") -> str:
    name = _string({field: value}, field)
    if not SEGMENT_NAME.fullmatch(name):
        raise ValidationError(f"'{field}' must be {SEGMENT_NAME_RULE}, got {name!r}", field)
    return name


def check_user_ids(value: Any, field: str = "user_ids", *, max_len: int = MAX_ID_LENGTH,
                   allow_empty: bool = False) -> tuple[str, ...]:
    """A list of distinct, non-empty user id strings of at most ``max_len`` characters."""
    if not isinstance(value, list):
        raise ValidationError(f"'{field}' must be a list of user ids, got {type(value).__name__}",
                              field)
    if not value and not allow_empty:
        raise ValidationError(f"'{field}' must not be empty", field)
    seen: set[str] = set()
    for i, user_id in enumerate(value):
        label = f"{field}[{i}]"
        if not isinstance(user_id, str):
            raise ValidationError(f"'{label}' must be a string, got {type(user_id).__name__}",
                                  field)
        if not user_id.strip():
            raise ValidationError(f"'{label}' must not be empty", field)
        if len(user_id) > max_len:
            raise ValidationError(f"'{label}' is longer than {max_len} characters", field)
        if user_id in seen:
            raise ValidationError(f"'{field}' lists user {user_id!r} twice", field, "duplicate")
        seen.add(user_id)
    return tuple(value)


def _audience(obj: Mapping, campaign_id: str, max_id_length: int) -> Audience:
    audience = _object(obj, "audience", required=True)
    unknown = sorted(set(audience) - {"segment", "user_ids"})
    if unknown:
        raise ValidationError(
            f"'audience' has unknown field(s) {', '.join(map(repr, unknown))}; "
            "give either 'segment' or 'user_ids'", f"audience.{unknown[0]}")
    has_segment = audience.get("segment") is not None
    has_users = audience.get("user_ids") is not None
    if has_segment == has_users:
        raise ValidationError("'audience' needs exactly one of 'segment' or 'user_ids'",
                              "audience", "missing_field" if not has_segment else "invalid")
    if has_segment:
        return Audience(segment=check_segment_name(audience["segment"], "audience.segment"))
    # every derived id ``{campaign_id}:{user_id}`` must itself be a valid notification id
    room = max_id_length - len(campaign_id) - len(RECIPIENT_SEPARATOR)
    return Audience(user_ids=check_user_ids(audience["user_ids"], "audience.user_ids",
                                            max_len=room))


def campaign_from_dict(obj: Mapping, *, now_ms: int | None = None,
                       max_id_length: int = MAX_ID_LENGTH) -> Campaign:
    """Validate one Campaign. With ``now_ms``, an already expired campaign is refused too."""
    campaign_id = check_campaign_id(obj.get("campaign_id"))
    tenant_id = _string(obj, "tenant_id")
    audience = _audience(obj, campaign_id, max_id_length)
    if obj.get("channels") is None:
        raise ValidationError("missing required field 'channels'", "channels", "missing_field")
    check_channel_types(obj.get("channels"))
    channels = _channels(obj)
    content = _content(obj)
    check_epoch_range(obj, "created_at", "expires_at", "send_at")
    created_at = _epoch_ms(obj, "created_at")
    expires_at = _epoch_ms(obj, "expires_at")
    if expires_at <= created_at:
        raise ValidationError("'expires_at' must be later than 'created_at'", "expires_at")
    send_at = _epoch_ms(obj, "send_at", required=False)
    if send_at is not None and send_at >= expires_at:
        raise ValidationError(
            f"'send_at' ({_iso(send_at)}) must be earlier than 'expires_at' ({_iso(expires_at)})",
            "send_at")
    if now_ms is not None and expires_at <= now_ms:
        raise ValidationError(
            f"campaign already expired: 'expires_at' is {_iso(expires_at)}, now is "
            f"{_iso(now_ms)}; nothing of it could be delivered", "expires_at", "expired")
    return Campaign(campaign_id=campaign_id, tenant_id=tenant_id, audience=audience,
                    channels=channels, content=content, created_at=created_at,
                    expires_at=expires_at, send_at=send_at)


def parse_campaign(raw: bytes | str, *, now_ms: int | None = None,
                   max_id_length: int = MAX_ID_LENGTH) -> Campaign:
    """Bytes off Kafka → a valid Campaign, or ValidationError with a precise reason."""
    return campaign_from_dict(load_object(raw), now_ms=now_ms, max_id_length=max_id_length)


def cancel_from_dict(obj: Mapping) -> CancelCampaign:
    """Validate a ``cancel_campaign`` Control record."""
    kind = obj.get("kind")
    if kind != CANCEL_CAMPAIGN:
        raise ValidationError(f"'kind' must be {CANCEL_CAMPAIGN!r}, got {kind!r}", "kind")
    return CancelCampaign(campaign_id=check_campaign_id(obj.get("campaign_id")),
                          tenant_id=_string(obj, "tenant_id"), at=_epoch_ms(obj, "at"))
