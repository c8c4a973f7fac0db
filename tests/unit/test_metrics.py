"""herald.metrics: what one batch adds to the operators' Flink counters and latency gauges."""
from __future__ import annotations

import pytest

from herald import states
from herald.metrics import (COUNTERS, count_statuses, latency_summary, metric_counts,
                            percentile)
from herald.models import Status


def status(state: str, **extra) -> Status:
    return Status(id="n", tenant_id="t", user_id="u", priority="critical", state=state, at=1,
                  **extra)


def test_a_batch_counts_sends_retries_fallbacks_expiry_dead_letters_and_throttles():
    batch = [status(states.DELIVERED, provider="fcm", latency_ms=40),
             status(states.DELIVERED, provider="apns", latency_ms=10),
             status(states.DELIVERED),  # a replay the sent marker stopped: not a send
             status(states.RETRYING, provider="fcm"), status(states.FALLBACK),
             status(states.EXPIRED), status(states.EXPIRED), status(states.FAILED)]
    counts, latencies = count_statuses(batch, dead=1, throttles=3)
    assert counts == {"sends": 2, "retries": 1, "fallbacks": 1, "expired": 2, "dlq": 1,
                      "throttles": 3}
    assert sorted(latencies) == [10, 40]
    assert set(counts) <= set(COUNTERS)


def test_gate_drop_reasons_and_counter_names_map_to_counters():
    assert metric_counts({states.DUPLICATE: 4, states.EXPIRED: 1, "dlq": 2,
                          states.ACCEPTED: 9}) == {"duplicates": 4, "expired": 1, "dlq": 2}


@pytest.mark.parametrize("values,q,want", [([1, 2, 3, 100], 0.5, 2.5),
                                           ([1, 2, 3, 100], 0.99, 97.09),
                                           ([7], 0.99, 7), (list(range(101)), 0.99, 99)])
def test_percentile_interpolates_like_flink_sqls(values, q, want):
    assert percentile(values, q) == pytest.approx(want)


def test_latency_summary_is_whole_ms_and_empty_for_no_deliveries():
    assert latency_summary([1, 2, 3, 100]) == {"p50": 2, "p99": 97, "max": 100}
    assert latency_summary([]) == {}
