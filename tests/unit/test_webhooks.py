"""Tenant webhooks (herald.webhooks): what is sent, the signature, the retry schedule."""
from __future__ import annotations

import hashlib
import hmac
import random

import orjson
import pytest

from herald.errors import ValidationError
from herald.webhooks import (RetryPolicy, body_of, check_public, event_id, private_address,
                             sign, succeeded, verify, wants, webhook_from_dict)

SECRET = "s" * 16
BODY = b'{"id":"n-1","state":"delivered"}'


def test_signature_is_hmac_sha256_of_timestamp_and_body():
    header = sign(SECRET, 1_764_000_000, BODY)
    expected = hmac.new(SECRET.encode(), b"1764000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1764000000,v1={expected}"
    assert verify(SECRET, header, BODY, now_s=1_764_000_100)


@pytest.mark.parametrize("secret,body,now_s", [
    ("t" * 16, BODY, 1_764_000_000),                    # another secret
    (SECRET, BODY + b" ", 1_764_000_000),               # another body
    (SECRET, BODY, 1_764_000_000 + 301),                # too old: a replay
])
def test_signature_refuses(secret, body, now_s):
    assert not verify(secret, sign(SECRET, 1_764_000_000, BODY), body, now_s)


def test_signature_refuses_a_malformed_header():
    for header in (None, "", "v1=abc", "t=1,v1=xyz"):
        assert not verify(SECRET, header, BODY, 1)


def test_which_events_a_tenant_hears_about():
    base = {"id": "n-1", "tenant_id": "acme"}
    assert [s for s in ("accepted", "retrying", "fallback", "duplicate", "token_invalid",
                        "delivered", "failed", "expired", "cancelled", "opted_out",
                        "delivered_to_handset", "bounced")
            if wants({**base, "state": s})] == [
        "delivered", "failed", "expired", "cancelled", "opted_out", "delivered_to_handset",
        "bounced"]
    # a campaign-level event (its id is the campaign's) is not a notification's status
    assert not wants({"id": "c-1", "campaign_id": "c-1", "state": "failed"})


def test_body_and_event_id():
    event = {"id": "n-1", "tenant_id": "acme", "state": "bounced", "contact_sha1": "ab",
             "invalid_contact": "email"}
    assert orjson.loads(body_of(event)) == {"id": "n-1", "tenant_id": "acme",
                                            "state": "bounced", "invalid_contact": "email"}
    assert event_id("acme", "n-1", "bounced") == event_id("acme", "n-1", "bounced")
    assert len({event_id("acme", "n-1", "bounced"), event_id("acme", "n-1", "delivered"),
                event_id("globex", "n-1", "bounced")}) == 3


def test_retry_policy_doubles_with_jitter_and_stops():
    policy = RetryPolicy(base_ms=100, max_ms=1_000, max_attempts=5)
    rng = random.Random(1)
    delays = [policy.next_delay_ms(n, rng) for n in range(1, 5)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(1_000, 100 * 2 ** (n - 1))
        assert ceiling // 2 <= delay <= ceiling
    assert policy.next_delay_ms(5, rng) is None
    assert RetryPolicy(100, 1_000, 30).next_delay_ms(29, rng) <= 1_000
    with pytest.raises(ValueError):
        RetryPolicy(base_ms=0)
    assert succeeded(204) and not succeeded(500) and not succeeded(None) and not succeeded(302)


def test_webhook_registration_rules():
    hook = webhook_from_dict({"url": "https://hooks.acme.example/herald", "secret": SECRET})
    assert (hook.url, hook.secret) == ("https://hooks.acme.example/herald", SECRET)
    for bad, field in (({"url": "ftp://x/y", "secret": SECRET}, "url"),
                       ({"url": "https:///nohost", "secret": SECRET}, "url"),
                       ({"url": "https://x.example", "secret": "short"}, "secret"),
                       ({"url": "https://x.example", "secret": SECRET, "extra": 1}, "extra")):
        with pytest.raises(ValidationError) as err:
            webhook_from_dict(bad)
        assert err.value.field == field


@pytest.mark.parametrize("address,private", [
    ("127.0.0.1", True), ("10.1.2.3", True), ("192.168.0.9", True), ("169.254.169.254", True),
    ("::1", True), ("[::ffff:127.0.0.1]", True), ("fe80::1%eth0", True), ("0.0.0.0", True),
    ("93.184.216.34", False), ("2606:2800:220:1::", False), ("hooks.acme.example", False)])
def test_private_addresses(address, private):
    assert private_address(address) is private


def test_private_endpoints_are_refused_unless_allowed():
    for url in ("http://127.0.0.1:9000/h", "http://localhost/h", "http://[::1]/h",
                "http://169.254.169.254/latest/meta-data"):
        with pytest.raises(ValidationError) as err:
            webhook_from_dict({"url": url, "secret": SECRET}, allow_private=False)
        assert err.value.field == "url"
        assert webhook_from_dict({"url": url, "secret": SECRET}).url == url  # allowed
    public = "https://hooks.acme.example/h"
    assert webhook_from_dict({"url": public, "secret": SECRET}, allow_private=False).url == public
    # at call time, by what the name resolves to
    assert check_public(public, lambda host: ["93.184.216.34"]) is None
    assert "private address (10.0.0.7)" in check_public(public, lambda host: ["10.0.0.7"])

    def unresolvable(host):
        raise OSError("no such host")
    assert "does not resolve" in check_public(public, unresolvable)
