"""Peer (a): a hand-written confluent-kafka worker with Herald's critical-path semantics.

One process, one loop: consume a batch from the critical topic (read_committed, no auto
commit), gate each record (parse, dedup in a dict + the Redis sent marker, expiry), send the
admitted ones to the provider concurrently with each user's calls chained (Kafka order within
a partition is the user's order), produce one status event each; every 0.5 s (like Quix's
commit interval) flush the statuses, then commit the offsets: a crash re-sends at most what
came since the last commit, and the sent markers stop the repeats.

    python -m bench.peers.confluent_worker      # settings from HERALD_* env, like the job
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer  # noqa: E402

from bench.peers.core import Caller, Gate, statuses_for  # noqa: E402
from herald.settings import load_settings  # noqa: E402

BATCH_MAX = 5_000
BATCH_WAIT_S = 0.01  # like the job's 10 ms critical window
COMMIT_INTERVAL_S = float(os.environ.get("PEER_COMMIT_INTERVAL_S", "0.5"))  # like Quix's


def main() -> None:
    settings = load_settings()
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": settings.consumer_group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5,
                         "acks": 1})
    consumer.subscribe([settings.topic_critical])
    topics = {"status": settings.topic_status, "dlq": settings.topic_dlq}
    gate, caller = Gate(settings), Caller(settings)
    seen: dict[str, int] = {}
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    next_commit = time.monotonic() + COMMIT_INTERVAL_S
    batches = records = 0
    try:
        while running[0]:
            msgs = consumer.consume(BATCH_MAX, BATCH_WAIT_S)
            if not msgs:
                continue
            batches += 1
            records += len(msgs)
            ready = []
            for m in msgs:
                if m.error():
                    continue
                kind, note, payload = gate.admit(m.value(), seen.get, seen.__setitem__)
                if kind == "send":
                    ready.append(note)
                for role, key, value in statuses_for(kind, note, payload, m.key()):
                    producer.produce(topics[role], value, key)
            for key, value in caller.send(ready):
                producer.produce(topics["status"], value, key)
            producer.poll(0)
            if time.monotonic() >= next_commit:
                producer.flush()  # the statuses are in Kafka before the offsets move past them
                consumer.commit(asynchronous=False)
                next_commit = time.monotonic() + COMMIT_INTERVAL_S
    finally:
        print(f"{records} records in {batches} batches", flush=True)
        consumer.close()
        producer.flush(10)
        caller.close()


if __name__ == "__main__":
    main()
