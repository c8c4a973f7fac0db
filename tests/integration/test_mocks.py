"""The provider mocks, driven by the adapters' own requests over real sockets.

Each mock runs in a subprocess on a free port (``--port 0``; ready when it prints its line).
Every assertion about what happened is read back from the mock's log, the way Herald's
end-to-end tests will read it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest
import requests

from herald.providers import (OK, PERMANENT, RETRYABLE, THROTTLED, ApnsAdapter, FcmAdapter,
                              SendGridAdapter, TwilioAdapter, apns_id_for)
from herald.settings import Settings
from herald_stack.processes import free_port
from tests.helpers_mocks import (MockProcess, make_notification, send, send_h2,
                                 wait_for_port)

ADAPTERS = {"fcm": FcmAdapter(), "apns": ApnsAdapter(), "twilio": TwilioAdapter(),
            "sendgrid": SendGridAdapter()}
PLATFORM = {"fcm": "android", "apns": "ios"}


def settings_for(name: str, url: str) -> Settings:
    return Settings().replace(**{f"{name}_url": url})


def contact_of(name: str, n) -> str:
    return {"fcm": n.to.push_token, "apns": n.to.push_token, "twilio": n.to.phone,
            "sendgrid": n.to.email}[name]


def note(i: int | str, name: str = "fcm", **kw):
    """A notification with a unique id and contacts, expiring in an hour."""
    now = int(time.time() * 1000)
    to = {"push_token": f"tok{i}", "platform": PLATFORM.get(name, "android"),
          "phone": f"+1555{int(i) if str(i).isdigit() else 0:07d}", "email": f"u{i}@example.com"}
    return make_notification(id=f"ntf-{i}", to=to, created_at=now, expires_at=now + 3_600_000,
                             **kw)


class Harness:
    """One provider's mock, adapter and settings; resets the mock before each test."""

    def __init__(self, name: str, mock: MockProcess):
        self.name, self.mock = name, mock
        self.adapter = ADAPTERS[name]
        self.settings = settings_for(name, mock.url)

    def request(self, n):
        return self.adapter.build_request(n, n.to, self.settings)

    def deliver(self, n, session=None):
        """Send n; (Outcome, status)."""
        try:
            status, headers, body = send(self.request(n), session)
        except OSError as exc:  # requests' ConnectionError is one too
            return self.adapter.transport_error(exc)
        return self.adapter.classify(status, headers, body)

    def deliver_many(self, notes):
        """Several sends in order (HTTP/2: concurrently on one connection)."""
        if self.adapter.name == "apns":
            answers = asyncio.run(send_h2([self.request(n) for n in notes]))
            return [self.adapter.classify(*a) for a in answers]
        with requests.Session() as session:
            return [self.deliver(n, session) for n in notes]


@pytest.fixture(scope="module", params=["fcm", "apns", "twilio", "sendgrid"])
def harness(request):
    mock = MockProcess("--provider", request.param)
    yield Harness(request.param, mock)
    assert mock.stop() == 0


@pytest.fixture
def h(harness):
    harness.mock.reset()
    return harness


# ------------------------------------------------------------------ all four providers

def test_accepts_the_adapters_request_and_logs_the_herald_id(h):
    n = note(1, h.name)
    out = h.deliver(n)
    assert out.kind is OK, out
    assert out.message_id
    [record] = h.mock.log()
    assert record["herald_id"] == n.id
    assert record["to"] == contact_of(h.name, n)
    assert record["message_id"] == out.message_id
    now = time.time() * 1000
    assert now - 10_000 < record["t_ms"] <= now
    assert h.mock.log("rejected") == []
    if h.name == "apns":
        assert record["apns_id"] == apns_id_for(n.tenant_id, n.id)
        assert record["apns_priority"] == "10"


def test_invalid_recipient_is_permanent_and_marks_the_token(h):
    n = note(2, h.name)
    h.mock.configure(invalid=[contact_of(h.name, n)])
    out = h.deliver(n)
    assert out.kind is PERMANENT and out.token_invalid, out
    assert h.deliver(note(3, h.name)).kind is OK
    [rejected] = h.mock.log("rejected")
    assert (rejected["herald_id"], rejected["reason"]) == (n.id, "invalid_recipient")
    assert [r["herald_id"] for r in h.mock.log()] == ["ntf-3"]


