"""Redis markers that make a provider call happen once per notification id, across restarts.

Keyed state dedups replays of the log; after a restore from a checkpoint the records since that
checkpoint are replayed into state that has never seen them, so Redis is what remembers:

* ``herald:sending:{id}`` is claimed (SET NX) right before the call,
* ``herald:sent:{id}`` is written right after the provider accepts, and the claim dropped.

A replayed id with a ``sent`` marker is a duplicate and is not sent. A replayed id whose claim is
still there was in flight when the job died: the provider may or may not have it, and no
provider offers a way to ask. Herald re-sends it (a lost OTP is worse than a second one) and
says so in the status detail. That is the crash window left: at most the calls in flight at the
moment of the crash, and it is measured by the kill test.
"""
from __future__ import annotations

from typing import Iterable

import redis

SENT = "herald:sent:{}"
SENDING = "herald:sending:{}"


class SentMarkers:
    def __init__(self, client: redis.Redis, ttl_ms: int):
        self.client = client
        self.ttl_ms = ttl_ms

    def claim(self, ids: list[str]) -> tuple[set[str], set[str]]:
        """Claim ``ids`` for sending, in one round trip.

        Returns (already sent: do not send; in flight at an earlier crash: send, and say so).
        """
        if not ids:
            return set(), set()
        pipe = self.client.pipeline(transaction=False)
        pipe.mget([SENT.format(i) for i in ids])
        for i in ids:
            pipe.set(SENDING.format(i), b"1", nx=True, px=self.ttl_ms)
        sent, *claimed = pipe.execute()
        already = {i for i, value in zip(ids, sent) if value is not None}
        crashed = {i for i, fresh in zip(ids, claimed) if not fresh and i not in already}
        return already, crashed

    def settle(self, accepted: Iterable[str], not_sent: Iterable[str] = ()) -> None:
        """Mark ``accepted`` sent and drop every claim, these and ``not_sent`` (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for i in accepted:
            pipe.set(SENT.format(i), b"1", px=self.ttl_ms)
            pipe.delete(SENDING.format(i))
        for i in not_sent:
            pipe.delete(SENDING.format(i))
        if len(pipe):
            pipe.execute()
