"""The call stage with user records, templates, opt-outs, quiet hours and cancels, on its own
(no Flink): real Redis, real provider mocks, notifications handed to ``BatchCalls.send_all``.
The same rules end to end on the MiniCluster are in ``test_delivery_users.py``."""
from __future__ import annotations

import time
from collections import Counter, defaultdict

import orjson
import pytest

from herald.campaigns import CancelCampaign, queue_cancelled
from herald.models import notification_from_dict
from herald.templates import template_from_dict, template_json, template_key
from tests.helpers_mocks import MockProcess
from tests.integration.records import now_ms, put_user
from tests.integration.records import promo as promo_record
from udfs.markers import marker
from udfs.requeue import decode_retry


@pytest.fixture(scope="module")
def fcm(fcm_module):
    return fcm_module


@pytest.fixture(scope="module")
def twilio():
    mock = MockProcess("--provider", "twilio")
    yield mock
    mock.stop()


@pytest.fixture
def rclient(redis_client):
    return redis_client


@pytest.fixture
def promo_stage(make_stage, fcm, twilio):
    """A promotional call stage against this module's FCM and Twilio mocks."""
    def make(priority: str = "promotional", **changes):
        return make_stage(priority, **{"fcm_url": fcm.url, "twilio_url": twilio.url, **changes})
    return make


def promo(tenant: str, i, user: str, **extra):
    return notification_from_dict(promo_record(tenant, i, user, **extra))


def by_id(out) -> dict[str, list[tuple[str, str | None]]]:
    seen = defaultdict(list)
    for s in out.statuses:
        seen[s.id].append((s.state, s.channel))
    return seen


def at_mock(mock, ids) -> list[dict]:
    return [r for r in mock.log() if r["herald_id"] in set(ids)]


def test_contacts_come_from_the_user_store_in_one_round_trip(promo_stage, rclient, tenant, fcm):
    for u in range(20):
        put_user(rclient, tenant, f"u{u}", contacts={"push_token": f"tok-{tenant}-{u}",
                                                     "platform": "android"})
    stage = promo_stage()
    batch = [promo(tenant, i, f"u{i % 20}") for i in range(100)]
    trips, claim_stack = [], []
    real_pipeline = stage.redis.pipeline

    def counting_pipeline(*args, **kwargs):
        pipe = real_pipeline(*args, **kwargs)
        execute = pipe.execute
        pipe.execute = lambda *a, **k: (trips.append([(c[0][0], str(c[0][1]))
                                                      for c in pipe.command_stack
                                                      if len(c[0]) > 1]),
                                        claim_stack.extend(pipe.command_stack),
                                        execute(*a, **k))[2]
        return pipe
    stage.redis.pipeline = counting_pipeline
    out = stage.send_all(batch)
    assert Counter(s.state for s in out.statuses) == {"delivered": 100}
    user_prefix = f"herald:user:{tenant}:"
    # one pipeline read all 20 users (one Lua call, each user once) and made the 100 claims
    # (one Lua call); no other pipeline read a user
    [claim] = [t for t in trips if any(c == "EVALSHA" for c, _ in t)]
    evals = [c[0] for c in claim_stack if c[0][0] == "EVALSHA"]
    assert len(evals) == 2 and len(claim) == 2
    users_read = [a for e in evals for a in e[3:] if str(a).startswith(user_prefix)]
    assert sorted(users_read) == sorted(f"{user_prefix}u{u}" for u in range(20))
    # EVALSHA sha 0 ttl n marker...: one tenant-scoped marker per notification
    [(_, _, _, _, count, *claimed)] = [e for e in evals if not str(e[3]).startswith(user_prefix)]
    assert count == len(batch) and claimed == [marker(n) for n in batch]
    assert sum(k.startswith(user_prefix) for t in trips for _, k in t) == 0
    tokens = {r["herald_id"]: r["to"] for r in at_mock(fcm, [n.id for n in batch])}
    assert tokens == {n.id: f"tok-{tenant}-{n.user_id[1:]}" for n in batch}


