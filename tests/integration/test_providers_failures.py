"""Provider failures end to end: the delivery job (MiniCluster) on real Kafka and Redis, with
provider mocks of each test's own.

* an outage (503 for 10 s) in the middle of a run: retries through the retry topic, the
  circuit breaker, and afterwards every notification delivered once, none lost, none twice;
* fallback: an invalid push token is delivered by SMS, iOS push goes to APNs over HTTP/2, and a
  notification whose every channel fails leaves exactly one dead letter, which
  ``python -m herald_cli redrive --from-dlq`` sends again once the recipient is fixed (and a
  second redrive sends nothing);
* a slow provider: nothing is written to it at or after the notification's expiry;
* an open circuit: push→email goes to email at once, push-only waits for the provider.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter, defaultdict

import pytest

from herald.settings import PROJECT_ROOT, settings_env
from tests.helpers_mocks import MockProcess
from tests.integration.jobs import RunningJob
from tests.integration.kafka_io import produce, read_until
from tests.integration.records import note, now_ms


@pytest.fixture
def mocks():
    started = []

    def start(provider: str, *args: str) -> MockProcess:
        started.append(MockProcess("--provider", provider, *args))
        return started[-1]
    yield start
    for mock in started:
        mock.stop()


def by_id(statuses) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for s in statuses:
        out[s["id"]].append(s)
    return out


def test_an_outage_mid_run_loses_nothing_and_sends_nothing_twice(test_settings, mocks, unique,
                                                                  tmp_path):
    fcm = mocks("fcm")
    settings = test_settings.replace(fcm_url=fcm.url, ratelimit_namespace=f"rl{unique}",
                                     flink_checkpoint_dir=str(tmp_path / "ck"))
    total = 10_000
    notes = [note(unique, i, f"u{i % 997}") for i in range(total)]
    produce(settings.kafka_bootstrap, settings.topic_critical, [(n["user_id"], n) for n in notes])
    ids = {n["id"] for n in notes}

    with RunningJob("jobs.delivery", settings, tmp_path) as job:
        deadline = time.monotonic() + 180
        while fcm.stats()["accepted"] < total // 5:  # mid-run, by the provider's own count
            job.check_alive()
            assert time.monotonic() < deadline, "the job never got a fifth through"
            time.sleep(0.05)
        fcm.configure(outage={"start_in_s": 0, "duration_s": 10, "mode": "503"})
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              lambda seen: {s["id"] for s in seen
                                            if s["state"] in ("delivered", "expired")} >= ids,
                              job=job, timeout_s=300)

    final = Counter(s["state"] for s in statuses if s["state"] in ("delivered", "expired",
                                                                    "failed"))
    assert final == {"delivered": total}, final  # nothing failed, nothing reported twice
    stats = fcm.stats()
    assert stats["by_reason"].get("outage", 0) > 0, stats  # the outage did hit the run
    at_provider = Counter(r["herald_id"] for r in fcm.log())
    assert set(at_provider) == ids, "lost at the provider"
    assert max(at_provider.values()) == 1, "sent twice"
    retrying = [s for s in statuses if s["state"] == "retrying"]
    print(f"outage: {stats['by_reason'].get('outage', 0)} calls answered 503, "
          f"{len(retrying)} retrying events ({sum('circuit open' in s['detail'] for s in retrying)}"
          f" of them while the circuit was open), {stats['accepted']} accepted, each id once")
    assert retrying and all(s["id"] in ids for s in retrying)
    assert any("circuit open for fcm" in s["detail"] for s in retrying)
    # The breaker kept the outage's calls to what it cannot stop: the calls already on the
    # wire when the outage began (a round of at most provider_max_in_flight for each part under
    # way in the gate, and one in the retry stage), then, per call stage (gate, retries), the
    # faults that open it and one probe per cool-down of the 10 s outage.
    on_the_wire = (settings.send_parts_ahead + 2) * settings.provider_max_in_flight
    per_stage = settings.breaker_failure_threshold + 10_000 // settings.breaker_cool_down_ms + 1
    assert stats["by_reason"]["outage"] <= on_the_wire + 2 * per_stage, stats


def run_cli(settings, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "herald_cli", *args], cwd=PROJECT_ROOT,
                          env={**os.environ, **settings_env(settings)}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_fallback_apns_dead_letter_and_redrive(test_settings, mocks, unique, tmp_path):
    fcm = mocks("fcm", "--invalid", "tok-dead")
    apns = mocks("apns")
    twilio = mocks("twilio", "--invalid", "+15550199")
    sendgrid = mocks("sendgrid", "--invalid", "gone@example.com")
    settings = test_settings.replace(
        fcm_url=fcm.url, apns_url=apns.url, twilio_url=twilio.url, sendgrid_url=sendgrid.url,
        ratelimit_namespace=f"rl{unique}", flink_checkpoint_dir=str(tmp_path / "ck"))
    to_sms = note(unique, "sms", "u1", channels=["push", "sms"],
                  to={"push_token": "tok-dead", "platform": "android", "phone": "+15550100"})
    ios = note(unique, "ios", "u2", to={"push_token": "ab" * 32, "platform": "ios"})
    doomed = note(unique, "doomed", "u3", channels=["push", "sms", "email"],
                  to={"push_token": "tok-dead", "platform": "android", "phone": "+15550199",
                      "email": "gone@example.com"})
    produce(settings.kafka_bootstrap, settings.topic_critical,
            [(n["user_id"], n) for n in (to_sms, ios, doomed)])

    with RunningJob("jobs.delivery", settings, tmp_path) as job:
        dlq = read_until(settings.kafka_bootstrap, settings.topic_dlq,
                         lambda seen: len(seen) >= 1, job=job)
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              lambda seen: {to_sms["id"], ios["id"]} <= {
                                  s["id"] for s in seen if s["state"] == "delivered"} and any(
                                  s["id"] == doomed["id"] and s["state"] == "failed"
                                  for s in seen), job=job)
        seen = by_id(statuses)
        assert [(s["state"], s["channel"]) for s in seen[to_sms["id"]]] == [
            ("fallback", "push"), ("delivered", "sms")]
        assert seen[to_sms["id"]][-1]["provider"] == "twilio"
        assert [r["herald_id"] for r in twilio.log()] == [to_sms["id"]]
        assert [(s["state"], s["provider"]) for s in seen[ios["id"]]] == [("delivered", "apns")]
        assert [r["herald_id"] for r in apns.log()] == [ios["id"]]  # over HTTP/2
        assert [(s["state"], s["channel"]) for s in seen[doomed["id"]]] == [
            ("fallback", "push"), ("fallback", "sms"), ("failed", "email")]
        [letter] = dlq
        assert letter["_key"] == doomed["id"] and letter["stage"] == "delivery"
        assert "every channel failed" in letter["reason"]
        assert [a["channel"] for a in letter["attempts"]] == ["push", "sms", "email"]

        # The recipient's address is fixed; the dead letter is driven back in, once.
        sendgrid.configure(invalid_remove=["gone@example.com"])
        assert "re-drove 1 record(s)" in run_cli(settings, "redrive", "--from-dlq")
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              lambda seen: any(s["id"] == doomed["id"] and
                                               s["state"] == "delivered" for s in seen), job=job)
        assert "re-drove 0 record(s)" in run_cli(settings, "redrive", "--from-dlq")

    after = [(s["state"], s["channel"]) for s in by_id(statuses)[doomed["id"]]]
    assert after[-1] == ("delivered", "email")
    assert [r["herald_id"] for r in sendgrid.log()] == [doomed["id"]]
    # The redriven record went through push and sms again (both still dead) before email.
    assert after[3:] == [("fallback", "push"), ("fallback", "sms"), ("delivered", "email")]


def final_states(statuses, ids) -> dict[str, list[str]]:
    """Per id, its delivered / expired / failed events in order."""
    out: dict[str, list[str]] = {i: [] for i in ids}
    for s in statuses:
        if s["id"] in out and s["state"] in ("delivered", "expired", "failed"):
            out[s["id"]].append(s["state"])
    return out


def test_a_slow_provider_never_gets_a_call_after_its_expiry_in_the_job(test_settings, mocks,
                                                                       unique, tmp_path):
    """Issue 14's repro through the delivery job: SendGrid answers after 3 s; one user's six
    critical emails expire 4 s after they are produced. The mock's own receive times are
    checked against ``expires_at``, and every status against what the mock accepted."""
    sendgrid = mocks("sendgrid")
    settings = test_settings.replace(sendgrid_url=sendgrid.url, ratelimit_namespace=f"rl{unique}",
                                     flink_checkpoint_dir=str(tmp_path / "ck"))
    email = {"channels": ["email"], "to": {"email": "slow@example.com"}}
    warm = note(unique, "warm", "u-warm", **email)
    produce(settings.kafka_bootstrap, settings.topic_critical, [(warm["user_id"], warm)])

    with RunningJob("jobs.delivery", settings, tmp_path) as job:
        read_until(settings.kafka_bootstrap, settings.topic_status,
                   lambda seen: any(s["id"] == warm["id"] and s["state"] == "delivered"
                                    for s in seen), job=job, timeout_s=180)
        sendgrid.configure(latency_ms=3_000)
        t = now_ms()
        six = [note(unique, f"slow{i}", "u-slow", created_at=t, expires_at=t + 4_000, **email)
               for i in range(6)]
        produce(settings.kafka_bootstrap, settings.topic_critical,
                [(n["user_id"], n) for n in six])
        ids = [n["id"] for n in six]
        statuses = read_until(settings.kafka_bootstrap, settings.topic_status,
                              lambda seen: all(final_states(seen, ids).values()), job=job)

    expires = {n["id"]: n["expires_at"] for n in six}
    received = [r for r in sendgrid.log(what="all") if r["herald_id"] in expires]
    assert all(r["t_ms"] < expires[r["herald_id"]] for r in received), \
        [(r["herald_id"], r["t_ms"] - expires[r["herald_id"]]) for r in received]
    accepted = {r["herald_id"] for r in received if r["result"] == "accepted"}
    finals = final_states(statuses, ids)
    print("final states:", finals, "at the mock (ms before expiry):",
          [(r["herald_id"], expires[r["herald_id"]] - r["t_ms"]) for r in received])
    for i, states_of in finals.items():
        assert len(states_of) == 1, (i, states_of)
        assert states_of[0] in ("delivered", "expired"), (i, states_of)
        if states_of[0] == "delivered":
            assert i in accepted, f"{i} reported delivered, never accepted by the provider"
    assert finals[ids[0]] == ["delivered"]
    assert sum(f == ["expired"] for f in finals.values()) >= 3


def test_an_open_circuit_sends_push_to_email_on_at_once_and_push_only_waits(
        test_settings, mocks, unique, tmp_path):
    """FCM down (503) for 10 s. Three push-only notifications open the gate's circuit; then
    push→email notifications reach SendGrid during the outage, with no more FCM calls of
    their own than the breaker's threshold; push-only ones arrive after the outage or expire
    first, never both."""
    fcm = mocks("fcm")
    sendgrid = mocks("sendgrid")
    threshold = 3
    settings = test_settings.replace(
        fcm_url=fcm.url, sendgrid_url=sendgrid.url, ratelimit_namespace=f"rl{unique}",
        flink_checkpoint_dir=str(tmp_path / "ck"), breaker_failure_threshold=threshold,
        breaker_cool_down_ms=5_000, retry_max_attempts=5)
    warm = note(unique, "warm", "u-warm")
    produce(settings.kafka_bootstrap, settings.topic_critical, [(warm["user_id"], warm)])

    with RunningJob("jobs.delivery", settings, tmp_path) as job:
        read_until(settings.kafka_bootstrap, settings.topic_status,
                   lambda seen: any(s["id"] == warm["id"] and s["state"] == "delivered"
                                    for s in seen), job=job, timeout_s=180)
        outage = fcm.configure(outage={"start_in_s": 0, "duration_s": 10, "mode": "503"})
        outage_end = outage["outage"]["end_ms"]
        t = now_ms()
        push_only = [note(unique, f"wait{i}", f"u-wait{i}", expires_at=t + 60_000)
                     for i in range(threshold)]
        short = note(unique, "short", "u-short", expires_at=t + 3_000)
        produce(settings.kafka_bootstrap, settings.topic_critical,
                [(n["user_id"], n) for n in push_only + [short]])
        # Each has failed at FCM once in the gate: its breaker has seen `threshold` faults.
        waiting_ids = {n["id"] for n in push_only}
        read_until(settings.kafka_bootstrap, settings.topic_status,
                   lambda seen: waiting_ids <= {s["id"] for s in seen}, job=job)
        t = now_ms()
        to_email = [note(unique, f"mail{i}", f"u-mail{i}", channels=["push", "email"],
                         to={"push_token": f"tok-mail{i}", "platform": "android",
                             "email": f"mail{i}@example.com"}, expires_at=t + 20_000)
                    for i in range(10)]
        produce(settings.kafka_bootstrap, settings.topic_critical,
                [(n["user_id"], n) for n in to_email])
        mail_ids = [n["id"] for n in to_email]
        later_ids = [n["id"] for n in push_only] + [short["id"]]
        statuses = read_until(
            settings.kafka_bootstrap, settings.topic_status,
            lambda seen: all(final_states(seen, mail_ids + later_ids).values()), job=job,
            timeout_s=180)

    finals = final_states(statuses, mail_ids + later_ids)
    seen = by_id(statuses)
    at_sendgrid = Counter(r["herald_id"] for r in sendgrid.log())
    fcm_calls = Counter(r["herald_id"] for r in fcm.log(what="all"))
    fcm_accepted = {r["herald_id"]: r for r in fcm.log()}
    print("FCM calls per push→email id:", [fcm_calls[i] for i in mail_ids],
          "push-only:", {i: finals[i] for i in later_ids})
    for n in to_email:
        i = n["id"]
        assert finals[i] == ["delivered"], (i, seen[i])
        assert seen[i][-1]["channel"] == "email" and seen[i][-1]["provider"] == "sendgrid"
        assert any(s["state"] == "fallback" and "circuit open for fcm" in s["detail"]
                   for s in seen[i]), seen[i]
        assert at_sendgrid[i] == 1
        assert fcm_calls[i] <= threshold
    for r in sendgrid.log():  # during the outage, before expiry
        if r["herald_id"] in mail_ids:
            assert r["t_ms"] < outage_end
    for i in later_ids:
        assert finals[i] in (["delivered"], ["expired"]), (i, seen[i])  # never both
        if finals[i] == ["delivered"]:
            assert fcm_accepted[i]["t_ms"] >= outage_end
        else:
            assert i not in fcm_accepted
    assert finals[short["id"]] == ["expired"]  # it expired before the outage ended
    assert all(finals[n["id"]] == ["delivered"] for n in push_only)
    assert not at_sendgrid.keys() & set(later_ids)
