"""Delivery receipts (herald.receipts): Twilio's signature and status callbacks, SendGrid's
Event Webhook, their status events, and the receipts the mocks send (checked by Herald's side)."""
from __future__ import annotations

import asyncio
import base64
from urllib.parse import parse_qsl

import orjson
import pytest

from herald import states
from herald.errors import ValidationError
from herald.receipts import (SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP, Receipt, contact_sha1,
                             dead_contacts, receipt_status, secret_ok, sendgrid_receipts,
                             sendgrid_signature_ok, token_invalid_status, twilio_receipt,
                             twilio_signature, twilio_signature_ok)
from herald_mocks.core import ConfigError, MockConfig, MockState, Request
from herald_mocks.sendgrid import SendGridMock
from herald_mocks.twilio import TwilioMock

# Twilio's documented request-validation example.
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
              "From": "+14158675309", "To": "+18005551212"}
DOC_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_twilio_signature_is_the_documented_one():
    assert twilio_signature("12345", DOC_URL, DOC_PARAMS) == DOC_SIGNATURE
    assert twilio_signature_ok("12345", DOC_URL, DOC_PARAMS, DOC_SIGNATURE)


@pytest.mark.parametrize("token,url,params,signature", [
    ("54321", DOC_URL, DOC_PARAMS, DOC_SIGNATURE),
    ("12345", DOC_URL + "&x=1", DOC_PARAMS, DOC_SIGNATURE),
    ("12345", DOC_URL, {**DOC_PARAMS, "Digits": "9999"}, DOC_SIGNATURE),
    ("12345", DOC_URL, DOC_PARAMS, None),
    ("", DOC_URL, DOC_PARAMS, DOC_SIGNATURE),
])
def test_twilio_signature_refuses_any_change(token, url, params, signature):
    assert not twilio_signature_ok(token, url, params, signature)


def form(status: str, **extra) -> dict:
    return {"MessageSid": "SM1", "MessageStatus": status, "To": "+15550100", **extra}


def test_twilio_statuses():
    q = {"herald_id": "n-1", "tenant_id": "acme"}
    assert twilio_receipt(form("sent"), q) is None  # progress, not a receipt
    ok = twilio_receipt(form("delivered"), q)
    assert (ok.state, ok.message_id, ok.dead, ok.herald_id, ok.tenant_id) == \
        (states.DELIVERED_TO_HANDSET, "SM1", False, "n-1", "acme")
    dead = twilio_receipt(form("undelivered", ErrorCode="30005"), q)
    assert (dead.state, dead.dead, dead.to) == (states.BOUNCED, True, "+15550100")
    assert "unknown destination handset" in dead.detail
    off = twilio_receipt(form("undelivered", ErrorCode="30003"), q)  # handset off: not dead
    assert (off.state, off.dead) == (states.BOUNCED, False)
    with pytest.raises(ValidationError):
        twilio_receipt({"MessageStatus": "delivered"}, q)


def sg_event(kind: str, **extra) -> dict:
    return {"email": "a@example.com", "timestamp": 1_764_000_001, "event": kind,
            "sg_message_id": "abc123.filterdrecv-1.0", "herald_id": "n-1",
            "tenant_id": "acme", **extra}


def test_sendgrid_events():
    got = sendgrid_receipts([
        sg_event("processed"), sg_event("delivered"), sg_event("open"),
        sg_event("bounce", type="bounce", reason="550 no such user"),
        sg_event("bounce", type="blocked", reason="421 try later"),
        sg_event("dropped", reason="Bounced Address"),
        sg_event("dropped", reason="Spam Content")])
    assert [(r.state, r.dead) for r in got] == [
        (states.DELIVERED_TO_HANDSET, False), (states.BOUNCED, True), (states.BOUNCED, False),
        (states.BOUNCED, True), (states.BOUNCED, False)]
    assert {r.message_id for r in got} == {"abc123"}  # X-Message-Id, the suffix cut
    assert got[0].at == 1_764_000_001_000 and got[0].herald_id == "n-1"
    odd = sendgrid_receipts([{"event": {"x": 1}}, sg_event("dropped", reason={"x": 1})])
    assert [(r.state, r.dead) for r in odd] == [(states.BOUNCED, False)]  # no crash on types
    for bad in ({"event": "delivered"}, [{"event": "delivered"}], ["x"]):
        with pytest.raises(ValidationError):
            sendgrid_receipts(bad)