def test_a_missing_user_is_a_clear_failure(promo_stage, tenant, fcm):
    stage = promo_stage()
    n = promo(tenant, 0, "nobody", channels=["push", "sms"])
    out = stage.send_all([n])
    assert by_id(out)[n.id] == [("fallback", "push"), ("failed", "sms")]
    failed = out.statuses[-1].detail
    assert "no user 'nobody' in the user store" in failed and tenant in failed
    [(key, letter)] = out.dead
    assert "no phone number" in orjson.loads(letter)["reason"]
    assert not at_mock(fcm, [n.id])


def test_an_opted_out_channel_is_skipped_to_the_next(promo_stage, rclient, tenant, fcm, twilio):
    put_user(rclient, tenant, "u1", contacts={"push_token": "tok", "platform": "android",
                                              "phone": "+15550142"}, opt_outs=["push"])
    put_user(rclient, tenant, "u2", contacts={"push_token": "tok2", "platform": "android"},
             opt_outs=["push"])
    stage = promo_stage()
    moved = promo(tenant, 0, "u1", channels=["push", "sms"])
    only = promo(tenant, 1, "u2")
    critical = promo(tenant, 2, "u2", priority="critical")  # opt-outs hold for critical too
    out = stage.send_all([moved, only, critical])
    seen = by_id(out)
    assert seen[moved.id] == [("opted_out", "push"), ("delivered", "sms")]
    assert seen[only.id] == [("opted_out", "push")]
    assert seen[critical.id] == [("opted_out", "push")]
    assert not out.dead and not out.retries
    assert not at_mock(fcm, [moved.id, only.id, critical.id])
    assert [r["herald_id"] for r in at_mock(twilio, [moved.id])] == [moved.id]


def test_a_fallback_that_lands_on_an_opted_out_channel_skips_it(promo_stage, rclient, tenant):
    fcm_dead = MockProcess("--provider", "fcm", "--invalid", "tok-dead")
    try:
        put_user(rclient, tenant, "u1", contacts={"push_token": "tok-dead", "platform": "android",
                                                  "phone": "+15550142"}, opt_outs=["sms"])
        stage = promo_stage(fcm_url=fcm_dead.url)
        n = promo(tenant, 0, "u1", channels=["push", "sms"])
        out = stage.send_all([n])
        assert by_id(out)[n.id] == [("fallback", "push"), ("opted_out", "sms")]
    finally:
        fcm_dead.stop()


def test_quiet_hours_hold_through_the_retry_topic_or_expire(promo_stage, rclient, tenant, fcm):
    put_user(rclient, tenant, "night", contacts={"push_token": "t", "platform": "android"},
             quiet_hours={"start": "00:00", "end": "23:59:59", "tz": "UTC"})
    stage = promo_stage()
    t = now_ms()
    day_start = t - t % 86_400_000
    end = day_start + 86_399_000
    if t >= end:
        pytest.skip("the last second of a UTC day")
    held = promo(tenant, 0, "night", expires_at=end + 60_000)
    lost = promo(tenant, 1, "night", expires_at=end)
    critical = promo(tenant, 2, "night", priority="critical")
    out = stage.send_all([held, lost, critical])
    seen = by_id(out)
    assert seen[held.id] == [("retrying", "push")] and seen[lost.id] == [("expired", "push")]
    assert seen[critical.id] == [("delivered", "push")]       # bypasses (the default)
    [(user, record)] = out.retries
    task, not_before = decode_retry(orjson.loads(record))
    assert task.n.id == held.id and not_before == end
    assert "quiet hours" in out.statuses[0].detail
    assert [r["herald_id"] for r in at_mock(fcm, [held.id, lost.id, critical.id])] == [critical.id]
    strict = promo_stage(priority="critical", quiet_hours_bypass_critical=False)
    again = promo(tenant, 3, "night", priority="critical", expires_at=end + 60_000)
    assert by_id(strict.send_all([again]))[again.id] == [("retrying", "push")]


