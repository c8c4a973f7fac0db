"""The contract's Campaign record and the cancel Control record, with strict parsers.

Engine-free: the API validates a campaign with this before enqueueing it, and the expansion
stage can parse what it reads off ``herald.campaigns`` with the same rules. Field readers are
the ones ``herald.models`` uses for notifications, so a rule is written once.

Also here: the recipient records (``recipient_json`` and the head/tail the expansion SQL
wraps around each user id) and the expansion's decisions (``Expander``: cursor, send_at,
expiry, cancel, campaign-level progress events), which the Flink operator only executes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import orjson

from herald import states
from herald.errors import ValidationError
from herald.models import (CONTENT_FIELDS, ID_RULE, MAX_ID_LENGTH, Contacts, Content,
                           Notification, _channels, _content, _epoch_ms, _object, _string,
                           check_id, check_known_fields, check_tenant_id, id_problem, load_object)

CANCEL_CAMPAIGN = "cancel_campaign"

# A segment name is used in storage keys and file names: keep it to a safe alphabet.
SEGMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SEGMENT_NAME_RULE = "1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
# Latest epoch in ms accepted anywhere (year 2286): keeps arithmetic on epochs within 64 bits.
MAX_EPOCH_MS = 9_999_999_999_999
# The separator of derived recipient ids, ``{campaign_id}:{user_id}``.
RECIPIENT_SEPARATOR = ":"
CAMPAIGN_ID_PATTERN = rf"^[^\s/{RECIPIENT_SEPARATOR}]+$"  # herald.models.ID_PATTERN, no ':'
# The fields the contract lists for a campaign (the API refuses others; see herald.models).
CAMPAIGN_FIELDS = frozenset({"campaign_id", "tenant_id", "audience", "channels", "content",
                             "created_at", "expires_at", "send_at"})


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


def cancelled_key(tenant: str, campaign_id: str) -> str:
    """Redis: the campaign was cancelled (value: when the cancel was processed, epoch ms). The
    delivery path reads it for the campaigns of each batch and drops what is not yet sent."""
    return f"herald:cancelled:{tenant}:{campaign_id}"


def queue_cancelled(pipe, cancel: CancelCampaign, processed_ms: int, ttl_ms: int) -> None:
    """Add the cancel's Redis record to ``pipe`` (sync or asyncio); a replay keeps the first."""
    pipe.set(cancelled_key(cancel.tenant_id, cancel.campaign_id), processed_ms, px=ttl_ms,
             nx=True)


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
    """A campaign id: an id (``herald.models.ID_RULE``) without the recipient separator, so
    that ``{campaign_id}:{user_id}`` names exactly one (campaign, user) pair."""
    campaign_id = check_id(value, field)
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


def check_named_body(obj: Mapping, name: Any, allowed: frozenset[str], what: str) -> str:
    """A body stored under ``name`` (from the path): the naming rule, no unknown field, a
    valid ``tenant_id`` if given, and a ``name`` in the body, if any, equal to the path's.
    Returns the name."""
    name = check_segment_name(name, "name")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ValidationError(f"unknown field(s) {', '.join(map(repr, unknown))} in {what}",
                              unknown[0])
    if obj.get("tenant_id") is not None:
        check_tenant_id(obj["tenant_id"])
    if obj.get("name") is not None and obj["name"] != name:
        raise ValidationError(f"'name' in the body ({obj['name']!r}) differs from the path "
                              f"({name!r})", "name")
    return name


