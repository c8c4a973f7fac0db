"""Kafka helpers for tests: produce records, and read a topic until a condition holds."""
from __future__ import annotations

import time
from typing import Callable, Iterable

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def produce(bootstrap: str, topic: str, records: Iterable[tuple[str | None, bytes | dict]]) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    count = 0
    for key, value in records:
        body = value if isinstance(value, bytes) else orjson.dumps(value)
        producer.send(topic, key=key.encode() if key is not None else None, value=body)
        count += 1
    producer.flush()
    producer.close()
    return count


def read_until(bootstrap: str, topic: str, done: Callable[[list[dict]], bool],
               timeout_s: float = 120.0, job=None) -> list[dict]:
    """Consume ``topic`` from the start until ``done(records)``; fail with what was seen if not.

    ``job``, if given, is a running job process: its death ends the wait at once.
    """
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None)
    records: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for message in batch:
                    value = orjson.loads(message.value)
                    value["_key"] = message.key.decode() if message.key is not None else None
                    records.append(value)
            if done(records):
                return records
            if job is not None:
                job.check_alive()
    finally:
        consumer.close()
    raise AssertionError(f"{topic}: condition not met after {timeout_s}s; saw {len(records)} records,"
                         f" last: {records[-3:]}")


def messages_to_end(bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted",
                    timeout_s: float = 30.0) -> list:
    """Every message of ``topic`` up to its end offsets now, in every partition (for
    ``read_committed``, the last stable offsets: what a transactional reader can see)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             isolation_level=isolation_level)
    try:
        deadline = time.monotonic() + timeout_s
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"{topic}: could not read to the end offsets"
            for batch in consumer.poll(timeout_ms=200).values():
                out.extend(batch)
        return out
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str) -> list[tuple[str | None, dict]]:
    """Every record of ``topic`` up to its end offsets now: (key, value)."""
    return [(m.key.decode() if m.key is not None else None, orjson.loads(m.value))
            for m in messages_to_end(bootstrap, topic)]
