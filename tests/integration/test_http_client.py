"""udfs/http_client.py against a real FCM mock (its own process, a free port) and, for what
the mocks never send (chunked bodies, close-delimited bodies, 1xx, TLS), a small server in the
test. Order and exactness are read from the mock's own log; nothing here waits on a clock."""
from __future__ import annotations

import asyncio
import datetime
import functools
import random
import ssl
import time

import pytest

from herald.concurrency import AdaptiveLimit
from herald.providers.base import ProviderRequest
from herald.providers.registry import Registry
from herald.settings import Settings
from herald_stack.processes import free_port
from tests.helpers_mocks import make_notification
from udfs.http_client import (BEFORE_WRITE, BEHIND_CHAIN, CONNECTING, IN_QUEUE,
                              BlockingBatchClient, ChainHalted, ConnectError, ConnectionClosed,
                              ConnectionTurnedAway, DeadlinePassed,
                              DeadlineTimeout, HttpClient, RequestTimeout, Response,
                              UnsupportedRequest)


@pytest.fixture
def fcm(fcm_module):
    fcm_module.reset()
    return fcm_module


def fcm_request(url: str, herald_id: str, user: str = "u-1") -> ProviderRequest:
    n = make_notification(id=herald_id, user_id=user,
                          to={"push_token": f"tok-{user}", "platform": "android"})
    return Registry().for_channel("push", "android").build_request(n, n.to, Settings(fcm_url=url))


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------- against the FCM mock

def test_batch_answers_every_request_once_in_input_order(fcm):
    reqs = [fcm_request(fcm.url, f"id-{i}", f"u{i % 37}") for i in range(300)]

    async def go():
        client = HttpClient(max_connections=16)
        try:
            return await client.send_batch(reqs, max_in_flight=64)
        finally:
            await client.close()
    answers = run(go())
    assert [type(a) for a in answers] == [Response] * 300
    assert {a.status for a in answers} == {200}
    assert len({a.body for a in answers}) == 300  # each its own answer (unique message names)
    ids = [r["herald_id"] for r in fcm.log()]
    assert sorted(ids) == sorted(f"id-{i}" for i in range(300))
    stats = fcm.stats()
    assert stats["accepted_duplicate_ids"] == 0 and stats["received"] == 300


def test_same_key_requests_reach_the_provider_in_list_order(fcm):
    # random per-request latency at the mock: unchained calls would overtake each other
    fcm.configure(latency_ms=0, latency_jitter_ms=8, seed=7)
    users = [f"u{k}" for k in range(40)]
    plan = [(u, j) for u in users for j in range(8)]
    random.Random(3).shuffle(plan)
    # give each user's messages increasing numbers in list order
    counters: dict[str, int] = {}
    reqs, keys, order = [], [], {}
    for u, _ in plan:
        j = counters[u] = counters.get(u, -1) + 1
        herald_id = f"{u}-{j:02d}"
        reqs.append(fcm_request(fcm.url, herald_id, u))
        keys.append(u)
        order[herald_id] = (u, j)

    async def go():
        client = HttpClient(max_connections=64)
        try:
            return await client.send_batch(reqs, max_in_flight=64, keys=keys)
        finally:
            await client.close()
    answers = run(go())
    assert all(isinstance(a, Response) and a.status == 200 for a in answers)
    seen: dict[str, list[int]] = {}
    for record in sorted(fcm.log(), key=lambda r: r["seq"]):
        u, j = order[record["herald_id"]]
        seen.setdefault(u, []).append(j)
    assert seen == {u: list(range(8)) for u in users}


def test_connections_are_kept_alive_and_reused(fcm):
    reqs = [fcm_request(fcm.url, f"ka-{i}") for i in range(200)]

    async def go():
        client = HttpClient(max_connections=4)
        try:
            first = await client.send_batch(reqs[:100], max_in_flight=50)
            second = await client.send_batch(reqs[100:], max_in_flight=50)
            return first + second, client.stats()
        finally:
            await client.close()
    answers, stats = run(go())
    assert all(a.status == 200 for a in answers)
    assert stats["connections_opened"] <= 4
    assert stats["reused"] >= 196
    assert fcm.stats()["received"] == 200


