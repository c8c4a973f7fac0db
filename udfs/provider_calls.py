"""Calling the providers from inside a Flink operator.

``BlockingSender`` is the walking skeleton's call stage: one request at a time on a kept-alive
session, through the engine-free adapters in ``herald.providers``. The delivery-core issue
replaces it with a batched, concurrent stage chosen by measurement.
"""
from __future__ import annotations

import requests

from herald import states
from herald.models import Notification, Status
from herald.providers.base import clock_ms
from herald.providers.exceptions import ProviderError
from herald.providers.registry import Registry
from herald.settings import Settings


class BlockingSender:
    """Send one notification over its first channel's provider and report a Status."""

    def __init__(self, settings: Settings, registry: Registry | None = None):
        self.settings = settings
        self.registry = registry or Registry()
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def send(self, n: Notification) -> Status:
        channel = n.channels[0]
        try:
            adapter = self.registry.for_channel(channel, n.to.platform)
            request = adapter.build_request(n, n.to, self.settings)
        except ProviderError as exc:
            return Status.of(n, states.FAILED, clock_ms(), channel=channel, detail=str(exc))
        if request.http2:
            return Status.of(n, states.FAILED, clock_ms(), channel=channel, provider=adapter.name,
                             detail="the skeleton sender speaks HTTP/1.1 only")
        try:
            answer = self.session.request(request.method, request.url, data=request.body,
                                          headers=dict(request.headers),
                                          timeout=self.settings.provider_timeout_s)
            outcome = adapter.classify(answer.status_code, answer.headers, answer.content)
        except requests.RequestException as exc:
            outcome = adapter.transport_error(exc)
        done = clock_ms()
        state = states.DELIVERED if outcome.ok else states.FAILED
        return Status.of(n, state, done, channel=channel, provider=adapter.name, attempt=1,
                         latency_ms=done - n.created_at, detail=outcome.detail or None)