def check_user_ids(value: Any, field: str = "user_ids", *, max_len: int = MAX_ID_LENGTH,
                   allow_empty: bool = False) -> tuple[str, ...]:
    """A list of distinct user ids, each an id (``ID_RULE``) of at most ``max_len``."""
    if not isinstance(value, list):
        raise ValidationError(f"'{field}' must be a list of user ids, got {type(value).__name__}",
                              field)
    if not value and not allow_empty:
        raise ValidationError(f"'{field}' must not be empty", field)
    for i, user_id in enumerate(value):
        if not (user_id.__class__ is str and 0 < len(user_id) <= max_len
                and user_id.isprintable() and " " not in user_id and "/" not in user_id):
            label = f"{field}[{i}]"
            if not isinstance(user_id, str):
                raise ValidationError(f"'{label}' must be a string, got "
                                      f"{type(user_id).__name__}", field)
            raise ValidationError(f"'{label}' {id_problem(user_id, max_len)}; a user id is "
                                  f"{ID_RULE}", field)
    if len(set(value)) != len(value):
        seen: set[str] = set()
        twice = next(u for u in value if u in seen or seen.add(u))
        raise ValidationError(f"'{field}' lists user {twice!r} twice", field, "duplicate")
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
    tenant_id = check_tenant_id(obj.get("tenant_id"))
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
                          tenant_id=check_tenant_id(obj.get("tenant_id")), at=_epoch_ms(obj, "at"))


def check_campaign_fields(obj: Mapping) -> None:
    """The API's rule: no field the contract does not list (top level and ``content``;
    ``audience`` is checked by the reader on every path)."""
    check_known_fields(obj, CAMPAIGN_FIELDS, "a campaign")
    if isinstance(obj.get("content"), Mapping):
        check_known_fields(obj["content"], CONTENT_FIELDS, "'content'", "content.")


# ---------------------------------------------------------------- recipients

def recipient_id(campaign_id: str, user_id: str) -> str:
    """``{campaign_id}:{user_id}``: the notification id of one recipient (Flink SQL builds the
    same string with ``RECIPIENT_SEPARATOR`` handed in from here)."""
    return f"{campaign_id}{RECIPIENT_SEPARATOR}{user_id}"


def recipient_fields(c: Campaign) -> dict:
    """The Notification fields every recipient of ``c`` shares: all but ``id`` and ``user_id``.

    Built through ``Notification.to_dict`` so an expanded record has exactly the shape of any
    other promotional notification. No ``to``: contacts come from the user record.
    """
    n = Notification(id="", tenant_id=c.tenant_id, user_id="", priority=states.PROMOTIONAL,
                     channels=c.channels, to=Contacts(), content=c.content,
                     created_at=c.created_at, expires_at=c.expires_at,
                     campaign_id=c.campaign_id, send_at=c.send_at)
    fields = n.to_dict()
    del fields["id"], fields["user_id"]
    if not fields.get("to"):
        fields.pop("to", None)
    return fields


def recipient_json(c: Campaign, user_id: str) -> bytes:
    """One recipient's Notification JSON (the reference for what the expansion SQL writes)."""
    return orjson.dumps({"id": recipient_id(c.campaign_id, user_id), "user_id": user_id,
                         **recipient_fields(c)})


def recipient_json_head(c: Campaign) -> str:
    """``{"id":"{campaign_id}:`` JSON-escaped, without the closing quote: the expansion SQL
    appends each user id (escaped), then ``","user_id":"``, the id again, ``",`` and the tail."""
    return '{"id":' + orjson.dumps(recipient_id(c.campaign_id, "")).decode()[:-1]


def recipient_json_tail(c: Campaign) -> str:
    """``recipient_json`` after its ``"user_id"`` member: ``"tenant_id":…}``, the same for every
    recipient of ``c``."""
    return orjson.dumps(recipient_fields(c)).decode()[1:]


