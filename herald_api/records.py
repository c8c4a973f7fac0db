"""Segment bodies; user records live in the core
(``herald.users``, re-exported here for the API's handlers and older imports).

Engine-free (no HTTP, Kafka or Redis here).
"""
from __future__ import annotations

import io
from typing import Mapping

import pyarrow as pa
import pyarrow.json as pa_json

from herald.campaigns import check_named_body, check_user_ids
from herald.errors import ValidationError
from herald.segments import check_ids
from herald.users import (CLOCK, LOCALE, USER_FIELDS, QuietHours, UserRecord,  # noqa: F401
                          check_user_id, user_from_dict)


SEGMENT_FIELDS = frozenset({"tenant_id", "name", "user_ids"})
SEGMENT_SCHEMA = pa.schema([("user_ids", pa.list_(pa.string())), ("tenant_id", pa.string()),
                            ("name", pa.string())])


def read_segment_json(raw: bytes) -> dict | None:
    """A segment body decoded by Arrow's JSON reader, which works without the GIL (orjson
    holds it for the whole document): ``{"tenant_id", "name", "user_ids": pa.Array}``. None
    for anything it does not take as it is (a wrong type, an unknown field, bad JSON): the
    caller decodes those with the strict reader, which names the problem.

    Only a body that starts as an object is handed to Arrow: its reader (16.x) dereferences a
    null pointer on a top-level ``null`` (apache/arrow#47409), which would take the API down.
    """
    if not raw.lstrip(b" \t\r\n").startswith(b"{"):
        return None
    try:
        table = pa_json.read_json(
            io.BytesIO(raw),
            read_options=pa_json.ReadOptions(block_size=len(raw) + 1, use_threads=False),
            parse_options=pa_json.ParseOptions(explicit_schema=SEGMENT_SCHEMA,
                                               unexpected_field_behavior="error",
                                               newlines_in_values=True))
        if table.num_rows != 1:
            return None
        table = table.combine_chunks()
        table.validate(full=True)  # the reader does not check UTF-8 in strings
    except (pa.ArrowException, ValueError):
        return None
    row = {name: table.column(name)[0] for name in ("tenant_id", "name")}
    lists = table.column("user_ids").chunk(0)
    return {"tenant_id": row["tenant_id"].as_py(), "name": row["name"].as_py(),
            "user_ids": lists.flatten() if lists[0].is_valid else None}


def segment_from_dict(obj: Mapping, name: str) -> tuple[str, tuple[str, ...] | pa.Array]:
    """Validate a segment body ``{"user_ids": [...]}`` for the segment ``name`` (from the path).
    ``user_ids`` is a JSON list, or an Arrow array from ``read_segment_json``."""
    name = check_named_body(obj, name, SEGMENT_FIELDS, "a segment")
    ids = obj.get("user_ids")
    if ids is None:
        raise ValidationError("missing required field 'user_ids'", "user_ids", "missing_field")
    if isinstance(ids, pa.Array):
        return name, check_ids(ids)
    return name, check_user_ids(ids, "user_ids", allow_empty=True)
