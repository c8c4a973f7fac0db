"""SendGrid adapter: the documented v3 mail/send request; answers map by status and field."""
from __future__ import annotations

import time

import orjson
import pytest

from herald.models import Contacts
from herald.providers import OK, PERMANENT, RETRYABLE, THROTTLED, SendGridAdapter
from herald.providers.base import DEFAULT_RETRY_AFTER_S
from herald.providers.exceptions import MissingContactError, ProviderConfigError
from herald.providers.sendgrid import subject_of
from herald.settings import Settings
from tests.helpers_mocks import make_notification

sendgrid = SendGridAdapter()
SETTINGS = Settings(sendgrid_url="https://api.sendgrid.com", sendgrid_api_key="SG.xxxxx",
                    sendgrid_from="sam.smith@example.com")

# SendGrid's v3 Mail Send quick-start request (the fields Herald uses).
DOC_EXAMPLE = {
    "url": "https://api.sendgrid.com/v3/mail/send",
    "authorization": "Bearer SG.xxxxx",
    "body": {"personalizations": [{"to": [{"email": "john.doe@example.com"}]}],
             "from": {"email": "sam.smith@example.com"}, "subject": "Hello, World!",
             "content": [{"type": "text/plain", "value": "Heya!"}]},
}


def test_request_matches_the_documented_example():
    n = make_notification(id="ntf-doc", content={"title": "Hello, World!", "body": "Heya!"})
    req = sendgrid.build_request(n, Contacts(email="john.doe@example.com"), SETTINGS)
    assert (req.method, req.url) == ("POST", DOC_EXAMPLE["url"])
    assert req.headers["Authorization"] == DOC_EXAMPLE["authorization"]
    assert req.headers["Content-Type"] == "application/json"
    body = orjson.loads(req.body)
    for key, value in DOC_EXAMPLE["body"].items():
        assert body[key] == value
    assert body["custom_args"] == {"herald_id": "ntf-doc", "tenant_id": "acme"}


def test_subject_falls_back_to_the_first_line_of_the_body():
    assert subject_of(None, "482913 is your code\nsecond line") == "482913 is your code"
    long = subject_of(None, "x" * 200)
    assert len(long) == 78 and long.endswith("…")
    assert subject_of("Title", "body") == "Title"


def test_no_email_and_no_key():
    with pytest.raises(MissingContactError):
        sendgrid.build_request(make_notification(), Contacts(phone="+15550100"), SETTINGS)
    n = make_notification()
    with pytest.raises(ProviderConfigError):
        sendgrid.build_request(n, n.to, SETTINGS.replace(sendgrid_api_key=""))


def test_accepted_carries_x_message_id():
    out = sendgrid.classify(202, {"X-Message-Id": "xEgA3Q_2TYWbKdVqa4D4ow"}, b"")
    assert out.kind is OK and out.message_id == "xEgA3Q_2TYWbKdVqa4D4ow"


def errors(*items):
    return orjson.dumps({"errors": [{"message": m, "field": f, "help": None} for m, f in items]})


RECORDED = [
    (400, errors(("Does not contain a valid address.", "personalizations.0.to.0.email")),
     PERMANENT, True),
    (400, errors(("The subject is required.", "subject")), PERMANENT, False),
    (401, errors(("The provided authorization grant is invalid, expired, or revoked", None)),
     PERMANENT, False),
    (403, errors(("The from address does not match a verified Sender Identity.", "from")),
     PERMANENT, False),
    (413, errors(("The JSON payload you have included in your request is too large.", None)),
     PERMANENT, False),
    (429, errors(("too many requests", None)), THROTTLED, False),
    (500, errors(("internal error", None)), RETRYABLE, False),
    (503, b"", RETRYABLE, False),
]


@pytest.mark.parametrize("status,body,kind,token_invalid", RECORDED)
def test_recorded_answers(status, body, kind, token_invalid):
    out = sendgrid.classify(status, {}, body)
    assert (out.kind, out.token_invalid, out.status) == (kind, token_invalid, status)


def test_throttle_wait_from_retry_after_then_ratelimit_reset_then_default():
    body = errors(("too many requests", None))
    assert sendgrid.classify(429, {"Retry-After": "4"}, body).retry_after_s == 4.0
    reset = str(int(time.time()) + 30)
    wait = sendgrid.classify(429, {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0",
                                   "X-RateLimit-Reset": reset}, body).retry_after_s
    assert 28 <= wait <= 31
    assert sendgrid.classify(429, {}, body).retry_after_s == DEFAULT_RETRY_AFTER_S
    assert sendgrid.classify(429, {"X-RateLimit-Reset": "junk"}, body).retry_after_s == \
        DEFAULT_RETRY_AFTER_S
