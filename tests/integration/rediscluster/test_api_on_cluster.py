"""The HTTP API and the audit consumer on the local Redis Cluster: users, templates, segments,
idempotent submissions, a cancel, and the audit trail and campaign progress read back, with a
slot moved under the API between a request and its repeat."""
from __future__ import annotations

import orjson
import pytest
import requests

from herald.campaigns import cancelled_key
from herald.redis_conn import key_slot
from herald_api.audit import AuditConsumer
from herald_api.server import ApiServer
from herald_api.store import audit_key, campaign_counts_key, idem_key
from tests.integration.kafka_io import produce, read_all
from tests.integration.records import now_ms


@pytest.fixture
def settings(test_settings, redis_cluster, unique):
    return test_settings.replace(redis_address=redis_cluster.address,
                                 api_keys=f"key-{unique}:t{unique}",
                                 audit_consumer_group=f"audit-{unique}")


def test_the_api_and_the_audit_store_on_the_cluster(settings, redis_cluster, cluster_client,
                                                    unique):
    tenant, cid = f"t{unique}", f"sale{unique}"

    def call(api, method, path, body=None, **headers):
        return requests.request(method, api.url + path, data=orjson.dumps(body) if body else None,
                                headers={"Authorization": f"Bearer key-{unique}",
                                         "Content-Type": "application/json", **headers},
                                timeout=30)

    with ApiServer(settings) as api:
        user = {"contacts": {"push_token": "tok-1", "platform": "ios"}, "locale": "pt-BR"}
        assert call(api, "PUT", "/v1/users/u1", user).status_code == 200
        assert call(api, "GET", "/v1/users/u1").json()["contacts"]["push_token"] == "tok-1"
        template = {"default_locale": "en", "locales": {"en": {"body": "{{n}} offers"}}}
        assert call(api, "PUT", "/v1/templates/offers", template).status_code == 200
        assert call(api, "GET", "/v1/templates/offers").json()["locales"] == template["locales"]
        assert call(api, "PUT", "/v1/segments/buyers",
                    {"user_ids": ["u1", "u2"]}).json()["count"] == 2
        assert call(api, "GET", "/v1/segments/buyers").json()["count"] == 2

        t = now_ms()
        note = {"id": f"n{unique}", "tenant_id": tenant, "user_id": "u1",
                "priority": "critical", "channels": ["push"], "content": {"body": "hi"},
                "created_at": t}
        first = call(api, "POST", "/v1/notifications", note, **{"Idempotency-Key": "k1"})
        assert first.status_code == 202
        # the request's idempotency keys (header and id) share the tenant's slot; that slot
        # moves to another node before the repeat
        keys = [idem_key(tenant, "hdr:notifications", "k1", True),
                idem_key(tenant, "ntf", note["id"], True)]
        assert all(cluster_client.exists(k) for k in keys)
        slot = key_slot(keys[0])
        assert key_slot(keys[1]) == slot
        redis_cluster.migrate_slot(slot, next(p for p in redis_cluster.ports
                                              if p != redis_cluster.owner(slot)))
        again = call(api, "POST", "/v1/notifications", {**note, "id": f"other{unique}"},
                     **{"Idempotency-Key": "k1"})
        assert (again.status_code, again.json()) == (202, first.json())
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert call(api, "POST", "/v1/notifications", note).headers.get(
            "Idempotent-Replayed") == "true"
        enqueued = [v for _, v in read_all(settings.kafka_bootstrap, settings.topic_critical)]
        assert [v["id"] for v in enqueued] == [note["id"]]

        campaign = {"campaign_id": cid, "tenant_id": tenant, "audience": {"segment": "buyers"},
                    "channels": ["push"], "content": {"body": "sale"}, "created_at": t,
                    "expires_at": t + 600_000}
        assert call(api, "POST", "/v1/campaigns", campaign).status_code == 202
        assert call(api, "DELETE", f"/v1/campaigns/{cid}",
                    **{"Idempotency-Key": "c1"}).status_code == 202
        assert cluster_client.exists(cancelled_key(tenant, cid))

        # status events, as the delivery job writes them, into the audit store on the cluster
        def status(nid, state, at, **extra):
            return {"id": nid, "tenant_id": tenant, "user_id": "u1", "priority": "critical",
                    "channel": "push", "provider": "apns", "state": state, "attempt": 1,
                    "at": at, **extra}
        events = [status(note["id"], "accepted", t + 1), status(note["id"], "delivered", t + 2),
                  status(f"{cid}:u1", "delivered", t + 3, campaign_id=cid,
                         priority="promotional"),
                  status(f"{cid}:u2", "cancelled", t + 4, campaign_id=cid, user_id="u2",
                         priority="promotional")]
        produce(settings.kafka_bootstrap, settings.topic_status, [(e["id"], e) for e in events])
        consumer = AuditConsumer(settings)
        try:
            consumer.drain()
        finally:
            consumer.close()
        trail = call(api, "GET", f"/v1/notifications/{note['id']}").json()
        assert trail["state"] == "delivered" and trail["enqueued_at"] is not None
        assert [a["state"] for a in trail["attempts"]] == ["accepted", "delivered"]
        progress = call(api, "GET", f"/v1/campaigns/{cid}").json()["progress"]
        assert (progress["delivered"], progress["cancelled"]) == (1, 1)
        # a recipient's audit hash sits in its campaign's slot, beside the campaign's counts
        assert key_slot(audit_key(tenant, f"{cid}:u1", True)) == \
            key_slot(campaign_counts_key(tenant, cid, True))
        assert cluster_client.exists(audit_key(tenant, f"{cid}:u2", True))