def test_templates_render_per_locale_and_a_missing_variable_fails(promo_stage, rclient, tenant,
                                                                 fcm):
    template = template_from_dict({"default_locale": "en", "locales": {
        "en": {"title": "Hi {{name}}", "body": "{{count}} offers, {{user_id}}"},
        "de": {"title": "Hallo {{name}}", "body": "{{count}} Angebote"}}}, "offers")
    rclient.set(template_key(tenant, "offers"), template_json(template, now_ms()))
    put_user(rclient, tenant, "de", contacts={"push_token": "t-de", "platform": "android"},
             locale="de-AT")
    put_user(rclient, tenant, "fr", contacts={"push_token": "t-fr", "platform": "android"},
             locale="fr")
    stage = promo_stage()
    german = promo(tenant, 0, "de", content={"template": "offers",
                                             "vars": {"name": "Ute", "count": 3}})
    french = promo(tenant, 1, "fr", content={"template": "offers",
                                             "vars": {"name": "Luc", "count": 2}})
    missing = promo(tenant, 2, "fr", content={"template": "offers", "vars": {"count": 1}})
    unknown = promo(tenant, 3, "fr", content={"template": "nope", "vars": {}})
    out = stage.send_all([german, french, missing, unknown])
    seen = by_id(out)
    assert seen[german.id] == [("delivered", "push")] and seen[french.id] == [("delivered", "push")]
    assert seen[missing.id] == [("failed", "push")] and seen[unknown.id] == [("failed", "push")]
    reasons = {key: orjson.loads(letter)["reason"] for key, letter in out.dead}
    assert "no value for '{{name}}'" in reasons[missing.id] and "'en'" in reasons[missing.id]
    assert "template 'nope' does not exist" in reasons[unknown.id]
    log = {r["herald_id"]: r for r in at_mock(fcm, [german.id, french.id, missing.id])}
    assert set(log) == {german.id, french.id}
    shown = {i: log[i]["request"]["notification"] for i in log}
    assert shown[german.id] == {"title": "Hallo Ute", "body": "3 Angebote"}
    assert shown[french.id] == {"title": "Hi Luc", "body": "2 offers, fr"}


def test_a_cancelled_campaign_is_dropped_at_once_and_between_rounds(promo_stage, rclient, tenant,
                                                                    fcm):
    put_user(rclient, tenant, "u", contacts={"push_token": "t", "platform": "android"})
    stage = promo_stage(quota_fcm_rate_per_s=20.0, quota_fcm_burst=5.0)
    before = [promo(tenant, f"x{i}", "u", campaign_id="cx") for i in range(3)]
    pipe = rclient.pipeline()
    queue_cancelled(pipe, CancelCampaign("cx", tenant, now_ms()), now_ms(), 60_000)
    pipe.execute()
    out = stage.send_all(before)
    assert {s.state for s in out.statuses} == {"cancelled"}
    assert not at_mock(fcm, [n.id for n in before])

    batch = [promo(tenant, f"y{i}", f"u", campaign_id="cy") for i in range(15)]
    cancelled_at = []

    def sleep(seconds):  # the batch waits for tokens: the campaign is cancelled meanwhile
        if not cancelled_at:
            p = rclient.pipeline()
            queue_cancelled(p, CancelCampaign("cy", tenant, now_ms()), now_ms(), 60_000)
            p.execute()
            cancelled_at.append(now_ms())
        time.sleep(seconds)
    stage.sleep = sleep
    out = stage.send_all(batch)
    states = Counter(s.state for s in out.statuses)
    delivered = states["delivered"]
    assert 0 < delivered < 15 and states["cancelled"] == 15 - delivered  # the burst went; no more
    sent = at_mock(fcm, [n.id for n in batch])
    assert len(sent) == delivered and all(r["t_ms"] <= cancelled_at[0] for r in sent)
