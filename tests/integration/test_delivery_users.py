"""Users, preferences, templates and cancels end to end: the delivery job on the MiniCluster,
real Kafka and Redis, a mock FCM of this module's own.

One job serves the module (a MiniCluster start is the slow part); each test has its own
tenant, users and ids, and reads the status topic for its own ids only. What reached the
"provider" is read from the mock's own log (its clock: ``t_ms``).
"""
from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict

import pytest

from herald.campaigns import CancelCampaign, cancelled_key
from herald.ratelimit import RedisRateLimiter
from herald.templates import template_from_dict, template_json, template_key
from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import produce, read_until
from tests.integration.records import now_ms, promo, put_user
from udfs.quotas import QuotaChange, QuotaStore

U = uuid.uuid4().hex[:8]
FINAL = {"delivered", "expired", "cancelled", "opted_out", "failed"}


@pytest.fixture(scope="module")
def fcm(fcm_module):
    return fcm_module


@pytest.fixture(scope="module")
def settings(stack, base_settings, fcm, tmp_path_factory):
    topics = {f"topic_{role}": f"users{U}.{name}" for role, name in base_settings.topics().items()}
    settings = base_settings.replace(
        consumer_group=f"herald-users{U}", flink_rest_port=0, fcm_url=fcm.url,
        ratelimit_namespace=f"rl{U}", flink_checkpoint_interval_ms=1_000,
        flink_checkpoint_dir=str(tmp_path_factory.mktemp("ck")), **topics)
    stack.create_topics(list(settings.topics().values()))
    return settings


@pytest.fixture(scope="module")
def job(settings, tmp_path_factory):
    with RunningJob("jobs.delivery", settings, tmp_path_factory.mktemp("job")) as running:
        yield running


@pytest.fixture
def rclient(redis_client):
    return redis_client


def send(settings, records) -> None:
    produce(settings.kafka_bootstrap, settings.topic_promo, [(r["user_id"], r) for r in records])


def statuses_until_final(settings, job, ids, timeout_s: float = 120.0) -> dict[str, list[dict]]:
    """Every status event of ``ids``, read until each has a final state."""
    wanted = set(ids)

    def done(seen):
        final = {s["id"] for s in seen if s["id"] in wanted and s["state"] in FINAL}
        return final == wanted
    seen = read_until(settings.kafka_bootstrap, settings.topic_status, done, job=job,
                      timeout_s=timeout_s)
    out: dict[str, list[dict]] = defaultdict(list)
    for s in seen:
        if s["id"] in wanted:
            out[s["id"]].append(s)
    return out


def final_state(events: list[dict]) -> str:
    return [e["state"] for e in events if e["state"] in FINAL][-1]


def at_mock(fcm, ids) -> dict[str, dict]:
    wanted = set(ids)
    return {r["herald_id"]: r for r in fcm.log() if r["herald_id"] in wanted}


def test_a_promo_without_contacts_goes_to_the_users_token(settings, job, fcm, rclient, tenant):
    put_user(rclient, tenant, "ana", contacts={"push_token": f"tok-{tenant}-ana",
                                               "platform": "android"})
    n = promo(tenant, "c1", "ana")
    assert "to" not in n
    send(settings, [n])
    events = statuses_until_final(settings, job, [n["id"]])
    assert final_state(events[n["id"]]) == "delivered"
    assert at_mock(fcm, [n["id"]])[n["id"]]["to"] == f"tok-{tenant}-ana"


def test_an_opted_out_channel_gets_opted_out_and_nothing_reaches_the_provider(
        settings, job, fcm, rclient, tenant):
    put_user(rclient, tenant, "bo", contacts={"push_token": "tok-bo", "platform": "android"},
             opt_outs=["push"])
    n = promo(tenant, "c1", "bo")
    send(settings, [n])
    events = statuses_until_final(settings, job, [n["id"]])
    assert [(e["state"], e["channel"]) for e in events[n["id"]]] == [("opted_out", "push")]
    assert not at_mock(fcm, [n["id"]])


def clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ms // 1000))


