"""The API's request bodies and answers as typed models (pydantic).

A handler validates a body with its model first, then hands the same dict to the domain reader
(``herald.models``, ``herald.campaigns``, ``herald.users``, ...), which the Kafka path uses too
and which stays the last judge: the API never takes what the pipeline would dead-letter.
``herald_api.openapi`` builds the document's schemas from these models, so what it documents
is what is checked.

The models are as strict as the readers and no stricter: JSON types without coercion, unknown
fields refused where the API refuses them, ``null`` taken for an optional field as the readers
take it. Limits, patterns and enums come from the readers' constants. Rules a schema cannot
state stay with the readers alone (an id's printable characters, a template's ``{{fields}}``,
``send_at`` before ``expires_at``); descriptions say them.
"""
from typing import Annotated, Any, ClassVar, Literal, Mapping

import pydantic
from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from herald import states
from herald.campaigns import (CAMPAIGN_ID_PATTERN, CAMPAIGN_STATES, RECIPIENT_SEPARATOR,
                              SEGMENT_NAME, SEGMENT_NAME_RULE)
from herald.errors import ValidationError
from herald.models import (EMAIL_PATTERN, EMAIL_RULE, ID_PATTERN, ID_RULE, MAX_BODY_LENGTH,
                           MAX_EMAIL_LENGTH, MAX_EPOCH_MS, MAX_ID_LENGTH, MAX_PUSH_TOKEN_LENGTH,
                           MAX_TENANT_LENGTH, MAX_TITLE_LENGTH, MIN_EPOCH_MS, PHONE_PATTERN,
                           PHONE_RULE, TENANT_PATTERN, TENANT_RULE)
from herald.templates import MAX_LOCALES
from herald.users import CLOCK, LOCALE, MAX_LOCALE_LENGTH, MAX_TZ_LENGTH
from herald.webhooks import MAX_SECRET, MAX_URL_LENGTH, MIN_SECRET
from herald_api.store import ENQUEUED

NOT_BLANK = r"\S"  # JSON Schema patterns search: some character that is not whitespace


def _full(pattern: str) -> str:
    return f"^(?:{pattern})$"


def _one_of(values) -> Any:
    return Literal[tuple(sorted(values))]


# ---------------------------------------------------------------- field types

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN,
                          description=ID_RULE)]
CampaignId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH,
                                  pattern=CAMPAIGN_ID_PATTERN,
                                  description=f"{ID_RULE}, and no {RECIPIENT_SEPARATOR!r}")]
Tenant = Annotated[str, Field(min_length=1, max_length=MAX_TENANT_LENGTH, pattern=TENANT_PATTERN,
                              description=TENANT_RULE)]
Name = Annotated[str, Field(pattern=_full(SEGMENT_NAME.pattern), description=SEGMENT_NAME_RULE)]
EpochMs = Annotated[int, Field(ge=MIN_EPOCH_MS, lt=MAX_EPOCH_MS,
                               description="epoch milliseconds")]
Channel = _one_of(states.CHANNELS)
Channels = Annotated[list[Channel], Field(min_length=1, json_schema_extra={"uniqueItems": True})]
Locale = Annotated[str, Field(max_length=MAX_LOCALE_LENGTH, pattern=_full(LOCALE.pattern),
                              description="a language tag: 'en', 'pt-BR'")]
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"  # visible ASCII, no spaces
IdempotencyKey = Annotated[str, Field(pattern=IDEMPOTENCY_KEY_PATTERN,
                                      description="1-255 visible ASCII characters")]
Clock = Annotated[str, Field(pattern=_full(CLOCK.pattern),
                             description="24-hour local time, 'HH:MM' or 'HH:MM:SS'")]


def _text(max_length: int) -> Any:
    """A string of 1 to ``max_length`` characters, not all whitespace (the readers' rule)."""
    return Annotated[str, Field(min_length=1, max_length=max_length, pattern=NOT_BLANK)]


class Body(BaseModel):
    """A request body: JSON types as they are (no coercion), no field the contract does not list."""
    model_config = ConfigDict(strict=True, extra="forbid")


class Answer(BaseModel):
    """An answer: Herald may add fields to it (the contract's rule), so others are allowed."""


