"""FCM adapter: the request matches FCM's documented example; answers map by the code table."""
from __future__ import annotations

import orjson
import pytest

from herald.models import Contacts
from herald.providers import OK, PERMANENT, RETRYABLE, THROTTLED, FcmAdapter
from herald.providers.base import DEFAULT_RETRY_AFTER_S
from herald.providers.exceptions import (EmptyContentError, MissingContactError,
                                         ProviderConfigError)
from herald.providers.fcm import FCM_ERROR_CODES, ttl
from herald.settings import Settings
from tests.helpers_mocks import NOW_MS, make_notification

fcm = FcmAdapter()
SETTINGS = Settings(fcm_url="https://fcm.googleapis.com", fcm_project="myproject-b5ae1",
                    fcm_access_token="ya29.ElqKBGN2Ri_Uz...HnS_uNreA")

# From firebase.google.com/docs/cloud-messaging/send-message ("Send messages to specific
# devices", HTTP v1 protocol tab).
DOC_EXAMPLE = {
    "url": "https://fcm.googleapis.com/v1/projects/myproject-b5ae1/messages:send",
    "authorization": "Bearer ya29.ElqKBGN2Ri_Uz...HnS_uNreA",
    "message": {"token": "bk3RNwTe3H0:CI2k_HHwgIpoDKCIZvvDMExUdFQ3P1...",
                "notification": {"body": "This is an FCM notification message!",
                                 "title": "FCM Message"}},
}


def doc_notification(**kw):
    return make_notification(
        id="ntf-doc", content={"title": "FCM Message",
                               "body": "This is an FCM notification message!"}, **kw)


def test_request_matches_the_documented_example():
    n = doc_notification()
    req = fcm.build_request(n, Contacts(push_token=DOC_EXAMPLE["message"]["token"]), SETTINGS,
                            now_ms=NOW_MS)
    assert (req.method, req.url) == ("POST", DOC_EXAMPLE["url"])
    assert req.headers["Authorization"] == DOC_EXAMPLE["authorization"]
    assert req.headers["Content-Type"].startswith("application/json")
    assert not req.http2
    message = orjson.loads(req.body)["message"]
    for key, value in DOC_EXAMPLE["message"].items():
        assert message[key] == value
    # what Herald adds: its id, the time left as TTL, the priority
    assert message["data"] == {"herald_id": "ntf-doc"}
    assert message["android"] == {"ttl": "30s", "priority": "HIGH"}


def test_ttl_counts_down_to_expiry_and_never_goes_negative():
    n = make_notification()
    at = lambda now: orjson.loads(fcm.build_request(n, n.to, SETTINGS, now_ms=now).body)
    assert at(NOW_MS + 12_500)["message"]["android"]["ttl"] == "17.5s"
    assert at(NOW_MS + 29_999)["message"]["android"]["ttl"] == "0.001s"
    assert at(NOW_MS + 60_000)["message"]["android"]["ttl"] == "0s"
    assert [ttl(x) for x in (0, 1, 10, 1000, 86_400_123)] == \
        ["0s", "0.001s", "0.01s", "1s", "86400.123s"]


def test_promotional_is_normal_priority_and_user_data_is_kept():
    n = make_notification(priority="promotional",
                          content={"body": "Sale", "data": {"k": "v", "herald_id": "spoof"}})
    message = orjson.loads(fcm.build_request(n, n.to, SETTINGS, now_ms=NOW_MS).body)["message"]
    assert message["android"]["priority"] == "NORMAL"
    assert message["data"] == {"k": "v", "herald_id": n.id}
    assert message["notification"] == {"body": "Sale"}


def test_missing_token_means_fall_back_not_call():
    with pytest.raises(MissingContactError) as err:
        fcm.build_request(make_notification(), Contacts(phone="+15550100"), SETTINGS)
    assert err.value.field == "to.push_token"


def test_template_only_content_is_refused():
    n = make_notification(content={"template": "otp", "vars": {"code": "1"}})
    with pytest.raises(EmptyContentError):
        fcm.build_request(n, n.to, SETTINGS)


