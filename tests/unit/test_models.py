"""Parse and validate without Flink: every contract rule, and the DLQ record shape."""
from __future__ import annotations

import orjson
import pytest

from herald import states
from herald.errors import ValidationError
from herald.models import (Status, check_notification_fields, check_tenant_id, dead_letter,
                           parse_notification)

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


# ---------------------------------------------------------------- ids, tenants, contacts

@pytest.mark.parametrize("name", ["id", "user_id", "campaign_id"])
@pytest.mark.parametrize("value, words", [
    ("a\x00b", "non-printable character U\\+0000"),
    ("line\nbreak", "contains whitespace"),
    ("tab\there", "contains whitespace"),
    ("sp ace", "contains whitespace"),
    ("nb\u00a0sp", "contains whitespace"),
    ("zero\u200bwidth", "non-printable character U\\+200B"),
    ("rtl\u202eoverride", "non-printable character U\\+202E"),
    ("soft\u00adhyphen", "non-printable character U\\+00AD"),
    ("../../x", "contains '/'"),
    ("a/b", "contains '/'"),
    ("x" * 257, "longer than 256"),
    ("", "must not be empty"),
])
def test_ids_are_printable_without_whitespace_or_slash(name, value, words):
    with pytest.raises(ValidationError, match=words) as e:
        parse(record(**{name: value}))
    assert e.value.field == name


@pytest.mark.parametrize("value", ["ntf:1", "ünïcödé-🎉", "a.b_c-d", "x" * 256, "q\"uote\\",
                                   "campaign:user"])
def test_ids_may_hold_any_other_printable_character(value):
    n = parse(record(id=value, user_id=value))
    assert (n.id, n.user_id) == (value, value)


@pytest.mark.parametrize("value", ["a:b", "", ".hidden", "-x", "a/b", "a b", "é", "x" * 65,
                                   "acme\n", 7, ["acme"]])
def test_tenant_ids_are_a_safe_ascii_alphabet(value):
    with pytest.raises(ValidationError) as e:
        parse(record(tenant_id=value))
    assert e.value.field == "tenant_id"


@pytest.mark.parametrize("value", ["acme", "Globex.EU", "t_1-2", "9", "x" * 64])
def test_valid_tenant_ids_parse_again_and_again(value):
    for _ in range(2):  # the second time from the cache of tenants already seen
        assert parse(record(tenant_id=value)).tenant_id == value


def test_a_tenant_id_seen_valid_does_not_let_an_invalid_one_through():
    assert check_tenant_id("acme") == "acme"
    with pytest.raises(ValidationError):
        check_tenant_id("acme:")
    with pytest.raises(ValidationError):  # unhashable: a ValidationError, not a TypeError
        check_tenant_id({"t": 1})


@pytest.mark.parametrize("phone, ok", [
    ("+15550100", True), ("+49", True), ("+123456789012345", True),
    ("+1234567890123456", False), ("+1", False), ("+0123", False), ("15550100", False),
    ("notaphone", False), ("+1 555 0100", False), ("+1-555-0100", False), ("+١٢٣", False),
    ("+1²", False), ("555-1234", False),
])
def test_phones_are_e164(phone, ok):
    if ok:
        assert parse(record(to={"phone": phone})).to.phone == phone
    else:
        with pytest.raises(ValidationError, match="E.164") as e:
            parse(record(to={"phone": phone}))
        assert e.value.field == "to.phone"


@pytest.mark.parametrize("email, ok", [
    ("a@b.c", True), ("first.last+tag@mail.example.com", True), ("ü@exämple.de", True),
    ("no-at", False), ("@b.c", False), ("a@b", False), ("a@@b.c", False), ("a@b@c.d", False),
    ("a b@c.d", False), ("a@b .c", False), ("a@.c", False), ("a@c.", False), ("a\n@b.c", False),
])
def test_emails_have_one_at_and_a_domain_with_a_dot(email, ok):
    if ok:
        assert parse(record(to={"email": email})).to.email == email
    else:
        with pytest.raises(ValidationError, match="'@'") as e:
            parse(record(to={"email": email}))
        assert e.value.field == "to.email"


def test_records_off_kafka_may_carry_extra_fields_which_are_ignored():
    n = parse(record(trace_id="abc", to={"push_token": "t", "platform": "ios", "x": 1},
                     content={"body": "b", "html": "<b>"}))
    assert n.id == "ntf-1" and "trace_id" not in n.to_dict()
    assert "html" not in n.to_dict()["content"] and "x" not in n.to_dict()["to"]


@pytest.mark.parametrize("changes, field", [
    ({"trace_id": "abc"}, "trace_id"),
    ({"to": {"phone": "+15550100", "pager": "1"}}, "to.pager"),
    ({"content": {"body": "b", "html": "<b>"}}, "content.html"),
])
def test_the_apis_field_check_names_the_first_unknown_field(changes, field):
    with pytest.raises(ValidationError, match="unknown field") as e:
        check_notification_fields(record(**changes))
    assert e.value.field == field


def test_the_apis_field_check_passes_every_contract_field_and_free_data():
    check_notification_fields(record(campaign_id="c", send_at=NOW + 1,
                                     content={"body": "b", "data": {"any": "x"},
                                              "vars": {"free": 1}, "title": "t"}))