def _needs_schema(schema: dict, cls: type["NeedsOne"]) -> None:
    schema["oneOf" if cls.exactly else "anyOf"] = [
        {"required": [name], "properties": {name: {"type": kind}}}
        for name, kind in cls.needs.items()]


class NeedsOne(Body):
    """A body that needs one of some fields (``exactly``: only one), given and not null."""
    model_config = ConfigDict(json_schema_extra=_needs_schema)
    needs: ClassVar[dict[str, str]] = {}  # field → its JSON type
    exactly: ClassVar[bool] = False

    @model_validator(mode="after")
    def _needs_one(self) -> "NeedsOne":
        given = sum(getattr(self, name) is not None for name in self.needs)
        if given == 0 or (self.exactly and given > 1):
            names = " or ".join(repr(n) for n in self.needs)
            raise ValueError(f"needs {'exactly ' if self.exactly else ''}one of {names}")
        return self


# ---------------------------------------------------------------- request bodies

class Contacts(Body):
    """Where to reach the recipient; each channel needs its contact."""
    push_token: _text(MAX_PUSH_TOKEN_LENGTH) | None = Field(
        None, description="the device's FCM or APNs token")
    platform: _one_of(states.PLATFORMS) | None = Field(
        None, description="the push token's platform: FCM for android, APNs for ios")
    phone: Annotated[str, Field(pattern=PHONE_PATTERN)] | None = Field(None,
                                                                        description=PHONE_RULE)
    email: Annotated[str, Field(min_length=3, max_length=MAX_EMAIL_LENGTH,
                                pattern=EMAIL_PATTERN)] | None = Field(None,
                                                                       description=EMAIL_RULE)


class Content(NeedsOne):
    """What is sent: a body (and title), or a stored template and its variables."""
    needs = {"body": "string", "template": "string"}
    title: _text(MAX_TITLE_LENGTH) | None = Field(None, description="the title (push, email "
                                                                    "subject)")
    body: _text(MAX_BODY_LENGTH) | None = Field(None, description="the text; needed unless "
                                                                  "'template' is given")
    data: dict[str, str] | None = Field(None, description="extra key/values for the push "
                                                          "payload (strings only)")
    template: _text(MAX_ID_LENGTH) | None = Field(
        None, description="the name of a stored template (PUT /v1/templates/{name}) to render "
                          "for the user's locale")
    vars: dict[str, Any] | None = Field(None, description="the template's {{name}} values "
                                                          "(strings or numbers)")


class Notification(Body):
    """One notification, as on herald.critical or herald.promo."""
    id: Id = Field(description=f"unique per tenant; a repeat is answered as the first: {ID_RULE}")
    tenant_id: Tenant = Field(description="the API key's tenant")
    user_id: Id = Field(description=f"the recipient; the order and dedup key: {ID_RULE}")
    priority: _one_of(states.PRIORITIES) = Field(
        description="critical: its own topics, operators and quota share; promotional: needs "
                    "expires_at")
    channels: Channels | None = Field(None, description="tried in this order, each once, "
                                                        "falling back on failure (default push)")
    to: Contacts | None = Field(None, description="the recipient's contacts; those left out come "
                                                  "from the stored user record")
    content: Content = Field(description="what is sent")
    created_at: EpochMs = Field(description="when the producer made it, epoch milliseconds")
    expires_at: EpochMs | None = Field(
        None, description="nothing is sent at or after it; later than created_at, in the "
                          "future, required for promotional (critical: created_at + the "
                          "default TTL)")
    seq: Annotated[int, Field(ge=0)] | None = Field(
        None, description="the producer's order of this user's notifications, if it keeps one")
    campaign_id: Id | None = Field(None, description="the campaign it belongs to, if any")
    send_at: EpochMs | None = Field(None, description="not sent before this epoch ms")


class Audience(NeedsOne):
    """Who gets a campaign: exactly one of 'segment' or 'user_ids'."""
    needs, exactly = {"segment": "string", "user_ids": "array"}, True
    segment: Name | None = Field(None, description="a stored segment's name "
                                                   "(PUT /v1/segments/{name})")
    user_ids: Annotated[list[Id], Field(min_length=1, json_schema_extra={"uniqueItems": True})] \
        | None = Field(None, description="the recipients, each once; '{campaign_id}:{user_id}' "
                                         f"must fit in {MAX_ID_LENGTH} characters")


