"""Delivery receipts: what the providers report after they accepted a message, and dead contacts.

Plain Python (no HTTP server, no Redis, no Kafka), used by the API's receipt endpoints
(``herald_api.receipts``), the status consumer that removes dead contacts and the mocks that
send the receipts:

- Twilio's status callback: a form POST to the message's ``StatusCallback`` URL, signed with
  ``X-Twilio-Signature`` = base64(HMAC-SHA1(auth token, URL + each POST parameter's name and
  value, sorted by name)). Only the final statuses are receipts: ``delivered`` →
  ``delivered_to_handset``; ``undelivered``/``failed`` → ``bounced`` (a dead number when the
  ``ErrorCode`` says so).
- SendGrid's Event Webhook: a JSON array of events; ``delivered`` → ``delivered_to_handset``;
  ``bounce`` and ``dropped`` → ``bounced`` (a dead address for a hard bounce or a drop for a
  bounced/invalid address). ``sg_message_id`` is the ``X-Message-Id`` of the send plus a
  ``.filter...`` suffix. SendGrid signs its events with ECDSA (``X-Twilio-Email-Event-Webhook-
  Signature``, over the ``...-Timestamp`` header and the body): checked when the account's
  verification key is configured; a shared secret in the webhook URL (``?token=``) as well.

A receipt names the provider's message id; Herald maps it to (tenant, notification id) with the
index the audit consumer keeps from the ``provider_message_id`` of each ``delivered`` event
(``message_key``), falling back to the ids the provider echoes (Twilio: the callback URL's
``herald_id`` and ``tenant_id``; SendGrid: ``custom_args``).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from herald import states
from herald.errors import ValidationError

CONTACT_OF_CHANNEL = {states.PUSH: "push_token", states.SMS: "phone", states.EMAIL: "email"}
TWILIO = "twilio"
SENDGRID = "sendgrid"

# Twilio's final message statuses; the others (queued, sending, sent, ...) are progress.
TWILIO_FINAL = {"delivered": states.DELIVERED_TO_HANDSET, "undelivered": states.BOUNCED,
                "failed": states.BOUNCED}
# ErrorCodes of an undelivered/failed message that mean the number itself is dead
# (https://www.twilio.com/docs/api/errors). 30003 (handset unreachable: off, no signal) is not.
TWILIO_DEAD_NUMBER = {21211: "invalid 'To' number", 21614: "'To' is not a mobile number",
                      30005: "unknown destination handset", 30006: "landline or unreachable carrier"}
SENDGRID_FINAL = {"delivered": states.DELIVERED_TO_HANDSET, "bounce": states.BOUNCED,
                  "dropped": states.BOUNCED}
# a `dropped` for these reasons is an address that bounced before or never existed
SENDGRID_DEAD_DROP = frozenset({"Bounced Address", "Invalid"})


def contact_sha1(value: str) -> str:
    """How a dead contact travels on the status topic (Redis's ``redis.sha1hex`` matches it)."""
    return hashlib.sha1(value.encode("utf-8")).hexdigest()


def message_key(provider: str, message_id: str) -> str:
    """Redis key of the index: the provider's message id → the notification (JSON)."""
    return f"herald:msgid:{provider}:{message_id}"


@dataclass(frozen=True, slots=True)
class Receipt:
    """One provider receipt, before it is matched to a notification."""
    provider: str
    message_id: str
    state: str
    at: int | None                # the provider's time (epoch ms), when it gives one
    detail: str
    to: str | None = None         # the recipient as the provider names it
    dead: bool = False            # the recipient's number or address is dead
    herald_id: str | None = None  # the ids the provider echoed back, if any
    tenant_id: str | None = None


# ---------------------------------------------------------------- Twilio

def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """``X-Twilio-Signature`` of a form POST to ``url`` (the full URL, query included)."""
    payload = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def twilio_signature_ok(auth_token: str, url: str, params: Mapping[str, str],
                        signature: str | None) -> bool:
    if not signature or not auth_token:
        return False
    return hmac.compare_digest(twilio_signature(auth_token, url, params), signature)


def twilio_receipt(form: Mapping[str, str], query: Mapping[str, str]) -> Receipt | None:
    """A status callback as a Receipt; None for a progress status (queued, sent, ...)."""
    sid = form.get("MessageSid") or form.get("SmsSid")
    status = form.get("MessageStatus") or form.get("SmsStatus")
    if not sid or not status:
        raise ValidationError("a Twilio status callback needs MessageSid and MessageStatus",
                              "MessageSid" if not sid else "MessageStatus")
    state = TWILIO_FINAL.get(status)
    if state is None:
        return None
    code_text = form.get("ErrorCode") or ""
    code = int(code_text) if code_text.isascii() and code_text.isdigit() else None
    dead = code in TWILIO_DEAD_NUMBER
    detail = f"twilio: {status}"
    if code is not None:
        detail += f" (error {code}" + (f": {TWILIO_DEAD_NUMBER[code]})" if dead else ")")
    return Receipt(TWILIO, sid, state, None, detail, form.get("To"), dead,
                   query.get("herald_id"), query.get("tenant_id"))


# ---------------------------------------------------------------- SendGrid

def sendgrid_receipts(events: Any) -> list[Receipt]:
    """The receipts of one Event Webhook POST (other event types are left out)."""
    if not isinstance(events, list):
        raise ValidationError("a SendGrid event webhook body is a JSON array of events", None)
    out = []
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise ValidationError(f"event {i} is not an object", f"{i}")
        kind = event.get("event")
        state = SENDGRID_FINAL.get(kind) if isinstance(kind, str) else None
        if state is None:
            continue
        sg_id = event.get("sg_message_id")
        if not isinstance(sg_id, str) or not sg_id:
            raise ValidationError(f"event {i} has no sg_message_id", f"{i}.sg_message_id")
        reason = event.get("reason") if isinstance(event.get("reason"), str) else None
        if kind == "bounce":
            dead = event.get("type", "bounce") == "bounce"  # "blocked" is a temporary refusal
        else:
            dead = kind == "dropped" and reason in SENDGRID_DEAD_DROP
        detail = f"sendgrid: {kind}" + (f" ({reason})" if reason else "")
        ts = event.get("timestamp")
        at = int(ts * 1000) if isinstance(ts, (int, float)) and not isinstance(ts, bool) \
            else None
        email = event.get("email")
        hid, tenant = event.get("herald_id"), event.get("tenant_id")
        out.append(Receipt(SENDGRID, sg_id.split(".", 1)[0], state, at, detail,
                           email if isinstance(email, str) else None, dead,
                           hid if isinstance(hid, str) else None,
                           tenant if isinstance(tenant, str) else None))
    return out


SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"


def sendgrid_signature_ok(public_key_b64: str, signature_b64: str | None,
                          timestamp: str | None, body: bytes) -> bool:
    """SendGrid's signed Event Webhook: ECDSA P-256 / SHA-256 over the timestamp header's
    text followed by the raw body; the key and the signature are base64 DER."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    if not signature_b64 or not timestamp:
        return False
    try:
        key = serialization.load_der_public_key(base64.b64decode(public_key_b64))
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        key.verify(base64.b64decode(signature_b64, validate=True),
                   timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError, TypeError):  # binascii.Error is a ValueError
        return False


def secret_ok(expected: str, given: str | None) -> bool:
    """A shared secret compared in constant time; no secret configured accepts anything."""
    if not expected:
        return True
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


# ---------------------------------------------------------------- matched to a notification

def receipt_status(receipt: Receipt, meta: Mapping[str, Any], now_ms: int) -> dict:
    """The Status event of a matched receipt. ``meta`` is the index entry (or the audit
    record): id, tenant_id, user_id, priority, channel, campaign_id, attempt, at (when the
    provider accepted it). Its ``at`` is the provider's time, never before that acceptance,
    so the audit's latest state is the receipt; a redelivered SendGrid event lands on the same
    time and is stored once."""
    accepted_at = int(meta.get("at") or 0)
    at = max(receipt.at if receipt.at is not None else now_ms, accepted_at + 1)
    event = {"id": meta["id"], "tenant_id": meta["tenant_id"], "user_id": meta.get("user_id"),
             "priority": meta.get("priority"), "channel": meta.get("channel"),
             "provider": receipt.provider, "state": receipt.state, "attempt": meta.get("attempt"),
             "at": at, "detail": receipt.detail, "campaign_id": meta.get("campaign_id"),
             "provider_message_id": receipt.message_id}
    return {k: v for k, v in event.items() if v is not None and v != ""}


def token_invalid_status(cause: Mapping[str, Any], contact: str, removed: bool,
                         why: str) -> dict:
    """The ``token_invalid`` event after a dead contact was looked for in the user record;
    ``cause`` is the event that named it: same id and attempt, 1 ms after it (listed after
    its cause; a replay of the cause gives the same event, stored once)."""
    what = (f"{contact} removed from user {cause.get('user_id')!r}" if removed else
            f"{contact} not in the user record (already removed, replaced, or given inline)")
    event = {k: cause.get(k) for k in ("id", "tenant_id", "user_id", "priority", "channel",
                                       "provider", "attempt", "at", "campaign_id")}
    event.update(state=states.TOKEN_INVALID, at=int(cause["at"]) + 1, detail=f"{what}: {why}",
                 invalid_contact=contact)
    return {k: v for k, v in event.items() if v is not None and v != ""}


def index_entry(event: Mapping[str, Any]) -> dict:
    """What the message-id index keeps of a ``delivered`` event."""
    return {k: event[k] for k in ("id", "tenant_id", "user_id", "priority", "channel", "attempt",
                                  "at", "campaign_id") if event.get(k) is not None}


def dead_contacts(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The events of a batch that name a dead contact to remove (``invalid_contact``)."""
    return [e for e in events if e.get("invalid_contact") in CONTACT_OF_CHANNEL.values()
            and isinstance(e.get("contact_sha1"), str) and e.get("user_id")
            and e.get("state") != states.TOKEN_INVALID]
