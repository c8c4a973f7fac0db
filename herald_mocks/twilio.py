"""Twilio Programmable Messaging mock: ``POST /2010-04-01/Accounts/{sid}/Messages.json``.

Form body (``To``, ``From``, ``Body``, ``StatusCallback``, ``ValidityPeriod``), HTTP basic
auth, a ``201`` Message resource with status ``queued``, and Twilio's error body
``{"code", "message", "more_info", "status"}``. Herald's id is read from the ``herald_id``
query parameter of ``StatusCallback``.

With ``callbacks`` on, each accepted message gets Twilio's status callbacks, form-encoded POSTs
to its ``StatusCallback`` (or the config's ``callback_url``): ``sent``, then ``delivered``, or
``undelivered`` with ``ErrorCode`` 30005 (unknown destination handset) for a number in
``bounce``; signed with ``X-Twilio-Signature`` under the auth token of the send's basic auth.
"""
from __future__ import annotations

import base64
import binascii
import itertools
import random
import re
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson

from herald.receipts import twilio_signature
from herald_mocks.core import (Callback, MockProvider, Parsed, Reply, Request, json_reply,
                               now_epoch_ms)

PATH_RE = re.compile(r"^/2010-04-01/Accounts/(AC[0-9A-Za-z]{1,64})/Messages\.json$")
E164_RE = re.compile(r"^\+[1-9]\d{1,14}$")
ALPHA_SENDER_RE = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
MAX_BODY_CHARS = 1600


def twilio_error(status: int, code: int, message: str, headers: tuple = ()) -> Reply:
    return json_reply(status, {"code": code, "message": message,
                               "more_info": f"https://www.twilio.com/docs/errors/{code}",
                               "status": status}, headers, code=str(code))


UNAVAILABLE = twilio_error(503, 20503, "Service Unavailable")
INTERNAL = twilio_error(500, 20500, "An internal server error has occurred")
UNAUTHORIZED = twilio_error(401, 20003, "Authenticate")


def _rfc2822(now_ms: int) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(now_ms / 1000))


class TwilioMock(MockProvider):
    name = "twilio"

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._boot = now_epoch_ms()

    def parse(self, req: Request) -> Parsed:
        m = PATH_RE.match(req.path)
        if not m:
            return Parsed(error=twilio_error(404, 20404, f"The requested resource {req.path} "
                                                         "was not found"), reason="not_found")
        if req.method != "POST":
            return Parsed(error=twilio_error(405, 20004, "Method not allowed"),
                          reason="bad_method")
        try:
            form = {k: v[0] for k, v in parse_qs(req.body.decode("utf-8"),
                                                  keep_blank_values=True).items()}
        except UnicodeDecodeError:
            form = {}
        callback = form.get("StatusCallback")
        herald_id = None
        if callback:
            herald_id = parse_qs(urlsplit(callback).query).get("herald_id", [None])[0]
        to = form.get("To")
        parsed = Parsed(herald_id, to, {"account_sid": m.group(1), "request": form})
        error = self._auth(req.headers.get("authorization", "")) or self._validate(form)
        if error is not None:
            parsed.error = error
            parsed.reason = "unauthorized" if error.status == 401 else "bad_request"
        return parsed

    def receipts(self, req: Request, parsed: Parsed, message_id: str, now_ms: int,
                 bounced: bool, callback_url: str | None) -> list[Callback]:
        form = parsed.info["request"]
        url = callback_url or form.get("StatusCallback")
        if not url:
            return []
        token = self._password(req.headers.get("authorization", "")) or ""
        common = {"MessageSid": message_id, "SmsSid": message_id,
                  "AccountSid": parsed.info["account_sid"], "From": form.get("From", ""),
                  "To": parsed.to or "", "ApiVersion": "2010-04-01"}
        out = []
        for status in ("sent", "undelivered" if bounced else "delivered"):
            params = {**common, "MessageStatus": status, "SmsStatus": status}
            if status == "undelivered":
                params["ErrorCode"] = "30005"
            out.append(Callback(url, urlencode(params).encode(), {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": twilio_signature(token, url, params),
                "I-Twilio-Idempotency-Token": f"{message_id}-{status}"}))
        return out

    @staticmethod
    def _password(header: str) -> str | None:
        try:
            decoded = base64.b64decode(header.partition(" ")[2], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None

    @staticmethod
    def _auth(header: str) -> Reply | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return UNAUTHORIZED
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return UNAUTHORIZED
        return None if user and sep and password else UNAUTHORIZED

    @staticmethod
    def _validate(form: dict) -> Reply | None:
        to = form.get("To")
        if not to:
            return twilio_error(400, 21604, "A 'To' phone number is required.")
        if not E164_RE.match(to):
            return twilio_error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        sender = form.get("From")
        if not sender and not form.get("MessagingServiceSid"):
            return twilio_error(400, 21603, "A 'From' phone number is required.")
        if sender and not (E164_RE.match(sender) or ALPHA_SENDER_RE.match(sender)):
            return twilio_error(400, 21212, f"Invalid From Number: {sender}")
        body = form.get("Body")
        if not body and not form.get("MediaUrl"):
            return twilio_error(400, 21602, "Message body is required.")
        if body and len(body) > MAX_BODY_CHARS:
            return twilio_error(400, 21617,
                                "The concatenated message body exceeds the 1600 character limit.")
        validity = form.get("ValidityPeriod")
        if validity is not None:
            if not validity.isdigit() or int(validity) < 1:
                return twilio_error(400, 90014, "Validity Period should be positive integer")
            if int(validity) > 36000:
                return twilio_error(400, 90007, "Invalid validity period value")
        callback = form.get("StatusCallback")
        if callback and urlsplit(callback).scheme not in ("http", "https"):
            return twilio_error(400, 21609, "Invalid StatusCallback")
        return None

    def unavailable(self) -> Reply:
        return UNAVAILABLE

    def throttled(self, retry_after_s: int, quota: int, reset_epoch_s: int) -> Reply:
        return twilio_error(429, 20429, "Too Many Requests",
                            (("Retry-After", str(retry_after_s)),))

    def failure(self, rng: random.Random) -> Reply:
        return UNAVAILABLE if rng.random() < 0.5 else INTERNAL

    def invalid(self, parsed: Parsed, now_ms: int) -> Reply:
        return twilio_error(400, 21211, f"Invalid 'To' Phone Number: {parsed.to}")

    def accept(self, parsed: Parsed, seq: int, now_ms: int) -> tuple[Reply, str]:
        sid = f"SM{self._boot:016x}{next(self._ids):016x}"
        account = parsed.info["account_sid"]
        form = parsed.info["request"]
        body = form.get("Body", "")
        date = _rfc2822(now_ms)
        uri = f"/2010-04-01/Accounts/{account}/Messages/{sid}"
        resource = {
            "account_sid": account, "api_version": "2010-04-01", "body": body,
            "date_created": date, "date_sent": None, "date_updated": date,
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": form.get("From"), "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": str(1 if len(body) <= 160 else -(-len(body) // 153)),
            "price": None, "price_unit": "USD", "sid": sid, "status": "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"}, "to": parsed.to,
            "uri": f"{uri}.json"}
        return Reply(201, orjson.dumps(resource)), sid
