"""Which dead letters ``redrive`` takes: filters on a dead letter's id, tenant, reason and time.

Plain Python on the decoded record (no Kafka here), so the rules are unit-tested alone. A dead
letter matches when it passes every filter given; no filter at all matches every one.

* ``ids``: the notification's ``id`` is one of them (exact); a record with no ``id`` (a
  parse-stage letter of malformed input) is matched by its Kafka key instead;
* ``tenant``: ``tenant_id`` equals it (exact);
* ``reason``: a regular expression searched anywhere in ``reason`` (``re.search``, case
  sensitive), so a plain word is a substring match; ``.``, ``(``, ``[`` and the like are
  regex syntax (escape them, or use ``re.escape``'s output);
* ``since_ms``: the letter was written (its ``at``, epoch ms) at or after it; a letter
  without an integer ``at`` does not match.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from herald.errors import ValidationError

DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
           "w": 604_800_000}


def parse_since(text: str, now_ms: int) -> int:
    """``--since``: an ISO 8601 time (``2026-12-05T22:00:00Z``, ``2026-12-05``; no zone =
    UTC) or a duration back from now (``90s``, ``30m``, ``2h``, ``1d``, ``1w``, ``1h30m``);
    the epoch ms it names."""
    value = text.strip()
    if not value:
        raise ValidationError("--since is empty: give an ISO time or a duration like 2h",
                              "since")
    pos, total, parts = 0, 0.0, 0
    while pos < len(value):
        m = DURATION.match(value, pos)
        if m is None:
            break
        total += float(m.group(1)) * UNIT_MS[m.group(2)]
        pos, parts = m.end(), parts + 1
    if parts and pos == len(value):
        return now_ms - int(total)
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValidationError(f"--since {text!r} is neither an ISO time (2026-12-05T22:00:00Z)"
                              " nor a duration (90s, 30m, 2h, 1d, 1w)", "since") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return int(at.timestamp() * 1000)


def compile_reason(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValidationError(f"--reason {pattern!r} is not a valid regular expression: {exc}",
                              "reason") from None


@dataclass(frozen=True)
class DeadLetterFilter:
    ids: frozenset[str] = frozenset()
    tenant: str | None = None
    reason: re.Pattern | None = None
    since_ms: int | None = None

    @property
    def active(self) -> bool:
        return bool(self.ids) or self.tenant is not None or self.reason is not None \
            or self.since_ms is not None

    def matches(self, record: Mapping[str, Any] | None, key: str | None = None) -> bool:
        """Does this dead letter (its decoded JSON, or None if it is not a JSON object) pass?"""
        record = record if isinstance(record, Mapping) else {}
        if self.ids:
            rid = record.get("id")
            if not (isinstance(rid, str) and rid in self.ids
                    or rid is None and key is not None and key in self.ids):
                return False
        if self.tenant is not None and record.get("tenant_id") != self.tenant:
            return False
        if self.reason is not None:
            reason = record.get("reason")
            if not isinstance(reason, str) or self.reason.search(reason) is None:
                return False
        if self.since_ms is not None:
            at = record.get("at")
            if isinstance(at, bool) or not isinstance(at, int) or at < self.since_ms:
                return False
        return True

    def describe(self) -> str:
        parts = []
        if self.ids:
            parts.append("id " + "|".join(sorted(self.ids)))
        if self.tenant is not None:
            parts.append(f"tenant {self.tenant}")
        if self.reason is not None:
            parts.append(f"reason ~ /{self.reason.pattern}/")
        if self.since_ms is not None:
            since = datetime.fromtimestamp(self.since_ms / 1000, timezone.utc)
            parts.append(f"at >= {since.isoformat(timespec='seconds').replace('+00:00', 'Z')}")
        return ", ".join(parts) or "every dead letter"
