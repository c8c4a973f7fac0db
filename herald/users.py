"""User records: contacts, locale, channel opt-outs and quiet hours; their strict reader and
their Redis layout, shared by everything that writes them (the API, the CLI) and the delivery
path that reads them.

Key: ``herald:user:{tenant}:{user_id}`` (hash) holding the flat record (``UserRecord.to_hash``:
``user_id``, ``push_token``, ``platform``, ``phone``, ``email``, ``locale``, ``opt_outs``
comma-joined, ``quiet_start``, ``quiet_end``, ``quiet_tz``) and ``updated_at``. Writers
replace the hash whole (``queue_put``); the call stage reads a batch's users with one Lua call
(``udfs.lookups``) that answers ``HASH_FIELDS`` per user (``user_from_values``).

The ``queue_*`` helpers only add commands to a pipeline, so the same code serves the API's
asyncio client and the CLI's and call stage's blocking ones.
"""
from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from herald import states
from herald.errors import ValidationError
from herald.models import MAX_ID_LENGTH, Contacts, _contacts, _string, check_id, check_tenant_id

PREFIX = "herald"
LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8}){0,3}")
# 24-hour local time; seconds are optional (a window can end between two minutes).
CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?")
USER_FIELDS = frozenset({"tenant_id", "user_id", "contacts", "locale", "opt_outs", "quiet_hours"})
MAX_LOCALE_LENGTH = 35
MAX_TZ_LENGTH = 64  # IANA zone names are far shorter
# What the delivery path reads of a user hash, in this order (HMGET).
HASH_FIELDS = ("push_token", "platform", "phone", "email", "locale", "opt_outs", "quiet_start",
               "quiet_end", "quiet_tz")


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: str  # "HH:MM" or "HH:MM:SS", local time
    end: str    # earlier than start means the quiet period spans midnight
    tz: str     # IANA zone name


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    contacts: Contacts
    locale: str | None = None
    opt_outs: tuple[str, ...] = ()
    quiet_hours: QuietHours | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"user_id": self.user_id}
        contacts = {k: getattr(self.contacts, k) for k in ("push_token", "platform", "phone",
                                                           "email")}
        out["contacts"] = {k: v for k, v in contacts.items() if v is not None}
        if self.locale is not None:
            out["locale"] = self.locale
        out["opt_outs"] = list(self.opt_outs)
        if self.quiet_hours is not None:
            q = self.quiet_hours
            out["quiet_hours"] = {"start": q.start, "end": q.end, "tz": q.tz}
        return out

    def to_hash(self) -> dict[str, str]:
        """Flat string fields for a Redis hash (the delivery path reads them with HMGET)."""
        flat = {"user_id": self.user_id, "push_token": self.contacts.push_token,
                "platform": self.contacts.platform, "phone": self.contacts.phone,
                "email": self.contacts.email, "locale": self.locale,
                "opt_outs": ",".join(self.opt_outs)}
        if self.quiet_hours is not None:
            flat.update(quiet_start=self.quiet_hours.start, quiet_end=self.quiet_hours.end,
                        quiet_tz=self.quiet_hours.tz)
        return {k: v for k, v in flat.items() if v is not None}

    @classmethod
    def from_hash(cls, h: Mapping[str, str]) -> "UserRecord":
        quiet = None
        if h.get("quiet_start") and h.get("quiet_end") and h.get("quiet_tz"):
            quiet = QuietHours(h["quiet_start"], h["quiet_end"], h["quiet_tz"])
        return cls(user_id=h["user_id"],
                   contacts=Contacts(push_token=h.get("push_token"), platform=h.get("platform"),
                                     phone=h.get("phone"), email=h.get("email")),
                   locale=h.get("locale"),
                   opt_outs=tuple(c for c in h.get("opt_outs", "").split(",") if c),
                   quiet_hours=quiet)


# ---------------------------------------------------------------- Redis layout

def user_key(tenant: str, user_id: str) -> str:
    return f"{PREFIX}:user:{tenant}:{user_id}"


def queue_put(pipe, tenant: str, user: UserRecord, now_ms: int) -> None:
    """Replace (never merge) the user's hash; run it in a transaction pipeline."""
    key = user_key(tenant, user.user_id)
    pipe.delete(key)
    pipe.hset(key, mapping={**user.to_hash(), "updated_at": str(now_ms)})


def user_from_values(user_id: str, values: Sequence[bytes | str | None]) -> UserRecord | None:
    """An HMGET answer (``HASH_FIELDS`` order) → the record, or None for no such user."""
    if not any(values):
        return None
    text = [v.decode() if isinstance(v, bytes) else v for v in values]
    token, platform, phone, email, locale, opt_outs, q_start, q_end, q_tz = text
    quiet = QuietHours(q_start, q_end, q_tz) if q_start and q_end and q_tz else None
    return UserRecord(user_id=user_id,
                      contacts=Contacts(push_token=token, platform=platform, phone=phone,
                                        email=email),
                      locale=locale,
                      opt_outs=tuple(c for c in (opt_outs or "").split(",") if c),
                      quiet_hours=quiet)


