"""Peer (b): Quix Streams with Herald's critical-path semantics.

The idiomatic shape: a StreamingDataFrame over the critical topic; a stateful ``apply`` (Quix's
per-key state, RocksDB with a changelog topic, keyed by the message key = user_id) parses,
dedups and checks expiry; a BatchingSink makes the provider calls for everything admitted
since the last checkpoint (Redis claim, concurrent calls with each user's chained, sent markers)
and produces the status events; Quix commits the offsets only after its sinks flushed, so a
crash re-sends at most a checkpoint's worth, which the sent markers stop.

    .venv-quix/bin/python -m bench.peers.quix_worker     # settings from HERALD_* env
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Producer  # noqa: E402
from quixstreams import Application  # noqa: E402
from quixstreams.sinks import BatchingSink, SinkBatch  # noqa: E402

from bench.peers.core import Caller, Gate, statuses_for  # noqa: E402
from herald.settings import load_settings  # noqa: E402

COMMIT_INTERVAL_S = float(os.environ.get("QUIX_COMMIT_INTERVAL_S", "0.5"))


class DeliverySink(BatchingSink):
    def __init__(self, settings):
        super().__init__()
        self.settings = settings
        self.topics = {"status": settings.topic_status, "dlq": settings.topic_dlq}
        self.caller = None
        self.producer = None

    def setup(self):
        self.caller = Caller(self.settings)
        self.producer = Producer({"bootstrap.servers": self.settings.kafka_bootstrap,
                                  "linger.ms": 5, "acks": 1})

    def write(self, batch: SinkBatch):
        ready = []
        for item in batch:
            kind, note, payload = item.value
            if kind == "send":
                ready.append(note)
            for role, key, value in statuses_for(kind, note, payload, item.key):
                self.producer.produce(self.topics[role], value, key)
        for key, value in self.caller.send(ready):
            self.producer.produce(self.topics["status"], value, key)
        self.producer.flush()


def main() -> None:
    settings = load_settings()
    gate = Gate(settings)
    app = Application(broker_address=settings.kafka_bootstrap,
                      consumer_group=settings.consumer_group, auto_offset_reset="earliest",
                      commit_interval=COMMIT_INTERVAL_S, loglevel="WARNING",
                      state_dir=tempfile.mkdtemp(prefix="herald-quix-state-"),
                      consumer_extra_config={"isolation.level": "read_committed"})
    topic = app.topic(settings.topic_critical, key_deserializer="bytes",
                      value_deserializer="bytes")
    sdf = app.dataframe(topic)

    def admit(raw: bytes, state):
        return gate.admit(raw, state.get, state.set)

    sdf = sdf.apply(admit, stateful=True)
    sdf.sink(DeliverySink(settings))
    app.run()


if __name__ == "__main__":
    main()
