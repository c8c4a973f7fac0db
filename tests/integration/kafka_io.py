"""Kafka helpers for tests: produce records, and read a topic until a condition holds."""
from __future__ import annotations

import time
from typing import Callable, Iterable

import orjson
from kafka import KafkaConsumer, KafkaProducer


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
