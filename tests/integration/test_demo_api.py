"""``make demo``'s API step on the real stack: the API, the audit consumer and the webhook
dispatcher started as the demo starts them (processes, the demo key), the demo's webhook
registered, a notification sent through the API, its audit trail read back once delivered and
its signed webhook call received, and the printed ``curl`` run as a user would paste it."""
from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.request

import orjson
import pytest

from herald_stack import demo
from herald_stack.processes import Managed, free_port
from herald_stack.webhook_receiver import WebhookReceiver
from tests.integration.jobs import RunningJob


@pytest.fixture
def settings(test_settings, unique, tmp_path):
    return demo.demo_settings(test_settings.replace(
        api_port=free_port(), api_keys="other-key:other", audit_consumer_group=f"audit-{unique}",
        webhook_consumer_group=f"hooks-{unique}",
        ratelimit_namespace=f"rl{unique}", flink_checkpoint_dir=str(tmp_path / "ck")))


@pytest.fixture
def api(settings, tmp_path):
    run_dir = tmp_path / "run"
    yield demo.start_api(run_dir, settings)
    for name in ("api", "audit-consumer", "webhook-dispatcher"):
        Managed(name, run_dir).stop()


def mock_accepted(settings, herald_id: str) -> list[dict]:
    with urllib.request.urlopen(f"{settings.fcm_url}/_mock/log?herald_id={herald_id}",
                                timeout=10) as r:
        return json.load(r)["records"]


def test_the_demo_key_is_added_to_the_configured_ones(settings):
    assert settings.api_keys.get_secret_value() == "other-key:other,demo-key:demo"
    assert demo.with_demo_key(settings) is settings  # once only
    assert settings.webhook_allow_private  # the demo's receiver is on this machine


def test_a_notification_through_the_api_is_delivered_and_its_audit_trail_read(
        settings, api, unique, tmp_path):
    nid = f"api-{unique}"
    receiver = WebhookReceiver(demo.WEBHOOK_SECRET)
    with receiver_stopped(receiver), RunningJob("jobs.delivery", settings, tmp_path) as job:
        assert demo.register_webhook(api, receiver.url)[0] == 200
        status, answer = demo.send_through_api(api, demo.api_notification(nid))
        assert (status, answer) == (202, {"id": nid})

        found = demo.audit_trail(api, nid, timeout_s=240)
        job.check_alive()
        assert found["state"] == "delivered", found
        assert (found["tenant_id"], found["user_id"], found["priority"]) == (
            "demo", "user-api", "critical")
        assert found["enqueued_at"] is not None
        [delivered] = [e for e in found["attempts"] if e["state"] == "delivered"]
        assert (delivered["channel"], delivered["provider"]) == ("push", "fcm")
        assert [r["herald_id"] for r in mock_accepted(settings, nid)] == [nid]
        lines = demo.trail_lines(found)
        assert lines[0].startswith(f"  {nid}: delivered")
        assert any("delivered" in line and "push/fcm" in line for line in lines[1:])

        # the tenant's webhook: one signed call with the delivered status
        calls = demo.webhook_calls(receiver, nid, timeout_s=120)
        assert [(c["event"]["state"], c["signed"]) for c in calls] == [("delivered", True)]
        assert calls[0]["event"]["tenant_id"] == "demo"
        lines = demo.webhook_lines(receiver, nid)
        assert lines[0] == f"  1 call(s) to {receiver.url}, 1 with a valid X-Herald-Signature"
        assert lines[1].startswith(f"    {nid}: delivered push/fcm at ")

        # the curl the demo prints, run by a shell as pasted
        done = subprocess.run(["bash", "-c", demo.curl_command(api) + " -w '\\n%{http_code}'"],
                              capture_output=True, text=True, timeout=60)
        body, code = done.stdout.rsplit("\n", 1)
        assert code == "202", done
        curl_id = orjson.loads(body)["id"]
        assert curl_id.startswith("hello-")
        assert demo.audit_trail(api, curl_id, timeout_s=120)["state"] == "delivered"
        assert len(mock_accepted(settings, curl_id)) == 1


@contextlib.contextmanager
def receiver_stopped(receiver: WebhookReceiver):
    try:
        yield receiver
    finally:
        receiver.stop()


def test_the_api_refuses_another_key(api):
    status, answer = demo.send_through_api(api, demo.api_notification("x"), key="wrong")
    assert status == 401 and answer["error"]["code"] == "unauthorized"
