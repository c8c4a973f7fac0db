"""Delivery receipts and token hygiene against the real Kafka and Redis: the call stage sends to
mocks of this module's own that post Twilio status callbacks and SendGrid events to the API's
receipt endpoints (SendGrid's signed with the mock's ECDSA key, whose verification key the API
is given); the audit consumer (running in a thread, as ``python -m herald_api.audit`` does) files the status events and removes dead contacts. The call stage runs without Flink
(``BatchCalls``, as in test_users_call_stage); its status events go onto this module's status
topic as the delivery job's sink would write them.

Waiting is for an observable state (the API's answer), polled, never a fixed sleep.
"""
from __future__ import annotations

import threading
import time
import uuid

import orjson
import pytest
import requests

from herald.models import notification_from_dict
from herald.receipts import contact_sha1, message_key, twilio_signature
from herald_api.audit import AuditConsumer, ContactCleaner
from herald_api.server import ApiServer
from herald_stack.processes import free_port
from tests.helpers_mocks import MockProcess
from tests.integration.kafka_io import produce
from tests.integration.records import now_ms, put_user

U = uuid.uuid4().hex[:8]
TENANT, KEY, SECRET = f"rcpt{U}", f"key-rcpt-{U}", f"sg-secret-{U}"
DEAD_TOKEN, BOUNCING_PHONE, BOUNCING_MAIL = f"dead-{U}", "+15550199", f"gone{U}@example.com"


@pytest.fixture(scope="module")
def mocks():
    made = {name: MockProcess("--provider", name) for name in ("fcm", "twilio", "sendgrid")}
    yield made
    for mock in made.values():
        mock.stop()


@pytest.fixture(scope="module")
def settings(stack, base_settings, mocks):
    port = free_port()
    topics = {f"topic_{role}": f"rcpt{U}.{name}" for role, name in base_settings.topics().items()}
    settings = base_settings.replace(
        audit_consumer_group=f"audit-rcpt{U}", api_keys=f"{KEY}:{TENANT}", api_port=port,
        twilio_status_callback_url=f"http://127.0.0.1:{port}/v1/receipts/twilio",
        sendgrid_webhook_secret=SECRET, fcm_url=mocks["fcm"].url,
        sendgrid_webhook_public_key=mocks["sendgrid"].stats()["event_webhook_public_key"],
        twilio_url=mocks["twilio"].url, sendgrid_url=mocks["sendgrid"].url, **topics)
    stack.create_topics(list(settings.topics().values()))
    mocks["fcm"].configure(invalid=[DEAD_TOKEN])
    mocks["twilio"].configure(callbacks=True, bounce=[BOUNCING_PHONE])
    mocks["sendgrid"].configure(
        callbacks=True, bounce=[BOUNCING_MAIL],
        callback_url=f"http://127.0.0.1:{port}/v1/receipts/sendgrid?token={SECRET}")
    return settings


@pytest.fixture(scope="module")
def api(settings):
    with ApiServer(settings, port=settings.api_port) as server:
        yield server


@pytest.fixture(scope="module")
def audit(settings):
    """The audit consumer's endless loop in a thread, stopped at the end of the module."""
    consumer = AuditConsumer(settings)
    thread = threading.Thread(target=consumer.run, name="audit", daemon=True)
    thread.start()
    yield consumer
    consumer.stop.set()
    thread.join(30)
    consumer.close()


@pytest.fixture
def send(make_stage, settings, api, audit):
    """Hand notifications to a call stage; put its status events on the status topic."""
    stage = make_stage("critical", **{k: getattr(settings, k) for k in (
        "fcm_url", "twilio_url", "sendgrid_url", "twilio_status_callback_url")})

    def run(*records: dict) -> list:
        out = stage.send_all([notification_from_dict(r) for r in records])
        produce(settings.kafka_bootstrap, settings.topic_status,
                [(s.id, s.to_json()) for s in out.statuses])
        return out.statuses
    return run


def note(i: str, user: str, channels: list[str], **extra) -> dict:
    t = now_ms()
    # a ':' as in campaign recipients' ids: percent-encoded in Twilio's callback URL
    return {"id": f"{U}:{i}", "tenant_id": TENANT, "user_id": user, "priority": "critical",
            "channels": channels, "content": {"title": "t", "body": f"message {i}"},
            "created_at": t, "expires_at": t + 120_000, **extra}


