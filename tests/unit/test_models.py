"""Parse and validate without Flink: every contract rule, and the DLQ record shape."""
from __future__ import annotations

import orjson
import pytest

from herald import states
from herald.errors import ValidationError
from herald.models import Status, dead_letter, parse_notification

NOW = 1_764_000_000_000


def record(**changes) -> dict:
    base = {"id": "ntf-1", "tenant_id": "acme", "user_id": "u-1", "priority": "critical",
            "channels": ["push", "sms"], "to": {"push_token": "t", "platform": "ios", "phone": "+1555"},
            "content": {"title": "Code", "body": "482913", "data": {"k": "v"}},
            "created_at": NOW, "expires_at": NOW + 30_000, "seq": 3}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def parse(obj, **kw):
    return parse_notification(orjson.dumps(obj), **kw)


def test_a_full_contract_record_parses_to_every_field():
    n = parse(record(), expected_priority=states.CRITICAL)
    assert (n.id, n.tenant_id, n.user_id, n.priority) == ("ntf-1", "acme", "u-1", "critical")
    assert n.channels == ("push", "sms") and n.seq == 3
    assert n.to.platform == "ios" and n.to.phone == "+1555"
    assert n.content.body == "482913" and dict(n.content.data) == {"k": "v"}
    assert n.expires_at == NOW + 30_000


def test_critical_without_expiry_gets_the_default_ttl():
    n = parse(record(expires_at=None), default_ttl_ms=5_000)
    assert n.expires_at == NOW + 5_000


def test_promotional_needs_expires_at():
    with pytest.raises(ValidationError, match="missing required field 'expires_at'") as e:
        parse(record(priority="promotional", expires_at=None))
    assert e.value.field == "expires_at"


def test_channels_default_to_push():
    assert parse(record(channels=None)).channels == ("push",)


@pytest.mark.parametrize("raw, message", [
    (b"{", "malformed JSON"),
    (b'"text"', "expected a JSON object, got str"),
    (None, "empty record"),
])
def test_undecodable_records_say_why(raw, message):
    with pytest.raises(ValidationError, match=message):
        parse_notification(raw)


@pytest.mark.parametrize("changes, field, message", [
    ({"id": ""}, "id", "'id' must not be empty"),
    ({"id": 7}, "id", "'id' must be a string, got int"),
    ({"user_id": None}, "user_id", "missing required field 'user_id'"),
    ({"created_at": True}, "created_at", "integer epoch"),
    ({"created_at": -5}, "created_at", "positive epoch"),
    ({"expires_at": NOW - 1}, "expires_at", "later than 'created_at'"),
    ({"channels": "push"}, "channels", "non-empty list"),
    ({"channels": ["push", "push"]}, "channels", "lists a channel twice"),
    ({"to": "x"}, "to", "'to' must be an object"),
    ({"to": {"phone": 5}}, "to.phone", "'to.phone' must be a string"),
    ({"content": {"body": "x", "vars": []}}, "content.vars", "'content.vars' must be an object"),
    ({"seq": 1.5}, "seq", "non-negative integer"),
    ({"seq": True}, "seq", "non-negative integer"),
])
def test_each_rule_names_its_field(changes, field, message):
    with pytest.raises(ValidationError, match=message) as e:
        parse(record(**changes))
    assert e.value.field == field


def test_a_record_on_the_wrong_topic_is_rejected():
    with pytest.raises(ValidationError, match="came in on the promotional topic"):
        parse(record(), expected_priority=states.PROMOTIONAL)


def test_expiry_is_inclusive_of_the_expiry_instant():
    n = parse(record())
    assert not n.is_expired(n.expires_at - 1)
    assert n.is_expired(n.expires_at)


def test_round_trip_through_json_keeps_the_notification():
    n = parse(record())
    assert parse_notification(n.to_json()) == n


def test_dead_letter_keeps_the_original_fields_and_adds_why():
    out = orjson.loads(dead_letter(orjson.dumps(record(id="x")), "bad", "parse", NOW))
    assert out["id"] == "x" and out["tenant_id"] == "acme"
    assert (out["reason"], out["stage"], out["at"]) == ("bad", "parse", NOW)


def test_dead_letter_keeps_non_json_as_raw_text():
    out = orjson.loads(dead_letter(b"\xff{oops", "malformed", "parse", NOW))
    assert out["raw"].endswith("{oops") and out["reason"] == "malformed"


def test_status_carries_the_contract_fields_and_no_nulls():
    n = parse(record())
    s = orjson.loads(Status.of(n, states.DELIVERED, NOW, channel="push", provider="apns",
                               attempt=1, latency_ms=12).to_json())
    assert s == {"id": "ntf-1", "tenant_id": "acme", "user_id": "u-1", "priority": "critical",
                 "state": "delivered", "at": NOW, "channel": "push", "provider": "apns",
                 "attempt": 1, "latency_ms": 12}


@pytest.mark.parametrize("changes, field", [
    ({"priority": {}}, "priority"),
    ({"priority": ["critical"]}, "priority"),
    ({"channels": [{}]}, "channels"),
    ({"channels": [["push"]]}, "channels"),
    ({"created_at": 10**19}, "created_at"),
])
def test_unhashable_or_huge_values_are_validation_errors_not_crashes(changes, field):
    with pytest.raises(ValidationError) as e:
        parse(record(**changes))
    assert e.value.field == field
