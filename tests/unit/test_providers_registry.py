"""The provider layer as a whole: routing, the shared helpers, robustness, engine-freedom."""
from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from herald import states
from herald.providers import (OK, RETRYABLE, THROTTLED, ApnsAdapter, FcmAdapter, Registry,
                              SendGridAdapter, TwilioAdapter, provider_name)
from herald.providers.base import (DEFAULT_RETRY_AFTER_S, http_rule, lower_headers,
                                   parse_retry_after)
from herald.providers.exceptions import MissingContactError, ProviderError
from tests.helpers_mocks import ROOT

ADAPTERS = [FcmAdapter(), ApnsAdapter(), TwilioAdapter(), SendGridAdapter()]


@pytest.mark.parametrize("channel,platform,name", [
    ("push", "ios", "apns"), ("push", "android", "fcm"), ("sms", None, "twilio"),
    ("email", None, "sendgrid"), ("sms", "ios", "twilio"), ("email", "android", "sendgrid")])
def test_routes(channel, platform, name):
    registry = Registry()
    adapter = registry.for_channel(channel, platform)
    assert adapter.name == provider_name(channel, platform) == name
    assert adapter.channel == channel
    assert registry[name] is adapter


def test_push_without_platform_and_unknown_channels():
    with pytest.raises(MissingContactError):
        provider_name("push", None)
    with pytest.raises(ProviderError):
        provider_name("pigeon")
    with pytest.raises(ProviderError):
        Registry([FcmAdapter()]).for_channel("sms")


def test_names_and_channels():
    assert {(a.name, a.channel) for a in ADAPTERS} == {
        ("fcm", states.PUSH), ("apns", states.PUSH), ("twilio", states.SMS),
        ("sendgrid", states.EMAIL)}


def test_retry_after_forms():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now_s=1445412470.0) == 10.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("999999") == 3600.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("nan") is None


def test_headers_from_any_client_shape():
    assert lower_headers([(b"Retry-After", b"3")]) == {"retry-after": "3"}
    assert lower_headers({"X-Message-Id": "a"}) == {"x-message-id": "a"}
    assert lower_headers(None) == {}


def test_http_fallback():
    assert http_rule(204).kind is OK
    assert http_rule(429).kind is THROTTLED
    assert http_rule(599).kind is RETRYABLE
    assert http_rule(418).kind.value == "permanent"


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.name)
def test_transport_errors_are_retryable(adapter):
    out = adapter.transport_error(ConnectionRefusedError(111, "Connection refused"))
    assert out.kind is RETRYABLE and out.status is None and "ConnectionRefusedError" in out.detail


@settings(max_examples=150, deadline=None)
@given(status=st.integers(100, 599), body=st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"{}", b"[]", b"null", b'{"error": []}', b'{"error": {"details": 5}}',
                     b'{"errors": "x"}', b'{"code": "20429"}', b'{"reason": 5}',
                     b'{"error": {"details": [1, {"@type": 2}]}}'])),
       headers=st.dictionaries(st.sampled_from(["Retry-After", "X-RateLimit-Reset", "apns-id"]),
                               st.text(max_size=12), max_size=3))
def test_classify_never_raises_and_throttles_always_say_when(status, body, headers):
    for adapter in ADAPTERS:
        out = adapter.classify(status, headers, body)
        assert out.status == status
        if out.kind is THROTTLED:
            assert out.retry_after_s is not None and out.retry_after_s >= 0
        if 200 <= status < 300:
            assert out.kind is OK


def test_default_throttle_wait_is_positive():
    assert DEFAULT_RETRY_AFTER_S > 0


def test_provider_layer_imports_no_engine_client_or_server():
    code = ("import sys, herald.providers; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('pyflink', 'kafka', 'aiohttp', 'requests', 'httpx', 'h2', 'herald_mocks', "
            "'urllib3', 'asyncio', 'http')]; "
            "print(','.join(sorted(bad)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
