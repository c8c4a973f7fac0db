"""Quiet hours: is it quiet for this user now, and when does the quiet period end?

A window is a pair of local wall-clock times in the user's IANA zone: ``[start, end)``, across
midnight when ``end`` is earlier than ``start``. Whether ``now`` is inside is decided on the
local wall clock; the end is the first instant after ``now`` whose local time is ``end``:

* on a spring-forward day an ``end`` inside the skipped hour does not exist: the period ends at
  the transition (the first instant whose wall clock is past ``end``);
* on a fall-back day an ``end`` inside the repeated hour exists twice: the first one after
  ``now`` counts (a quiet period can never end in the past, so a hold can never loop).
"""
from __future__ import annotations

import functools
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from herald.users import QuietHours, clock_seconds



@functools.lru_cache(maxsize=1024)
def _window(start: str, end: str, tz: str) -> tuple[int, int, ZoneInfo]:
    return clock_seconds(start), clock_seconds(end), ZoneInfo(tz)


def quiet_until(q: QuietHours, now_ms: int) -> int | None:
    """The epoch ms at which the quiet period around ``now_ms`` ends, or None if not quiet."""
    start, end, zone = _window(q.start, q.end, q.tz)
    if start == end:
        return None  # an empty window (the readers refuse it; a stored one means nothing)
    local = datetime.fromtimestamp(now_ms / 1000, zone)
    t = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
    today = local.date()
    if start < end:
        if not start <= t < end:
            return None
        end_day = today
    elif t >= start:
        end_day = today + timedelta(days=1)
    elif t < end:
        end_day = today
    else:
        return None
    return _first_instant_at(end_day, end, zone, after_ms=now_ms)


def _first_instant_at(day: date, seconds: int, zone: ZoneInfo, *, after_ms: int) -> int | None:
    """The first instant after ``after_ms`` whose wall clock on ``day`` reads ``seconds`` (or,
    if that wall time is skipped by a DST jump, the instant of the jump)."""
    wall = datetime.combine(day, time(seconds // 3600, seconds // 60 % 60, seconds % 60))
    candidates = []
    for fold in (0, 1):
        aware = wall.replace(tzinfo=zone, fold=fold)
        ms = int(aware.timestamp() * 1000)
        if datetime.fromtimestamp(ms / 1000, zone).replace(tzinfo=None) == wall:
            candidates.append(ms)
    if candidates:
        later = sorted(ms for ms in candidates if ms > after_ms)
        return later[0] if later else None
    # Skipped wall time: fold=1 reads it with the offset after the jump (an earlier instant,
    # still before the jump), fold=0 with the offset before it (a later one, after the jump).
    # The jump lies between; find the first instant whose wall clock is past ``wall``.
    lo = int(wall.replace(tzinfo=zone, fold=1).timestamp() * 1000)
    hi = int(wall.replace(tzinfo=zone, fold=0).timestamp() * 1000)
    lo, hi = min(lo, hi), max(lo, hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid / 1000, zone).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid + 1
    return hi if hi > after_ms else None


def utc_iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
