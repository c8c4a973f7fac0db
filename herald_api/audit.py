"""The audit consumer: every Status event on ``herald.status`` into the Redis audit store.

``python -m herald_api.audit``. At-least-once: a batch is written to Redis, then its offsets
are committed; a crash in between replays the batch, and the writes are idempotent (an event
is stored under its identity ``(at, attempt, state, channel, provider)``; campaign counts move
once per (notification id, state)), so a replay changes nothing. Events that are not Status
records go to the DLQ with ``stage: "audit"``. Key layout: ``herald_api.store``.

Two more duties ride on the same events: a ``delivered`` event's ``provider_message_id`` is
indexed (``herald.receipts.message_key``) so a provider's receipt finds its notification, and
a ``fallback``/``failed`` naming a dead contact removes it from the user record
(``ContactCleaner``), followed by a ``token_invalid`` event on the status topic.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Mapping

import orjson
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError

from herald import states
from herald.errors import ValidationError
from herald.models import _epoch_ms, _string, dead_letter, load_object
from herald.receipts import dead_contacts, index_entry, message_key, token_invalid_status
from herald.redis_conn import is_cluster
from herald.redis_conn import redis_client as make_redis_client
from herald.settings import Settings, load_settings
from herald.users import REMOVE_CONTACT_LUA, user_key
from herald_api.store import AUDIT_WRITE_LUA, audit_write_args

log = logging.getLogger("herald_api.audit")

STAGE_AUDIT = "audit"
OPTIONAL_STRINGS = ("user_id", "priority", "channel", "provider", "detail", "campaign_id",
                    "provider_message_id", "invalid_contact", "contact_sha1")


def status_from_dict(obj: Mapping) -> dict:
    """Check one Status event just enough to file it; the event itself is stored as sent."""
    _string(obj, "id")
    _string(obj, "tenant_id")
    state = obj.get("state")
    if not isinstance(state, str) or state not in states.STATES:
        raise ValidationError(f"'state' must be one of {', '.join(sorted(states.STATES))}, "
                              f"got {state!r}", "state")
    _epoch_ms(obj, "at")
    for name in ("attempt", "latency_ms"):
        value = obj.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise ValidationError(f"'{name}' must be a non-negative integer, got {value!r}", name)
    for name in OPTIONAL_STRINGS:
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise ValidationError(f"'{name}' must be a string, got {type(value).__name__}", name)
    return dict(obj)


class AuditWriter:
    """Writes validated Status events with one Lua call each, pipelined per batch."""

    def __init__(self, client: redis.Redis, retention_s: int):
        self.redis = client
        self.retention_ms = retention_s * 1000
        self._script = client.register_script(AUDIT_WRITE_LUA)
        self.cluster = is_cluster(client)  # tagged keys; EVAL, as cluster pipelines take it

    def write(self, events: list[dict]) -> int:
        """Store ``events``; return how many were new (the rest were replays). A ``delivered``
        event's ``provider_message_id`` is indexed too, for the receipts that name it."""
        if not events:
            return 0
        counted = []
        with self.redis.pipeline(transaction=False) as pipe:
            for event in events:
                keys, args = audit_write_args(event, self.retention_ms, self.cluster)
                if self.cluster:
                    pipe.execute_command("EVAL", AUDIT_WRITE_LUA, len(keys), *keys, *args)
                else:
                    self._script(keys=keys, args=args, client=pipe)
                counted.append(True)
                if event["state"] == states.DELIVERED and event.get("provider_message_id") \
                        and event.get("provider"):
                    pipe.set(message_key(event["provider"], event["provider_message_id"]),
                             orjson.dumps(index_entry(event)), px=self.retention_ms)
                    counted.append(False)
            return sum(int(r) for r, c in zip(pipe.execute(), counted) if c)


class ContactCleaner:
    """Token hygiene: a ``fallback``/``failed`` event naming a dead contact (FCM UNREGISTERED,
    APNs 410, an invalid number or address) removes it from the tenant's user record, if the
    record still holds that value, and is followed by a ``token_invalid`` event saying so."""

    def __init__(self, client: redis.Redis):
        self._script = client.register_script(REMOVE_CONTACT_LUA)

    def clean(self, events: list[dict], now_ms: int) -> list[dict]:
        """Remove the dead contacts ``events`` name; return the ``token_invalid`` events."""
        out = []
        for event in dead_contacts(events):
            removed = self._script(keys=[user_key(event["tenant_id"], event["user_id"])],
                                   args=[event["invalid_contact"], event["contact_sha1"], now_ms])
            out.append(token_invalid_status(event, event["invalid_contact"], bool(removed),
                                            event.get("detail") or "the provider refused it"))
        return out