class Campaign(Body):
    """A campaign, as on herald.campaigns: one notification per recipient, ids
    '{campaign_id}:{user_id}'."""
    campaign_id: CampaignId = Field(description="unique per tenant; a repeat is answered as the "
                                                f"first: {ID_RULE}, and no ':'")
    tenant_id: Tenant = Field(description="the API key's tenant")
    audience: Audience = Field(description="who gets it")
    channels: Channels = Field(description="tried in this order for each recipient")
    content: Content = Field(description="what is sent to each recipient")
    created_at: EpochMs = Field(description="when the producer made it, epoch milliseconds")
    expires_at: EpochMs = Field(description="later than created_at and in the future: an expired "
                                            "campaign is 422")
    send_at: EpochMs | None = Field(None, description="not sent before it; earlier than "
                                                      "expires_at")


class QuietHours(Body):
    """A daily period in the user's time zone when promotional notifications wait."""
    start: Clock = Field(description="when it starts, local time")
    end: Clock = Field(description="when it ends, local time; earlier than start spans "
                                   "midnight; not equal to start")
    tz: _text(MAX_TZ_LENGTH) = Field(description="an IANA time zone, e.g. 'Europe/Berlin'")


class User(Body):
    """A user record (PUT replaces it whole)."""
    tenant_id: Tenant | None = Field(None, description="the API key's tenant, if given")
    user_id: Id | None = Field(None, description="the path's user id, if given")
    contacts: Contacts | None = Field(None, description="push token and platform, phone, email")
    locale: Locale | None = Field(None, description="the user's language, for templates")
    opt_outs: Annotated[list[Channel], Field(json_schema_extra={"uniqueItems": True})] | None = \
        Field(None, description="channels the user is never reached on")
    quiet_hours: QuietHours | None = Field(None, description="when promotional notifications "
                                                             "wait")


class Segment(Body):
    """A segment: a named list of user ids (PUT replaces it whole)."""
    tenant_id: Tenant | None = Field(None, description="the API key's tenant, if given")
    name: str | None = Field(None, description="the path's name, if given")
    user_ids: Annotated[list[Id], Field(json_schema_extra={"uniqueItems": True})] = Field(
        description="the members, each once, in order (may be empty)")


class TemplateVariant(NeedsOne):
    """One locale's text; a field it leaves out comes from its language, then the default."""
    needs = {"title": "string", "body": "string"}
    title: _text(MAX_TITLE_LENGTH) | None = Field(
        None, description="text with {{name}} fields; \\{{ writes a literal {{")
    body: _text(MAX_BODY_LENGTH) | None = Field(
        None, description="text with {{name}} fields; \\{{ writes a literal {{; the default "
                          "locale's variant needs one")


class Template(Body):
    """A content template: a variant per locale, rendered for each user's locale."""
    tenant_id: Tenant | None = Field(None, description="the API key's tenant, if given")
    name: str | None = Field(None, description="the path's name, if given")
    default_locale: str = Field(description="one of the keys of 'locales'; its variant needs "
                                            "a body")
    locales: Annotated[dict[Locale, TemplateVariant],
                       Field(min_length=1, max_length=MAX_LOCALES)] = Field(
        description="locale ('en', 'pt-BR') → its variant")


class Webhook(Body):
    """The tenant's webhook: each final status is POSTed there, signed."""
    url: Annotated[str, Field(max_length=MAX_URL_LENGTH, json_schema_extra={"format": "uri"})] = \
        Field(description="an http(s) URL with a host; not a private address unless "
                          "webhook_allow_private")
    secret: Annotated[str, Field(min_length=MIN_SECRET, max_length=MAX_SECRET)] = Field(
        description="printable characters; the HMAC-SHA256 key of X-Herald-Signature")
    tenant_id: Tenant | None = Field(None, description="the API key's tenant, if given")


# The providers' receipts are their formats, not Herald's: these two models describe them for
# the document; the handlers check the provider's signature and read them with
# herald.receipts, as loosely as a provider's changes need.