def test_a_request_without_an_answer_in_time_fails_with_a_timeout(fcm):
    fcm.configure(latency_ms=5_000)

    async def go():
        client = HttpClient(max_connections=4, timeout_s=0.2)
        try:
            slow = await client.send_batch([fcm_request(fcm.url, f"slow-{i}") for i in range(3)])
            with pytest.raises(RequestTimeout):
                await client.request(fcm_request(fcm.url, "slow-single"))
            fcm.configure(latency_ms=0)
            after = await client.request(fcm_request(fcm.url, "after"))
            return slow, after
        finally:
            await client.close()
    slow, after = run(go())
    assert all(isinstance(a, RequestTimeout) for a in slow)
    assert after.status == 200  # a timed-out connection is dropped, a fresh one works


def test_stop_chain_holds_back_the_rest_of_that_key_only(fcm):
    fcm.configure(invalid=["tok-bad"])
    reqs = [fcm_request(fcm.url, "bad-0", "bad"), fcm_request(fcm.url, "good-0", "good"),
            fcm_request(fcm.url, "bad-1", "bad"), fcm_request(fcm.url, "good-1", "good"),
            fcm_request(fcm.url, "bad-2", "bad")]
    client = BlockingBatchClient(max_connections=4)
    try:
        answers = client.send_batch(
            reqs, max_in_flight=8, keys=["bad", "good", "bad", "good", "bad"],
            stop_chain=lambda a: not isinstance(a, Response) or a.status != 200)
    finally:
        client.close()
    assert answers[0].status == 404
    assert [answers[1].status, answers[3].status] == [200, 200]
    assert isinstance(answers[2], ChainHalted) and isinstance(answers[4], ChainHalted)
    logged = {r["herald_id"] for r in fcm.log(what="all")}
    assert logged == {"bad-0", "good-0", "good-1"}


def test_unreachable_and_http2_requests_are_reported_not_raised(fcm):
    closed = f"http://127.0.0.1:{free_port()}"
    h2 = ProviderRequest("POST", f"{fcm.url}/3/device/x", {}, b"{}", http2=True)
    client = BlockingBatchClient(max_connections=2, connect_timeout_s=5)
    try:
        answers = client.send_batch([fcm_request(closed, "nowhere"), h2,
                                     fcm_request(fcm.url, "fine")])
    finally:
        client.close()
    assert isinstance(answers[0], ConnectError)
    assert isinstance(answers[1], UnsupportedRequest)
    assert answers[2].status == 200
    assert [r["herald_id"] for r in fcm.log(what="all")] == ["fine"]


# ---------------------------------------------------------------- what the mocks never send

class RawServer:
    """An HTTP/1.1 server on this loop whose answers the test writes byte by byte; it counts
    connections and the most requests it ever held unanswered at once."""

    def __init__(self, answer, ssl_context=None):
        self.answer = answer
        self.ssl_context = ssl_context
        self.connections = 0
        self.outstanding = 0
        self.max_outstanding = 0
        self.release = asyncio.Event()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0,
                                                 ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def handle(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.outstanding += 1
                self.max_outstanding = max(self.max_outstanding, self.outstanding)
                keep = await self.answer(self, head, body, writer)
                self.outstanding -= 1
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def raw_request(port: int, path: str = "/x", scheme: str = "http", host: str = "127.0.0.1"
                ) -> ProviderRequest:
    return ProviderRequest("POST", f"{scheme}://{host}:{port}{path}",
                           {"Content-Type": "application/json"}, b'{"n":1}')


def test_chunked_close_delimited_and_interim_answers_are_read_whole():
    async def answer(server, head, body, writer):
        path = head.split(b" ")[1]
        if path == b"/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            for piece in (b"4;ext=1\r\nabcd\r\n", b"1", b"0\r\n", b"0123456789abcdef\r\n",
                          b"0\r\nX-Trailer: t\r\n\r\n"):
                writer.write(piece)
                await writer.drain()
            return True
        if path == b"/continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n"
                         b"Content-Length: 2\r\n\r\nok")
            return True
        if path == b"/nocontent":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-A: 2\r\n\r\nuntil the end")
        return False  # close-delimited: the body ends with the connection

    async def go():
        async with RawServer(answer) as server:
            client = HttpClient(max_connections=2)
            try:
                out = [await client.request(raw_request(server.port, p))
                       for p in ("/chunked", "/continue", "/nocontent", "/chunked", "/close",
                                 "/chunked")]
                return out, client.stats(), server.connections
            finally:
                await client.close()
    (chunked, cont, nocontent, chunked2, close, chunked3), stats, connections = run(go())
    assert chunked.body == chunked2.body == chunked3.body == b"abcd" + b"0123456789abcdef"
    assert (cont.status, cont.body) == (201, b"ok")
    assert (nocontent.status, nocontent.body) == (204, b"")
    assert (close.status, close.body, close.headers["x-a"]) == (200, b"until the end", "1, 2")
    assert connections == 2 and stats["connections_opened"] == 2  # a new one after the close


