"""A campaign's status end to end: posted through the API, expanded by the expansion job,
delivered by the delivery job (both on the MiniCluster) to a mock FCM, its status events
stored by the audit consumer; ``GET /v1/campaigns/{id}`` must then say ``completed`` with the
progress the provider's own log and the user records imply, not Herald's word for it."""
from __future__ import annotations

from collections import Counter

import pytest
import requests

from herald.campaigns import recipient_id
from herald_api.audit import AuditConsumer
from herald_api.server import ApiServer
from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import read_until
from tests.integration.records import now_ms, put_user

FINAL = {"delivered", "expired", "cancelled", "opted_out", "failed"}


@pytest.fixture
def settings(test_settings, fcm, tenant, tmp_path):
    return test_settings.replace(
        fcm_url=fcm.url, api_keys=f"key-{tenant}:{tenant}", expansion_rest_port=0,
        segments_dir=str(tmp_path / "segments"), flink_checkpoint_dir=str(tmp_path / "ck"),
        flink_checkpoint_interval_ms=1_000, audit_consumer_group=f"audit-{tenant}",
        expansion_batch_size=10, expansion_tick_ms=50, expansion_progress_interval_ms=0)


def get(api, tenant: str, path: str) -> dict:
    answer = requests.get(api.url + path, headers={"Authorization": f"Bearer key-{tenant}"},
                          timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_campaign_through_both_jobs_ends_completed_with_what_the_provider_accepted(
        settings, fcm, tenant, redis_client, tmp_path):
    reachable = [f"r{i}" for i in range(30)]     # a token: delivered
    opted_out = [f"o{i}" for i in range(6)]      # opted out of push, the only channel
    unknown = [f"n{i}" for i in range(4)]        # no user record, so no token: failed
    for user in reachable:
        put_user(redis_client, tenant, user, contacts={"push_token": f"tok-{user}",
                                                       "platform": "android"})
    for user in opted_out:
        put_user(redis_client, tenant, user, contacts={"push_token": f"tok-{user}",
                                                       "platform": "android"},
                 opt_outs=["push"])
    audience = reachable + opted_out + unknown
    cid = f"cmp-{tenant}"
    t = now_ms()
    body = {"campaign_id": cid, "tenant_id": tenant, "audience": {"user_ids": audience},
            "channels": ["push"], "content": {"title": "Sale", "body": "20% off"},
            "created_at": t, "expires_at": t + 600_000}
    recipients = {recipient_id(cid, u) for u in audience}

    with ApiServer(settings) as api, \
            RunningJob("jobs.expansion", settings, tmp_path) as expansion, \
            RunningJob("jobs.delivery", settings, tmp_path) as delivery:
        posted = requests.post(api.url + "/v1/campaigns", json=body, timeout=30,
                               headers={"Authorization": f"Bearer key-{tenant}"})
        assert posted.status_code == 202, posted.text
        assert get(api, tenant, f"/v1/campaigns/{cid}")["state"] == "accepted"

        def everything_final(seen) -> bool:
            expansion.check_alive()
            finals = {s["id"] for s in seen if s["id"] in recipients and s["state"] in FINAL}
            done = any(s["id"] == cid and s.get("expansion") == "done" for s in seen)
            return done and finals == recipients
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status, everything_final,
                              job=delivery, timeout_s=300)

        consumer = AuditConsumer(settings)
        try:
            consumer.drain()
        finally:
            consumer.close()
        status = get(api, tenant, f"/v1/campaigns/{cid}")

    accepted = Counter(r["herald_id"] for r in fcm.log() if r["herald_id"] in recipients)
    assert set(accepted.values()) == {1}  # each recipient at most once at the provider
    assert set(accepted) == {recipient_id(cid, u) for u in reachable}
    assert status["state"] == "completed"
    assert status["progress"] == {
        "expanded": len(audience), "total": len(audience), "delivered": len(accepted),
        "failed": len(unknown), "expired": 0, "cancelled": 0, "opted_out": len(opted_out),
        "pending": 0, "sent": len(accepted)}
    # the expansion's own count, reported as it went, is what progress.expanded shows
    reported = [s["expanded"] for s in statuses if s["id"] == cid]
    assert reported == sorted(reported) and reported[-1] == len(audience)
