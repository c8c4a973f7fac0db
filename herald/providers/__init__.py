"""Provider adapters: a notification → one HTTP request; an HTTP answer → one Outcome.

Plain Python (no engine, no Kafka, no HTTP client or server): the delivery engine chooses and
owns the client. See base.py for the interface and registry.py for who serves which channel.
"""
from herald.providers.apns import ApnsAdapter, apns_id_for
from herald.providers.base import (OK, PERMANENT, RETRYABLE, THROTTLED, Kind, Outcome,
                                   ProviderAdapter, ProviderRequest)
from herald.providers.exceptions import (EmptyContentError, MissingContactError, ProviderConfigError,
                                         ProviderError)
from herald.providers.fcm import FcmAdapter
from herald.providers.registry import ROUTES, Registry, provider_name
from herald.providers.sendgrid import SendGridAdapter
from herald.providers.twilio import TwilioAdapter

__all__ = ["OK", "PERMANENT", "RETRYABLE", "THROTTLED", "ApnsAdapter", "EmptyContentError",
           "FcmAdapter", "Kind", "MissingContactError", "Outcome", "ProviderAdapter",
           "ProviderConfigError", "ProviderError", "ProviderRequest", "ROUTES", "Registry",
           "SendGridAdapter", "TwilioAdapter", "apns_id_for", "provider_name"]