class TwilioStatusCallback(BaseModel):
    """Twilio's status callback (form fields; others are allowed)."""
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, str]
    MessageSid: str = Field(None, description="the message's id at Twilio")
    MessageStatus: str = Field(None, description="delivered, undelivered, failed (final); "
                                                 "others are progress")
    ErrorCode: str = Field(None, description="Twilio's error code, for a failure")
    To: str = Field(None, description="the recipient's number")
    From: str = Field(None, description="the sending number")
    AccountSid: str = Field(None, description="the Twilio account")


class SendGridEvent(BaseModel):
    """One event of SendGrid's Event Webhook (other fields are allowed)."""
    event: str = Field(None, description="delivered, bounce, dropped (final); others are "
                                         "left out")
    sg_message_id: str = Field(None, description="the message's id at SendGrid")
    email: str = Field(None, description="the recipient")
    timestamp: float = Field(None, description="unix seconds")
    reason: str = Field(None, description="why it bounced or was dropped")
    type: str = Field(None, description="bounce or blocked (a temporary refusal)")
    herald_id: str = Field(None, description="the notification id (a custom arg Herald sends)")
    tenant_id: str = Field(None, description="the tenant (a custom arg Herald sends)")


class SendGridEvents(RootModel[list[SendGridEvent]]):
    """The body of one Event Webhook call."""


# ---------------------------------------------------------------- answers

class ErrorDetail(Answer):
    """What went wrong."""
    code: str = Field(description="what kind of error: invalid, missing_field, not_found, ...")
    message: str = Field(description="what is wrong, for a person")
    field: str | None = Field(description="the field at fault as a dotted path ('to.phone'), a "
                                          "header or a path parameter; null if none")


class Error(Answer):
    """Every answer other than a success."""
    error: ErrorDetail = Field(description="the error")


class NotificationAccepted(Answer):
    """The notification is on its topic (or this repeats the first answer)."""
    id: str = Field(description="the notification's id")


class CampaignAccepted(Answer):
    """The campaign is on herald.campaigns (or this repeats the first answer)."""
    campaign_id: str = Field(description="the campaign's id")


class CancelAccepted(Answer):
    """The cancel is in force for delivery and on herald.control."""
    campaign_id: str = Field(description="the campaign's id")
    cancel_requested_at: int = Field(description="when the cancel was put in force, epoch ms")


class StatusEvent(Answer):
    """One status event of herald.status, as the audit consumer stored it."""
    id: str = Field(description="the notification's id")
    tenant_id: str = Field(description="its tenant")
    user_id: str = Field(None, description="its recipient (not on a campaign's own events)")
    priority: str = Field(None, description="critical or promotional")
    channel: str = Field(None, description="the channel tried")
    provider: str = Field(None, description="the provider called")
    state: _one_of(states.STATES) = Field(description="what happened")
    attempt: int = Field(None, description="the attempt on this channel, from 1")
    at: int = Field(description="when, epoch ms")
    latency_ms: int = Field(None, description="the provider call's time")
    detail: str = Field(None, description="the provider's answer or Herald's reason")
    campaign_id: str = Field(None, description="the campaign it belongs to, if any")


class NotificationStatus(Answer):
    """A notification's latest state and every status event."""
    id: str = Field(description="the notification's id")
    tenant_id: str = Field(description="its tenant")
    user_id: str | None = Field(description="its recipient, once known")
    priority: str | None = Field(description="critical or promotional, once known")
    campaign_id: str = Field(None, description="the campaign it belongs to, if any")
    state: _one_of({ENQUEUED, *states.STATES}) = Field(
        description=f"the latest status event's state; '{ENQUEUED}' before the first")
    updated_at: int | None = Field(description="the latest event's time, epoch ms")
    enqueued_at: int | None = Field(description="when the API enqueued it (null if written to "
                                                "Kafka directly)")
    attempts: list[StatusEvent] = Field(description="every status event, oldest first")


def _count(description: str) -> Any:
    return Field(ge=0, description=description)


class Progress(Answer):
    """A campaign's recipients by where they are (the keys of ``campaign_status``)."""
    expanded: int = _count("recipients the expansion handed on")
    total: int = _count("the audience's size, once the expansion started")
    delivered: int = _count("recipients whose latest final state is delivered")
    failed: int = _count("... failed")
    expired: int = _count("... expired")
    cancelled: int = _count("... cancelled")
    opted_out: int = _count("... opted_out")
    pending: int = _count("expanded, without a final state yet")
    sent: int = _count("delivered (an older name)")


