"""What a user's record changes about one notification: whose contacts, which channels, when.

Plain decisions for the call stage (``udfs.call_stage``), which looks the users of a batch up
in one round trip and applies these per notification:

* ``needs_user``: whether the lookup is needed at all (promotional: always, for opt-outs and
  quiet hours; critical: when a channel lacks an inline contact, a template needs the locale,
  or the settings make preferences apply to it);
* ``contacts_for``: inline ``to`` contacts first, gaps filled from the user record;
* ``skip_opted_out``: from the current channel on, the opted-out channels to skip (each gets an
  ``opted_out`` event) and the channel to use, if any is left;
* ``quiet_hold``: until when a notification waits for the user's quiet hours to end, or
  whether it expires first.
"""
from __future__ import annotations

from typing import Sequence

from herald import states
from herald.models import Contacts, Notification
from herald.quiet_hours import quiet_until
from herald.users import UserRecord

_CONTACT_FIELD = {states.PUSH: "push_token", states.SMS: "phone", states.EMAIL: "email"}


def has_contact(to: Contacts, channel: str) -> bool:
    if channel == states.PUSH:
        return to.push_token is not None and to.platform is not None
    return getattr(to, _CONTACT_FIELD[channel]) is not None


def needs_user(n: Notification, *, critical_opt_outs: bool, critical_quiet_hours: bool) -> bool:
    if n.priority != states.CRITICAL or critical_opt_outs or critical_quiet_hours:
        return True
    if n.content.template is not None:
        return True
    to = n.to
    return not all(has_contact(to, ch) for ch in n.channels)


def contacts_for(to: Contacts, user: UserRecord | None) -> Contacts:
    """Inline contacts win field by field; the user record fills what is missing. A push token
    keeps the platform it came with (an inline token is not paired with the record's one)."""
    if user is None:
        return to
    u = user.contacts
    if to.push_token is not None:
        token, platform = to.push_token, to.platform or (u.platform if u.push_token == to.push_token
                                                         else None)
    else:
        token, platform = u.push_token, u.platform
    merged = Contacts(push_token=token, platform=platform, phone=to.phone or u.phone,
                      email=to.email or u.email)
    return to if merged == to else merged


def skip_opted_out(channels: Sequence[str], current: str, opt_outs: Sequence[str]
                   ) -> tuple[list[str], str | None]:
    """(opted-out channels skipped from ``current`` on, the channel to use or None)."""
    if current not in opt_outs:
        return [], current
    skipped = []
    for channel in channels[list(channels).index(current):]:
        if channel not in opt_outs:
            return skipped, channel
        skipped.append(channel)
    return skipped, None


HOLD = "hold"
EXPIRE = "expire"


def quiet_hold(n: Notification, user: UserRecord | None, now_ms: int, *,
               bypass_critical: bool) -> tuple[str, int] | None:
    """None: send now. Else (HOLD, end of the quiet period), or (EXPIRE, end) when ``n``
    expires before the quiet period ends (it can never be sent)."""
    if user is None or user.quiet_hours is None:
        return None
    if bypass_critical and n.priority == states.CRITICAL:
        return None
    until = quiet_until(user.quiet_hours, now_ms)
    if until is None:
        return None
    return (EXPIRE if until >= n.expires_at else HOLD), until


def user_values(user_id: str, user: UserRecord | None) -> dict[str, str]:
    """What a template may take from the user record (after ``content.vars``)."""
    if user is None:
        return {"user_id": user_id}
    c = user.contacts
    return {k: v for k, v in (("user_id", user_id), ("locale", user.locale),
                              ("email", c.email), ("phone", c.phone)) if v is not None}