def test_secret_check():
    assert secret_ok("", None) and secret_ok("s3", "s3")
    assert not secret_ok("s3", None) and not secret_ok("s3", "s4")


META = {"id": "n-1", "tenant_id": "acme", "user_id": "u-1", "priority": "critical",
        "channel": "sms", "attempt": 1, "at": 5_000}


def test_receipt_status_comes_after_the_delivery():
    r = Receipt("sendgrid", "abc", states.DELIVERED_TO_HANDSET, 4_000, "sendgrid: delivered")
    event = receipt_status(r, META, now_ms=9_000)
    assert event["at"] == 5_001  # the provider's clock is seconds: never before the delivery
    assert (event["state"], event["provider_message_id"], event["user_id"]) == \
        (states.DELIVERED_TO_HANDSET, "abc", "u-1")
    assert receipt_status(r, META, now_ms=12_000) == event  # a resent event: the same one
    no_time = Receipt("twilio", "SM1", states.BOUNCED, None, "twilio: undelivered")
    assert receipt_status(no_time, META, now_ms=9_000)["at"] == 9_000


def test_dead_contacts_and_their_token_invalid_event():
    sha = contact_sha1("tok-1")
    cause = {**META, "state": "fallback", "provider": "fcm", "channel": "push",
             "invalid_contact": "push_token", "contact_sha1": sha, "detail": "UNREGISTERED"}
    others = [{**META, "state": "delivered"}, {**cause, "state": states.TOKEN_INVALID},
              {**cause, "invalid_contact": "password"}, {**cause, "user_id": None}]
    assert dead_contacts([cause, *others]) == [cause]
    event = token_invalid_status(cause, "push_token", True, "UNREGISTERED")
    assert event["state"] == states.TOKEN_INVALID
    assert (event["at"], event["attempt"], event["provider"]) == (5_001, 1, "fcm")
    assert "push_token removed" in event["detail"] and "contact_sha1" not in event
    assert "not in the user record" in token_invalid_status(cause, "push_token", False, "x")[
        "detail"]


# ---------------------------------------------------------------- the mocks' receipts

