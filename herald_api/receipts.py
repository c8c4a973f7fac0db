"""The providers' delivery receipts, as status events: ``POST /v1/receipts/twilio`` and
``POST /v1/receipts/sendgrid``.

These two endpoints carry no Bearer key (a provider has none): Twilio's are checked by their
``X-Twilio-Signature`` (the auth token Herald sends with), SendGrid's by their ECDSA signature
(when ``sendgrid_webhook_public_key`` is set) and the shared secret in the webhook URL
(``?token=``, when ``sendgrid_webhook_secret`` is set). A receipt is matched to
its notification by the provider's message id (the audit consumer's index of ``delivered``
events), else by the ids the provider echoes, and written to ``herald.status`` as
``delivered_to_handset`` or ``bounced``; a bounce for a dead number or address carries
``invalid_contact`` so the audit consumer removes it from the user record. A receipt whose
notification is not known yet (the audit consumer behind) is answered 409, so the provider
sends it again (SendGrid retries any non-2xx); one Herald cannot place at all is acknowledged and counted as unmatched.
"""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from aiohttp import web

from herald import states
from herald.errors import ValidationError
from herald.providers.base import credential, is_loopback
from herald.providers.exceptions import ProviderConfigError
from herald.receipts import (CONTACT_OF_CHANNEL, SENDGRID, SENDGRID_SIGNATURE,
                             SENDGRID_TIMESTAMP, TWILIO, Receipt, contact_sha1, message_key,
                             receipt_status, secret_ok, sendgrid_receipts,
                             sendgrid_signature_ok, twilio_receipt, twilio_signature_ok)
from herald.redis_conn import is_cluster
from herald.settings import Settings
from herald_api.errors import ApiError
from herald_api.metrics import ApiMetrics
from herald_api.store import audit_key

log = logging.getLogger("herald_api.receipts")

CHANNEL_OF_PROVIDER = {TWILIO: states.SMS, SENDGRID: states.EMAIL}