def test_max_in_flight_bounds_the_requests_held_at_the_server():
    async def answer(server, head, body, writer):
        if server.outstanding >= 5:
            server.release.set()
        await server.release.wait()  # hold every answer until five are waiting at once
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        return True

    async def go():
        async with RawServer(answer) as server:
            client = HttpClient(max_connections=32)
            try:
                answers = await client.send_batch([raw_request(server.port)] * 60,
                                                  max_in_flight=5)
                return answers, server.max_outstanding
            finally:
                await client.close()
    answers, most = run(go())
    assert [a.status for a in answers] == [200] * 60
    assert most == 5


def test_a_key_never_has_two_requests_outstanding_at_the_server():
    """The chaining itself: the server holds every answer until the first wave is in, so
    without chaining two requests of one user would be held at once (and could overtake)."""
    users = [f"u{k}" for k in range(30)]
    plan = [u for u in users for _ in range(6)]
    random.Random(5).shuffle(plan)
    counters: dict[str, int] = {}
    paths = []
    for u in plan:
        counters[u] = counters.get(u, -1) + 1
        paths.append(f"/{u}/{counters[u]}")
    first_wave = len(users)  # one head per user, fewer than max_in_flight
    held: dict[str, int] = {}
    overlaps: list[str] = []
    arrived: dict[str, list[int]] = {}

    async def answer(server, head, body, writer):
        _, user, j = head.split(b" ")[1].decode().split("/")
        held[user] = held.get(user, 0) + 1
        if held[user] > 1:
            overlaps.append(user)
        arrived.setdefault(user, []).append(int(j))
        if server.outstanding >= first_wave:
            server.release.set()
        await server.release.wait()
        held[user] -= 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        return True

    async def go():
        async with RawServer(answer) as server:
            client = HttpClient(max_connections=64)
            try:
                return await client.send_batch([raw_request(server.port, p) for p in paths],
                                               max_in_flight=64, keys=plan)
            finally:
                await client.close()
    answers = run(go())
    assert [a.status for a in answers] == [200] * len(paths)
    assert overlaps == []
    assert arrived == {u: list(range(6)) for u in users}