def basic(sid: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()


def twilio_send(state: MockState, to: str) -> None:
    body = ("To=" + to.replace("+", "%2B") + "&From=%2B15550000000&Body=hi&StatusCallback="
            "http%3A%2F%2Fh.example%2Fv1%2Freceipts%2Ftwilio%3Fherald_id%3Dn-1%26tenant_id%3Dacme")
    req = Request("POST", "/2010-04-01/Accounts/ACx/Messages.json", "",
                  {"authorization": basic("ACx", "tok")}, body.encode())
    state.handle(req)


def collect(state: MockState, to_send) -> list:
    sent = []

    async def run():
        state._post_all = lambda callbacks: _record(callbacks)  # capture, do not POST

        async def _record(callbacks):
            sent.extend(callbacks)
        to_send()
        await asyncio.gather(*state._callback_tasks)
    asyncio.run(run())
    return sent


def test_twilio_mock_callbacks_are_signed_and_name_the_message():
    state = MockState(TwilioMock())
    assert collect(state, lambda: twilio_send(state, "+15550100")) == []  # off by default
    state.config.update({"callbacks": True, "bounce": ["+15550199"]}, 0)
    sent = collect(state, lambda: (twilio_send(state, "+15550100"),
                                   twilio_send(state, "+15550199")))
    assert len(sent) == 4
    url = "http://h.example/v1/receipts/twilio?herald_id=n-1&tenant_id=acme"
    receipts = []
    for cb in sent:
        params = dict(parse_qsl(cb.body.decode()))
        assert cb.url == url
        assert twilio_signature_ok("tok", url, params, cb.headers["X-Twilio-Signature"])
        receipts.append(twilio_receipt(params, {"herald_id": "n-1", "tenant_id": "acme"}))
    accepted = [r["message_id"] for r in orjson.loads(state._get_log({}, "accepted").body)[
        "records"]]
    assert [r is None for r in receipts] == [True, False, True, False]
    assert [(r.message_id, r.state, r.dead) for r in receipts if r] == [
        (accepted[1], states.DELIVERED_TO_HANDSET, False), (accepted[2], states.BOUNCED, True)]


def test_sendgrid_mock_event_webhook():
    state = MockState(SendGridMock())
    state.config.update({"callbacks": True, "callback_url": "http://h.example/sg",
                         "bounce": ["dead@example.com"]}, 0)

    def send(to: str) -> None:
        mail = {"personalizations": [{"to": [{"email": to}]}], "from": {"email": "f@h.example"},
                "subject": "s", "content": [{"type": "text/plain", "value": "b"}],
                "custom_args": {"herald_id": "n-2", "tenant_id": "acme"}}
        state.handle(Request("POST", "/v3/mail/send", "", {"authorization": "Bearer k"},
                             orjson.dumps(mail)))
    sent = collect(state, lambda: (send("a@example.com"), send("dead@example.com")))
    key = state.stats()["event_webhook_public_key"]
    for cb in sent:  # signed as SendGrid signs: ECDSA over the timestamp header and the body
        signature, timestamp = cb.headers[SENDGRID_SIGNATURE], cb.headers[SENDGRID_TIMESTAMP]
        assert sendgrid_signature_ok(key, signature, timestamp, cb.body)
        assert not sendgrid_signature_ok(key, signature, timestamp, cb.body + b" ")
        assert not sendgrid_signature_ok(key, signature, str(int(timestamp) + 1), cb.body)
        assert not sendgrid_signature_ok(SendGridMock().admin_info()["event_webhook_public_key"],
                                         signature, timestamp, cb.body)  # another account's
        assert not sendgrid_signature_ok(key, None, timestamp, cb.body)
        assert not sendgrid_signature_ok(key, "not base64!", timestamp, cb.body)
    got = [r for cb in sent for r in sendgrid_receipts(orjson.loads(cb.body))]
    accepted = [r["message_id"] for r in orjson.loads(state._get_log({}, "accepted").body)[
        "records"]]
    assert [(r.message_id, r.state, r.dead, r.herald_id, r.tenant_id) for r in got] == [
        (accepted[0], states.DELIVERED_TO_HANDSET, False, "n-2", "acme"),
        (accepted[1], states.BOUNCED, True, "n-2", "acme")]


def test_mock_config_checks_the_receipt_switches():
    config = MockConfig()
    for bad in ({"callbacks": "yes"}, {"callback_url": "ftp://x"}, {"bounce": "a@b.c"}):
        with pytest.raises(ConfigError):
            config.update(bad, 0)
    assert config.to_dict()["callbacks"] is False


def test_the_signed_url_is_the_configured_one_with_the_query_as_sent():
    """Behind a proxy the API sees another host; Twilio signed the URL it was given, with the
    query percent-encoded as Herald set it (a campaign recipient's ':' is %3A there)."""
    from herald.settings import Settings
    from herald_api.receipts import twilio_signed_url
    settings = Settings(twilio_status_callback_url="https://herald.example/v1/receipts/twilio")
    assert twilio_signed_url(settings, "/v1/receipts/twilio?herald_id=cmp%3Au-1&tenant_id=a") \
        == "https://herald.example/v1/receipts/twilio?herald_id=cmp%3Au-1&tenant_id=a"
    assert twilio_signed_url(settings, "/v1/receipts/twilio") == \
        "https://herald.example/v1/receipts/twilio"
