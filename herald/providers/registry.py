"""Which adapter serves a (channel, platform): push+ios → apns, push+android → fcm,
sms → twilio, email → sendgrid. A Registry holds one adapter of each, so the APNs provider
token is shared by every send in the process; tests pass their own adapters."""
from __future__ import annotations

from typing import Iterable

from herald import states
from herald.providers.apns import ApnsAdapter
from herald.providers.base import ProviderAdapter
from herald.providers.exceptions import MissingContactError, ProviderError
from herald.providers.fcm import FcmAdapter
from herald.providers.sendgrid import SendGridAdapter
from herald.providers.twilio import TwilioAdapter

ROUTES: dict[tuple[str, str | None], str] = {
    (states.PUSH, "ios"): "apns",
    (states.PUSH, "android"): "fcm",
    (states.SMS, None): "twilio",
    (states.EMAIL, None): "sendgrid",
}


def provider_name(channel: str, platform: str | None = None) -> str:
    """The provider for a channel; push needs the device platform to choose."""
    if channel == states.PUSH:
        if not platform:
            raise MissingContactError("push needs a platform (ios or android)", "to.platform")
        key = (channel, platform)
    else:
        key = (channel, None)
    try:
        return ROUTES[key]
    except KeyError:
        raise ProviderError(f"no provider for channel {channel!r}"
                            + (f" on platform {platform!r}" if platform else "")) from None


class Registry:
    def __init__(self, adapters: Iterable[ProviderAdapter] | None = None):
        if adapters is None:
            adapters = (FcmAdapter(), ApnsAdapter(), TwilioAdapter(), SendGridAdapter())
        self.by_name: dict[str, ProviderAdapter] = {a.name: a for a in adapters}

    def for_channel(self, channel: str, platform: str | None = None) -> ProviderAdapter:
        name = provider_name(channel, platform)
        try:
            return self.by_name[name]
        except KeyError:
            raise ProviderError(f"no adapter registered for provider {name!r}") from None

    def __getitem__(self, name: str) -> ProviderAdapter:
        return self.by_name[name]

    def __iter__(self):
        return iter(self.by_name.values())