def escape_json_text(text: str) -> str:
    """What the expansion SQL does to a user id inside a JSON string: backslashes and double
    quotes escaped. Enough, as ids with control characters are refused (herald.segments)."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


# ---------------------------------------------------------------- expansion

WAITING, RUNNING, DONE = "waiting", "running", "done"
CANCELLED, EXPIRED, FAILED = "cancelled", "expired", "failed"
LIVE_PHASES = frozenset({WAITING, RUNNING})


@dataclass(slots=True)
class Expansion:
    """One campaign's expansion, as kept in keyed state (keyed by campaign id).

    ``cursor`` is the next row of the audience to expand; everything before it has been handed
    on. ``campaign`` is None while only a cancel has been seen (the cancel is remembered, so a
    campaign record arriving after it is dropped, not expanded).
    """
    campaign_id: str
    tenant_id: str
    campaign: Campaign | None = None
    phase: str = WAITING
    source: str | None = None      # the segment file read (fixed when the expansion starts)
    total: int = 0
    cursor: int = 0
    next_tick_at: int | None = None
    purge_at: int | None = None
    last_progress_at: int = 0
    last_event_at: int = 0


@dataclass(frozen=True, slots=True)
class AudienceSource:
    """Where the recipients are read from: a segment file, or None for an inline list."""
    path: str | None
    total: int
    max_id_length: int


@dataclass(slots=True)
class Step:
    """What the operator must do after one input or timer."""
    events: list[dict] = field(default_factory=list)       # campaign-level Status events
    dead_letters: list[tuple[Mapping, str]] = field(default_factory=list)  # (record, reason)
    batch: tuple[int, int] | None = None                    # rows [start, start + count)
    timers: list[int] = field(default_factory=list)         # processing-time timers to set
    clear: bool = False                                     # forget the campaign's state


class Expander:
    """The expansion's decisions, engine-free: the Flink operator keeps the state and timers,
    reads the rows a step names and emits them.

    A campaign waits for ``send_at`` (a timer), then each tick hands on one batch of
    ``batch_size`` rows and moves the cursor; the next tick is ``tick_ms`` later. An expired
    campaign gets one ``expired`` event and nothing else; a cancel stops the ticks. Progress
    goes out as campaign-level ``accepted`` events (id = campaign id) at most every
    ``progress_interval_ms``. Every campaign-level event carries ``expanded`` (recipients
    handed on so far), ``total`` (the audience's size, once known) and ``expansion`` (the
    phase: waiting, running, done, cancelled, expired, failed).
    """

    def __init__(self, *, batch_size: int = 10_000, tick_ms: int = 0,
                 progress_interval_ms: int = 1_000, retention_ms: int = 86_400_000,
                 max_id_length: int = MAX_ID_LENGTH):
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if tick_ms < 0 or progress_interval_ms < 0 or retention_ms < 0:
            raise ValueError("tick_ms, progress_interval_ms and retention_ms must not be negative")
        self.batch_size = batch_size
        self.tick_ms = tick_ms
        self.progress_interval_ms = progress_interval_ms
        self.retention_ms = retention_ms
        self.max_id_length = max_id_length

    # ---- inputs

    def on_campaign(self, state: Expansion | None, c: Campaign,
                    now: int) -> tuple[Expansion | None, Step]:
        step = Step()
        if state is not None and state.campaign is not None:
            if state.campaign != c:
                step.dead_letters.append((c.to_dict(), (
                    f"campaign id {c.campaign_id!r} is already taken by a different campaign "
                    "(the first one stands)")))
            return state, step  # a replay of the same record: already handled
        if state is not None and state.tenant_id == c.tenant_id:  # a cancel came first
            state.campaign = c
            self._purge_later(state, step, now)
            step.events.append(self._event(state, CANCELLED, now,
                                           "cancelled before its expansion started"))
            return state, step
        state = Expansion(c.campaign_id, c.tenant_id, campaign=c)
        self._purge_later(state, step, now)
        if c.is_expired(now):
            state.phase = EXPIRED
            step.events.append(self._event(state, EXPIRED, now, (
                f"campaign expired before its expansion (expires_at {_iso(c.expires_at)}, "
                f"now {_iso(now)}): nothing of it is sent")))
            return state, step
        start = max(now, c.send_at or now)
        state.next_tick_at = start
        step.timers.append(start)
        detail = (f"expansion waits for send_at {_iso(start)}" if start > now
                  else "queued for expansion")
        step.events.append(self._event(state, states.ACCEPTED, now, detail))
        return state, step

    def on_cancel(self, state: Expansion | None, cancel: CancelCampaign,
                  now: int) -> tuple[Expansion | None, Step]:
        step = Step()
        if state is None:  # remembered: the campaign record may still come
            state = Expansion(cancel.campaign_id, cancel.tenant_id, phase=CANCELLED)
            self._purge_later(state, step, now)
            return state, step
        if state.tenant_id != cancel.tenant_id:
            step.dead_letters.append((cancel.to_dict(), (
                f"cancel from tenant {cancel.tenant_id!r} for campaign {cancel.campaign_id!r}, "
                "which belongs to another tenant: ignored")))
            return state, step
        if state.campaign is None or state.phase in (CANCELLED, EXPIRED, FAILED):
            return state, step  # already final; a repeated cancel changes nothing
        if state.phase == DONE:
            detail = (f"cancelled after its expansion completed ({state.cursor}/{state.total}): "
                      "what is not yet sent is dropped in delivery")
        else:
            detail = f"cancelled after expanding {state.cursor}/{state.total}: expansion stopped"
        state.phase = CANCELLED
        state.next_tick_at = None
        step.events.append(self._event(state, CANCELLED, now, detail))
        return state, step

    def on_timer(self, state: Expansion | None, timestamp: int, now: int,
                 open_audience: Callable[[Campaign], AudienceSource]
                 ) -> tuple[Expansion | None, Step]:
        """A timer fired: purge a finished campaign, or expand its next batch.

        ``open_audience`` finds the audience when the expansion starts; it raises
        ValidationError if there is none (an unknown segment).
        """
        step = Step()
        if state is None:
            return None, step
        if state.purge_at is not None and timestamp >= state.purge_at:
            step.clear = True
            return None, step
        c = state.campaign
        if (c is None or state.phase not in LIVE_PHASES or state.next_tick_at is None
                or timestamp < state.next_tick_at):
            return state, step  # a stale tick (cancelled, or replaced by a later one)
        if c.is_expired(now):
            state.phase, state.next_tick_at = EXPIRED, None
            step.events.append(self._event(state, EXPIRED, now, (
                f"campaign expired after expanding {state.cursor}/{state.total} "
                f"(expires_at {_iso(c.expires_at)}): the rest is not sent")))
            return state, step
        if state.phase == WAITING:
            if not self._start(state, step, now, open_audience):
                return state, step
        count = min(self.batch_size, state.total - state.cursor)
        if count > 0:
            step.batch = (state.cursor, count)
            state.cursor += count
        if state.cursor >= state.total:
            state.phase, state.next_tick_at = DONE, None
            step.events.append(self._event(state, states.ACCEPTED, now, (
                f"expanded {state.cursor}/{state.total}: expansion complete")))
            return state, step
        if now - state.last_progress_at >= self.progress_interval_ms:
            state.last_progress_at = now
            step.events.append(self._event(state, states.ACCEPTED, now,
                                           f"expanded {state.cursor}/{state.total}"))
        state.next_tick_at = max(now + self.tick_ms, timestamp + 1)
        step.timers.append(state.next_tick_at)
        return state, step

    def fail(self, state: Expansion, now: int, reason: str) -> Step:
        """The expansion cannot go on (no audience, unreadable file): one ``failed`` event for
        the campaign, and the campaign record dead-lettered with ``reason``."""
        step = Step()
        state.phase, state.next_tick_at = FAILED, None
        step.events.append(self._event(state, states.FAILED, now, reason))
        if state.campaign is not None:
            step.dead_letters.append((state.campaign.to_dict(), reason))
        return step

    # ---- helpers

    def _start(self, state: Expansion, step: Step, now: int,
               open_audience: Callable[[Campaign], AudienceSource]) -> bool:
        c = state.campaign
        try:
            source = open_audience(c)
            room = self.max_id_length - len(c.campaign_id) - len(RECIPIENT_SEPARATOR)
            if source.max_id_length > room:
                raise ValidationError(
                    f"segment {c.audience.segment!r} has user ids of up to "
                    f"{source.max_id_length} characters; with campaign id {c.campaign_id!r} "
                    f"recipient ids may have at most {room}", "audience.segment")
        except ValidationError as exc:
            failed = self.fail(state, now, exc.message)
            step.events.extend(failed.events)
            step.dead_letters.extend(failed.dead_letters)
            return False
        state.phase, state.source, state.total = RUNNING, source.path, source.total
        state.last_progress_at = now
        what = (f"segment {c.audience.segment!r}" if c.audience.segment is not None
                else "the inline audience")
        step.events.append(self._event(state, states.ACCEPTED, now,
                                       f"expanding {state.total} recipients of {what}"))
        return True

    def _purge_later(self, state: Expansion, step: Step, now: int) -> None:
        until = max(now, state.campaign.expires_at) if state.campaign is not None else now
        state.purge_at = until + self.retention_ms
        step.timers.append(state.purge_at)

    @staticmethod
    def _event(state: Expansion, st: str, now: int, detail: str) -> dict:
        """A campaign-level Status event (id = campaign id). Its ``at`` only grows per campaign,
        so the audit store (which files an event under its ``at``) keeps every one."""
        at = max(now, state.last_event_at + 1)
        state.last_event_at = at
        return {"id": state.campaign_id, "tenant_id": state.tenant_id,
                "priority": states.PROMOTIONAL, "state": st, "attempt": 0, "at": at,
                "detail": detail, "campaign_id": state.campaign_id,
                "expanded": state.cursor, "total": state.total, "expansion": state.phase}


# ---------------------------------------------------------------- status (GET /v1/campaigns)

# The states a campaign moves through, as the API shows them.
C_ACCEPTED, C_EXPANDING, C_SENDING, C_COMPLETED = "accepted", "expanding", "sending", "completed"
C_CANCELLED, C_EXPIRED, C_FAILED = CANCELLED, EXPIRED, FAILED
# A recipient's final states: it counts under the latest of them, once.
RECIPIENT_FINAL = (states.DELIVERED, states.FAILED, states.EXPIRED, states.CANCELLED,
                   states.OPTED_OUT)
CAMPAIGN_STATES = (C_ACCEPTED, C_EXPANDING, C_SENDING, C_COMPLETED, C_CANCELLED, C_EXPIRED,
                   C_FAILED)
# The keys of ``campaign_status``'s progress, in its order.
PROGRESS_FIELDS = ("expanded", "total", *RECIPIENT_FINAL, "pending", "sent")


def phase_of(event: Mapping) -> str | None:
    """The expansion phase a campaign-level event reports: its ``expansion`` field, or for
    events written before it existed, read from ``state`` and ``detail``."""
    phase = event.get("expansion")
    if isinstance(phase, str) and phase in (WAITING, RUNNING, DONE, CANCELLED, EXPIRED, FAILED):
        return phase
    st, detail = event.get("state"), event.get("detail") or ""
    if st in (CANCELLED, EXPIRED, FAILED):
        return st
    if st != states.ACCEPTED:
        return None
    if detail.endswith("expansion complete"):
        return DONE
    return RUNNING if detail.startswith("expand") else WAITING


def campaign_status(*, phase: str | None, expansion_done: bool, expanded: int, recipients: int,
                    finals: Mapping[str, int], cancel_requested: bool = False,
                    total: int = 0) -> tuple[str, dict]:
    """(state, progress) of a campaign, from what the audit store counted.

    ``expanded`` is what the expansion reported handing on; ``recipients`` the distinct
    recipients with a status event (one can be filed before the expansion's progress event,
    so the larger counts); ``finals`` per final state, each recipient under its latest final
    state only. ``completed``: expanded to the end and every recipient has a final state.
    """
    expanded = max(expanded, recipients)
    counts = {name: max(0, int(finals.get(name, 0))) for name in RECIPIENT_FINAL}
    pending = max(0, expanded - sum(counts.values()))
    progress = {"expanded": expanded, "total": max(total, expanded), **counts,
                "pending": pending, "sent": counts[states.DELIVERED]}
    all_final = expansion_done and pending == 0
    if phase == FAILED:
        state = C_FAILED
    elif phase == CANCELLED or cancel_requested:
        # a cancel after everything had its final state changed nothing
        state = C_COMPLETED if all_final and not counts[states.CANCELLED] else C_CANCELLED
    elif phase == EXPIRED:
        state = C_EXPIRED
    elif expansion_done:
        state = C_COMPLETED if all_final else C_SENDING
    elif phase == RUNNING or expanded:
        state = C_EXPANDING
    else:
        state = C_ACCEPTED
    return state, progress
