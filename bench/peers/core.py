"""The delivery semantics the peers share with Herald's critical path, engine-free.

What a team would write around the same core library (herald's parser, provider adapters,
Redis markers and lean HTTP client), so a comparison measures the engines, not the pieces:

* parse and validate (``herald.models.parse_notification``); invalid → dead letter;
* dedup: an id seen before is a ``duplicate`` (a dict here, or the engine's keyed state);
* expiry: checked at the gate and again against the wall clock right before the call;
* exactly once across restarts: Redis ``sending`` claim before the call and ``sent`` marker
  after the provider accepts (``udfs.markers``, one round trip each per batch);
* per-user order: Kafka order within a partition, one user's calls chained by the client;
* the FCM call (adapter request, pooled keep-alive HTTP/1.1, answer classified);
* one status event per notification, produced to Kafka by the caller.

Not here (Herald does them): token buckets, AIMD, retry topics, fallback across channels,
circuit breakers, ``seq`` ordering with gap holds, ``send_at``.
"""
from __future__ import annotations

import time
from typing import Iterable

import redis

from herald import states
from herald.errors import ValidationError
from herald.models import Notification, Status, dead_letter, parse_notification
from herald.providers.base import Kind
from herald.providers.exceptions import ProviderError
from herald.providers.registry import Registry
from herald.settings import Settings
from udfs.http_client import BlockingBatchClient, HttpClientError
from udfs.markers import SentMarkers, marker


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Gate:
    """Parse, dedup, expiry for one record; ``seen`` is any get/set store of id → forget-at."""

    def __init__(self, settings: Settings, priority: str = states.CRITICAL):
        self.priority = priority
        self.ttl = settings.critical_default_ttl_ms
        self.dedup_ttl = settings.dedup_ttl_ms

    def admit(self, raw: bytes, seen_get, seen_set) -> tuple[str, Notification | None, bytes]:
        """("send", note, b"") or ("status", None, json) or ("dlq", None, json)."""
        at = now_ms()
        try:
            n = parse_notification(raw, expected_priority=self.priority, default_ttl_ms=self.ttl)
        except ValidationError as exc:
            return "dlq", None, dead_letter(raw, str(exc), states.STAGE_PARSE, at)
        if seen_get(n.id) is not None:
            return "status", n, Status.of(n, states.DUPLICATE, at).to_json()
        if n.is_expired(at):
            return "status", n, Status.of(n, states.EXPIRED, at,
                                          detail="expired at the gate").to_json()
        seen_set(n.id, max(at + self.dedup_ttl, n.expires_at))
        return "send", n, b""


class Caller:
    """Send a batch of admitted notifications (in log order); return their status events."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = Registry()
        self.client = BlockingBatchClient(max_connections=settings.provider_max_in_flight,
                                          timeout_s=settings.provider_timeout_s)
        self.redis = redis.Redis(host=settings.redis_host, port=settings.redis_port)
        self.markers = SentMarkers(self.redis, settings.dedup_ttl_ms)

    def send(self, notes: list[Notification]) -> list[tuple[bytes, bytes]]:
        """(key, status JSON) per notification."""
        out: list[tuple[bytes, bytes]] = []
        at = now_ms()
        live = []
        for n in notes:
            if n.is_expired(at):
                out.append(self._status(n, states.EXPIRED, at, detail="expired before the call"))
            else:
                live.append(n)
        sent_before, _ = self.markers.claim(live)
        reqs, keys, calls = [], [], []
        for n in live:
            if marker(n) in sent_before:
                out.append(self._status(n, states.DELIVERED, at, detail="sent before a restart"))
                continue
            channel = n.channels[0]
            try:
                adapter = self.registry.for_channel(channel, n.to.platform)
                reqs.append(adapter.build_request(n, n.to, self.settings, now_ms=at))
            except ProviderError as exc:
                out.append(self._status(n, states.FAILED, at, channel=channel, detail=str(exc)))
                continue
            keys.append(n.user_id)
            calls.append((n, adapter, channel))
        answers = self.client.send_batch(reqs, self.settings.provider_max_in_flight, keys)
        done = now_ms()
        accepted, released = [], []
        for (n, adapter, channel), answer in zip(calls, answers):
            if isinstance(answer, HttpClientError):
                outcome = adapter.transport_error(answer)
            else:
                outcome = adapter.classify(answer.status, answer.headers, answer.body)
            if outcome.kind is Kind.OK:
                accepted.append(marker(n))
                out.append(self._status(n, states.DELIVERED, done, channel=channel,
                                        provider=adapter.name, attempt=1,
                                        latency_ms=done - n.created_at))
            else:
                released.append(marker(n))
                out.append(self._status(n, states.FAILED, done, channel=channel,
                                        provider=adapter.name, attempt=1, detail=outcome.detail))
        self.markers.settle(accepted, released)
        return out

    @staticmethod
    def _status(n: Notification, state: str, at: int, **extra) -> tuple[bytes, bytes]:
        return n.id.encode(), Status.of(n, state, at, **extra).to_json()

    def close(self) -> None:
        self.client.close()
        self.redis.close()


def statuses_for(kind: str, n: Notification | None, payload: bytes,
                 raw_key: bytes | None) -> Iterable[tuple[str, bytes, bytes]]:
    """Where a gate verdict goes: (topic role, key, value)."""
    if kind == "dlq":
        yield "dlq", raw_key or b"", payload
    elif kind == "status":
        yield "status", n.id.encode(), payload