def test_quota_throttles_with_a_wait_and_the_log_never_exceeds_it(h):
    h.mock.configure(quota_rps=5)
    t0 = time.monotonic()
    outcomes = h.deliver_many([note(i, h.name) for i in range(20)])
    elapsed = time.monotonic() - t0
    kinds = Counter(o.kind for o in outcomes)
    assert set(kinds) <= {OK, THROTTLED}
    for o in outcomes:
        if o.kind is THROTTLED:
            assert o.retry_after_s >= 1
    accepted = sorted(r["t_ms"] for r in h.mock.log())
    # no 1000 ms window of the log holds more than the quota
    assert all(sum(1 for u in accepted if t <= u < t + 1000) <= 5 for t in accepted)
    if elapsed < 1.0:
        assert kinds[OK] == 5 and kinds[THROTTLED] == 15
    stats = h.mock.stats()
    assert stats["by_reason"].get("quota", 0) == kinds[THROTTLED]
    assert stats["max_accepted_per_second"] <= 5


def test_503_outage_is_retryable_then_service_returns(h):
    h.mock.configure(outage={"mode": "503", "duration_s": 60})
    out = h.deliver(note(4, h.name))
    assert out.kind is RETRYABLE and out.status == 503
    h.mock.configure(outage=None)
    assert h.deliver(note(5, h.name)).kind is OK
    [rejected] = h.mock.log("rejected")
    assert (rejected["herald_id"], rejected["reason"]) == ("ntf-4", "outage")


def test_seeded_random_failures_are_retryable_and_reproducible(h):
    h.mock.configure(failure_rate=0.5, seed=7)
    first = [o.kind for o in h.deliver_many([note(i, h.name) for i in range(30)])]
    assert set(first) == {OK, RETRYABLE}
    h.mock.admin("POST", "reset", {})  # same seed again
    second = [o.kind for o in h.deliver_many([note(i, h.name) for i in range(30)])]
    if h.name != "apns":  # HTTP/2 streams race; only HTTP/1.1 order is the send order
        assert first == second
    assert h.mock.stats()["by_reason"]["random_failure"] == second.count(RETRYABLE)


def test_log_counts_each_herald_id_exactly(h):
    notes = [note(i, h.name) for i in (10, 11, 12)] + [note(11, h.name)]
    assert all(o.kind is OK for o in h.deliver_many(notes))
    per_id = Counter(r["herald_id"] for r in h.mock.log())
    assert per_id == {"ntf-10": 1, "ntf-11": 2, "ntf-12": 1}
    stats = h.mock.stats()
    assert (stats["accepted"], stats["accepted_unique_ids"], stats["accepted_duplicate_ids"]) \
        == (4, 3, 1)
    only = h.mock.log(herald_id="ntf-11")
    assert [r["herald_id"] for r in only] == ["ntf-11", "ntf-11"]
    since = h.mock.log(since=2)
    assert [r["seq"] for r in since] == [3, 4]


def test_unauthorised_requests_are_rejected_in_the_providers_shape(h):
    req = h.request(note(20, h.name))
    headers = {k: v for k, v in req.headers.items() if k.lower() != "authorization"}
    stripped = type(req)(req.method, req.url, headers, req.body, req.http2)
    status, answer_headers, body = send(stripped)
    assert status in (401, 403)
    out = h.adapter.classify(status, answer_headers, body)
    assert out.kind is PERMANENT and not out.token_invalid
    [rejected] = h.mock.log("rejected")
    assert rejected["reason"] == "unauthorized"


# ------------------------------------------------------------------ one provider is enough

@pytest.fixture
def fcm(fcm_module):
    fcm_module.reset()
    return Harness("fcm", fcm_module)


def test_refused_connections_during_a_refuse_outage(fcm):
    fcm.mock.configure(outage={"mode": "refuse", "duration_s": 1.0})
    deadline = time.monotonic() + 5
    out = None
    while time.monotonic() < deadline:  # the listener closes right after the admin answer
        out = fcm.deliver(note(30))
        if out.status is None:
            break
    assert out.kind is RETRYABLE and out.status is None and "Connection" in out.detail
    assert wait_for_port("127.0.0.1", fcm.mock.port, timeout=10)
    assert fcm.deliver(note(31)).kind is OK
    # a send that raced the closing listener may have got in; the refused one did not
    assert fcm.mock.log()[-1]["herald_id"] == "ntf-31"
    assert fcm.mock.stats()["rejected"] == 0


def test_latency_is_added_without_blocking_other_connections(fcm):
    fcm.mock.configure(latency_ms=300)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        outcomes = list(pool.map(fcm.deliver, [note(i) for i in range(40, 45)]))
    elapsed = time.monotonic() - t0
    assert all(o.kind is OK for o in outcomes)
    assert 0.3 <= elapsed < 1.2  # five in a row would take 1.5 s
    # the log holds receive times: all five arrived before any answer left
    times = [r["t_ms"] for r in fcm.mock.log()]
    assert max(times) - min(times) < 300


