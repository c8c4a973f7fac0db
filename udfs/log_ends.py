"""Does a partition of the log hold records newer than a time? The gate's test for "nothing more
to read" before its wait for input counts as the log's time (operators/gate.py).

A gate waits for input when the source gives it nothing: the partition may have nothing more,
or the source may not be reading it (a broker down, sources starting after a restore, a
backlog fetched a partition at a time). Only the first lets a seq hold run on with the wall
clock: the contract waits for a gap until the log has moved ``gap_timeout_ms`` past the held
record, however far behind Herald is. So before idle time counts, the log is asked whether it
has a committed record with a later timestamp than the newest one read (``ListOffsets`` by
time, as ``KafkaConsumer.offsets_for_times`` sends it); when it cannot say (broker
unreachable) the answer is yes, and the hold waits.
"""
from __future__ import annotations

import time

CACHE_MS = 100    # an answer holds this long for the same partition and time
DOWN_MS = 2_000   # after a failed look, answer "newer" without asking for this long
TIMEOUT_MS = 500  # the longest a look may take (it runs on the gate's thread)


class LogEnds:
    """Looks at one topic's partitions, lazily connected, with answers cached briefly."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap = bootstrap
        self.topic = topic
        self._consumer = None
        self._answers: dict[int, tuple[float, int, bool]] = {}  # partition → (at, ts, newer)
        self._down_until = 0.0
        self.looks = 0  # lookups sent to Kafka (for tests)

    def newer_than(self, partition: int, ts: int) -> bool:
        """True if ``partition`` has a committed record with a timestamp after ``ts`` (epoch
        ms), or if the log cannot tell."""
        now = time.monotonic() * 1000.0
        cached = self._answers.get(partition)
        if cached is not None and cached[1] == ts and now - cached[0] < CACHE_MS:
            return cached[2]
        if now < self._down_until:
            return True
        from kafka import TopicPartition
        from kafka.errors import KafkaConfigurationError, KafkaError
        try:
            tp = TopicPartition(self.topic, partition)
            self.looks += 1
            found = self._client().offsets_for_times({tp: ts + 1}, timeout_ms=TIMEOUT_MS)
            newer = found.get(tp) is not None
        except KafkaConfigurationError:
            raise  # a mistake of this module, not the log's state
        except (KafkaError, OSError):  # unreachable or timed out: it cannot say
            self._down_until = time.monotonic() * 1000.0 + DOWN_MS
            self.close()
            return True
        self._answers[partition] = (now, ts, newer)
        return newer

    def _client(self):
        if self._consumer is None:
            from kafka import KafkaConsumer
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                isolation_level="read_committed", request_timeout_ms=TIMEOUT_MS,
                fetch_max_wait_ms=TIMEOUT_MS // 5, bootstrap_timeout_ms=TIMEOUT_MS,
                reconnect_backoff_max_ms=TIMEOUT_MS)
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception:  # noqa: BLE001 - closing a client of a dead broker
                pass
            self._consumer = None


def on_producer_times(bootstrap: str, topics: list[str]) -> list[str]:
    """The ``topics`` whose record times are their producers' (``CreateTime``), not the log's
    append times: there a producer retrying through a broker failure can put a later seq
    before an earlier one with a later time, and a seq hold would not wait for the earlier one
    (docs/CONTRACT.md). Topics that do not exist yet are left out."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        asked = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics if t in existing]
        if not asked:
            return []
        answer = admin.describe_configs(asked, config_filter="all").get("topic", {})
        return sorted(t for t, entries in answer.items()
                      if (entries.get("message.timestamp.type") or {}).get("value") == "CreateTime")
    finally:
        admin.close()