def get(api, path: str) -> requests.Response:
    return requests.get(api.url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)


def await_state(api, nid: str, want, timeout_s: float = 30.0) -> dict:
    """Poll the notification until ``want(doc)`` holds; the last answer on timeout."""
    deadline = time.monotonic() + timeout_s
    doc: dict = {}
    while time.monotonic() < deadline:
        answer = get(api, f"/v1/notifications/{nid}")
        if answer.status_code == 200:
            doc = answer.json()
            if want(doc):
                return doc
        time.sleep(0.1)
    raise AssertionError(f"{nid} never reached the wanted state; last: {doc}")


def states_of(doc: dict) -> list[str]:
    return [a["state"] for a in doc["attempts"]]


def test_receipts_reach_the_status_and_the_audit(api, send, redis_client):
    put_user(redis_client, TENANT, "u-ok", contacts={"phone": "+15550100",
                                                     "email": f"ok{U}@example.com"})
    statuses = send(note("sms", "u-ok", ["sms"]), note("mail", "u-ok", ["email"]))
    delivered = {s.id: s for s in statuses if s.state == "delivered"}
    assert set(delivered) == {f"{U}:sms", f"{U}:mail"}
    for nid, provider in ((f"{U}:sms", "twilio"), (f"{U}:mail", "sendgrid")):
        mid = delivered[nid].provider_message_id
        assert mid  # the provider's id travels on the delivered event, and is indexed
        doc = await_state(api, nid, lambda d: d["state"] == "delivered_to_handset")
        assert states_of(doc) == ["delivered", "delivered_to_handset"]
        receipt = doc["attempts"][-1]
        assert (receipt["provider"], receipt["provider_message_id"], receipt["user_id"]) == \
            (provider, mid, "u-ok")
        assert orjson.loads(redis_client.get(message_key(provider, mid)))["id"] == nid
        assert receipt_count(api, provider, "recorded") >= 1
    # the user's contacts are untouched by good receipts
    user = get(api, "/v1/users/u-ok").json()
    assert user["contacts"] == {"phone": "+15550100", "email": f"ok{U}@example.com"}


def test_a_bounce_is_recorded_and_removes_the_dead_number_and_address(api, send, redis_client):
    put_user(redis_client, TENANT, "u-bounce",
             contacts={"phone": BOUNCING_PHONE, "email": BOUNCING_MAIL})
    send(note("b-sms", "u-bounce", ["sms"]), note("b-mail", "u-bounce", ["email"]))
    for nid in (f"{U}:b-sms", f"{U}:b-mail"):
        doc = await_state(api, nid, lambda d: "token_invalid" in states_of(d))
        assert doc["state"] == "bounced"
        assert states_of(doc) == ["delivered", "bounced", "token_invalid"]
        assert "removed from user 'u-bounce'" in doc["attempts"][-1]["detail"]
    assert get(api, "/v1/users/u-bounce").json()["contacts"] == {}


def test_a_dead_push_token_is_removed_and_not_used_again(api, send, mocks, redis_client):
    put_user(redis_client, TENANT, "u-dead",
             contacts={"push_token": DEAD_TOKEN, "platform": "android", "phone": "+15550123"})
    first = send(note("p1", "u-dead", ["push", "sms"]))
    assert [s.state for s in first] == ["fallback", "delivered"]
    assert (first[0].invalid_contact, first[0].contact_sha1) == \
        ("push_token", contact_sha1(DEAD_TOKEN))
    doc = await_state(api, f"{U}:p1", lambda d: "token_invalid" in states_of(d))
    assert "push_token removed" in [a for a in doc["attempts"]
                                    if a["state"] == "token_invalid"][0]["detail"]
    user = get(api, "/v1/users/u-dead").json()
    assert user["contacts"] == {"phone": "+15550123"}
    second = send(note("p2", "u-dead", ["push", "sms"]))
    assert [(s.state, s.channel) for s in second] == [("fallback", "push"), ("delivered", "sms")]
    assert "missing_contact" in second[0].detail and second[0].invalid_contact is None
    tried = [r for r in mocks["fcm"].log("all") if r["to"] == DEAD_TOKEN]
    assert len(tried) == 1  # the dead token went to FCM once, never again


