"""Tenant webhooks against the real Kafka and Redis: a tenant registers a URL and a secret
through the API; the dispatcher (``python -m herald_api.webhooks``'s loop, in a thread) reads
the status topic and calls a receiver of this test's own (a tiny HTTP server) with each final
status once, signed, and again after a 500. Status events are produced as the delivery job
writes them; waiting is for what the receiver saw, polled, never a fixed sleep."""
from __future__ import annotations

import threading
import time
import uuid

import orjson
import pytest
import requests
from kafka import KafkaConsumer, TopicPartition

from herald.webhooks import verify
from herald_api.server import ApiServer
from herald_api.webhooks import RETRY_KEY, WebhookDispatcher, dead_key
from herald_stack.webhook_receiver import WebhookReceiver
from tests.integration.kafka_io import produce
from tests.integration.records import now_ms

U = uuid.uuid4().hex[:8]
TENANT, OTHER, KEY = f"hooks{U}", f"other{U}", f"key-hooks-{U}"
SECRET = f"whsec-{U}-0123456789"


@pytest.fixture(scope="module")
def settings(stack, base_settings):
    topics = {f"topic_{role}": f"hooks{U}.{name}" for role, name in base_settings.topics().items()}
    settings = base_settings.replace(
        webhook_allow_private=True, webhook_consumer_group=f"hooks{U}", api_keys=f"{KEY}:{TENANT}",
        webhook_backoff_ms=100, webhook_backoff_max_ms=400, webhook_max_attempts=3,
        webhook_timeout_s=5.0, **topics)
    stack.create_topics(list(settings.topics().values()))
    return settings


@pytest.fixture(scope="module")
def receiver():
    r = WebhookReceiver(SECRET)
    yield r
    r.stop()


@pytest.fixture(scope="module")
def api(settings):
    with ApiServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def dispatcher(settings, api):
    d = WebhookDispatcher(settings)
    thread = threading.Thread(target=d.run, name="webhooks", daemon=True)
    thread.start()
    yield d
    d.stop.set()
    thread.join(30)
    d.close()


def call(api, method: str, body=None) -> requests.Response:
    return requests.request(method, f"{api.url}/v1/webhook", json=body, timeout=10,
                            headers={"Authorization": f"Bearer {KEY}"})


def status(tenant: str, nid: str, state: str, at: int, **extra) -> dict:
    return {"id": nid, "tenant_id": tenant, "user_id": "u-1", "priority": "critical",
            "channel": "push", "provider": "fcm", "state": state, "attempt": 1, "at": at,
            **extra}


def wait_for(check, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("not reached in time")


def caught_up(settings) -> bool:
    """Has the dispatcher committed the status topic to its end (every record called for or
    scheduled)? Read without joining its group."""
    c = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                      group_id=settings.webhook_consumer_group)
    try:
        topic = settings.topic_status
        parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
        end = c.end_offsets(parts)
        return all((c.committed(tp) or 0) >= end[tp] for tp in parts)
    finally:
        c.close()


def test_registration(api, settings):
    assert call(api, "GET").status_code == 404
    with ApiServer(settings.replace(webhook_allow_private=False)) as strict:
        refused = call(strict, "PUT", {"url": "http://127.0.0.1:9/h", "secret": SECRET})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "url"
    bad = call(api, "PUT", {"url": "ftp://x.example/h", "secret": SECRET})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "url"
    assert call(api, "PUT", {"url": "https://h.example/x", "secret": SECRET,
                             "tenant_id": OTHER}).status_code == 403
    assert call(api, "PUT", {"url": "https://h.example/x", "secret": SECRET}).status_code == 200
    got = call(api, "GET").json()
    assert got["url"] == "https://h.example/x" and "secret" not in got
    assert call(api, "DELETE").status_code == 204
    assert call(api, "GET").status_code == 404


def test_each_final_status_once_signed_and_retried_after_a_500(api, settings, receiver,
                                                               dispatcher, redis_client):
    assert call(api, "PUT", {"url": receiver.url, "secret": SECRET}).status_code == 200
    t = now_ms()
    ok, failing, gone = f"{U}-ok", f"{U}-fail-once", f"{U}-expired"
    receiver.fail_first = {failing}
    events = [
        status(TENANT, ok, "accepted", t, attempt=0),
        status(TENANT, ok, "delivered", t + 10, provider_message_id="m-1"),
        status(TENANT, ok, "delivered", t + 10, provider_message_id="m-1"),  # a replay
        status(TENANT, ok, "delivered_to_handset", t + 20),
        status(TENANT, failing, "retrying", t + 5),
        status(TENANT, failing, "failed", t + 30, detail="push failed (permanent: x)"),
        status(TENANT, gone, "expired", t + 40),
        status(OTHER, f"{U}-other", "delivered", t + 50),  # another tenant: not ours
    ]
    produce(settings.kafka_bootstrap, settings.topic_status,
            [(e["id"], orjson.dumps(e)) for e in events])
    want = {(ok, "delivered"), (ok, "delivered_to_handset"), (failing, "failed"),
            (gone, "expired")}
    wait_for(lambda: {(c["event"]["id"], c["event"]["state"]) for c in receiver.ok()} == want)
    # every record consumed, nothing left to retry or given up: no later call can come
    wait_for(lambda: caught_up(settings))
    wait_for(lambda: not any(TENANT.encode() in m for m in redis_client.zrange(RETRY_KEY, 0, -1)))
    assert redis_client.llen(dead_key(TENANT)) == 0

    calls = receiver.calls
    delivered = sorted((c["event"]["id"], c["event"]["state"]) for c in calls
                       if c["status"] == 204)
    assert delivered == sorted(want)  # each final status once, the replay not again
    assert [c["status"] for c in calls if c["event"]["id"] == failing] == [500, 204]
    for c in calls:
        headers = {k.lower(): v for k, v in c["headers"].items()}
        assert verify(SECRET, headers["x-herald-signature"], c["body"], int(time.time()))
        assert not verify("another-secret-0123", headers["x-herald-signature"], c["body"],
                          int(time.time()))
        assert c["signed"] and c["event"]["tenant_id"] == TENANT
    retried = [c for c in calls if c["event"]["id"] == failing]
    assert retried[0]["headers"]["X-Herald-Event-Id"] == retried[1]["headers"]["X-Herald-Event-Id"]


def test_a_webhook_that_keeps_failing_is_given_up_after_max_attempts(api, settings, receiver,
                                                                     dispatcher, redis_client):
    assert call(api, "PUT", {"url": receiver.url, "secret": SECRET}).status_code == 200
    nid = f"{U}-always-fails"
    receiver.fail_always = {nid}
    before = dispatcher.metrics.totals()
    produce(settings.kafka_bootstrap, settings.topic_status,
            [(nid, orjson.dumps(status(TENANT, nid, "failed", now_ms())))])
    wait_for(lambda: redis_client.llen(dead_key(TENANT)) == 1)
    after = dispatcher.metrics.totals()
    assert after["given_up"] - before["given_up"] == 1
    assert after["failed"] - before["failed"] == settings.webhook_max_attempts
    tries = [c for c in receiver.calls if c["event"]["id"] == nid]
    assert len(tries) == settings.webhook_max_attempts
    given_up = orjson.loads(redis_client.lindex(dead_key(TENANT), 0))
    assert (given_up["id"], given_up["attempts"], given_up["last_status"]) == (nid, 3, 500)