# ---------------------------------------------------------------- validation

def check_user_id(value: Any, field: str = "user_id") -> str:
    """A user (or notification) id: ``herald.models.ID_RULE``."""
    return check_id(value, field, MAX_ID_LENGTH)


def _quiet_hours(obj: Mapping) -> QuietHours | None:
    q = obj.get("quiet_hours")
    if q is None:
        return None
    if not isinstance(q, Mapping):
        raise ValidationError(f"'quiet_hours' must be an object, got {type(q).__name__}",
                              "quiet_hours")

    def text(name: str, max_len: int) -> str:
        label = f"quiet_hours.{name}"  # the reader names a missing field without its prefix
        return _string({label: q.get(name)}, label, max_len=max_len)

    for name in ("start", "end"):
        value = text(name, 8)
        if not CLOCK.fullmatch(value):
            raise ValidationError(f"'quiet_hours.{name}' must be a 24-hour 'HH:MM' (or "
                                  f"'HH:MM:SS'), got {value!r}", f"quiet_hours.{name}")
    tz = text("tz", MAX_TZ_LENGTH)
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationError(f"'quiet_hours.tz' is not a known IANA time zone: {tz!r}",
                              "quiet_hours.tz") from None
    if clock_seconds(q["start"]) == clock_seconds(q["end"]):
        raise ValidationError("'quiet_hours.start' and 'quiet_hours.end' must differ",
                              "quiet_hours.end")
    return QuietHours(q["start"], q["end"], tz)


def clock_seconds(value: str) -> int:
    """``"HH:MM"`` or ``"HH:MM:SS"`` → seconds after local midnight (validated already)."""
    m = CLOCK.fullmatch(value)
    if m is None:
        raise ValueError(f"not a 24-hour clock time: {value!r}")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3) or 0)


def _opt_outs(obj: Mapping) -> tuple[str, ...]:
    value = obj.get("opt_outs")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ValidationError("'opt_outs' must be a list of channels", "opt_outs")
    for ch in value:
        if ch not in states.CHANNELS:
            raise ValidationError(
                f"unknown channel {ch!r} in 'opt_outs' (known: {', '.join(sorted(states.CHANNELS))})",
                "opt_outs")
    if len(set(value)) != len(value):
        raise ValidationError("'opt_outs' lists a channel twice", "opt_outs")
    return tuple(value)


def user_from_dict(obj: Mapping, user_id: str) -> UserRecord:
    """Validate a user record for ``user_id`` (the id comes from the path or the file row)."""
    user_id = check_user_id(user_id)
    if obj.get("user_id") is not None and obj["user_id"] != user_id:
        raise ValidationError(f"'user_id' in the body ({obj['user_id']!r}) differs from the "
                              f"path ({user_id!r})", "user_id")
    unknown = sorted(set(obj) - USER_FIELDS)
    if unknown:
        raise ValidationError(f"unknown field(s) {', '.join(map(repr, unknown))} in a user record",
                              unknown[0])
    if obj.get("tenant_id") is not None:
        check_tenant_id(obj["tenant_id"])
    contacts = obj.get("contacts")
    if contacts is not None and not isinstance(contacts, Mapping):
        raise ValidationError(f"'contacts' must be an object, got {type(contacts).__name__}",
                              "contacts")
    unknown = sorted(set(contacts or {}) - {"push_token", "platform", "phone", "email"})
    if unknown:
        raise ValidationError(f"unknown contact(s) {', '.join(map(repr, unknown))}",
                              f"contacts.{unknown[0]}")
    try:
        parsed = _contacts({"to": contacts or {}})
    except ValidationError as exc:  # the notification reader names it 'to.*'
        field = exc.field.replace("to.", "contacts.", 1) if exc.field else "contacts"
        raise ValidationError(exc.message.replace("'to.", "'contacts."), field, exc.code) from None
    locale = _string(obj, "locale", required=False, max_len=MAX_LOCALE_LENGTH)
    if locale is not None and not LOCALE.fullmatch(locale):
        raise ValidationError(f"'locale' must look like 'en' or 'pt-BR', got {locale!r}", "locale")
    return UserRecord(user_id=user_id, contacts=parsed, locale=locale, opt_outs=_opt_outs(obj),
                      quiet_hours=_quiet_hours(obj))


# ---------------------------------------------------------------- dead contacts

# Remove a contact a provider called dead, only if the record still holds that value (a token
# the user registered since is kept). KEYS: the user hash. ARGV: field (push_token, phone,
# email), the dead value's sha1 hex (``herald.receipts.contact_sha1``), now ms. A push token
# takes its platform with it. Returns 1 if removed.
REMOVE_CONTACT_LUA = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v or redis.sha1hex(v) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[1] == 'push_token' then redis.call('HDEL', KEYS[1], 'platform') end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
return 1
"""
