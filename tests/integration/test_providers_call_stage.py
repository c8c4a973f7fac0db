"""The provider-call stage on its own (no Flink): real Redis, real provider mocks over the wire.

`udfs.call_stage.BatchCalls.send_all` is what the call operator runs per batch; here a test
hands it notifications (or the retry records it wrote) directly, so each rule of the stage is
checked in a second or two: APNs over HTTP/2, fallback, the dead letter, retries, the circuit
breaker, throttles and AIMD, expiry while waiting, tenant buckets.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter

import orjson
import pytest
import redis as redis_lib

from herald.providers.apns import apns_id_for
from herald.ratelimit import RedisRateLimiter
from tests.helpers_mocks import MockProcess, make_notification
from udfs.quotas import QuotaChange, QuotaStore
from udfs.markers import MARKER, marker
from udfs.requeue import decode_retry


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def mocks():
    started = {}

    def start(provider: str, *args: str) -> MockProcess:
        started[provider] = MockProcess("--provider", provider, *args)
        return started[provider]
    yield start
    for mock in started.values():
        mock.stop()


def note(i, *, user=None, **overrides):
    t = now_ms()
    doc = {"id": f"{uuid.uuid4().hex[:8]}-{i}", "user_id": user or f"u{i % 7}",
           "created_at": t, "expires_at": t + 60_000}
    doc.update(overrides)
    return make_notification(**doc)


def states(out) -> Counter:
    return Counter(s.state for s in out.statuses)


def test_ios_push_goes_to_apns_over_http2(mocks, make_stage):
    apns = mocks("apns")  # answers 505 HTTP2Required to HTTP/1.1
    stage = make_stage(apns_url=apns.url)
    batch = [note(i, to={"push_token": f"{i:064x}", "platform": "ios"}) for i in range(40)]
    out = stage.send_all(batch)
    assert states(out) == {"delivered": 40}
    assert {s.provider for s in out.statuses} == {"apns"}
    log = {r["herald_id"]: r for r in apns.log()}
    assert set(log) == {n.id for n in batch}
    assert all(log[n.id]["apns_id"] == apns_id_for(n.tenant_id, n.id) for n in batch)
    assert {r["apns_priority"] for r in log.values()} == {"10"}


def test_batches_begun_together_complete_with_every_call_once_and_in_user_order(mocks,
                                                                                make_stage):
    """What the gate does with a large batch: parts with no user in common begun one after
    the other (each part's calls under way while the next is decided), completed in turn."""
    fcm = mocks("fcm", "--latency-ms", "5", "--latency-jitter-ms", "10")
    stage = make_stage(fcm_url=fcm.url)
    parts = [[note(i, user=f"{part}{i % 4}") for i in range(40)] for part in "abc"]
    flights = []
    for part in parts:
        flights.append(stage.begin(part))
        stage.poll()
    outs = [stage.complete(flight) for flight in flights]
    assert [states(out) for out in outs] == [{"delivered": 40}] * 3
    log = [r["herald_id"] for r in fcm.log()]
    everything = [n for part in parts for n in part]
    assert sorted(log) == sorted(n.id for n in everything)
    for user in {n.user_id for n in everything}:
        theirs = [n.id for n in everything if n.user_id == user]
        assert [i for i in log if i in set(theirs)] == theirs
    # The last part's settle waits for the next claim or the flush the gate ends a batch with.
    assert {stage.redis.get(MARKER.format(marker(n))) for n in parts[-1]} == {b"0"}
    stage.flush()
    assert {stage.redis.get(MARKER.format(marker(n))) for n in everything} == {b"1"}


def test_an_invalid_push_token_falls_back_to_sms(mocks, make_stage):
    fcm = mocks("fcm", "--invalid", "tok-dead")
    twilio = mocks("twilio")
    stage = make_stage(fcm_url=fcm.url, twilio_url=twilio.url)
    dead = note(0, channels=["push", "sms"],
                to={"push_token": "tok-dead", "platform": "android", "phone": "+15550100"})
    fine = note(1, channels=["push", "sms"],
                to={"push_token": "tok-ok", "platform": "android", "phone": "+15550101"})
    out = stage.send_all([dead, fine])
    by_id = {}
    for s in out.statuses:
        by_id.setdefault(s.id, []).append(s)
    assert [(s.state, s.channel) for s in by_id[dead.id]] == [("fallback", "push"),
                                                              ("delivered", "sms")]
    assert "token" in by_id[dead.id][0].detail
    assert [(s.state, s.provider) for s in by_id[fine.id]] == [("delivered", "fcm")]
    assert [r["herald_id"] for r in twilio.log()] == [dead.id]
    assert [r["herald_id"] for r in fcm.log()] == [fine.id]
    assert not out.dead and not out.retries


def test_when_every_channel_fails_one_dead_letter_carries_the_history(mocks, make_stage):
    fcm = mocks("fcm", "--invalid", "tok-dead")
    twilio = mocks("twilio", "--invalid", "+15550199")
    sendgrid = mocks("sendgrid", "--invalid", "gone@example.com")
    stage = make_stage(fcm_url=fcm.url, twilio_url=twilio.url, sendgrid_url=sendgrid.url)
    n = note(0, to={"push_token": "tok-dead", "platform": "android", "phone": "+15550199",
                    "email": "gone@example.com"})
    out = stage.send_all([n])
    assert [(s.state, s.channel) for s in out.statuses] == [
        ("fallback", "push"), ("fallback", "sms"), ("failed", "email")]
    [(key, record)] = out.dead
    letter = orjson.loads(record)
    assert key == n.id and letter["id"] == n.id and letter["stage"] == "delivery"
    assert "every channel failed" in letter["reason"] and "email" in letter["reason"]
    assert [(a["channel"], a["provider"], a["outcome"]) for a in letter["attempts"]] == [
        ("push", "fcm", "permanent"), ("sms", "twilio", "permanent"),
        ("email", "sendgrid", "permanent")]
    assert letter["channels"] == ["push", "sms", "email"]  # the original record is all there


def test_a_retryable_answer_is_requeued_with_backoff_and_its_claim_released(mocks, make_stage,
                                                                           base_settings):
    fcm = mocks("fcm", "--failure-rate", "1")
    stage = make_stage(fcm_url=fcm.url, breaker_failure_threshold=1000)
    batch = [note(i, channels=["push"], user=f"u{i}") for i in range(10)]
    before = now_ms()
    out = stage.send_all(batch)
    assert states(out) == {"retrying": 10}
    assert len(out.retries) == 10 and not out.dead
    for (user, record), n in zip(out.retries, batch):
        task, not_before = decode_retry(orjson.loads(record))
        assert user == n.user_id and task.n == n and task.attempt == 2 and task.step == 1
        assert before <= not_before <= now_ms() + base_settings.retry_initial_delay_ms
        assert [h["outcome"] for h in task.history] == ["retryable"]
    client = redis_lib.Redis(host=base_settings.redis_host, port=base_settings.redis_port)
    assert not any(client.exists(MARKER.format(marker(n))) for n in batch)  # a fresh claim later
    client.close()


def test_a_users_later_messages_wait_behind_one_that_is_retried(mocks, make_stage):
    fcm = mocks("fcm", "--failure-rate", "1")
    stage = make_stage(fcm_url=fcm.url, breaker_failure_threshold=1000)
    batch = [note(i, channels=["push"], user="same") for i in range(3)]
    out = stage.send_all(batch)
    assert fcm.stats()["received"] == 1  # the chain stopped behind the failed call
    assert [s.id for s in out.statuses] == [n.id for n in batch]
    assert "waits behind an earlier message" in out.statuses[1].detail
    retried = [decode_retry(orjson.loads(r)) for _, r in out.retries]
    assert [t.n.id for t, _ in retried] == [n.id for n in batch]  # in order, same user key
    assert [t.attempt for t, _ in retried] == [2, 1, 1]  # only the first one was tried
    assert retried[1][1] == retried[2][1] == retried[0][1]  # all come back together


def test_retries_run_out_then_the_next_channel_is_tried(mocks, make_stage):
    fcm = mocks("fcm", "--failure-rate", "1")
    twilio = mocks("twilio")
    stage = make_stage(fcm_url=fcm.url, twilio_url=twilio.url, retry_max_attempts=3,
                       retry_initial_delay_ms=1, retry_max_delay_ms=2,
                       breaker_failure_threshold=1000)
    n = note(0, channels=["push", "sms"])
    seen = []
    batch = [n]
    for _ in range(5):  # what the retry topic would bring back
        out = stage.send_all(batch)
        seen += [(s.state, s.channel, s.attempt) for s in out.statuses]
        batch = [decode_retry(orjson.loads(r))[0] for _, r in out.retries]
        if not batch:
            break
    assert seen == [("retrying", "push", 1), ("retrying", "push", 2), ("fallback", "push", 3),
                    ("delivered", "sms", 1)]
    assert fcm.stats()["received"] == 3 and [r["herald_id"] for r in twilio.log()] == [n.id]


def test_an_open_circuit_defers_calls_without_using_attempts(mocks, make_stage):
    fcm = mocks("fcm", "--failure-rate", "1")
    stage = make_stage(fcm_url=fcm.url, breaker_failure_threshold=3, breaker_cool_down_ms=30_000)
    first = stage.send_all([note(i, channels=["push"]) for i in range(3)])
    assert states(first) == {"retrying": 3}
    assert stage.breakers.states() == {"fcm": "open"}
    later = [note(10 + i, channels=["push"]) for i in range(20)]
    out = stage.send_all(later)
    assert states(out) == {"retrying": 20}
    assert all("circuit open for fcm" in s.detail for s in out.statuses)
    assert fcm.stats()["received"] == 3  # nothing more went to the provider
    for _, record in out.retries:
        task, not_before = decode_retry(orjson.loads(record))
        assert task.attempt == 1 and not_before >= now_ms() + 25_000


def test_throttles_lower_the_rate_and_wait_in_the_operator(mocks, make_stage):
    fcm = mocks("fcm", "--quota", "100")
    # Herald believes in 300/s: the mock's 429s must bring it down, and nothing is lost.
    stage = make_stage(fcm_url=fcm.url, quota_fcm_rate_per_s=300.0, quota_fcm_burst=30.0)
    batch = [note(i, channels=["push"], user=f"u{i % 40}") for i in range(400)]
    out = stage.send_all(batch)
    assert states(out) == {"delivered": 400}
    assert not out.retries and not out.dead
    stats = fcm.stats()
    assert stats["accepted_unique_ids"] == 400 and stats["accepted_duplicate_ids"] == 0
    assert stats["by_reason"].get("quota", 0) > 0  # it was throttled...
    assert stage.rates.rate("fcm") < 300  # ...and AIMD lowered the rate in force
    rl = stage.rates.limiter
    assert float(stage.redis.hget(rl.provider_key("fcm"), "rate")) < 300
    assert stage.waited_ms > 0  # the operator blocked: backpressure, not drops


def test_what_a_round_sent_is_marked_sent_before_the_batch_waits_for_more_tokens(
        mocks, make_stage, base_settings):
    fcm = mocks("fcm")
    stage = make_stage(fcm_url=fcm.url, quota_fcm_rate_per_s=20.0, quota_fcm_burst=5.0)
    batch = [note(i, channels=["push"], user=f"u{i}") for i in range(10)]
    client = redis_lib.Redis(host=base_settings.redis_host, port=base_settings.redis_port)
    seen_while_waiting = []

    def sleep(seconds):  # the batch blocks for tokens: what would a crash now leave behind?
        sent = {n.id for n in batch if client.get(MARKER.format(marker(n))) == b"1"}
        seen_while_waiting.append((sent, {r["herald_id"] for r in fcm.log()}))
        time.sleep(seconds)
    stage.sleep = sleep
    out = stage.send_all(batch)
    client.close()
    assert states(out) == {"delivered": 10}
    assert seen_while_waiting, "the batch never had to wait"
    for sent, at_provider in seen_while_waiting:
        assert sent == at_provider  # a crash mid-batch re-sends nothing the provider has
    assert 0 < len(seen_while_waiting[0][0]) < 10


def test_what_expires_while_waiting_for_tokens_is_expired_not_sent(mocks, make_stage):
    fcm = mocks("fcm")
    stage = make_stage(fcm_url=fcm.url, quota_fcm_rate_per_s=2.0, quota_fcm_burst=2.0)
    t = now_ms()
    batch = [note(i, channels=["push"], user=f"u{i}", created_at=t, expires_at=t + 1_500)
             for i in range(10)]
    out = stage.send_all(batch)
    counts = states(out)
    assert counts["delivered"] + counts["expired"] == 10 and counts["expired"] >= 5
    for record in fcm.log():
        assert record["t_ms"] < t + 1_500
    expired = {s.id for s in out.statuses if s.state == "expired"}
    assert not expired & {r["herald_id"] for r in fcm.log()}


def test_a_tenant_quota_limits_that_tenant_only(mocks, make_stage, base_settings):
    fcm = mocks("fcm")
    stage = make_stage(fcm_url=fcm.url)
    client = redis_lib.Redis(host=base_settings.redis_host, port=base_settings.redis_port)
    QuotaStore(client, stage.rates.limiter).apply(QuotaChange("fcm", 20.0, 5.0, "small"))
    client.close()
    batch = [note(i, channels=["push"], tenant_id="small" if i % 2 else "big", user=f"u{i}")
             for i in range(60)]
    out = stage.send_all(batch)
    assert states(out) == {"delivered": 60}
    small = {n.id for n in batch if n.tenant_id == "small"}
    times = sorted(r["t_ms"] for r in fcm.log() if r["herald_id"] in small)
    for i, start in enumerate(times):  # never more than burst + rate·1 s in any second
        assert sum(1 for t in times[i:] if t < start + 1000) <= 5 + 20
    big_done = max(r["t_ms"] for r in fcm.log() if r["herald_id"] not in small)
    assert big_done < times[-1]  # the big tenant was not held back behind the small one


def test_quota_records_validate_strictly():
    from herald.errors import ValidationError
    from udfs.quotas import parse_quota
    good = parse_quota(b'{"kind": "quota", "provider": "fcm", "rate_per_s": 500, "burst": 50}')
    assert good == QuotaChange("fcm", 500.0, 50.0)
    for bad in ({"kind": "quota", "provider": "pigeon", "rate_per_s": 1, "burst": 2},
                {"kind": "quota", "provider": "fcm", "rate_per_s": 0, "burst": 2},
                {"kind": "quota", "provider": "fcm", "rate_per_s": 5},
                {"kind": "quota", "provider": "fcm", "rate_per_s": 5, "burst": 1},
                {"kind": "quota", "provider": "fcm", "rate_per_s": 5, "burst": 9, "rps": 3}):
        with pytest.raises(ValidationError):
            parse_quota(orjson.dumps(bad))


def test_the_redis_limiter_prefix_is_the_settings_namespace(make_stage):
    stage = make_stage()
    assert isinstance(stage.rates.limiter, RedisRateLimiter)
    assert stage.rates.limiter.provider_key("fcm").startswith(stage.settings.ratelimit_namespace)


# ---------------------------------------------------------------- expiry at write time

def test_a_slow_provider_gets_none_of_a_users_calls_at_or_after_their_expiry(mocks, make_stage):
    """Issue 14's repro: SendGrid answers after 3 s, one user's six critical emails expire in
    4 s. Each call waits for the previous answer (per-user order), so only the first ones can
    be written in time; the rest are ``expired``, never written, never ``delivered``."""
    sendgrid = mocks("sendgrid")
    sendgrid.configure(latency_ms=3_000)
    stage = make_stage(sendgrid_url=sendgrid.url)
    t = now_ms()
    batch = [note(i, user="slow", channels=["email"], created_at=t, expires_at=t + 4_000)
             for i in range(6)]
    out = stage.send_all(batch)
    expires = {n.id: n.expires_at for n in batch}
    received = sendgrid.log(what="all")
    assert received and all(r["t_ms"] < expires[r["herald_id"]] for r in received), \
        [(r["herald_id"], r["t_ms"] - expires[r["herald_id"]]) for r in received]
    final = {}
    for s in out.statuses:
        assert s.id not in final, f"two statuses for {s.id}"
        final[s.id] = s
    assert set(final) == set(expires)
    at_provider = {r["herald_id"] for r in received}
    accepted = {r["herald_id"] for r in sendgrid.log()}
    assert final[batch[0].id].state == "delivered"  # written at once, answered before expiry
    for n in batch:
        s = final[n.id]
        if s.state == "delivered":
            assert n.id in accepted  # every status is true
        else:
            assert s.state == "expired", s
            if n.id in at_provider:  # written in time, no answer before expires_at
                assert "no answer before expires_at" in s.detail and s.provider == "sendgrid"
            else:
                assert "waiting behind an earlier call of the same user" in s.detail, s.detail
    assert sum(s.state == "expired" for s in final.values()) >= 3
    stage.flush()
    # Sent markers: accepted → sent; written but unanswered → left claimed (in flight: the
    # provider may have it); never written → released.
    for n in batch:
        value = stage.redis.get(MARKER.format(marker(n)))
        if final[n.id].state == "delivered":
            assert value == b"1"
        elif n.id in at_provider:
            assert value == b"0"
        else:
            assert value is None


# ---------------------------------------------------------------- fallback, circuit open

def by_id(out) -> dict[str, list]:
    seen: dict[str, list] = {}
    for s in out.statuses:
        seen.setdefault(s.id, []).append(s)
    return seen


def test_an_open_circuit_moves_a_notification_with_another_channel_on_at_once(mocks,
                                                                              make_stage):
    fcm = mocks("fcm", "--failure-rate", "1")
    sendgrid = mocks("sendgrid")
    stage = make_stage(fcm_url=fcm.url, sendgrid_url=sendgrid.url,
                       breaker_failure_threshold=3, breaker_cool_down_ms=30_000)
    trip = stage.send_all([note(i, channels=["push"], user=f"trip{i}") for i in range(3)])
    assert states(trip) == {"retrying": 3} and stage.breakers.states() == {"fcm": "open"}
    to_email = [note(10 + i, channels=["push", "email"], user=f"e{i}") for i in range(5)]
    push_only = [note(20 + i, channels=["push"], user=f"p{i}") for i in range(2)]
    out = stage.send_all(to_email + push_only)
    seen = by_id(out)
    for n in to_email:
        assert [(s.state, s.channel) for s in seen[n.id]] == [("fallback", "push"),
                                                              ("delivered", "email")]
        assert "circuit open for fcm" in seen[n.id][0].detail
    for n in push_only:  # nothing else to try: it waits for the provider, within its expiry
        assert [s.state for s in seen[n.id]] == ["retrying"]
        assert "circuit open for fcm" in seen[n.id][0].detail
    assert fcm.stats()["received"] == 3  # only the calls that opened the circuit
    assert sorted(r["herald_id"] for r in sendgrid.log()) == sorted(n.id for n in to_email)


def test_the_failures_that_open_the_circuit_move_their_whole_round_on(mocks, make_stage,
                                                                       base_settings):
    """Calls that failed together are one signal: once the round's failures open the circuit,
    every failed push→email call of the round goes to email now, and a push-only one is
    retried with the usual backoff without using up an attempt."""
    fcm = mocks("fcm", "--failure-rate", "1")
    sendgrid = mocks("sendgrid")
    stage = make_stage(fcm_url=fcm.url, sendgrid_url=sendgrid.url,
                       breaker_failure_threshold=3, breaker_cool_down_ms=30_000)
    to_email = [note(i, channels=["push", "email"], user=f"e{i}") for i in range(5)]
    push_only = [note(10 + i, channels=["push"], user=f"p{i}") for i in range(2)]
    out = stage.send_all(to_email + push_only)
    seen = by_id(out)
    for n in to_email:
        assert [(s.state, s.channel) for s in seen[n.id]] == [("fallback", "push"),
                                                              ("delivered", "email")]
        assert "circuit open for fcm" in seen[n.id][0].detail
    assert Counter(r["herald_id"] for r in fcm.log(what="all")) == {
        n.id: 1 for n in to_email + push_only}
    assert sorted(r["herald_id"] for r in sendgrid.log()) == sorted(n.id for n in to_email)
    retried = {t.n.id: (t, at) for t, at in (decode_retry(orjson.loads(r))
                                             for _, r in out.retries)}
    assert set(retried) == {n.id for n in push_only}
    for task, not_before in retried.values():
        assert task.channel == "push" and task.attempt == 1  # the outage used no attempt
        assert not_before <= now_ms() + base_settings.retry_initial_delay_ms
    for n in push_only:
        assert [s.state for s in seen[n.id]] == ["retrying"]
        assert "circuit open, no attempt used" in seen[n.id][0].detail


def test_a_retry_that_would_leave_too_little_time_for_the_next_channel_falls_back_now(
        mocks, make_stage):
    fcm = mocks("fcm", "--failure-rate", "1")
    sendgrid = mocks("sendgrid")
    stage = make_stage(fcm_url=fcm.url, sendgrid_url=sendgrid.url,
                       breaker_failure_threshold=1000, fallback_reserve_ms=10_000)
    t = now_ms()
    short = note(0, channels=["push", "email"], user="a", created_at=t, expires_at=t + 8_000)
    roomy = note(1, channels=["push", "email"], user="b", created_at=t, expires_at=t + 60_000)
    alone = note(2, channels=["push"], user="c", created_at=t, expires_at=t + 8_000)
    out = stage.send_all([short, roomy, alone])
    seen = by_id(out)
    assert [(s.state, s.channel) for s in seen[short.id]] == [("fallback", "push"),
                                                             ("delivered", "email")]
    assert "out_of_time" in seen[short.id][0].detail
    assert [s.state for s in seen[roomy.id]] == ["retrying"]  # time enough for both
    assert [s.state for s in seen[alone.id]] == ["retrying"]  # nothing to keep time for
    assert [r["herald_id"] for r in sendgrid.log()] == [short.id]
    assert fcm.stats()["received"] == 3