def twilio_signed_url(settings: Settings, raw_path: str) -> str:
    """The URL Twilio signed: the configured callback URL (what Twilio was told, whatever
    proxy sits in front of the API) with the query exactly as the request line carried it
    (percent-encoded: a campaign recipient's ``cmp:user`` id is ``cmp%3Auser`` there, and the
    decoded form would not match the signature)."""
    parts = urlsplit(settings.twilio_status_callback_url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    _, mark, query = raw_path.partition("?")
    return f"{base}?{query}" if mark else base


class Receipts:
    """Matches receipts to notifications and writes their status events."""

    def __init__(self, settings: Settings, redis, producer, clock,
                 metrics: ApiMetrics | None = None):
        self.settings = settings
        self.redis = redis
        self.producer = producer
        self.clock = clock
        self.counts = (metrics or ApiMetrics()).receipts

    async def meta(self, receipt: Receipt) -> dict | None | bool:
        """The notification a receipt is about; None if unknown for good, False if not yet."""
        raw = await self.redis.get(message_key(receipt.provider, receipt.message_id))
        if raw is not None:
            return orjson.loads(raw)
        if not (receipt.herald_id and receipt.tenant_id):
            return None
        found = await self.redis.hgetall(audit_key(receipt.tenant_id, receipt.herald_id,
                                                   is_cluster(self.redis)))
        found = {(k.decode() if isinstance(k, bytes) else k):
                 (v.decode() if isinstance(v, bytes) else v) for k, v in found.items()}
        if found.get("tenant_id") != receipt.tenant_id or not found.get("state"):
            return False  # the audit consumer has not filed its delivery yet
        return {"id": receipt.herald_id, "tenant_id": receipt.tenant_id,
                "user_id": found.get("user_id"), "priority": found.get("priority"),
                "campaign_id": found.get("campaign_id"), "at": found.get("at"),
                "channel": CHANNEL_OF_PROVIDER[receipt.provider]}

    async def record(self, receipts: list[Receipt]) -> int:
        """Write the status event of each receipt; 409 if one's notification is not filed yet
        (the others are written: a resend stores them once)."""
        later = 0
        for receipt in receipts:
            meta = await self.meta(receipt)
            if meta is False:
                later += 1
                self.counts.labels(receipt.provider, "not_filed_yet").inc()
                continue
            if meta is None:
                self.counts.labels(receipt.provider, "unmatched").inc()
                log.warning("%s receipt for unknown message %s", receipt.provider,
                            receipt.message_id)
                continue
            event = receipt_status(receipt, meta, self.clock())
            contact = CONTACT_OF_CHANNEL.get(event.get("channel", ""))
            if receipt.dead and receipt.to and contact:
                event.update(invalid_contact=contact, contact_sha1=contact_sha1(receipt.to))
            await self.producer.send("status", self.settings.topic_status, event["id"],
                                     orjson.dumps(event))
            self.counts.labels(receipt.provider, "recorded").inc()
        if later:  # 409, not a 5xx: the API answers no input with a 5xx
            raise ApiError(409, "not_filed_yet", f"{later} receipt(s) name notifications not "
                                                 "yet filed; send them again", None,
                           {"Retry-After": "1"})
        return len(receipts)


RECEIPTS = web.AppKey("receipts", Receipts)


async def post_twilio(request: web.Request) -> web.Response:
    settings = request.app[RECEIPTS].settings
    raw = await request.read()
    form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    try:
        token = credential(settings.twilio_auth_token.get_secret_value(), settings.twilio_url,
                           "twilio_auth_token")
    except ProviderConfigError as exc:
        raise ApiError(503, "unavailable", str(exc), None) from None
    url = twilio_signed_url(settings, request.raw_path)
    if not twilio_signature_ok(token, url, form, request.headers.get("X-Twilio-Signature")):
        raise ApiError(403, "forbidden", "X-Twilio-Signature does not match",
                       "X-Twilio-Signature")
    try:
        receipt = twilio_receipt(form, dict(request.query))
    except ValidationError as exc:
        raise ApiError(422, "invalid", exc.message, exc.field) from None
    count = await request.app[RECEIPTS].record([receipt]) if receipt is not None else 0
    return web.json_response({"receipts": count})


async def post_sendgrid(request: web.Request) -> web.Response:
    receipts: Receipts = request.app[RECEIPTS]
    settings = receipts.settings
    if not (settings.sendgrid_webhook_public_key or settings.sendgrid_webhook_secret
            or is_loopback(settings.sendgrid_url)):
        # unchecked receipts could strip any user's address with a forged bounce
        raise ApiError(503, "unavailable", "SendGrid receipts are refused until "
                       "sendgrid_webhook_public_key or sendgrid_webhook_secret is set", None)
    if not secret_ok(settings.sendgrid_webhook_secret.get_secret_value(),
                     request.query.get("token")):
        raise ApiError(403, "forbidden", "the webhook URL's token does not match", "token")
    raw = await request.read()
    if settings.sendgrid_webhook_public_key and not sendgrid_signature_ok(
            settings.sendgrid_webhook_public_key, request.headers.get(SENDGRID_SIGNATURE),
            request.headers.get(SENDGRID_TIMESTAMP), raw):
        raise ApiError(403, "forbidden", f"{SENDGRID_SIGNATURE} does not verify",
                       SENDGRID_SIGNATURE)
    try:
        events: Any = orjson.loads(raw)
        found = sendgrid_receipts(events)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not JSON: {exc}", None) from None
    except ValidationError as exc:
        raise ApiError(422, "invalid", exc.message, exc.field) from None
    return web.json_response({"receipts": await receipts.record(found)})


def add_routes(app: web.Application, settings: Settings, clock) -> None:
    """Register the endpoints; the matcher gets the app's Redis and producer at startup."""
    from herald_api.app import METRICS, PRODUCER, REDIS

    async def startup(app: web.Application) -> None:
        app[RECEIPTS] = Receipts(settings, app[REDIS], app[PRODUCER], clock, app[METRICS])

    app.on_startup.append(startup)
    app.router.add_post("/v1/receipts/twilio", post_twilio)
    app.router.add_post("/v1/receipts/sendgrid", post_sendgrid)