class AuditConsumer:
    """One consumer-group member: poll, write, dead-letter the unreadable, commit."""

    def __init__(self, settings: Settings, *, redis_client: redis.Redis | None = None,
                 retry_pause_s: float = 0.5):
        self.settings = settings
        self.retry_pause_s = retry_pause_s
        self.redis = redis_client or make_redis_client(settings, socket_timeout=10)
        self.writer = AuditWriter(self.redis, settings.audit_retention_s)
        self.cleaner = ContactCleaner(self.redis)
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=settings.audit_consumer_group,
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=2000)
        # Know the topic's partitions before joining: a leader that joins without them assigns
        # nothing, and the rebalance that follows can stall the first assignment.
        self.consumer.partitions_for_topic(settings.topic_status)
        self.consumer.subscribe([settings.topic_status])
        self._dlq: KafkaProducer | None = None
        self.stop = threading.Event()
        self.written = self.replayed = self.dead_lettered = 0

    # ---- one batch

    def poll_once(self, timeout_ms: int = 500) -> int:
        """Poll one batch, store it, commit it; return how many records it had."""
        batches = self.consumer.poll(timeout_ms=timeout_ms)
        events, rejected = [], []
        for records in batches.values():
            for message in records:
                try:
                    events.append(status_from_dict(load_object(message.value)))
                except ValidationError as exc:
                    rejected.append((message, exc))
        if rejected:
            self._dead_letter(rejected)
        if events:
            new = self._write_until_done(events)
            self.written += new
            self.replayed += len(events) - new
            self._clean_until_done(events)
        count = len(events) + len(rejected)
        if count:
            try:
                self.consumer.commit()
            except CommitFailedError as exc:  # rebalanced away: the new owner replays, harmlessly
                log.warning("offset commit failed (%s); the batch will be replayed", exc)
        return count

    def _write_until_done(self, events: list[dict]) -> int:
        """Redis down means wait and retry: never commit past events that are not stored."""
        while True:
            try:
                return self.writer.write(events)
            except redis.exceptions.ConnectionError as exc:
                log.warning("audit store unavailable (%s); retrying", exc)
                if self.stop.wait(self.retry_pause_s):
                    raise

    def _clean_until_done(self, events: list[dict]) -> None:
        """Dead contacts out of the user records, then their ``token_invalid`` events stored
        and on the status topic (for the tenant webhooks), before the batch is committed. A
        replay finds the contact gone and says so under the same event identity, stored once."""
        while True:
            try:
                follow = self.cleaner.clean(events, time.time_ns() // 1_000_000)
                if follow:
                    self.writer.write(follow)
                break
            except redis.exceptions.ConnectionError as exc:
                log.warning("user store unavailable (%s); retrying", exc)
                if self.stop.wait(self.retry_pause_s):
                    raise
        if follow:
            producer = self._producer()
            for event in follow:
                producer.send(self.settings.topic_status, key=event["id"].encode(),
                              value=orjson.dumps(event))
            producer.flush()

    def _producer(self) -> KafkaProducer:
        if self._dlq is None:
            self._dlq = KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all")
        return self._dlq

    def _dead_letter(self, rejected: list) -> None:
        self._producer()
        now = time.time_ns() // 1_000_000
        for message, exc in rejected:
            log.warning("not a Status event (%s): dead-lettered", exc.message)
            self._dlq.send(self.settings.topic_dlq, key=message.key,
                           value=dead_letter(message.value if message.value is not None else b"",
                                             exc.message, STAGE_AUDIT, now))
        self._dlq.flush()
        self.dead_lettered += len(rejected)

    # ---- loops

    def drain(self, timeout_s: float = 60.0) -> int:
        """Process until every record on the topic when this is called is stored and committed.

        Deterministic catch-up for tests and operators; ``run`` is the endless loop.
        """
        deadline = time.monotonic() + timeout_s
        processed = 0
        while not self.consumer.assignment():
            processed += self.poll_once(100)
            if time.monotonic() > deadline:
                raise TimeoutError("no partitions assigned to the audit consumer")
        partitions = list(self.consumer.assignment())
        end = self.consumer.end_offsets(partitions)
        while any(self.consumer.position(tp) < end[tp] for tp in partitions):
            processed += self.poll_once(100)
            if time.monotonic() > deadline:
                raise TimeoutError(f"audit consumer did not catch up in {timeout_s}s")
        return processed

    def run(self) -> None:
        log.info("audit consumer on %s (group %s), retention %ss", self.settings.topic_status,
                 self.settings.audit_consumer_group, self.settings.audit_retention_s)
        while not self.stop.is_set():
            self.poll_once()

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        if self._dlq is not None:
            self._dlq.close()
        self.redis.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    consumer = AuditConsumer(load_settings())

    def stop(signum: int, frame: Any) -> None:
        consumer.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        consumer.run()
    finally:
        log.info("stopping: %d events written, %d replays, %d dead-lettered", consumer.written,
                 consumer.replayed, consumer.dead_lettered)
        consumer.close()


if __name__ == "__main__":
    main()
