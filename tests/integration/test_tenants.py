"""Tenants apart end to end: ids are chosen by tenants, so two tenants may use the same
notification ids, user ids and campaign ids, and neither's delivery, dedup, order or campaign
may touch the other's. Checked at the provider mock's log, not by Herald's own statuses."""
from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import produce, read_until
from tests.integration.records import note

TENANTS = ("acme", "globex", "initech")


@pytest.fixture
def settings(test_settings, fcm, tmp_path):
    return test_settings.replace(fcm_url=fcm.url, flink_checkpoint_dir=str(tmp_path / "ck"),
                                 gap_timeout_ms=5_000)


def tenant_note(unique: str, tenant: str, name, user: str, **extra) -> dict:
    """The same id and user id in every tenant; the token says whose it is."""
    return note(unique, name, user, tenant_id=tenant,
                to={"push_token": f"tok-{tenant}-{user}", "platform": "android"},
                content={"body": f"{tenant} {name}"}, **extra)


@pytest.mark.parametrize("seed", [3])
def test_tenants_reusing_ids_each_get_their_own_delivered_once_and_in_order(
        settings, fcm, unique, tmp_path, seed):
    rng = random.Random(seed)
    users = [f"u{i}" for i in range(30)]
    stream, expected = [], defaultdict(list)  # token → the ids it must get, in seq order
    for tenant in TENANTS:
        for user in users:
            records = [tenant_note(unique, tenant, f"{user}-{s}", user, seq=s) for s in range(6)]
            expected[f"tok-{tenant}-{user}"] = [r["id"] for r in records]
            rng.shuffle(records)
            stream.extend(records)
    replays = rng.sample(stream, 60)  # each tenant's replays are duplicates of its own only
    rng.shuffle(stream)
    stream += replays
    produce(settings.kafka_bootstrap, settings.topic_critical,
            [(r["user_id"], r) for r in stream])
    total = sum(len(ids) for ids in expected.values())

    with RunningJob("jobs.delivery", settings, tmp_path) as job:
        statuses = read_until(
            settings.kafka_bootstrap, settings.topic_status,
            lambda seen: Counter(s["state"] for s in seen)["delivered"] >= total
            and Counter(s["state"] for s in seen)["duplicate"] >= len(replays), job=job,
            timeout_s=240)

    got = defaultdict(list)
    for record in sorted(fcm.log(), key=lambda r: r["seq"]):
        got[record["to"]].append(record["herald_id"])
    assert dict(got) == dict(expected)  # every token its own ids, once each, in seq order
    delivered = Counter((s["tenant_id"], s["id"]) for s in statuses if s["state"] == "delivered")
    assert len(delivered) == total and set(delivered.values()) == {1}
    assert not [s for s in statuses if s["state"] == "delivered" and s.get("detail")]
    duplicates = Counter((s["tenant_id"], s["id"]) for s in statuses if s["state"] == "duplicate")
    assert duplicates == Counter((r["tenant_id"], r["id"]) for r in replays)
