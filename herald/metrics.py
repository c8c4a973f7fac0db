"""What a batch adds to the operators' Flink metrics: counts by outcome and a latency summary.

Engine-free: `operators.metrics` registers the counters and gauges and adds these numbers once
per batch (one call into Java per counter that moved, never one per record).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Mapping

from herald import states

# Counter names, each an outcome of a notification at a stage.
SENDS = "sends"              # accepted by a provider in this run
THROTTLES = "throttles"      # throttling answers (429, QUOTA_EXCEEDED, 20429): waited, went again
RETRIES = "retries"          # `retrying`: onto the retry topic
FALLBACKS = "fallbacks"      # a channel failed, the next one tried
EXPIRED = "expired"          # dropped as expired, at the gate or before a call
DUPLICATES = "duplicates"    # dedup hits at the gate
CANCELLED = "cancelled"
DLQ = "dlq"                  # dead letters written
COUNTERS = (SENDS, THROTTLES, RETRIES, FALLBACKS, EXPIRED, DUPLICATES, CANCELLED, DLQ)

BY_STATE = {states.RETRYING: RETRIES, states.FALLBACK: FALLBACKS, states.EXPIRED: EXPIRED,
            states.DUPLICATE: DUPLICATES, states.CANCELLED: CANCELLED}
PREFIX = "herald_"  # every metric name starts with it
QUANTILES = (("p50", 0.5), ("p99", 0.99))


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the nearest ranks (numpy's default, Flink SQL's PERCENTILE)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def metric_counts(by_state: Mapping[str, int]) -> Counter:
    """Counter increments from counts by state; keys that are counter names already pass."""
    counts: Counter = Counter()
    for key, n in by_state.items():
        name = BY_STATE.get(key, key)
        if name in COUNTERS:
            counts[name] += n
    return counts


def count_statuses(statuses, dead: int = 0, throttles: int = 0) -> tuple[Counter, list[int]]:
    """A call-stage batch's counter increments and its provider latencies (delivered events).

    A `delivered` status without a provider is a replay the Redis marker stopped: not a send.
    """
    counts = metric_counts(Counter(s.state for s in statuses))
    latencies = [s.latency_ms for s in statuses
                 if s.state == states.DELIVERED and s.provider is not None
                 and s.latency_ms is not None]
    counts[SENDS] += len(latencies)
    counts[DLQ] += dead
    counts[THROTTLES] += throttles
    return +counts, latencies


def latency_summary(latencies: list[int]) -> dict[str, int]:
    """p50, p99 and max of one batch's latencies, in whole ms ({} for an empty batch)."""
    if not latencies:
        return {}
    summary = {name: round(percentile(latencies, q)) for name, q in QUANTILES}
    summary["max"] = max(latencies)
    return summary