class CampaignProgress(Answer):
    """A campaign's state and progress."""
    campaign_id: str = Field(description="the campaign's id")
    tenant_id: str = Field(description="its tenant")
    state: _one_of(CAMPAIGN_STATES) = Field(
        description="accepted -> expanding -> sending -> completed (every expanded recipient "
                    "has a final state), or cancelled, expired (before the audience was "
                    "expanded to its end), failed (the expansion could not go on)")
    progress: Progress = Field(description="recipients by where they are")
    states: dict[str, int] = Field(description="distinct recipients that reached each state")
    accepted_at: int = Field(None, description="when the API accepted it, epoch ms")
    created_at: int = Field(None, description="its created_at")
    expires_at: int = Field(None, description="its expires_at")
    send_at: int = Field(None, description="its send_at")
    cancel_requested_at: int = Field(None, description="when a cancel was put in force")
    audience: dict[str, Any] = Field(None, description="{'segment': name} or {'user_ids': count}")


class UserStored(Answer):
    """A stored user record."""
    user_id: str = Field(description="the user's id")
    tenant_id: str = Field(description="its tenant")
    contacts: Contacts = Field(description="its contacts")
    locale: str = Field(None, description="its language")
    opt_outs: list[str] = Field(description="channels never used")
    quiet_hours: QuietHours = Field(None, description="when promotional notifications wait")
    updated_at: int = Field(description="when it was stored, epoch ms")


class SegmentStored(Answer):
    """A stored segment's size."""
    name: str = Field(description="the segment's name")
    tenant_id: str = Field(description="its tenant")
    count: int = _count("its members")
    updated_at: int = Field(description="when it was stored, epoch ms")


class TemplateStored(Answer):
    """A stored template."""
    name: str = Field(description="the template's name")
    tenant_id: str = Field(description="its tenant")
    default_locale: str = Field(description="its default locale")
    locales: dict[str, dict[str, str]] = Field(description="locale → {'title', 'body'}")
    updated_at: int = Field(description="when it was stored, epoch ms")


class WebhookStored(Answer):
    """The tenant's webhook (never its secret)."""
    tenant_id: str = Field(description="the tenant")
    url: str = Field(description="where final statuses are POSTed")
    updated_at: int = Field(description="when it was stored, epoch ms")


class ReceiptsRecorded(Answer):
    """How many receipts the call carried."""
    receipts: int = _count("receipts taken from the call (written or unmatched)")


class Health(Answer):
    """The process serves."""
    status: Literal["ok"] = Field(description="always 'ok' while the process serves")


# ---------------------------------------------------------------- validation

def check(model: type[BaseModel], obj: Mapping) -> None:
    """Validate a body with its model; a ``ValidationError`` naming the first problem's field
    as a dotted path (a list is named, not its item: ``channels``, as the readers do)."""
    try:
        model.model_validate(obj)
    except pydantic.ValidationError as exc:
        raise problem(exc.errors(include_url=False, include_input=False)[0]) from None


def problem(error: Mapping) -> ValidationError:
    """One pydantic error as Herald's: code ``missing_field`` or ``invalid``."""
    path: list[str] = []
    for part in error["loc"]:
        if isinstance(part, int):
            break
        if part != "[key]":  # a dict key's own error: the key names the field
            path.append(str(part))
    field = ".".join(path) or None
    if error["type"] == "missing":
        return ValidationError(f"missing required field '{field}'", field, "missing_field")
    if error["type"] == "extra_forbidden":
        return ValidationError(f"unknown field '{field}'", field)
    message = error["msg"].removeprefix("Value error, ")
    return ValidationError(f"'{field}': {message}" if field else message, field)


# The models the document names, request bodies first.
BODIES = (Notification, Campaign, User, Segment, Template, Webhook, TwilioStatusCallback,
          SendGridEvents)
ANSWERS = (Error, NotificationAccepted, CampaignAccepted, CancelAccepted, NotificationStatus,
           CampaignProgress, UserStored, SegmentStored, TemplateStored, WebhookStored,
           ReceiptsRecorded, Health)
