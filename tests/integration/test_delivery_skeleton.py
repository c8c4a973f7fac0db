"""The walking skeleton end to end: real Kafka, the MiniCluster job, the mock FCM."""
from __future__ import annotations

import time
from collections import Counter


from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import produce, read_until
from tests.integration.mock_log import accepted_ids


def notification(unique: str, i: int, **overrides) -> dict:
    now = int(time.time() * 1000)
    record = {
        "id": f"{unique}-{i}", "tenant_id": "acme", "user_id": f"u-{unique}-{i % 37}",
        "priority": "critical", "channels": ["push"],
        "to": {"push_token": f"tok-{i % 37}", "platform": "android"},
        "content": {"title": "Your code", "body": f"{100000 + i} is your code"},
        "created_at": now, "expires_at": now + 600_000,
    }
    record.update(overrides)
    return record


def test_thousand_critical_notifications_are_each_delivered_once(test_settings, unique, tmp_path):
    records = [notification(unique, i) for i in range(1000)]
    produce(test_settings.kafka_bootstrap, test_settings.topic_critical,
            ((r["user_id"], r) for r in records))
    expected = {r["id"] for r in records}

    with RunningJob("jobs.delivery", test_settings, tmp_path) as job:
        statuses = read_until(
            test_settings.kafka_bootstrap, test_settings.topic_status,
            lambda seen: len({s["id"] for s in seen if s["state"] == "delivered"}) >= 1000, job=job)

    delivered = Counter(s["id"] for s in statuses if s["state"] == "delivered")
    assert set(delivered) == expected
    assert max(delivered.values()) == 1
    assert all(s["_key"] == s["id"] and s["provider"] == "fcm" for s in statuses)
    at_mock = Counter(i for i in accepted_ids("fcm", test_settings) if i.startswith(unique))
    assert set(at_mock) == expected
    assert max(at_mock.values()) == 1


MALFORMED = [
    (b"{not json", "malformed JSON"),
    (b"[1, 2, 3]", "expected a JSON object, got list"),
    (b"", "malformed JSON"),
    ({"id": None}, "missing required field 'id'"),
    ({"tenant_id": None}, "missing required field 'tenant_id'"),
    ({"user_id": None}, "missing required field 'user_id'"),
    ({"created_at": None}, "missing required field 'created_at'"),
    ({"created_at": "yesterday"}, "'created_at' must be an integer epoch in milliseconds"),
    ({"created_at": 1764000000}, "'created_at' looks like seconds, not milliseconds"),
    ({"priority": "promotional"}, "came in on the critical topic"),
    ({"priority": "urgent"}, "'priority' must be 'critical' or 'promotional'"),
    ({"channels": []}, "'channels' must be a non-empty list"),
    ({"channels": ["pigeon"]}, "unknown channel 'pigeon'"),
    ({"to": {"platform": "symbian", "push_token": "x"}}, "'to.platform' must be 'ios' or 'android'"),
    ({"content": None}, "missing required field 'content'"),
    ({"content": {"title": "no body"}}, "'content' needs a 'body' or a 'template'"),
    ({"content": {"body": "x", "data": {"n": 1}}}, "'content.data' must be an object of string values"),
    ({"expires_at": 1}, "'expires_at' looks like seconds, not milliseconds"),
    ({"seq": -4}, "'seq' must be a non-negative integer"),
    ({"id": "x" * 300}, "'id' is longer than 256 characters"),
]


def test_malformed_records_go_to_the_dlq_with_a_precise_reason(test_settings, unique, tmp_path):
    assert len(MALFORMED) == 20
    good, batch, bad_reasons = [], [], {}
    for i, (change, reason) in enumerate(MALFORMED):
        ok = notification(unique, 1000 + i)
        good.append(ok)
        key = f"bad-{unique}-{i}"
        value = change if isinstance(change, bytes) else {**notification(unique, i), "id": key, **change}
        batch += [(ok["user_id"], ok), (key, value)]
        bad_reasons[key] = reason
    produce(test_settings.kafka_bootstrap, test_settings.topic_critical, batch)

    with RunningJob("jobs.delivery", test_settings, tmp_path) as job:
        dlq = read_until(test_settings.kafka_bootstrap, test_settings.topic_dlq,
                         lambda seen: len(seen) >= 20, job=job)
        statuses = read_until(
            test_settings.kafka_bootstrap, test_settings.topic_status,
            lambda seen: len({s["id"] for s in seen if s["state"] == "delivered"}) >= 20, job=job)

    assert len(dlq) == 20
    for record in dlq:
        assert record["stage"] == "parse" and isinstance(record["at"], int)
    by_reason = sorted(r["reason"] for r in dlq)
    for expected in bad_reasons.values():
        assert any(expected in reason for reason in by_reason), (expected, by_reason)
    assert {s["id"] for s in statuses if s["state"] == "delivered"} == {g["id"] for g in good}
    assert not any(s["id"].startswith("bad-") for s in statuses)


def test_the_promotional_topic_has_its_own_path_and_rules(test_settings, unique, tmp_path):
    promo = [notification(unique, 5000 + i, priority="promotional", campaign_id="cmp-1")
             for i in range(50)]
    no_expiry = {**notification(unique, 6000, priority="promotional"), "expires_at": None}
    wrong_class = notification(unique, 6001)  # a critical record on the promo topic
    produce(test_settings.kafka_bootstrap, test_settings.topic_promo,
            [(r["user_id"], r) for r in promo + [no_expiry, wrong_class]])

    with RunningJob("jobs.delivery", test_settings, tmp_path) as job:
        statuses = read_until(test_settings.kafka_bootstrap, test_settings.topic_status,
                              lambda seen: len(seen) >= 50, job=job)
        dlq = read_until(test_settings.kafka_bootstrap, test_settings.topic_dlq,
                         lambda seen: len(seen) >= 2, job=job)

    assert {s["id"] for s in statuses if s["state"] == "delivered"} == {r["id"] for r in promo}
    assert all(s["priority"] == "promotional" and s["campaign_id"] == "cmp-1" for s in statuses)
    reasons = sorted(d["reason"] for d in dlq)
    assert any("missing required field 'expires_at'" in r for r in reasons)
    assert any("came in on the promotional topic" in r for r in reasons)
