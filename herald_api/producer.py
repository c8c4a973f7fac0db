"""An asyncio face on kafka-python's producer: ``acks=all``, idempotent, awaited per record.

kafka-python's ``send`` can block (metadata fetch, full buffer), so it runs on a small thread
pool; the acknowledgement comes back through the future's callbacks onto the event loop.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from kafka import KafkaProducer
from kafka.errors import KafkaError

from herald.settings import Settings
from herald_api.errors import Unavailable
from herald_api.metrics import ApiMetrics


class Producer:
    def __init__(self, settings: Settings, metrics: ApiMetrics, *, threads: int = 4):
        self.settings = settings
        self.metrics = metrics
        self.timeout_s = settings.api_produce_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="herald-produce")
        self._producer: KafkaProducer | None = None

    async def start(self) -> None:
        """Connect and warm the topic metadata, so the first request does not pay for it."""
        loop = asyncio.get_running_loop()
        self._producer = await loop.run_in_executor(self._pool, self._connect)

    def _connect(self) -> KafkaProducer:
        timeout_ms = int(self.timeout_s * 1000)
        producer = KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
                                 enable_idempotence=True, linger_ms=1,
                                 max_block_ms=timeout_ms, request_timeout_ms=timeout_ms,
                                 delivery_timeout_ms=max(timeout_ms + 1000, 30_000))
        s = self.settings
        for topic in (s.topic_critical, s.topic_promo, s.topic_campaigns, s.topic_control):
            producer.partitions_for(topic)
        return producer

    async def send(self, role: str, topic: str, key: str, value: bytes) -> None:
        """Return once every in-sync replica has the record; ``Unavailable`` if not in time."""
        if self._producer is None:
            raise Unavailable("the Kafka producer is not connected yet")
        loop = asyncio.get_running_loop()
        acked: asyncio.Future = loop.create_future()

        def settle(result=None, error=None):
            if not acked.done():
                if error is not None:
                    acked.set_exception(error)
                else:
                    acked.set_result(result)

        def start():
            future = self._producer.send(topic, key=key.encode(), value=value)
            future.add_callback(lambda md: loop.call_soon_threadsafe(settle, md))
            future.add_errback(lambda exc: loop.call_soon_threadsafe(settle, None, exc))

        began = time.perf_counter()
        try:
            await asyncio.wait_for(self._start_and_wait(loop, start, acked), self.timeout_s)
        except (asyncio.TimeoutError, KafkaError) as exc:
            self.metrics.produce_errors.labels(role).inc()
            what = "timed out" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
            raise Unavailable(f"Kafka did not acknowledge the record ({what}); it may or may not "
                              "be enqueued, and retrying with the same id is safe") from None
        self.metrics.produce_seconds.labels(role).observe(time.perf_counter() - began)

    async def _start_and_wait(self, loop, start, acked) -> None:
        await loop.run_in_executor(self._pool, start)
        await acked

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await asyncio.get_running_loop().run_in_executor(self._pool, producer.close, 5)
        self._pool.shutdown(wait=False)