def test_a_token_registered_since_is_kept(stack, redis_client):
    """The removal compares the dead value: a user who registered a new token keeps it."""
    put_user(redis_client, TENANT, "u-new", contacts={"push_token": "fresh", "platform": "ios"})
    event = {"id": f"{U}-x", "tenant_id": TENANT, "user_id": "u-new", "state": "failed",
             "channel": "push", "provider": "apns", "attempt": 1, "at": now_ms(),
             "invalid_contact": "push_token", "contact_sha1": contact_sha1("stale")}
    cleaner = ContactCleaner(redis_client)
    [kept] = cleaner.clean([event], now_ms())
    assert "not in the user record" in kept["detail"]
    assert redis_client.hget(f"herald:user:{TENANT}:u-new", "push_token") == b"fresh"
    [gone] = cleaner.clean([{**event, "contact_sha1": contact_sha1("fresh")}], now_ms())
    assert "removed" in gone["detail"]
    assert redis_client.hmget(f"herald:user:{TENANT}:u-new", "push_token", "platform") == \
        [None, None]


def test_receipts_must_be_signed(api, settings):
    form = {"MessageSid": "SMx", "MessageStatus": "delivered", "To": "+15550100"}
    answer = requests.post(f"{api.url}/v1/receipts/twilio?herald_id=x&tenant_id={TENANT}",
                           data=form, headers={"X-Twilio-Signature": "forged="}, timeout=10)
    assert answer.status_code == 403
    answer = requests.post(f"{api.url}/v1/receipts/sendgrid?token=wrong", json=[], timeout=10)
    assert answer.status_code == 403 and answer.json()["error"]["field"] == "token"
    answer = requests.post(f"{api.url}/v1/receipts/sendgrid?token={SECRET}", json=[],
                           timeout=10)  # the right token, but not signed by the account's key
    assert answer.status_code == 403
    assert answer.json()["error"]["field"] == "X-Twilio-Email-Event-Webhook-Signature"


def receipt_count(api, provider: str, outcome: str) -> float:
    """``herald_api_receipts_total`` for ``provider`` and ``outcome`` on the API's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families
    text = requests.get(f"{api.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "herald_api_receipts_total" and sample.labels == {
                    "provider": provider, "outcome": outcome}:
                return sample.value
    return 0.0


def test_receipts_herald_cannot_place_are_answered_and_counted(api, settings):
    """A receipt naming no notification is acknowledged (Twilio would retry anything else) and
    counted unmatched; one naming a notification the audit has not filed is answered 409 for
    Twilio to send again, and counted so."""
    def post(query: str, sid: str) -> requests.Response:
        form = {"MessageSid": sid, "MessageStatus": "delivered", "To": "+15550100"}
        url = settings.twilio_status_callback_url + (f"?{query}" if query else "")
        signature = twilio_signature("herald-mock-credential", url, form)  # the mocks' token
        return requests.post(f"{api.url}/v1/receipts/twilio" + (f"?{query}" if query else ""),
                             data=form, headers={"X-Twilio-Signature": signature}, timeout=10)

    unmatched, later = (receipt_count(api, "twilio", o) for o in ("unmatched", "not_filed_yet"))
    for _ in range(2):
        answer = post("", f"SM-unknown-{U}")
        assert answer.status_code == 200, answer.text
    answer = post(f"herald_id=not-yet-{U}&tenant_id={TENANT}", f"SM-later-{U}")
    assert answer.status_code == 409 and answer.headers["Retry-After"] == "1"
    assert receipt_count(api, "twilio", "unmatched") == unmatched + 2
    assert receipt_count(api, "twilio", "not_filed_yet") == later + 1


def test_unchecked_sendgrid_receipts_are_refused_against_the_real_sendgrid(settings):
    """Neither a verification key nor a secret, and a real SendGrid: a forged bounce could
    strip any user's address, so nothing is taken."""
    bare = settings.replace(sendgrid_url="https://api.sendgrid.com", sendgrid_webhook_secret="",
                            sendgrid_webhook_public_key="")
    event = {"event": "bounce", "type": "bounce", "email": f"ok{U}@example.com",
             "sg_message_id": "x.y", "herald_id": "n", "tenant_id": TENANT, "timestamp": 1}
    with ApiServer(bare) as api:
        answer = requests.post(f"{api.url}/v1/receipts/sendgrid", json=[event], timeout=10)
    assert answer.status_code == 503 and "sendgrid_webhook_public_key" in \
        answer.json()["error"]["message"]

