"""`parse_notification` reads most records with msgspec (`typed_decode`) and the rest with the
strict reader (`notification_from_dict`). The two must agree on every record: the same
Notification, or the reader's error. These tests try to make them differ with hostile bytes
and random records; a failing example is printed by Hypothesis and replays from its database
(or with ``--hypothesis-seed``)."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herald.errors import ValidationError
from herald.models import (MAX_BODY_LENGTH, MAX_ID_LENGTH, check_tenant_id, load_object,
                           notification_from_dict, parse_notification, typed_decode)

TTL = 300_000
CREATED = 1_796_587_573_471
TENANT = "t-typed"
check_tenant_id(TENANT)  # a tenant the process has seen: the typed path's usual case
BASE = {"id": "a", "tenant_id": TENANT, "user_id": "u", "content": {"body": "b"},
        "created_at": CREATED}


def reader(raw, priority):
    """What the strict reader alone answers: ("ok", Notification) or ("error", message)."""
    try:
        return "ok", notification_from_dict(load_object(raw), expected_priority=priority,
                                            default_ttl_ms=TTL)
    except ValidationError as exc:
        return "error", str(exc)


def parsed(raw, priority):
    try:
        return "ok", parse_notification(raw, expected_priority=priority, default_ttl_ms=TTL)
    except ValidationError as exc:
        return "error", str(exc)


def with_fields(extra: bytes) -> bytes:
    return json.dumps(BASE, separators=(",", ":")).encode()[:-1] + extra + b"}"


HOSTILE = {
    "duplicate key": b'{"id":"a","id":"b","tenant_id":"t-typed","user_id":"u",'
                     b'"content":{"body":"b"},"created_at":1796587573471}',
    "lone surrogate in an id": with_fields(b',"campaign_id":"\\ud800"'),
    "lone surrogate in an unknown field": with_fields(b',"x":"\\ud800"'),
    "invalid UTF-8 in an unknown field": with_fields(b',"x":"\xff"'),
    "invalid UTF-8 in an id": with_fields(b',"campaign_id":"\xed\xa0\x80"'),
    "infinity in an unknown field": with_fields(b',"x":1e400'),
    "integer beyond 64 bits in an unknown field": with_fields(b',"x":1234567890123456789012345'),
    "integer beyond 64 bits as seq": with_fields(b',"seq":1234567890123456789012345'),
    "seq just past int64": with_fields(b',"seq":9223372036854775808'),
    "seq as a float": with_fields(b',"seq":1e2'),
    "seq true": with_fields(b',"seq":true'),
    "seq -0": with_fields(b',"seq":-0'),
    "deep nesting in an unknown field": with_fields(b',"x":' + b"[" * 2000 + b"]" * 2000),
    "deep nesting in vars": b'{"id":"a","tenant_id":"t-typed","user_id":"u","content":{"body":"b",'
                            b'"vars":' + b'{"a":' * 1100 + b"1" + b"}" * 1100 + b'},"created_at":1796587573471}',
    "integer beyond 64 bits in vars": b'{"id":"a","tenant_id":"t-typed","user_id":"u","content":'
                                      b'{"body":"b","vars":{"x":123456789012345678901234567890}},'
                                      b'"created_at":1796587573471}',
    "infinity in vars": b'{"id":"a","tenant_id":"t-typed","user_id":"u","content":{"body":"b",'
                        b'"vars":{"x":1e400}},"created_at":1796587573471}',
    "vars a list": b'{"id":"a","tenant_id":"t-typed","user_id":"u","content":{"body":"b",'
                   b'"vars":[1]},"created_at":1796587573471}',
    "vars null": b'{"id":"a","tenant_id":"t-typed","user_id":"u","content":{"body":"b",'
                 b'"vars":null},"created_at":1796587573471}',
    "data with a number": b'{"id":"a","tenant_id":"t-typed","user_id":"u","content":{"body":"b",'
                          b'"data":{"x":1}},"created_at":1796587573471}',
    "trailing garbage": with_fields(b"") + b" x",
    "trailing whitespace": with_fields(b"") + b" \n",
    "byte order mark": b"\xef\xbb\xbf" + with_fields(b""),
    "control character in a string": with_fields(b',"x":"a\x01b"'),
    "NaN": with_fields(b',"x":NaN'),
    "priority null": with_fields(b',"priority":null'),
    "priority of the other class": with_fields(b',"priority":"promotional"'),
    "channels empty": with_fields(b',"channels":[]'),
    "channels twice": with_fields(b',"channels":["push","push"]'),
    "escaped slash in an id": with_fields(b',"campaign_id":"a\\/b"'),
    "id of 256 characters beyond the BMP": with_fields(
        b',"campaign_id":"' + "\U0001F600".encode() * MAX_ID_LENGTH + b'"'),
    "id of 257 characters beyond the BMP": with_fields(
        b',"campaign_id":"' + "\U0001F600".encode() * (MAX_ID_LENGTH + 1) + b'"'),
    "whitespace-only title": b'{"id":"a","tenant_id":"t-typed","user_id":"u","content":'
                             b'{"body":"b","title":" \\t"},"created_at":1796587573471}',
    "content with neither body nor template": b'{"id":"a","tenant_id":"t-typed","user_id":"u",'
                                              b'"content":{"title":"t"},"created_at":1796587573471}',
    "created_at in seconds": b'{"id":"a","tenant_id":"t-typed","user_id":"u","content":'
                             b'{"body":"b"},"created_at":1796587573}',
    "expires before created": with_fields(b',"expires_at":1796587573000'),
    "expires as created": with_fields(b',"expires_at":1796587573471'),
    "a tenant not seen yet": b'{"id":"a","tenant_id":"fresh-tenant-42","user_id":"u",'
                             b'"content":{"body":"b"},"created_at":1796587573471}',
    "a bad tenant": b'{"id":"a","tenant_id":"bad:tenant","user_id":"u",'
                    b'"content":{"body":"b"},"created_at":1796587573471}',
    "to null": with_fields(b',"to":null'),
    "unknown platform": with_fields(b',"to":{"platform":"web"}'),
    "bad phone": with_fields(b',"to":{"phone":"+0123"}'),
    "bad email": with_fields(b',"to":{"email":"a@b"}'),
    "good phone and email": with_fields(b',"to":{"phone":"+15550100","email":"a@b.io"}'),
    "unknown field in to": with_fields(b',"to":{"pager":"x"}'),
    "null record": b"null",
    "an array": b"[1]",
    "empty": b"",
}


@pytest.mark.parametrize("raw", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.parametrize("priority", ["critical", "promotional"])
def test_hostile_records_get_the_readers_answer(raw, priority):
    assert parsed(raw, priority) == reader(raw, priority)


def test_a_valid_record_is_read_by_the_typed_path():
    """The typed path is taken for a contract record (else it would only cost time)."""
    raw = with_fields(b',"priority":"critical","channels":["push","sms"],"seq":3,'
                      b'"to":{"push_token":"tok","platform":"ios","phone":"+15550100"},'
                      b'"campaign_id":"c-1","send_at":1796587573500,"expires_at":1796587574471')
    n = typed_decode(raw, "critical", TTL)
    assert n is not None and n == reader(raw, "critical")[1]
    assert (n.channels, n.seq, n.to.phone, n.expires_at) == (("push", "sms"), 3, "+15550100",
                                                              1796587574471)


# ---------------------------------------------------------------- random records

anything = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=6)
REMOVE = object()  # a mutation that leaves the field out
# Per field: values the contract takes, then values that break a rule (or lie on its edge).
FIELDS = {
    ("id",): (["n-1", "é😀"], ["a/b", " ", "", "x" * (MAX_ID_LENGTH + 1), "a\x00", REMOVE]),
    ("tenant_id",): ([TENANT], ["other-t", "bad:t", "", 7, REMOVE]),
    ("user_id",): (["u-1", "x" * MAX_ID_LENGTH], ["u 1", "\u2028", REMOVE]),
    ("priority",): (["critical", "promotional", REMOVE], ["x", None]),
    ("channels",): ([["push"], ["sms", "email"], None, REMOVE], [[], ["fax"], ["push", "push"]]),
    ("to",): ([{"push_token": "tok", "platform": "ios"}, None, REMOVE], [[], "x"]),
    ("to", "platform"): (["android", None, REMOVE], ["web", " "]),
    ("to", "phone"): (["+15550100", None, REMOVE], ["+0155", "15550100", "+1", 5]),
    ("to", "email"): (["a@b.io", REMOVE], ["a@b", "@b.io", "a b@c.io"]),
    ("to", "pager"): ([REMOVE], ["x"]),
    ("content",): ([{"body": "b"}, {"template": "t-1", "vars": {"a": [1, 2.5]}}], [None, [], REMOVE]),
    ("content", "title"): (["Hi", None, REMOVE], ["", " ", "x" * 1025]),
    ("content", "body"): (["b", "x" * MAX_BODY_LENGTH],
                          ["", "\t", "x" * (MAX_BODY_LENGTH + 1), REMOVE]),
    ("content", "data"): ([{"k": "v"}, {}, None, REMOVE], [{"k": 1}, ["k"]]),
    ("content", "vars"): ([{"a": {"b": [True, None]}}, None, REMOVE], [[1], "v", 2**70]),
    ("created_at",): ([CREATED], [1_796_587_573, 10**13, True, 1.7e12, REMOVE]),
    ("expires_at",): ([CREATED + 60_000, None, REMOVE], [CREATED, CREATED - 1, 10**13]),
    ("seq",): ([0, 7, 2**63 - 1, None, REMOVE], [-1, True, 2.0, 2**63, 2**65]),
    ("campaign_id",): (["c-1", None, REMOVE], ["c/1", ""]),
    ("send_at",): ([CREATED + 1, None, REMOVE], [5, 10**13]),
    ("extra",): ([REMOVE], ["x", None]),
}


@st.composite
def records(draw, priority: str):
    """The contract's record of class ``priority`` with some fields changed: mostly to values
    it takes, at times to one that breaks a rule, or to anything at all."""
    record = json.loads(json.dumps({**BASE, "priority": priority, "expires_at": CREATED + 1,
                                    "to": {"push_token": "tok", "platform": "ios"}}))
    for path in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=4)):
        good, bad = FIELDS[path]
        value = draw(st.one_of(st.sampled_from(good), st.sampled_from(good),
                               st.sampled_from(good), st.sampled_from(bad), anything))
        parent = record
        for name in path[:-1]:
            parent = parent.get(name) if isinstance(parent.get(name), dict) else None
            if parent is None:
                break
        if parent is None:
            continue
        if value is REMOVE:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = value
    return record


TAKEN = []  # how many random records the typed path read (checked below: it must be many)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["critical", "promotional"]).flatmap(
    lambda priority: st.tuples(st.just(priority), records(priority))), st.booleans())
def test_random_records_get_the_readers_answer(drawn, as_text):
    priority, record = drawn
    raw = json.dumps(record, ensure_ascii=False)
    raw = raw if as_text else raw.encode()
    TAKEN.append(typed_decode(raw, priority, TTL) is not None)
    assert parsed(raw, priority) == reader(raw, priority)


def test_random_records_exercise_both_paths():
    """The property above held on records each path read (not only on the reader's)."""
    if not TAKEN:
        test_random_records_get_the_readers_answer()
    assert 0.1 < sum(TAKEN) / len(TAKEN) < 0.9, (sum(TAKEN), len(TAKEN))


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=6), st.integers(0, 200), st.sampled_from(["critical", "promotional"]))
def test_bytes_spliced_into_a_valid_record_get_the_readers_answer(junk, at, priority):
    valid = with_fields(b',"to":{"push_token":"tok","phone":"+15550100"},"seq":1')
    at = at % (len(valid) + 1)
    raw = valid[:at] + junk + valid[at:]
    assert parsed(raw, priority) == reader(raw, priority)
