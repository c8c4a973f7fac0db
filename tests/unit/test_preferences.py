"""User preferences as decisions: contacts from the record, opt-outs and the channel to use."""
from __future__ import annotations

import pytest

from herald.models import Contacts, notification_from_dict
from herald.preferences import contacts_for, needs_user, skip_opted_out, user_values
from herald.retry import PERMANENT, FallbackPolicy
from herald.users import UserRecord

USER = UserRecord("u1", Contacts(push_token="rec-tok", platform="ios", phone="+15550100",
                                 email="a@b.c"), locale="de", opt_outs=("sms",))


def n(**overrides):
    doc = {"id": "n1", "tenant_id": "acme", "user_id": "u1", "priority": "critical",
           "channels": ["push", "sms"], "to": {"push_token": "t", "platform": "android",
                                              "phone": "+1555"},
           "content": {"body": "hi"}, "created_at": 1_764_000_000_000,
           "expires_at": 1_764_000_060_000}
    doc.update(overrides)
    return notification_from_dict(doc)


def test_contacts_come_from_the_record_when_none_are_inline():
    assert contacts_for(Contacts(), USER) == USER.contacts


def test_inline_contacts_win_and_the_record_fills_the_gaps():
    merged = contacts_for(Contacts(push_token="inline", platform="android"), USER)
    assert merged == Contacts(push_token="inline", platform="android", phone="+15550100",
                              email="a@b.c")


def test_an_inline_token_does_not_take_the_records_platform():
    merged = contacts_for(Contacts(push_token="inline"), USER)
    assert merged.push_token == "inline" and merged.platform is None
    same = contacts_for(Contacts(push_token="rec-tok"), USER)
    assert same.platform == "ios"


def test_no_user_leaves_the_inline_contacts():
    to = Contacts(phone="+1")
    assert contacts_for(to, None) is to


@pytest.mark.parametrize("channels, current, opt_outs, expected", [
    (["push", "sms"], "push", (), ([], "push")),
    (["push", "sms"], "push", ("push",), (["push"], "sms")),
    (["push", "sms", "email"], "push", ("push", "sms"), (["push", "sms"], "email")),
    (["push", "sms", "email"], "push", ("sms",), ([], "push")),       # later ones: when reached
    (["push", "sms", "email"], "sms", ("sms",), (["sms"], "email")),  # reached by a fallback
    (["push", "sms"], "push", ("push", "sms"), (["push", "sms"], None)),
    (["email"], "email", ("email",), (["email"], None)),
])
def test_opted_out_channels_are_skipped_to_the_next_allowed_one(channels, current, opt_outs,
                                                                 expected):
    assert skip_opted_out(channels, current, opt_outs) == expected


def test_a_fallback_after_a_failure_then_meets_the_opt_out():
    """The call stage's order: the policy picks the next channel, the opt-out skips it."""
    following = FallbackPolicy().next_channel(["push", "sms", "email"], "push", PERMANENT)
    assert skip_opted_out(["push", "sms", "email"], following, USER.opt_outs) == (["sms"],
                                                                                   "email")


def test_who_needs_a_lookup():
    covered = n()  # critical, inline contacts for both channels
    assert needs_user(covered, critical_opt_outs=True, critical_quiet_hours=False)
    assert not needs_user(covered, critical_opt_outs=False, critical_quiet_hours=False)
    assert needs_user(covered, critical_opt_outs=False, critical_quiet_hours=True)
    gap = n(channels=["push", "email"])  # no inline email
    assert needs_user(gap, critical_opt_outs=False, critical_quiet_hours=False)
    templated = n(content={"template": "t"})
    assert needs_user(templated, critical_opt_outs=False, critical_quiet_hours=False)
    promo = n(priority="promotional")
    assert needs_user(promo, critical_opt_outs=False, critical_quiet_hours=False)


def test_template_values_from_the_user():
    assert user_values("u1", USER) == {"user_id": "u1", "locale": "de", "email": "a@b.c",
                                       "phone": "+15550100"}
    assert user_values("u9", None) == {"user_id": "u9"}
