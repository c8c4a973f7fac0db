"""Provider failures end to end: the delivery job (MiniCluster) on real Kafka and Redis, with
provider mocks of each test's own.

* an outage (503 for 10 s) in the middle of a run: retries through the retry topic, the
  circuit breaker, and afterwards every notification delivered once, none lost, none twice;
* fallback: an invalid push token is delivered by SMS, iOS push goes to APNs over HTTP/2, and a
  notification whose every channel fails leaves exactly one dead letter, which
  ``python -m herald_cli redrive --from-dlq`` sends again once the recipient is fixed (and a
  second redrive sends nothing).
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
from tests.integration.records import note


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
    # The breaker kept the outage's calls few: far fewer 503s than notifications waiting.
    assert stats["by_reason"]["outage"] < total // 2, stats


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
