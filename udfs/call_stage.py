"""The provider-call stage: given the notifications a user's gate released, in order, send each
once and report a Status for each.

Every attempt first checks expiry against the wall clock and claims the id in Redis
(`udfs.markers`), so neither a late release nor a replay after a restore reaches the provider.
"""
from __future__ import annotations

from dataclasses import replace

import redis

from herald import states
from herald.models import Notification, Status
from herald.providers.base import clock_ms
from herald.settings import Settings
from udfs.markers import SentMarkers
from udfs.provider_calls import BlockingSender

RESENT_AFTER_CRASH = "in flight at a crash; re-sent (at-least-once for the ambiguous call)"


class SequentialCalls:
    """One call at a time, in order: the skeleton's stage, kept as the correctness reference."""

    def __init__(self, settings: Settings):
        self.sender = BlockingSender(settings)
        self.redis = redis.Redis(host=settings.redis_host, port=settings.redis_port)
        self.markers = SentMarkers(self.redis, settings.dedup_ttl_ms)

    def close(self) -> None:
        self.sender.close()
        self.redis.close()

    def send_all(self, batch: list[Notification]) -> list[Status]:
        at = clock_ms()
        live = [n for n in batch if not n.is_expired(at)]
        out = [Status.of(n, states.EXPIRED, at, detail="expired before the provider call")
               for n in batch if n.is_expired(at)]
        sent_before, in_flight_at_crash = self.markers.claim([n.id for n in live])
        for n in live:
            if n.id in sent_before:
                out.append(Status.of(n, states.DUPLICATE, clock_ms(),
                                     detail="a provider accepted this id before (sent marker)"))
                continue
            status = self.sender.send(n)
            if status.state == states.DELIVERED:
                self.markers.confirm([n.id])
                if n.id in in_flight_at_crash:
                    status = replace(status, detail=RESENT_AFTER_CRASH)
            else:
                self.markers.release([n.id])
            out.append(status)
        return out


def make_call_stage(settings: Settings) -> SequentialCalls:
    return SequentialCalls(settings)