def test_empty_token_is_allowed_against_the_mock_only():
    n = make_notification()
    local = Settings(fcm_url="http://127.0.0.1:18101")
    assert fcm.build_request(n, n.to, local).headers["Authorization"].startswith("Bearer ")
    with pytest.raises(ProviderConfigError):
        fcm.build_request(n, n.to, Settings(fcm_url="https://fcm.googleapis.com"))


# ------------------------------------------------------------------ classification

def google(code, status, message, error_code=None, token_field=False):
    details = []
    if error_code:
        details.append({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                        "errorCode": error_code})
    if token_field:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": "message.token",
                                             "description": "Invalid registration token"}]})
    return orjson.dumps({"error": {"code": code, "message": message, "status": status,
                                   "details": details}})


def test_success_carries_the_message_name():
    out = fcm.classify(200, {"Content-Type": "application/json"},
                       b'{"name": "projects/myproject-b5ae1/messages/0:1500415314455276%31bd"}')
    assert out.kind is OK and out.ok
    assert out.message_id == "projects/myproject-b5ae1/messages/0:1500415314455276%31bd"


# Recorded FCM answers: (status, headers, body) → (kind, token_invalid, code)
RECORDED = [
    (404, {}, google(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"),
     PERMANENT, True, "UNREGISTERED"),
    (400, {}, google(400, "INVALID_ARGUMENT", "Request contains an invalid argument.",
                     "INVALID_ARGUMENT", token_field=True), PERMANENT, True, "INVALID_ARGUMENT"),
    (400, {}, google(400, "INVALID_ARGUMENT",
                     "The registration token is not a valid FCM registration token",
                     "INVALID_ARGUMENT"), PERMANENT, True, "INVALID_ARGUMENT"),
    (400, {}, google(400, "INVALID_ARGUMENT",
                     "Invalid value at 'message.data[0].value' (TYPE_STRING), 12"),
     PERMANENT, False, "INVALID_ARGUMENT"),
    (403, {}, google(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"),
     PERMANENT, True, "SENDER_ID_MISMATCH"),
    (401, {}, google(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
     PERMANENT, False, "UNAUTHENTICATED"),
    (401, {}, google(401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service",
                     "THIRD_PARTY_AUTH_ERROR"), PERMANENT, False, "THIRD_PARTY_AUTH_ERROR"),
    (429, {"Retry-After": "7"}, google(429, "RESOURCE_EXHAUSTED", "Quota exceeded.",
                                       "QUOTA_EXCEEDED"), THROTTLED, False, "QUOTA_EXCEEDED"),
    (503, {}, google(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE"),
     RETRYABLE, False, "UNAVAILABLE"),
    (500, {}, google(500, "INTERNAL", "Internal error encountered.", "INTERNAL"),
     RETRYABLE, False, "INTERNAL"),
    (502, {}, b"<!DOCTYPE html><html lang=en><title>Error 502 (Server Error)!!1</title>",
     RETRYABLE, False, None),
]


@pytest.mark.parametrize("status,headers,body,kind,token_invalid,code", RECORDED)
def test_recorded_answers(status, headers, body, kind, token_invalid, code):
    out = fcm.classify(status, headers, body)
    assert (out.kind, out.token_invalid, out.code, out.status) == \
        (kind, token_invalid, code, status)
    assert out.detail


def test_throttle_uses_retry_after_or_a_default():
    body = google(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", "QUOTA_EXCEEDED")
    assert fcm.classify(429, [(b"retry-after", b"7")], body).retry_after_s == 7.0
    assert fcm.classify(429, {}, body).retry_after_s == DEFAULT_RETRY_AFTER_S
    # a 503 may say when to come back too; the caller may use it
    assert fcm.classify(503, {"Retry-After": "3"}, b"").retry_after_s == 3.0


@pytest.mark.parametrize("error_code", sorted(FCM_ERROR_CODES))
def test_every_table_row_is_reachable(error_code):
    out = fcm.classify(400, {}, google(400, "X", "m", error_code))
    rule = FCM_ERROR_CODES[error_code]
    assert (out.kind, out.token_invalid or False) == (rule.kind, rule.token_invalid)