def test_quiet_hours_hold_until_they_end_or_expire(settings, job, fcm, rclient, tenant):
    job.check_alive()
    now = now_ms()
    end = (now // 1000 + 6) * 1000          # a whole second, about 5-6 s from now
    put_user(rclient, tenant, "cy", contacts={"push_token": "tok-cy", "platform": "android"},
             quiet_hours={"start": clock(now - 60_000), "end": clock(end), "tz": "UTC"})
    held = promo(tenant, "held", "cy")
    lost = promo(tenant, "lost", "cy", expires_at=end - 1_000)  # expires inside quiet hours
    send(settings, [held, lost])
    events = statuses_until_final(settings, job, [held["id"], lost["id"]])

    first = events[held["id"]][0]
    assert first["state"] == "retrying" and "quiet hours" in first["detail"], events[held["id"]]
    assert final_state(events[held["id"]]) == "delivered"
    assert final_state(events[lost["id"]]) == "expired"
    log = at_mock(fcm, [held["id"], lost["id"]])
    assert set(log) == {held["id"]}
    assert log[held["id"]]["t_ms"] >= end


def test_a_template_with_a_missing_variable_fails_with_the_reason(settings, job, fcm, rclient,
                                                                 tenant):
    template = template_from_dict({"default_locale": "en", "locales": {
        "en": {"title": "Hi {{name}}", "body": "{{count}} offers"},
        "pt-BR": {"title": "Olá {{name}}", "body": "{{count}} ofertas"}}}, "offers")
    rclient.set(template_key(tenant, "offers"), template_json(template, now_ms()))
    put_user(rclient, tenant, "di", contacts={"push_token": "tok-di", "platform": "android"},
             locale="pt-BR")
    good = promo(tenant, "good", "di", content={"template": "offers",
                                                "vars": {"name": "Di", "count": 2}})
    bad = promo(tenant, "bad", "di", content={"template": "offers", "vars": {"count": 2}})
    send(settings, [good, bad])
    events = statuses_until_final(settings, job, [good["id"], bad["id"]])

    assert final_state(events[good["id"]]) == "delivered"
    [failed] = events[bad["id"]]
    assert failed["state"] == "failed"
    assert failed["detail"] == ("template 'offers' (locale 'pt-br'): no value for '{{name}}' in "
                                "its title (not in content.vars, not in the user record)")
    letters = read_until(settings.kafka_bootstrap, settings.topic_dlq,
                         lambda seen: any(d.get("id") == bad["id"] for d in seen), job=job)
    [letter] = [d for d in letters if d.get("id") == bad["id"]]
    assert letter["reason"] == failed["detail"] and letter["stage"] == "delivery"
    log = at_mock(fcm, [good["id"], bad["id"]])
    assert set(log) == {good["id"]}
    assert log[good["id"]]["request"]["notification"] == {"title": "Olá Di", "body": "2 ofertas"}


def test_cancel_mid_campaign_nothing_more_reaches_the_provider(settings, job, fcm, rclient,
                                                               tenant):
    # The tenant's quota keeps the campaign trickling out (200 users at 5/s: 40 s), so the
    # cancel lands mid-way however long a loaded machine takes to process it.
    QuotaStore(rclient, RedisRateLimiter(rclient, namespace=settings.ratelimit_namespace)).apply(
        QuotaChange("fcm", 5.0, 2.0, tenant))
    users = [f"v{i}" for i in range(200)]
    for user in users:
        put_user(rclient, tenant, user, contacts={"push_token": f"tok-{user}",
                                                  "platform": "android"})
    first = [promo(tenant, f"x-{u}", u, campaign_id="cmp-x") for u in users]
    send(settings, first)
    # Started: watched at the mock, read from where the last look ended. (Watching the status
    # topic meant reading the whole session's statuses from the start each time: on a CI run
    # that took 19 s, and 97 had gone out before the cancel was even sent.)
    first_ids, started, since = {n["id"] for n in first}, 0, 0
    deadline = time.monotonic() + 60
    while started < 5:
        job.check_alive()
        assert time.monotonic() < deadline, "the campaign never reached the provider"
        page = fcm.admin("GET", f"log?since={since}")
        since = page["next_since"]
        started += sum(r["herald_id"] in first_ids for r in page["records"])
        time.sleep(0.05)

    cancel = CancelCampaign("cmp-x", tenant, now_ms())
    produce(settings.kafka_bootstrap, settings.topic_control, [(cancel.kind, cancel.to_json())])
    key = cancelled_key(tenant, "cmp-x")
    deadline = time.monotonic() + 30
    while (processed := rclient.get(key)) is None:    # the job's control consumer wrote it
        job.check_alive()
        assert time.monotonic() < deadline, "the cancel was never processed"
        time.sleep(0.05)
    processed_at = int(processed)
    later = [promo(tenant, f"x2-{u}", u, campaign_id="cmp-x") for u in users[:20]]
    other = [promo(tenant, f"y-{u}", u, campaign_id="cmp-y") for u in users[:5]]
    send(settings, later + other)

    all_x = [n["id"] for n in first + later]
    events = statuses_until_final(settings, job, all_x + [n["id"] for n in other],
                                  timeout_s=180)
    finals = {i: final_state(events[i]) for i in all_x}
    assert set(finals.values()) == {"delivered", "cancelled"}, Counter(finals.values())
    assert all(finals[n["id"]] == "cancelled" for n in later)
    assert all(final_state(events[n["id"]]) == "delivered" for n in other)
    log = at_mock(fcm, all_x)
    assert set(log) == {i for i, state in finals.items() if state == "delivered"}
    # Once the cancel is in Redis, every round checks it before its calls: what reaches the
    # provider after that is only calls already granted tokens then, i.e. the tenant's burst
    # (2) plus what its bucket refills while they travel (5/s). Nothing later.
    campaign = set(all_x)
    after = sorted(r["t_ms"] - processed_at for r in fcm.log("all")
                   if r["herald_id"] in campaign and r["t_ms"] > processed_at)
    print(f"cancel: {len(log)} sent, {Counter(finals.values())['cancelled']} cancelled, "
          f"{len(after)} reached the provider after the cancel was written (+ms: {after})")
    assert len(after) <= 2 + 2, after
