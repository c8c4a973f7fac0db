"""Segment bodies and the notification checks the API adds; user records live in the core
(``herald.users``, re-exported here for the API's handlers and older imports).

Engine-free (no HTTP, Kafka or Redis here).
"""
from __future__ import annotations

from typing import Mapping

from herald.campaigns import check_channel_types, check_epoch_range, check_named_body, check_user_ids
from herald.errors import ValidationError
from herald.users import (CLOCK, LOCALE, USER_FIELDS, QuietHours, UserRecord,  # noqa: F401
                          check_user_id, user_from_dict)


def check_notification_types(obj: Mapping) -> None:
    """Checks the notification reader misses: it tests ``priority`` and the channel names
    against sets, which raises TypeError (not ValidationError) for a JSON object or list, and
    adds the default TTL to ``created_at``, which must stay within 64 bits for the JSON out."""
    priority = obj.get("priority")
    if priority is not None and not isinstance(priority, str):
        raise ValidationError(f"'priority' must be 'critical' or 'promotional', got "
                              f"{type(priority).__name__}", "priority")
    check_channel_types(obj.get("channels"))
    check_epoch_range(obj, "created_at", "expires_at", "send_at")


SEGMENT_FIELDS = frozenset({"tenant_id", "name", "user_ids"})


def segment_from_dict(obj: Mapping, name: str) -> tuple[str, tuple[str, ...]]:
    """Validate a segment body ``{"user_ids": [...]}`` for the segment ``name`` (from the path)."""
    name = check_named_body(obj, name, SEGMENT_FIELDS, "a segment")
    if obj.get("user_ids") is None:
        raise ValidationError("missing required field 'user_ids'", "user_ids", "missing_field")
    return name, check_user_ids(obj["user_ids"], "user_ids", allow_empty=True)
