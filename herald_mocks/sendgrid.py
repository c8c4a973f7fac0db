"""SendGrid v3 mock: ``POST /v3/mail/send``, Bearer key, ``202`` with ``X-Message-Id``.

Errors are SendGrid's ``{"errors": [{"message", "field", "help"}]}``; throttling is 429 with
``X-RateLimit-Limit/Remaining/Reset``. Herald's id is read from ``custom_args.herald_id``
(top level, or the first personalization's). The recipient logged is the first ``to`` address.

With ``callbacks`` on and a ``callback_url`` (SendGrid's Event Webhook URL is set per account),
each accepted message gets one Event Webhook POST: a JSON array with its ``processed`` and
``delivered`` events, or ``bounce`` (type ``bounce``, SMTP 5.1.1) for an address in ``bounce``;
each event carries ``sg_message_id`` (``X-Message-Id`` plus a ``.filter...`` suffix), ``email``,
``timestamp`` (epoch s), ``sg_event_id`` and the message's ``custom_args`` at its top level,
signed as SendGrid signs it (ECDSA P-256 over the timestamp header and the body) with a key
the mock makes at start; its verification key is ``event_webhook_public_key`` in the stats.
"""
from __future__ import annotations

import base64
import itertools
import random
import re

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.receipts import SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP

from herald_mocks.core import (Callback, MockProvider, Parsed, Reply, Request, json_reply,
                               now_epoch_ms)

HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message."
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_BODY_BYTES = 30 * 1024 * 1024


def sendgrid_error(status: int, message: str, field: str | None = None,
                   help_anchor: str | None = None, headers: tuple = (),
                   code: str | None = None) -> Reply:
    err = {"message": message, "field": field, "help": HELP + help_anchor if help_anchor else None}
    return json_reply(status, {"errors": [err]}, headers, code=code or str(status))


UNAUTHORIZED = sendgrid_error(401, "The provided authorization grant is invalid, expired, or "
                                   "revoked", code="unauthorized")
UNAVAILABLE = sendgrid_error(503, "Service Unavailable", code="unavailable")
INTERNAL = sendgrid_error(500, "Internal Server Error", code="internal")


