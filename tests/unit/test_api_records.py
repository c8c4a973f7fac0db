"""The API's segment body reader: Arrow for the common case, None (the strict reader's turn)
for anything else, and never a crash on hostile input."""
from __future__ import annotations

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.errors import ValidationError
from herald_api.records import read_segment_json, segment_from_dict


def test_a_segment_body_is_read_as_one_arrow_column():
    body = read_segment_json(orjson.dumps({"user_ids": ["a", "ü-2", 'q"3'], "name": "s",
                                           "tenant_id": "acme"}))
    assert isinstance(body["user_ids"], pa.Array)
    assert body["user_ids"].to_pylist() == ["a", "ü-2", 'q"3']
    assert (body["name"], body["tenant_id"]) == ("s", "acme")
    assert segment_from_dict(body, "s")[1].to_pylist() == ["a", "ü-2", 'q"3']


def test_a_pretty_printed_body_is_read_too():
    body = read_segment_json(b'{\n  "user_ids": [\n    "a",\n    "b"\n  ]\n}\n')
    assert body["user_ids"].to_pylist() == ["a", "b"]


@pytest.mark.parametrize("raw", [
    b"null", b" null,", b"null{", b"\nnull", b"[]", b"1", b'"x"', b"true",
    b'{"user_ids": ["a", 2]}', b'{"user_ids": "a"}', b'{"user_ids": ["a"], "x": 1}',
    b'{"user_ids": ["a"]} {"user_ids": ["b"]}', b'{"user_ids": ["a"], "user_ids": ["b"]}',
    b'{"user_ids": ["ok\xff"]}', b'{"user_ids": [', b'{"tenant_id": 5, "user_ids": []}',
])
def test_what_arrow_does_not_take_as_it_is_goes_to_the_strict_reader(raw):
    assert read_segment_json(raw) is None


def test_the_arrow_path_keeps_the_segment_rules():
    with pytest.raises(ValidationError, match="twice") as e:
        segment_from_dict(read_segment_json(b'{"user_ids": ["a", "b", "a"]}'), "s")
    assert e.value.field == "user_ids"
    with pytest.raises(ValidationError, match="non-printable") as e:
        segment_from_dict(read_segment_json(b'{"user_ids": ["a\\u0000b"]}'), "s")
    with pytest.raises(ValidationError, match="missing required field 'user_ids'"):
        segment_from_dict(read_segment_json(b'{"name": "s"}'), "s")
    with pytest.raises(ValidationError, match="differs from the path"):
        segment_from_dict(read_segment_json(b'{"name": "t", "user_ids": []}'), "s")


JSON_BITS = st.sampled_from(['{', '}', '[', ']', '"', ':', ',', ' ', '\n', 'null', '1', 'true',
                             '"user_ids"', '"tenant_id"', '"name"', '"a"', '\\', '\x00'])


@settings(max_examples=2_000)
@given(st.lists(JSON_BITS, max_size=25).map("".join))
def test_any_text_is_read_or_refused_never_a_crash(text):
    body = read_segment_json(text.encode())
    assert body is None or set(body) == {"tenant_id", "name", "user_ids"}
