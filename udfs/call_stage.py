"""The provider-call stage: a whole batch of released notifications, sent at once.

The batch arrives from a Flink SQL window (Java collects it; Python is entered once per batch,
not once per record). Per batch: expiry is checked against the wall clock, the ids are claimed
in Redis in one round trip (`udfs.markers`), every request goes out concurrently on a lean
keep-alive client with one user's requests chained so they reach the provider in order, the
answers are classified by the provider adapters, and the markers are written in one round trip.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import redis

from herald import states
from herald.models import Notification, Status
from herald.providers.base import clock_ms
from herald.providers.exceptions import ProviderError
from herald.providers.registry import Registry
from herald.settings import Settings
from udfs.http_client import BlockingBatchClient, HttpClientError
from udfs.markers import SentMarkers

ACCEPTED_BEFORE_RESTART = "accepted by the provider before a restart (sent marker); not sent again"
RESENT_AFTER_CRASH = "in flight at a crash; re-sent (at-least-once for the ambiguous call)"


class BatchCalls:
    """Send a batch of notifications (in per-user order) and report one Status per notification."""

    def __init__(self, settings: Settings, registry: Registry | None = None):
        self.settings = settings
        self.registry = registry or Registry()
        self.client = BlockingBatchClient(max_connections=settings.provider_max_in_flight,
                                          timeout_s=settings.provider_timeout_s)
        self.redis = redis.Redis(host=settings.redis_host, port=settings.redis_port)
        self.markers = SentMarkers(self.redis, settings.dedup_ttl_ms)

    def close(self) -> None:
        self.client.close()
        self.redis.close()

    def send_all(self, batch: Sequence[Notification]) -> list[Status]:
        at = clock_ms()
        out: list[Status] = []
        live = []
        for n in batch:
            if n.is_expired(at):
                out.append(Status.of(n, states.EXPIRED, at, detail="expired before the provider call"))
            else:
                live.append(n)
        sent_before, in_flight_at_crash = self.markers.claim([n.id for n in live])
        calls, requests = [], []
        for n in live:
            if n.id in sent_before:
                # A replay after a restore: the provider has it, and the status said so may
                # have been lost with the crash (the status sink flushes at checkpoints).
                out.append(Status.of(n, states.DELIVERED, at, channel=n.channels[0],
                                     detail=ACCEPTED_BEFORE_RESTART))
                continue
            channel = n.channels[0]
            try:
                adapter = self.registry.for_channel(channel, n.to.platform)
                requests.append(adapter.build_request(n, n.to, self.settings, now_ms=at))
                calls.append((n, channel, adapter))
            except ProviderError as exc:
                out.append(Status.of(n, states.FAILED, at, channel=channel, detail=str(exc)))
        answers = self.client.send_batch(requests, self.settings.provider_max_in_flight,
                                         keys=[n.user_id for n, _, _ in calls]) if requests else []
        done = clock_ms()
        accepted, released = [], [n.id for n in live if n.id not in sent_before]
        for (n, channel, adapter), answer in zip(calls, answers):
            outcome = (adapter.transport_error(answer) if isinstance(answer, HttpClientError)
                       else adapter.classify(answer.status, answer.headers, answer.body))
            status = Status.of(n, states.DELIVERED if outcome.ok else states.FAILED, done,
                               channel=channel, provider=adapter.name, attempt=1,
                               latency_ms=done - n.created_at, detail=outcome.detail or None)
            if outcome.ok:
                accepted.append(n.id)
                if n.id in in_flight_at_crash:
                    status = replace(status, detail=RESENT_AFTER_CRASH)
            out.append(status)
        self.markers.settle(accepted, set(released) - set(accepted))
        return out


def make_call_stage(settings: Settings) -> BatchCalls:
    return BatchCalls(settings)