class SendGridMock(MockProvider):
    name = "sendgrid"

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._boot = now_epoch_ms()
        self._key: ec.EllipticCurvePrivateKey | None = None  # signs the Event Webhook

    def parse(self, req: Request) -> Parsed:
        if req.path != "/v3/mail/send":
            return Parsed(error=sendgrid_error(404, "Not Found", code="not_found"),
                          reason="not_found")
        if req.method != "POST":
            return Parsed(error=sendgrid_error(405, "Method Not Allowed", code="bad_method"),
                          reason="bad_method")
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            body = None
        herald_id = to = None
        if isinstance(body, dict):
            pers = body.get("personalizations")
            first = pers[0] if isinstance(pers, list) and pers and isinstance(pers[0], dict) \
                else {}
            args = body.get("custom_args") if isinstance(body.get("custom_args"), dict) \
                else first.get("custom_args") if isinstance(first.get("custom_args"), dict) \
                else {}
            herald_id = args.get("herald_id")
            tos = first.get("to")
            if isinstance(tos, list) and tos and isinstance(tos[0], dict):
                to = tos[0].get("email")
        parsed = Parsed(herald_id if isinstance(herald_id, str) else None,
                        to if isinstance(to, str) else None, {"request": body})
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            parsed.error, parsed.reason = UNAUTHORIZED, "unauthorized"
        elif len(req.body) > MAX_BODY_BYTES:
            parsed.error = sendgrid_error(413, "The JSON payload you have included in your "
                                               "request is too large.", code="too_large")
            parsed.reason = "bad_request"
        else:
            error = self._validate(body)
            if error is not None:
                parsed.error, parsed.reason = error, "bad_request"
        return parsed

    @staticmethod
    def _validate(body: object) -> Reply | None:
        if not isinstance(body, dict):
            return sendgrid_error(400, "Bad Request", None, None, code="bad_json")
        pers = body.get("personalizations")
        if not isinstance(pers, list) or not pers:
            return sendgrid_error(400, "The personalizations field is required and must have at "
                                       "least one personalization.", "personalizations",
                                  "personalizations")
        for i, p in enumerate(pers):
            tos = p.get("to") if isinstance(p, dict) else None
            if not isinstance(tos, list) or not tos:
                return sendgrid_error(400, "The to array is required for all personalization "
                                           "objects, and must have at least one email object "
                                           "with a valid email address.",
                                      f"personalizations.{i}.to", "personalizations.to")
            for j, addr in enumerate(tos):
                email = addr.get("email") if isinstance(addr, dict) else None
                if not isinstance(email, str) or not EMAIL_RE.match(email):
                    return sendgrid_error(400, "Does not contain a valid address.",
                                          f"personalizations.{i}.to.{j}.email",
                                          "personalizations.to")
        sender = body.get("from")
        if not isinstance(sender, dict) or not isinstance(sender.get("email"), str):
            return sendgrid_error(400, "The from object must be provided for every email send. "
                                       "It is an object that requires an email parameter, but "
                                       "may also contain a name parameter.", "from", "from")
        if not EMAIL_RE.match(sender["email"]):
            return sendgrid_error(400, "The from email does not contain a valid address.",
                                  "from.email", "from")
        has_template = bool(body.get("template_id"))
        if not has_template and not body.get("subject") and \
                not all(isinstance(p, dict) and p.get("subject") for p in pers):
            return sendgrid_error(400, "The subject is required. You can get around this "
                                       "requirement if you use a template with a subject "
                                       "defined or if every personalization has a subject "
                                       "defined.", "subject", "subject")
        content = body.get("content")
        if not has_template:
            if not isinstance(content, list) or not content:
                return sendgrid_error(400, "Unless a valid template_id is provided, the content "
                                           "parameter is required. There must be at least one "
                                           "defined content block.", "content", "content")
            for i, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str) \
                        or not block["type"]:
                    return sendgrid_error(400, "The content type cannot contain ';', or CRLF "
                                               "characters, and must be at least one character.",
                                          f"content.{i}.type", "content.type")
                if not isinstance(block.get("value"), str) or not block["value"]:
                    return sendgrid_error(400, "The content value must be a string at least one "
                                               "character in length.", f"content.{i}.value",
                                          "content.value")
        custom = body.get("custom_args")
        if custom is not None and (not isinstance(custom, dict) or
                                   not all(isinstance(v, str) for v in custom.values())):
            return sendgrid_error(400, "Custom args must be strings.", "custom_args",
                                  "custom_args")
        return None

    def unavailable(self) -> Reply:
        return UNAVAILABLE

    def throttled(self, retry_after_s: int, quota: int, reset_epoch_s: int) -> Reply:
        return sendgrid_error(429, "too many requests", headers=(
            ("Retry-After", str(retry_after_s)), ("X-RateLimit-Limit", str(quota)),
            ("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", str(reset_epoch_s))),
            code="rate_limited")

    def failure(self, rng: random.Random) -> Reply:
        return UNAVAILABLE if rng.random() < 0.5 else INTERNAL

    def invalid(self, parsed: Parsed, now_ms: int) -> Reply:
        return sendgrid_error(400, "Does not contain a valid address.",
                              "personalizations.0.to.0.email", "personalizations.to",
                              code="invalid_email")

    def receipts(self, req: Request, parsed: Parsed, message_id: str, now_ms: int,
                 bounced: bool, callback_url: str | None) -> list[Callback]:
        if not callback_url:
            return []
        body = parsed.info["request"]
        args = body.get("custom_args") if isinstance(body.get("custom_args"), dict) else {}
        base = {"email": parsed.to, "timestamp": now_ms // 1000,
                "smtp-id": f"<{message_id}@mock.sendgrid>",
                "sg_message_id": f"{message_id}.filterdrecv-mock-1-0", **args}
        last = ({"event": "bounce", "type": "bounce", "status": "5.1.1",
                 "reason": "550 5.1.1 The email account that you tried to reach does not exist."}
                if bounced else {"event": "delivered", "response": "250 OK"})
        events = [{**base, "event": "processed"}, {**base, **last}]
        for i, event in enumerate(events):
            event["sg_event_id"] = f"{message_id}-{i}"
        body = orjson.dumps(events)
        timestamp = str(now_ms // 1000)
        signature = self._signing_key().sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return [Callback(callback_url, body, {
            "Content-Type": "application/json",
            SENDGRID_SIGNATURE: base64.b64encode(signature).decode(),
            SENDGRID_TIMESTAMP: timestamp})]

    def _signing_key(self) -> ec.EllipticCurvePrivateKey:
        if self._key is None:
            self._key = ec.generate_private_key(ec.SECP256R1())
        return self._key

    def admin_info(self) -> dict:
        """The Event Webhook's verification key (base64 DER), as SendGrid's settings show it."""
        public = self._signing_key().public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return {"event_webhook_public_key": base64.b64encode(public).decode()}

    def accept(self, parsed: Parsed, seq: int, now_ms: int) -> tuple[Reply, str]:
        message_id = f"hm{self._boot:x}{next(self._ids):010x}"
        return Reply(202, b"", (("X-Message-Id", message_id),)), message_id
