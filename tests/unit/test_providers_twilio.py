"""Twilio adapter: the documented Messages.json request; answers map by Twilio's error codes."""
from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from herald.models import Contacts
from herald.providers import OK, PERMANENT, RETRYABLE, THROTTLED, TwilioAdapter
from herald.providers.exceptions import MissingContactError, ProviderConfigError
from herald.providers.twilio import TWILIO_CODES
from herald.settings import Settings
from tests.helpers_mocks import NOW_MS, make_notification

twilio = TwilioAdapter()
SID = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
SETTINGS = Settings(twilio_url="https://api.twilio.com", twilio_account_sid=SID,
                    twilio_auth_token="your_auth_token", twilio_from="+15557122661",
                    twilio_status_callback_url="http://postb.in/1234abcd")

# Twilio's "Create a Message resource" curl example.
DOC_EXAMPLE = {
    "url": f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json",
    "form": {"Body": "Hi there", "From": "+15557122661", "To": "+15558675310"},
    "user": (SID, "your_auth_token"),
}
# ...and the 201 answer it shows (abridged).
DOC_RESPONSE = orjson.dumps({
    "account_sid": SID, "api_version": "2010-04-01", "body": "Hi there",
    "direction": "outbound-api", "from": "+15557122661", "num_segments": "1",
    "sid": "SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "status": "queued", "to": "+15558675310"})


def form_of(req) -> dict:
    return {k: v[0] for k, v in parse_qs(req.body.decode()).items()}


def test_request_matches_the_documented_example():
    n = make_notification(id="ntf-doc", content={"body": "Hi there"})
    req = twilio.build_request(n, Contacts(phone="+15558675310"), SETTINGS, now_ms=NOW_MS)
    assert (req.method, req.url) == ("POST", DOC_EXAMPLE["url"])
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    scheme, blob = req.headers["Authorization"].split(" ")
    assert scheme == "Basic"
    assert tuple(base64.b64decode(blob).decode().split(":", 1)) == DOC_EXAMPLE["user"]
    form = form_of(req)
    for key, value in DOC_EXAMPLE["form"].items():
        assert form[key] == value
    callback = urlsplit(form["StatusCallback"])
    assert callback._replace(query="").geturl() == "http://postb.in/1234abcd"
    assert parse_qs(callback.query) == {"herald_id": ["ntf-doc"], "tenant_id": ["acme"]}
    assert form["ValidityPeriod"] == "30"


def test_validity_period_is_time_left_within_twilio_bounds():
    n = make_notification(priority="promotional", expires_at=NOW_MS + 86_400_000)
    assert form_of(twilio.build_request(n, n.to, SETTINGS, now_ms=NOW_MS))["ValidityPeriod"] \
        == "36000"
    n = make_notification()
    assert form_of(twilio.build_request(n, n.to, SETTINGS, now_ms=NOW_MS + 29_500))[
        "ValidityPeriod"] == "1"


def test_callback_with_its_own_query_and_odd_ids_are_encoded():
    settings = SETTINGS.replace(twilio_status_callback_url="https://h.example/cb?tenant=acme")
    n = make_notification(id="cmp-spring:u-1&x=y")
    query = parse_qs(urlsplit(form_of(twilio.build_request(n, n.to, settings))[
        "StatusCallback"]).query)
    assert query == {"tenant": ["acme"], "herald_id": ["cmp-spring:u-1&x=y"],
                     "tenant_id": [n.tenant_id]}


def test_no_phone_and_no_token():
    with pytest.raises(MissingContactError):
        twilio.build_request(make_notification(), Contacts(email="a@b.c"), SETTINGS)
    n = make_notification()
    with pytest.raises(ProviderConfigError):
        twilio.build_request(n, n.to, SETTINGS.replace(twilio_auth_token=""))


def test_success_carries_the_message_sid():
    out = twilio.classify(201, {}, DOC_RESPONSE)
    assert out.kind is OK and out.message_id == "SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"


def error(status, code, message):
    return orjson.dumps({"code": code, "message": message,
                         "more_info": f"https://www.twilio.com/docs/errors/{code}",
                         "status": status})


RECORDED = [
    (429, {"Retry-After": "2"}, error(429, 20429, "Too Many Requests"), THROTTLED, False),
    (400, {}, error(400, 21211, "Invalid 'To' Phone Number: +1555"), PERMANENT, True),
    (400, {}, error(400, 21614, "'To' number is not a valid mobile number"), PERMANENT, True),
    (400, {}, error(400, 21610, "Attempt to send to unsubscribed recipient"), PERMANENT, True),
    (400, {}, error(400, 21606, "The From phone number is not a valid number"), PERMANENT,
     False),
    (401, {}, error(401, 20003, "Authenticate"), PERMANENT, False),
    (500, {}, error(500, 20500, "An internal server error has occurred"), RETRYABLE, False),
    (503, {}, error(503, 20503, "Service Unavailable"), RETRYABLE, False),
    (503, {}, b"<html>Service Unavailable</html>", RETRYABLE, False),
    (400, {}, error(400, 99999, "something new"), PERMANENT, False),
]


@pytest.mark.parametrize("status,headers,body,kind,token_invalid", RECORDED)
def test_recorded_answers(status, headers, body, kind, token_invalid):
    out = twilio.classify(status, headers, body)
    assert (out.kind, out.token_invalid, out.status) == (kind, token_invalid, status)


def test_throttle_wait_and_code_are_kept():
    out = twilio.classify(429, {"retry-after": "2"}, error(429, 20429, "Too Many Requests"))
    assert (out.retry_after_s, out.code) == (2.0, "20429")
    assert "Too Many Requests" in out.detail


@pytest.mark.parametrize("code", sorted(TWILIO_CODES))
def test_every_table_row_is_reachable(code):
    out = twilio.classify(400, {}, error(400, code, "m"))
    assert (out.kind, out.token_invalid) == (TWILIO_CODES[code].kind,
                                             TWILIO_CODES[code].token_invalid)
