"""Errors raised while building a provider request (classification never raises)."""
from __future__ import annotations

from herald.errors import HeraldError


class ProviderError(HeraldError):
    """Root of the provider layer's errors."""


class ProviderConfigError(ProviderError):
    """A credential or setting the provider needs is missing or unusable (e.g. a bad APNs key).

    Raised at build time so a missing secret fails loudly on the first send, not as a stream of
    401s from the real provider."""


class MissingContactError(ProviderError):
    """The recipient has no contact for this channel (no token, phone or email): the caller
    should fall back to the next channel rather than call the provider."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class EmptyContentError(ProviderError):
    """The notification has nothing to send on this channel (no rendered body)."""