def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_https_verifies_the_server_with_the_given_context(tmp_path):
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=cert)

    async def answer(server, head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure")
        return True

    async def go():
        async with RawServer(answer, server_ctx) as server:
            good = HttpClient(ssl_context=trusting)
            default = HttpClient()  # the system's trust store does not know this certificate
            try:
                ok = await good.send_batch([raw_request(server.port, "/a", "https",
                                                        "localhost")] * 3)
                refused = await default.send_batch([raw_request(server.port, "/b", "https",
                                                                "localhost")])
                return ok, refused, good.stats()
            finally:
                await good.close()
                await default.close()
    ok, refused, stats = run(go())
    assert [(a.status, a.body) for a in ok] == [(200, b"secure")] * 3
    assert isinstance(refused[0], ConnectError)
    assert stats["connections_opened"] <= 3


# ---------------------------------------------------------------- start now, wait later

def test_started_batches_reach_the_provider_before_the_caller_waits(fcm):
    """``ProviderTransport.start`` writes on warm connections and returns: the provider works
    on the calls while the caller's loop is not running (the gate decides its next part then).
    Two batches under way at once each get their own answers, in their own order."""
    from udfs.transport import ProviderTransport
    transport = ProviderTransport(max_connections=64)
    try:
        warm = [fcm_request(fcm.url, f"warm-{i}", f"w{i}") for i in range(64)]
        assert {a.status for a in transport.send_batch(warm, 64)} == {200}
        fcm.reset()
        first = [fcm_request(fcm.url, f"a-{i}", f"ua{i % 5}") for i in range(25)]
        second = [fcm_request(fcm.url, f"b-{i}", f"ub{i % 5}") for i in range(25)]
        a = transport.start(first, 64, keys=[f"ua{i % 5}" for i in range(25)])
        b = transport.start(second, 64, keys=[f"ub{i % 5}" for i in range(25)])
        # Nothing has run the client's loop since; the mock answers what it was sent.
        deadline = time.monotonic() + 10
        while len(fcm.log()) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        seen = {r["herald_id"] for r in fcm.log()}
        # One call per user (5 users a batch) could go at once; the rest chain behind them.
        assert seen == {f"a-{i}" for i in range(5)} | {f"b-{i}" for i in range(5)}
        got_b = transport.wait(b)
        got_a = transport.wait(a)
    finally:
        transport.close()
    for got in (got_a, got_b):
        assert [type(x) for x in got] == [Response] * 25
        assert {x.status for x in got} == {200} and len({x.body for x in got}) == 25
    log = [r["herald_id"] for r in fcm.log()]
    assert sorted(log) == sorted([f"a-{i}" for i in range(25)] + [f"b-{i}" for i in range(25)])
    for prefix in "ab":  # each user's calls reached the provider in list order
        for user in range(5):
            mine = [h for h in log if h.startswith(f"{prefix}-") and int(h[2:]) % 5 == user]
            assert mine == [f"{prefix}-{i}" for i in range(user, 25, 5)]


# ---------------------------------------------------------------- deadlines (expires_at)

def deadline_in(seconds: float) -> int:
    """An epoch-ms deadline ``seconds`` from now (the clock of ``expires_at``)."""
    return int((time.time() + seconds) * 1000)


def slow_answer(latency_s: float, seen: list):
    """A server answer: note when the request arrived (epoch ms), answer 200 after
    ``latency_s``; a connection the client dropped meanwhile just ends."""
    async def answer(server, head, body, writer):
        seen.append((head.split(b" ")[1].decode(), int(time.time() * 1000)))
        await asyncio.sleep(latency_s)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        return True
    return answer


def check_written_before(answers, seen, deadline, paths):
    """What the server received is exactly what was not answered DeadlinePassed, each before
    the deadline; nothing after a DeadlinePassed was written."""
    written = [p for p, a in zip(paths, answers) if not isinstance(a, DeadlinePassed)]
    assert sorted(p for p, _ in seen) == sorted(written)
    assert all(t < deadline for _, t in seen), [(p, t - deadline) for p, t in seen]
    for a in answers:
        assert isinstance(a, (Response, DeadlineTimeout, DeadlinePassed)), a
    return written


def test_chained_requests_are_not_written_at_or_after_their_deadline():
    """A user's calls to a slow provider: each is written after the previous answer, so the
    later ones would reach it after expires_at; they are answered DeadlinePassed instead."""
    seen: list = []
    deadline = deadline_in(0.9)
    paths = [f"/chain/{i}" for i in range(8)]

    async def go():
        async with RawServer(slow_answer(0.25, seen)) as server:
            client = HttpClient(max_connections=8, timeout_s=10)
            try:
                reqs = [raw_request(server.port, p) for p in paths]
                for r in reqs:
                    r.deadline = deadline
                return await client.send_batch(reqs, keys=["u"] * 8)
            finally:
                await client.close()
    answers = run(go())
    written = check_written_before(answers, seen, deadline, paths)
    assert written == paths[:len(written)] and len(written) < 8  # a prefix: the chain's order
    assert all(a.stage == BEHIND_CHAIN for a in answers[len(written):])
    assert all(a.status == 200 for a in answers if isinstance(a, Response))


def test_requests_queued_for_a_connection_are_not_written_after_their_deadline():
    seen: list = []
    deadline = deadline_in(0.6)
    paths = [f"/queued/{i}" for i in range(6)]

    async def go():
        async with RawServer(slow_answer(0.25, seen)) as server:
            client = HttpClient(max_connections=1, timeout_s=10)
            try:
                reqs = [raw_request(server.port, p) for p in paths]
                for r in reqs:
                    r.deadline = deadline
                return await client.send_batch(reqs)
            finally:
                await client.close()
    answers = run(go())
    written = check_written_before(answers, seen, deadline, paths)
    assert 0 < len(written) < 6
    assert {a.stage for a in answers if isinstance(a, DeadlinePassed)} == {IN_QUEUE}


def test_an_unanswered_request_is_abandoned_at_its_deadline_not_its_timeout():
    """timeout_s is 10 s; the deadline comes first and cuts the wait (DeadlineTimeout: the
    request was written, so the provider may have it)."""
    seen: list = []

    async def hold(server, head, body, writer):
        seen.append(head.split(b" ")[1].decode())
        await server.release.wait()
        return False

    async def go():
        async with RawServer(hold) as server:
            client = HttpClient(max_connections=2, timeout_s=10)
            try:
                late = raw_request(server.port, "/held")
                late.deadline = deadline_in(0.3)
                return await client.send_batch([late])
            finally:
                server.release.set()
                await client.close()
    (answer,) = run(go())
    assert isinstance(answer, DeadlineTimeout) and isinstance(answer, RequestTimeout)
    assert seen == ["/held"]


def test_a_request_past_its_deadline_is_never_written():
    seen: list = []

    async def go():
        async with RawServer(slow_answer(0, seen)) as server:
            client = HttpClient(max_connections=2)
            try:
                late = raw_request(server.port, "/late")
                late.deadline = deadline_in(-0.001)
                fine = raw_request(server.port, "/fine")
                fine.deadline = deadline_in(30)
                return await client.send_batch([late, fine, raw_request(server.port, "/none")])
            finally:
                await client.close()
    late, fine, none = run(go())
    assert isinstance(late, DeadlinePassed) and late.stage == BEFORE_WRITE
    assert (fine.status, none.status) == (200, 200)
    assert sorted(p for p, _ in seen) == ["/fine", "/none"]


def test_a_connection_that_cannot_open_before_the_deadline_answers_deadline_passed():
    """A listener whose backlog is full: the connect hangs (connect_timeout_s is 5 s); the
    request's deadline ends the wait, and nothing was written."""
    import socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # takes the one backlog slot

    async def go():
        client = HttpClient(max_connections=2, connect_timeout_s=5)
        try:
            req = raw_request(port, "/never")
            req.deadline = deadline_in(0.3)
            return await client.send_batch([req])
        finally:
            await client.close()
    try:
        (answer,) = run(go())
    finally:
        filler.close()
        listener.close()
    assert isinstance(answer, DeadlinePassed) and answer.stage == CONNECTING


# ---------------------------------------------------------------- adaptive concurrency

def adaptive(initial: int = 8, maximum: int = 64, **kwargs):
    return functools.partial(AdaptiveLimit, initial=initial, maximum=maximum, **kwargs)


def test_a_capped_provider_gets_what_it_takes_and_turned_away_calls_were_never_read(fcm):
    """The mock serves 4 connections per client and resets the rest unread: the pool learns
    the cap from the first burst (8 connections) and sends the rest over the 4 that work (8-10
    turned away in five runs); a
    call turned away is reported as such (not an outage), never reached the log, and goes
    through exactly once when sent again."""
    fcm.configure(max_client_connections=4)
    client = BlockingBatchClient(max_connections=64, adaptive_limit=adaptive(initial=8))
    try:
        answers = client.send_batch([fcm_request(fcm.url, f"c-{i}", f"u{i}")
                                     for i in range(200)], max_in_flight=64)
        limits = client.client.stats()["limits"]
        turned = [i for i, a in enumerate(answers) if isinstance(a, ConnectionTurnedAway)]
        assert all(isinstance(a, Response) and a.status == 200
                   for i, a in enumerate(answers) if i not in turned), answers
        # The first burst's extra four, and a few opened while that burst's resets and
        # answers interleave (each answer grows the limit until the last reset has come).
        assert 4 <= len(turned) <= 16
        assert list(limits.values())[0] in (4, 5)  # the cap, or a probe above it
        logged = [r["herald_id"] for r in fcm.log()]
        assert sorted(logged) == sorted(f"c-{i}" for i in range(200) if i not in turned)
        assert fcm.stats()["received"] == 200 - len(turned)
        again = client.send_batch([fcm_request(fcm.url, f"c-{i}", f"u{i}") for i in turned])
        assert all(isinstance(a, Response) or isinstance(a, ConnectionTurnedAway)
                   for a in again)
    finally:
        client.close()
    counts = {}
    for r in fcm.log():
        counts[r["herald_id"]] = counts.get(r["herald_id"], 0) + 1
    assert set(counts.values()) == {1}


def test_without_an_adaptive_limit_the_same_burst_loses_connections_as_plain_resets(fcm):
    """What the issue saw: a pool that opens a connection per request at once has most of
    them reset, reported as lost connections (ambiguous, a provider fault)."""
    fcm.configure(max_client_connections=4)
    client = BlockingBatchClient(max_connections=64)
    try:
        answers = client.send_batch([fcm_request(fcm.url, f"f-{i}", f"u{i}")
                                     for i in range(64)], max_in_flight=64)
    finally:
        client.close()
    lost = [a for a in answers if isinstance(a, ConnectionClosed)]
    assert len(lost) >= 50 and not any(isinstance(a, ConnectionTurnedAway) for a in lost)


def test_a_connection_that_cannot_be_made_while_another_works_leaves_its_request_waiting():
    """The listener stops accepting (refused) while the client holds a working connection:
    the requests whose new connection failed were never written, so they wait for the one
    that works instead of failing with ConnectError."""
    seen: list = []

    async def go():
        async with RawServer(slow_answer(0.01, seen)) as server:
            client = HttpClient(max_connections=8, adaptive_limit=adaptive(initial=2, maximum=8))
            try:
                first = await client.send_batch([raw_request(server.port, "/first")])
                server.server.close()  # no new connections; the open one goes on
                rest = await client.send_batch([raw_request(server.port, f"/r{i}")
                                                for i in range(10)])
                return first + rest, client.stats()
            finally:
                await client.close()
    answers, stats = run(go())
    assert [getattr(a, "status", a) for a in answers] == [200] * 11
    assert sorted(p for p, _ in seen) == sorted(["/first"] + [f"/r{i}" for i in range(10)])
    assert stats["connections_opened"] == 1 and list(stats["limits"].values()) == [1]


def test_the_limit_grows_while_calls_are_answered(fcm):
    client = BlockingBatchClient(max_connections=64, adaptive_limit=adaptive(initial=2))
    try:
        answers = client.send_batch([fcm_request(fcm.url, f"g-{i}", f"u{i}")
                                     for i in range(300)], max_in_flight=64)
        stats = client.client.stats()
    finally:
        client.close()
    assert all(isinstance(a, Response) and a.status == 200 for a in answers)
    assert list(stats["limits"].values()) == [64] and stats["connections_opened"] <= 64


def test_a_kept_alive_connection_closed_as_its_request_went_out_is_turned_away_not_a_fault():
    """A provider (or its gateway) closes some kept-alive connections as the next request
    arrives, with no byte of an answer, while the others answer: those calls are turned away
    (sent again by the call stage), not lost connections that count as an outage."""
    dropped: list = []

    async def answer(server, head, body, writer):
        served = server.per_connection.setdefault(writer, len(server.per_connection))
        nth = server.requests.get(writer, 0) + 1
        server.requests[writer] = nth
        if nth == 2 and served % 2 == 0:
            dropped.append(served)
            return False  # closed, nothing written
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        return True

    async def go():
        async with RawServer(answer) as server:
            server.per_connection, server.requests = {}, {}
            client = HttpClient(max_connections=8, adaptive_limit=adaptive(initial=4))
            try:
                first = await client.send_batch([raw_request(server.port, f"/a{i}")
                                                 for i in range(4)], max_in_flight=4)
                second = await client.send_batch([raw_request(server.port, f"/b{i}")
                                                  for i in range(4)], max_in_flight=4)
                return first, second, server.connections
            finally:
                await client.close()

    first, second, connections = run(go())
    assert connections == 4 and all(isinstance(a, Response) for a in first)
    assert len(dropped) == 2
    assert sorted(type(a).__name__ for a in second) == [
        "ConnectionTurnedAway", "ConnectionTurnedAway", "Response", "Response"]
