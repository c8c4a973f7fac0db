"""Receipts, token hygiene and a tenant webhook end to end: the delivery job on the MiniCluster,
real Kafka and Redis, mocks of this module's own (FCM with a dead token, Twilio posting status
callbacks to the API), the audit consumer and the webhook dispatcher in threads, and a local
HTTP receiver as the tenant's webhook. Waiting is for observable states, polled."""
from __future__ import annotations

import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
import requests

from herald.webhooks import verify
from herald_api.audit import AuditConsumer
from herald_api.server import ApiServer
from herald_api.webhooks import WebhookDispatcher
from herald_stack.processes import free_port
from tests.helpers_mocks import MockProcess
from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import produce
from tests.integration.records import now_ms, put_user

U = uuid.uuid4().hex[:8]
TENANT, KEY, SECRET = f"e2e{U}", f"key-e2e-{U}", f"whsec-e2e-{U}-0123"
DEAD = f"dead-e2e-{U}"


@pytest.fixture(scope="module")
def mocks():
    made = {name: MockProcess("--provider", name) for name in ("fcm", "twilio")}
    yield made
    for mock in made.values():
        mock.stop()


@pytest.fixture(scope="module")
def settings(stack, base_settings, mocks, tmp_path_factory):
    port = free_port()
    topics = {f"topic_{role}": f"e2e{U}.{name}" for role, name in base_settings.topics().items()}
    settings = base_settings.replace(
        consumer_group=f"herald-e2e{U}", flink_rest_port=0, ratelimit_namespace=f"rl{U}",
        flink_checkpoint_dir=str(tmp_path_factory.mktemp("ck")),
        audit_consumer_group=f"audit-e2e{U}", webhook_allow_private=True, webhook_consumer_group=f"hooks-e2e{U}",
        api_keys=f"{KEY}:{TENANT}", api_port=port,
        twilio_status_callback_url=f"http://127.0.0.1:{port}/v1/receipts/twilio",
        fcm_url=mocks["fcm"].url, twilio_url=mocks["twilio"].url, **topics)
    stack.create_topics(list(settings.topics().values()))
    mocks["fcm"].configure(invalid=[DEAD])
    mocks["twilio"].configure(callbacks=True)
    return settings


class Hook:
    """The tenant's webhook: records each call, answers 204."""

    def __init__(self):
        self.calls: list[tuple[dict, bytes, str]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.calls.append((orjson.loads(body), body,
                                   self.headers.get("X-Herald-Signature", "")))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def running(settings, tmp_path_factory):
    """API, audit consumer, webhook dispatcher and the delivery job, stopped in reverse."""
    hook = Hook()
    audit, dispatcher = AuditConsumer(settings), WebhookDispatcher(settings)
    threads = [threading.Thread(target=c.run, daemon=True) for c in (audit, dispatcher)]
    with ApiServer(settings, port=settings.api_port) as api, \
            RunningJob("jobs.delivery", settings, tmp_path_factory.mktemp("job")) as job:
        for t in threads:
            t.start()
        yield api, job, hook
        for c in (audit, dispatcher):
            c.stop.set()
        for t in threads:
            t.join(30)
    audit.close()
    dispatcher.close()
    hook.server.shutdown()
    hook.server.server_close()


def api_get(api, path: str) -> dict:
    answer = requests.get(api.url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    return answer.json() if answer.status_code == 200 else {}


def wait_for(check, job, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        job.check_alive()
        time.sleep(0.1)
    raise AssertionError("not reached in time")


def states(api, nid: str) -> list[str]:
    return [a["state"] for a in api_get(api, f"/v1/notifications/{nid}").get("attempts", [])]


def test_receipt_token_hygiene_and_webhook_through_the_delivery_job(settings, running, mocks,
                                                                    redis_client):
    api, job, hook = running
    assert requests.put(f"{api.url}/v1/webhook", json={"url": hook.url, "secret": SECRET},
                        headers={"Authorization": f"Bearer {KEY}"}, timeout=10).status_code == 200
    put_user(redis_client, TENANT, "u-1",
             contacts={"push_token": DEAD, "platform": "android", "phone": "+15550142"})
    first, second = f"{U}-1", f"{U}-2"

    def note(nid: str) -> dict:
        t = now_ms()
        return {"id": nid, "tenant_id": TENANT, "user_id": "u-1", "priority": "critical",
                "channels": ["push", "sms"], "content": {"body": f"code for {nid}"},
                "created_at": t, "expires_at": t + 120_000}
    produce(settings.kafka_bootstrap, settings.topic_critical, [("u-1", note(first))])
    # FCM said UNREGISTERED: fallback to SMS, delivered, Twilio's receipt, the token removed
    wait_for(lambda: {"delivered_to_handset", "token_invalid"} <= set(states(api, first)), job)
    assert api_get(api, "/v1/users/u-1")["contacts"] == {"phone": "+15550142"}

    produce(settings.kafka_bootstrap, settings.topic_critical, [("u-1", note(second))])
    wait_for(lambda: "delivered_to_handset" in states(api, second), job)
    assert "token_invalid" not in states(api, second)
    assert len([r for r in mocks["fcm"].log("all") if r["to"] == DEAD]) == 1  # never again

    want = {(first, "delivered"), (first, "delivered_to_handset"), (second, "delivered"),
            (second, "delivered_to_handset")}
    wait_for(lambda: {(e["id"], e["state"]) for e, _, _ in hook.calls} >= want, job)
    ours = [(e["id"], e["state"]) for e, _, _ in hook.calls]
    assert sorted(ours) == sorted(want)  # each once; fallback/accepted/token_invalid not sent
    for _, body, signature in hook.calls:
        assert verify(SECRET, signature, body, int(time.time()))