def test_bad_requests_get_googles_error_and_are_logged(fcm):
    req = fcm.request(note(50))
    body = json.loads(req.body)
    body["message"]["data"]["n"] = 5  # FCM data values must be strings
    status, headers, answer = send(type(req)(req.method, req.url, req.headers,
                                             json.dumps(body).encode()))
    assert status == 400
    error = json.loads(answer)["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["errorCode"] == "INVALID_ARGUMENT"
    assert fcm.adapter.classify(status, headers, answer).kind is PERMANENT
    [rejected] = fcm.mock.log("rejected")
    assert (rejected["herald_id"], rejected["reason"], rejected["status"]) == \
        ("ntf-50", "bad_request", 400)


def test_admin_api_rejects_bad_config_and_reports_it(fcm):
    answer = requests.post(f"{fcm.mock.url}/_mock/config", json={"quota": 5}, timeout=5)
    assert answer.status_code == 400 and "unknown config keys" in answer.json()["error"]
    config = fcm.mock.configure(quota_rps=3, latency_ms=1, invalid_add=["a", "b"],
                                outage={"mode": "503", "start_in_s": 60, "duration_s": 5})
    assert config["quota_rps"] == 3 and config["invalid"] == ["a", "b"]
    assert config["outage"]["end_ms"] - config["outage"]["start_ms"] == 5000
    assert fcm.mock.configure(invalid_remove=["a"])["invalid"] == ["b"]
    assert fcm.mock.admin("GET", "config") == fcm.mock.configure()
    assert requests.get(f"{fcm.mock.url}/_mock/nope", timeout=5).status_code == 404
    assert fcm.deliver(note(60)).kind is OK  # the outage has not started yet
    assert fcm.mock.admin("GET", "rate")["max"] == 1


def test_cli_switches_and_the_jsonl_log(tmp_path):
    log = tmp_path / "fcm.jsonl"
    mock = MockProcess("--provider", "fcm", "--log", str(log), "--quota", "100",
                       "--invalid", "tok71", "--latency-ms", "5", "--failure-rate", "0",
                       "--seed", "3", "--outage", "3600:10:refuse")
    try:
        config = mock.admin("GET", "config")
        assert config["quota_rps"] == 100 and config["invalid"] == ["tok71"]
        assert config["latency_ms"] == 5 and config["outage"]["mode"] == "refuse"
        harness = Harness("fcm", mock)
        assert harness.deliver(note(70)).kind is OK
        assert harness.deliver(note(71)).token_invalid
        in_memory = mock.log("all")
    finally:
        assert mock.stop() == 0  # SIGTERM flushes the file
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines == in_memory
    assert [(r["herald_id"], r["result"]) for r in lines] == \
        [("ntf-70", "accepted"), ("ntf-71", "rejected")]


def test_all_four_on_their_settings_ports():
    ports = {name: free_port() for name in ("fcm", "apns", "twilio", "sendgrid")}
    env = {f"HERALD_MOCK_{name.upper()}_PORT": str(port) for name, port in ports.items()}
    mock = MockProcess("--all", env=env, expect=4)
    try:
        assert mock.ports == ports
        for name, port in ports.items():
            harness = Harness(name, mock)
            harness.settings = settings_for(name, f"http://127.0.0.1:{port}")
            assert harness.deliver(note(80, name)).kind is OK
            assert mock.admin("GET", "stats", port=port)["accepted"] == 1
    finally:
        assert mock.stop() == 0


def test_apns_requires_http2_but_serves_admin_over_http1():
    mock = MockProcess("--provider", "apns")
    try:
        apns = Harness("apns", mock)
        req = apns.request(note(90, "apns"))
        answer = requests.post(req.url, headers=dict(req.headers), data=req.body, timeout=5)
        assert answer.status_code == 505 and answer.json() == {"reason": "HTTP2Required"}
        assert apns.deliver(note(91, "apns")).kind is OK
        assert [r["herald_id"] for r in mock.log()] == ["ntf-91"]
    finally:
        mock.stop()


def test_apns_checks_the_provider_token_age():
    mock = MockProcess("--provider", "apns")
    try:
        apns = Harness("apns", mock)
        stale = ApnsAdapter()
        n = note(95, "apns")
        req = stale.build_request(n, n.to, apns.settings, now_ms=int(time.time() * 1000)
                                  - 2 * 3600 * 1000)
        status, headers, body = send(req)
        assert (status, json.loads(body)) == (403, {"reason": "ExpiredProviderToken"})
        assert stale.classify(status, headers, body).kind is RETRYABLE
        status, _, _ = send(stale.build_request(n, n.to, apns.settings))  # re-signed now
        assert status == 200
    finally:
        mock.stop()


# ------------------------------------------------------------------ connections per client

def no_client_connections(mock: MockProcess) -> None:
    """Until the mock has seen every earlier connection of this process close (it counts them
    against the cap, and learns of a close a moment after the client's)."""
    deadline = time.monotonic() + 5
    while mock.stats()["client_connections"]:
        assert time.monotonic() < deadline, mock.stats()
        time.sleep(0.01)


def post_on(conn: http.client.HTTPConnection, h: Harness, n):
    """Send n's request on this one connection (its own, closed by the caller): the Outcome."""
    req = h.request(n)
    target = urlsplit(req.url)
    try:
        conn.request(req.method, target.path, req.body, dict(req.headers))
        answer = conn.getresponse()
        return h.adapter.classify(answer.status, dict(answer.getheaders()), answer.read())
    except OSError as exc:
        conn.close()
        return h.adapter.transport_error(exc)


def test_connections_over_the_clients_cap_are_reset_unread_until_switched_off(fcm):
    """A gateway capping a client's connections: with two held open, a third is reset and its
    request never reaches the log; the held ones keep working, the admin API stays reachable,
    and switching the cap off at run time lets a new connection through."""
    no_client_connections(fcm.mock)
    fcm.mock.configure(max_client_connections=2)
    held = [http.client.HTTPConnection("127.0.0.1", fcm.mock.port, timeout=10)
            for _ in range(2)]
    extra = http.client.HTTPConnection("127.0.0.1", fcm.mock.port, timeout=10)
    try:
        assert [post_on(c, fcm, note(200 + i)).kind for i, c in enumerate(held)] == [OK, OK]
        out = post_on(extra, fcm, note(210))
        assert out.kind is RETRYABLE and out.status is None and "reset" in out.detail.lower()
        assert [post_on(c, fcm, note(220 + i)).kind for i, c in enumerate(held)] == [OK, OK]
        stats = fcm.mock.stats()
        assert (stats["connections_reset"], stats["client_connections"]) == (1, 2)
        assert stats["received"] == 4 and "ntf-210" not in {r["herald_id"]
                                                           for r in fcm.mock.log("all")}
        assert fcm.mock.configure(max_client_connections=None)["max_client_connections"] is None
        assert post_on(extra, fcm, note(211)).kind is OK
        assert fcm.mock.stats()["connections_reset"] == 1
    finally:
        for c in (*held, extra):
            c.close()


def test_a_closed_connection_frees_its_place_under_the_cap(fcm):
    no_client_connections(fcm.mock)
    fcm.mock.configure(max_client_connections=1)
    first = http.client.HTTPConnection("127.0.0.1", fcm.mock.port, timeout=10)
    second = http.client.HTTPConnection("127.0.0.1", fcm.mock.port, timeout=10)
    try:
        assert post_on(first, fcm, note(230)).kind is OK
        assert post_on(second, fcm, note(231)).status is None
        first.close()
        no_client_connections(fcm.mock)
        assert post_on(second, fcm, note(232)).kind is OK
    finally:
        first.close()
        second.close()
    assert [r["herald_id"] for r in fcm.mock.log()] == ["ntf-230", "ntf-232"]


def test_bad_connection_caps_are_refused(fcm):
    for bad in (-1, 1.5, True, "3"):
        answer = requests.post(f"{fcm.mock.url}/_mock/config",
                               json={"max_client_connections": bad}, timeout=5)
        assert answer.status_code == 400 and "max_client_connections" in answer.json()["error"]


def test_apns_resets_an_http2_connection_over_the_cap():
    mock = MockProcess("--provider", "apns", "--max-client-connections", "0")
    try:
        apns = Harness("apns", mock)
        with pytest.raises(Exception, match="reset by peer"):
            send(apns.request(note(240, "apns")))
        assert mock.stats()["connections_reset"] == 1  # the admin call itself went through
        mock.configure(max_client_connections=None)
        assert apns.deliver(note(241, "apns")).kind is OK
        assert [r["herald_id"] for r in mock.log()] == ["ntf-241"]
    finally:
        mock.stop()


def test_switching_a_cap_on_closes_the_idle_connections_beyond_it(fcm):
    """As a gateway restarted with the cap: of three idle connections, two are closed."""
    no_client_connections(fcm.mock)
    conns = [http.client.HTTPConnection("127.0.0.1", fcm.mock.port, timeout=10)
             for _ in range(3)]
    try:
        assert [post_on(c, fcm, note(250 + i)).kind for i, c in enumerate(conns)] == [OK] * 3
        assert fcm.mock.stats()["client_connections"] == 3
        fcm.mock.configure(max_client_connections=1)
        deadline = time.monotonic() + 5
        while fcm.mock.stats()["client_connections"] > 1:
            assert time.monotonic() < deadline, fcm.mock.stats()
            time.sleep(0.01)
        kinds = [post_on(c, fcm, note(260 + i)).kind for i, c in enumerate(conns)]
        assert kinds.count(OK) == 1 and fcm.mock.stats()["connections_reset"] == 0
    finally:
        for c in conns:
            c.close()
