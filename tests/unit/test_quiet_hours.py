"""Quiet hours on the user's wall clock: inside or not, and when the period ends, across
midnight and on both DST transition days."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.models import Contacts, notification_from_dict
from herald.preferences import EXPIRE, HOLD, quiet_hold
from herald.quiet_hours import quiet_until
from herald.users import QuietHours, UserRecord

BERLIN = "Europe/Berlin"


def at(text: str, tz: str = BERLIN, fold: int = 0) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz), fold=fold)
               .timestamp() * 1000)


def local(ms: int | None, tz: str = BERLIN) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, ZoneInfo(tz)).isoformat()


@pytest.mark.parametrize("now, end", [
    ("2025-06-02T13:00", "2025-06-02T14:00:00+02:00"),
    ("2025-06-02T12:00", "2025-06-02T14:00:00+02:00"),   # the start is inside
    ("2025-06-02T13:59:59.999", "2025-06-02T14:00:00+02:00"),
    ("2025-06-02T14:00", None),                           # the end is outside
    ("2025-06-02T11:59", None),
    ("2025-06-02T23:00", None),
])
def test_a_daytime_window(now, end):
    assert local(quiet_until(QuietHours("12:00", "14:00", BERLIN), at(now))) == end


@pytest.mark.parametrize("now, end", [
    ("2025-06-02T22:00", "2025-06-03T07:00:00+02:00"),   # evening: ends tomorrow morning
    ("2025-06-02T23:59", "2025-06-03T07:00:00+02:00"),
    ("2025-06-03T00:00", "2025-06-03T07:00:00+02:00"),   # after midnight: ends this morning
    ("2025-06-03T06:59", "2025-06-03T07:00:00+02:00"),
    ("2025-06-03T07:00", None),
    ("2025-06-03T21:59", None),
])
def test_a_window_across_midnight(now, end):
    assert local(quiet_until(QuietHours("22:00", "07:00", BERLIN), at(now))) == end


def test_the_same_window_is_read_in_the_users_zone():
    q = QuietHours("22:00", "07:00", "America/New_York")
    now = at("2025-06-03T03:00", "UTC")  # 23:00 the evening before in New York
    assert local(quiet_until(q, now), "America/New_York") == "2025-06-03T07:00:00-04:00"
    assert quiet_until(QuietHours("22:00", "07:00", "UTC"), now) == at("2025-06-03T07:00", "UTC")


def test_seconds_make_a_window_end_between_minutes():
    q = QuietHours("12:00", "12:00:05", BERLIN)
    assert quiet_until(q, at("2025-06-02T12:00:04")) == at("2025-06-02T12:00:05")
    assert quiet_until(q, at("2025-06-02T12:00:05")) is None


def test_spring_forward_an_end_in_the_skipped_hour_ends_at_the_jump():
    # 2025-03-30 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 never happens.
    q = QuietHours("22:00", "02:30", BERLIN)
    until = quiet_until(q, at("2025-03-30T01:45"))
    assert local(until) == "2025-03-30T03:00:00+02:00"
    assert until == int(datetime(2025, 3, 30, 1, 0, tzinfo=timezone.utc).timestamp() * 1000)
    assert quiet_until(q, until) is None


def test_spring_forward_a_night_is_an_hour_shorter():
    q = QuietHours("22:00", "07:00", BERLIN)
    start, until = at("2025-03-29T22:00"), quiet_until(QuietHours("22:00", "07:00", BERLIN),
                                                        at("2025-03-29T22:00"))
    assert local(until) == "2025-03-30T07:00:00+02:00"
    assert until - start == 8 * 3_600_000
    assert quiet_until(q, until - 1) == until


def test_fall_back_an_end_in_the_repeated_hour_is_the_next_one_not_a_past_one():
    # 2025-10-26 in Berlin: 03:00 CEST goes back to 02:00 CET; 02:00-02:59 happen twice.
    q = QuietHours("01:00", "02:30", BERLIN)
    first_pass = at("2025-10-26T01:30")
    assert local(quiet_until(q, first_pass)) == "2025-10-26T02:30:00+02:00"
    assert quiet_until(q, at("2025-10-26T02:40")) is None             # first 02:40, CEST
    second_pass = at("2025-10-26T02:00", fold=1)                      # 02:00 again, CET
    until = quiet_until(q, second_pass)
    assert local(until) == "2025-10-26T02:30:00+01:00" and until > second_pass


def test_fall_back_a_night_is_an_hour_longer():
    start = at("2025-10-25T22:00")
    until = quiet_until(QuietHours("22:00", "07:00", BERLIN), start)
    assert until - start == 10 * 3_600_000


ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC",
         "America/Santiago", "Pacific/Chatham", "Europe/London"]
clock = st.builds(lambda h, m, s: f"{h:02d}:{m:02d}" + (f":{s:02d}" if s else ""),
                  st.integers(0, 23), st.integers(0, 59), st.sampled_from([0, 0, 30]))
# instants in 2025, with extra weight on the days around DST changes
instants = st.one_of(
    st.integers(at("2025-01-01T00:00", "UTC"), at("2025-12-31T00:00", "UTC")),
    st.sampled_from(["2025-03-09", "2025-03-30", "2025-04-06", "2025-09-28", "2025-10-26",
                     "2025-11-02", "2025-04-05"]).flatmap(
        lambda day: st.integers(at(f"{day}T00:00", "UTC") - 86_400_000,
                                at(f"{day}T00:00", "UTC") + 86_400_000)))


@settings(max_examples=400, deadline=None)
@given(start=clock, end=clock, tz=st.sampled_from(ZONES), now=instants,
       fraction=st.floats(0, 1, exclude_max=True))
def test_the_end_is_ahead_and_stays_the_end_while_it_is_quiet(start, end, tz, now, fraction):
    q = QuietHours(start, end, tz)
    until = quiet_until(q, now)
    wall = datetime.fromtimestamp(now / 1000, ZoneInfo(tz))
    t = wall.hour * 3600 + wall.minute * 60 + wall.second
    s_, e_ = (sum(int(x) * f for x, f in zip(v.split(":"), (3600, 60, 1))) for v in (start, end))
    inside = (s_ <= t < e_) if s_ < e_ else (t >= s_ or t < e_)
    if s_ == e_:
        inside = False
    if until is None:
        assert not inside
        return
    assert inside
    assert now < until <= now + 26 * 3_600_000        # ahead, never in the past: no hold loop
    later = now + int((until - now) * fraction)
    assert quiet_until(q, later) == until               # quiet all the way to the same end


def notification(priority: str, expires_in_ms: int, now: int):
    return notification_from_dict({
        "id": "n1", "tenant_id": "acme", "user_id": "u1", "priority": priority,
        "content": {"body": "hi"}, "created_at": now - 1000, "expires_at": now + expires_in_ms})


def user(q: QuietHours | None) -> UserRecord:
    return UserRecord("u1", Contacts(push_token="t", platform="android"), quiet_hours=q)


def test_a_promotional_notification_is_held_until_the_end():
    now = at("2025-06-02T23:00")
    q = QuietHours("22:00", "07:00", BERLIN)
    assert quiet_hold(notification("promotional", 12 * 3_600_000, now), user(q), now,
                      bypass_critical=True) == (HOLD, at("2025-06-03T07:00"))


def test_one_that_expires_before_the_end_expires():
    now = at("2025-06-02T23:00")
    q = QuietHours("22:00", "07:00", BERLIN)
    end = at("2025-06-03T07:00")
    n = notification("promotional", end - now, now)    # expires exactly at the end: too late
    assert quiet_hold(n, user(q), now, bypass_critical=True) == (EXPIRE, end)


def test_critical_bypasses_quiet_hours_unless_the_setting_says_not():
    now = at("2025-06-02T23:00")
    q = QuietHours("22:00", "07:00", BERLIN)
    n = notification("critical", 12 * 3_600_000, now)
    assert quiet_hold(n, user(q), now, bypass_critical=True) is None
    assert quiet_hold(n, user(q), now, bypass_critical=False) == (HOLD, at("2025-06-03T07:00"))


def test_no_quiet_hours_or_no_user_never_holds():
    now = at("2025-06-02T23:00")
    n = notification("promotional", 3_600_000, now)
    assert quiet_hold(n, user(None), now, bypass_critical=True) is None
    assert quiet_hold(n, None, now, bypass_critical=True) is None
    assert quiet_hold(n, user(QuietHours("09:00", "17:00", BERLIN)), now,
                      bypass_critical=True) is None
