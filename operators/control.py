"""Control records from ``herald.control`` for the delivery job: quota changes and campaign
cancels, applied to Redis.

Why not Flink broadcast state: the buckets a quota governs already live in Redis and are
shared by every worker of every job (both classes, any parallelism), so the quota is written
next to them, once, and each call stage re-reads it within ``quota_refresh_ms``. A cancel is
written as ``herald:cancelled:{tenant}:{campaign_id}`` (``herald.campaigns.queue_cancelled``),
which the call stage reads for the campaigns of every batch, between rounds and on every retry;
the API writes the same record on ``DELETE /v1/campaigns/{id}``, so a cancel is in force as
soon as either has processed it. That needs no broadcast edge into the call operators,
survives restarts without replaying the control topic, and ``python -m herald_cli quota`` can
apply a change even while no job runs. Applying a record is setting values, so replays
(at-least-once) are harmless.

Output: dead letters for control records that do not validate; nothing else.
"""
from __future__ import annotations

import operators.libraries  # noqa: F401  (first: see its docstring)

import time

from pyflink.datastream.functions import ProcessFunction, RuntimeContext

from herald import states
from herald.errors import ValidationError
from herald.models import dead_letter, load_object
from herald.settings import Settings
from operators.rows import keyed_payload

# The kinds this function applies (the SQL in jobs/delivery.py selects them).
KINDS = ("quota", "cancel_campaign")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ApplyControlFunction(ProcessFunction):
    """Input rows: (k, v) of ``kind: quota`` and ``kind: cancel_campaign`` control records."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = None
        self.client = None

    def open(self, runtime_context: RuntimeContext):
        from herald.ratelimit import RedisRateLimiter
        from udfs.quotas import QuotaStore
        s = self.settings
        from herald.redis_conn import redis_client
        self.client = redis_client(s)
        self.store = QuotaStore(self.client, RedisRateLimiter(
            self.client, reserve_fraction=s.ratelimit_reserve_fraction,
            namespace=s.ratelimit_namespace))

    def close(self):
        if self.client is not None:
            self.client.close()

    def process_element(self, row, ctx: ProcessFunction.Context):
        from herald.campaigns import CANCEL_CAMPAIGN, cancel_from_dict, queue_cancelled
        from udfs.quotas import quota_from_dict
        try:
            record = load_object(row.v)
            if record.get("kind") == CANCEL_CAMPAIGN:
                cancel = cancel_from_dict(record)
                pipe = self.client.pipeline(transaction=False)
                queue_cancelled(pipe, cancel, now_ms(), self.settings.campaign_cancel_retention_ms)
                pipe.execute()
                return
            change = quota_from_dict(record)
        except ValidationError as exc:
            yield keyed_payload(row.k or "(no key)", dead_letter(
                row.v or "", f"control record: {exc}", states.STAGE_PARSE, now_ms()))
            return
        self.store.apply(change)
