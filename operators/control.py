"""Quota changes from ``herald.control``: applied to the limiter's Redis config.

Why not Flink broadcast state: the buckets the quota governs already live in Redis and are
shared by every worker of every job (both classes, any parallelism), so the quota is written
next to them, once, and each call stage re-reads it within ``quota_refresh_ms``. That needs no
broadcast edge into the call operators, survives restarts without replaying the control topic,
and ``python -m herald_cli quota`` can apply a change even while no job runs. Applying a
record is setting values, so replays (at-least-once) are harmless and the last record wins.

Output: dead letters for quota records that do not validate; nothing else.
"""
from __future__ import annotations

import time

from pyflink.datastream.functions import ProcessFunction, RuntimeContext

from herald import states
from herald.errors import ValidationError
from herald.models import dead_letter
from herald.settings import Settings
from operators.rows import keyed_payload


class ApplyQuotaFunction(ProcessFunction):
    """Input rows: (k, v) of ``kind: quota`` records on the control topic."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = None
        self.client = None

    def open(self, runtime_context: RuntimeContext):
        import redis

        from herald.ratelimit import RedisRateLimiter
        from udfs.quotas import QuotaStore
        s = self.settings
        self.client = redis.Redis(host=s.redis_host, port=s.redis_port)
        self.store = QuotaStore(self.client, RedisRateLimiter(
            self.client, reserve_fraction=s.ratelimit_reserve_fraction,
            namespace=s.ratelimit_namespace))

    def close(self):
        if self.client is not None:
            self.client.close()

    def process_element(self, row, ctx: ProcessFunction.Context):
        from udfs.quotas import parse_quota
        try:
            change = parse_quota(row.v)
        except ValidationError as exc:
            yield keyed_payload(row.k or "(no key)", dead_letter(
                row.v or "", f"control record: {exc}", states.STAGE_PARSE,
                time.time_ns() // 1_000_000))
            return
        self.store.apply(change)
