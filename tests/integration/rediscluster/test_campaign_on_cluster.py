"""A campaign on the local Redis Cluster: the expansion job hands its recipients to the
delivery job, whose users come from the cluster (one HMGET per key) and
whose control operator writes a cancel there. Checked at the provider mock's log."""
from __future__ import annotations

import time
from collections import Counter

import pytest

from herald.campaigns import cancelled_key
from herald.segments import SegmentFiles
from herald.users import Contacts, UserRecord, queue_put
from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import produce, read_until
from tests.integration.records import now_ms


@pytest.fixture
def settings(test_settings, fcm, tmp_path, redis_cluster, unique):
    return test_settings.replace(fcm_url=fcm.url, redis_address=redis_cluster.address,
                                 ratelimit_namespace=f"rl{unique}",
                                 expansion_rest_port=0,
                                 segments_dir=str(tmp_path / "segments"),
                                 flink_checkpoint_dir=str(tmp_path / "ck"))


def campaign(tenant: str, cid: str, audience: dict) -> dict:
    t = now_ms()
    return {"campaign_id": cid, "tenant_id": tenant, "audience": audience, "channels": ["push"],
            "content": {"title": "Sale", "body": "20% off"}, "created_at": t,
            "expires_at": t + 600_000}


def test_a_campaign_delivered_with_users_and_a_cancel_on_the_cluster(
        settings, fcm, cluster_client, unique, tmp_path):
    tenant = f"t{unique}"
    users = [f"u{i}" for i in range(200)]
    opted_out = set(users[:20])
    pipe = cluster_client.pipeline(transaction=False)
    for u in users:
        queue_put(pipe, tenant, UserRecord(
            user_id=u, contacts=Contacts(push_token=f"tok-{tenant}-{u}", platform="android"),
            opt_outs=("push",) if u in opted_out else ()), now_ms())
    pipe.execute()
    no_record = [f"ghost{i}" for i in range(5)]  # no contact anywhere: failed, never sent
    SegmentFiles.from_settings(settings).write(tenant, "buyers", users + no_record, now_ms())
    gone = campaign(tenant, f"gone{unique}", {"user_ids": users[:10]})

    with RunningJob("jobs.delivery", settings, tmp_path) as delivery, \
            RunningJob("jobs.expansion", settings, tmp_path) as expansion:
        produce(settings.kafka_bootstrap, settings.topic_control,
                [("cancel_campaign", {"kind": "cancel_campaign", "campaign_id":
                                      gone["campaign_id"], "tenant_id": tenant, "at": now_ms()})])
        deadline = time.monotonic() + 180
        while not cluster_client.exists(cancelled_key(tenant, gone["campaign_id"])):
            delivery.check_alive()
            expansion.check_alive()
            assert time.monotonic() < deadline, "the control operator never wrote the cancel"
            time.sleep(0.05)
        sale = campaign(tenant, f"sale{unique}", {"segment": "buyers"})
        produce(settings.kafka_bootstrap, settings.topic_campaigns,
                [(c["campaign_id"], c) for c in (gone, sale)])
        finals = ("delivered", "opted_out", "failed")
        statuses = read_until(
            settings.kafka_bootstrap, settings.topic_status,
            lambda seen: sum(1 for s in seen if s["id"].startswith(sale["campaign_id"] + ":")
                             and s["state"] in finals) >= len(users) + len(no_record),
            job=delivery, timeout_s=180)

    mine = [s for s in statuses if s["id"].startswith(sale["campaign_id"] + ":")]
    final = Counter(s["state"] for s in mine if s["state"] in finals)
    assert final == {"delivered": 180, "opted_out": 20, "failed": 5}
    accepted = [r for r in fcm.log() if r["herald_id"].startswith(f"{sale['campaign_id']}:")]
    # every token the cluster's user records hold, once each; none of the opted out
    assert sorted(r["to"] for r in accepted) == sorted(
        f"tok-{tenant}-{u}" for u in users if u not in opted_out)
    assert not [r for r in fcm.log() if r["herald_id"].startswith(gone["campaign_id"])]
