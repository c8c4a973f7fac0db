"""A lean HTTP/1.1 client for the provider calls: keep-alive pools on ``asyncio.Protocol``.

Why not aiohttp: per request it builds a request object, a response object, a stream reader
and a task, which costs more CPU than the provider call itself once the record path is in Java
(bench/results/call_stage.md has the numbers). Here a request is a bytes write and a parse of
the answer, driven by callbacks; ``send_batch`` runs a whole list with one future, and chains
requests that share a key (a user) so they reach the provider one after another, in list order.

    client = HttpClient(max_connections=256, timeout_s=10)
    answers = await client.send_batch(requests, max_in_flight=256, keys=user_ids)
    # answers[i] is Response(status, headers, body) or an HttpClientError, in input order

``BlockingBatchClient`` wraps it on an event loop it owns, for code that is not async (a pandas
UDF, a Flink function's ``process_element``). HTTP/1.1 only: a ``ProviderRequest`` with
``http2`` set (APNs) is answered with ``UnsupportedRequest``, never sent.

A request's ``deadline`` (the notification's ``expires_at``) is checked right before every
write, wherever the request waited (behind its chain, for a free connection, for a connection
to open): at or after it the request is answered ``DeadlinePassed`` and never written. A
written request's wait for its answer ends at the deadline (or the request's ``answer_by``)
if that comes before ``timeout_s`` (``DeadlineTimeout``).
"""
from __future__ import annotations

import asyncio
import math
import ssl as ssl_module
import time
from collections import deque
from typing import Any, Callable, Hashable, NamedTuple, Sequence
from urllib.parse import urlsplit

from herald.concurrency import AdaptiveLimit
from herald.errors import HeraldError
from herald.providers.base import ProviderRequest

MAX_HEAD_BYTES = 64 * 1024
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_HEADERS_CACHE_SIZE = 1024


class Response(NamedTuple):
    """One answer; header names are lower case, repeated headers joined with ``", "``."""
    status: int
    headers: dict[str, str]
    body: bytes


class HttpClientError(HeraldError):
    """Root of the client's errors. Every one means: no usable answer for this request."""


class ConnectError(HttpClientError):
    """No connection could be made (refused, unreachable, TLS handshake, connect timeout):
    the request was never written, so sending it again cannot duplicate it."""


class RequestTimeout(HttpClientError, TimeoutError):
    """No whole answer within ``timeout_s`` of writing the request; the provider may have
    acted on it."""


class ConnectionClosed(HttpClientError):
    """The connection closed before a whole answer arrived; the provider may have acted on it."""


class ConnectionTurnedAway(ConnectionClosed):
    """A new connection closed before any answer while others to the same origin work: the
    provider (or a gateway in front of it) turned it away, most likely unread. Not an outage;
    the request was written, so sending it again is at-least-once for it."""


class ProtocolError(HttpClientError):
    """The answer was not HTTP/1.1 this client understands (or was larger than allowed)."""


class UnsupportedRequest(HttpClientError):
    """The request cannot go over this client (HTTP/2-only providers, a URL it cannot reach)."""


class ChainHalted(HttpClientError):
    """Not sent: an earlier request with the same key stopped its chain (``stop_chain``)."""


class PastDeadline(HttpClientError):
    """The request's deadline (``ProviderRequest.deadline``) came before its answer."""


# Where a request waited when its deadline passed before it could be written.
BEFORE_WRITE = "write"   # its turn came at or after the deadline (e.g. submitted too late)
BEHIND_CHAIN = "chain"   # waiting for the answer to an earlier request of the same key
IN_QUEUE = "queue"       # waiting for a free connection (or HTTP/2 stream)
CONNECTING = "connect"   # waiting for its connection to open
BODY_HELD = "body"       # its body held by the provider's HTTP/2 flow control (headers sent)


class DeadlinePassed(PastDeadline):
    """Never written: its deadline passed first; ``stage`` says where it was waiting."""

    def __init__(self, message: str, stage: str = BEFORE_WRITE):
        super().__init__(message)
        self.stage = stage


class DeadlineTimeout(PastDeadline, RequestTimeout):
    """Written, with no whole answer by its deadline (which came before ``timeout_s``): the
    provider may have acted on it."""


NO_DEADLINE = math.inf


def loop_deadline(loop: asyncio.AbstractEventLoop, deadline_ms: int | None) -> float:
    """An epoch-ms deadline on ``loop``'s clock (``inf`` for None)."""
    if deadline_ms is None:
        return NO_DEADLINE
    return loop.time() + (deadline_ms - time.time() * 1000.0) / 1000.0


def deadline_passed(stage: str) -> DeadlinePassed:
    """The answer for a request whose deadline passed at ``stage``, before it was written."""
    what = {BEHIND_CHAIN: "waiting behind an earlier request of the same key",
            IN_QUEUE: "waiting for a free connection",
            CONNECTING: "waiting for a connection to open",
            BODY_HELD: "while the provider's flow control held its body (stream reset)"}.get(
        stage, "before it was written")
    return DeadlinePassed(f"not sent: its deadline passed {what}", stage)


Result = Response  # | HttpClientError, in send_batch's list


# ---------------------------------------------------------------- one connection

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _UNTIL_CLOSE = range(6)


class _Exchange:
    """One request on its way: the bytes to write, whom to tell about the answer, and its
    deadline on the loop's clock (``expires``; ``inf``: none), and when its answer is awaited
    until at most (``answer_by``: the request's ``answer_by``, else ``expires``)."""
    __slots__ = ("data", "callback", "tag", "no_body", "pool", "expires", "answer_by")

    def __init__(self, data: bytes, callback: Callable[[Any, Any], None], tag: Any,
                 no_body: bool, pool: "_Pool", expires: float = NO_DEADLINE,
                 answer_by: float | None = None):
        self.data = data
        self.callback = callback
        self.tag = tag
        self.no_body = no_body
        self.pool = pool
        self.expires = expires
        self.answer_by = expires if answer_by is None else answer_by


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one exchange at a time (no pipelining: an answer is read
    before the next request is written, which is what keeps same-key requests in order)."""

    __slots__ = ("pool", "transport", "buf", "ex", "state", "need", "status", "headers", "body",
                 "keep", "deadline", "dead", "idle_since", "body_limit", "answered")

    def __init__(self, pool: "_Pool"):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.ex: _Exchange | None = None
        self.state = _HEAD
        self.need = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: bytearray | None = None
        self.keep = True
        self.deadline = 0.0
        self.dead = False
        self.idle_since = 0.0
        self.body_limit = pool.client.max_body_bytes
        self.answered = 0  # whole answers read on this connection

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.ex is None:  # bytes nobody asked for: the server is confused
            self._drop()
            return
        self.buf += data
        try:
            self._parse()
        except (ProtocolError, ValueError, IndexError) as exc:
            self._fail(exc if isinstance(exc, ProtocolError)
                       else ProtocolError(f"malformed answer: {exc}"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost settles any exchange

    def connection_lost(self, exc: Exception | None) -> None:
        ex = self.ex
        if ex is not None:
            if self.state == _UNTIL_CLOSE:
                self._complete(bytes(self.body or b""))
            else:
                self._fail(self.pool.lost(self, f": {exc}" if exc else ""))
        self.transport = None
        self.pool.forget(self)

    # -- the exchange

    def send(self, ex: _Exchange, now: float) -> None:
        """Write ``ex`` (its caller has checked that ``now`` is before its deadline)."""
        self.ex = ex
        self.state = _HEAD
        client = self.pool.client
        deadline = now + client.timeout_s
        if ex.answer_by < deadline:  # the answer is awaited until expires_at, no longer
            deadline = ex.answer_by
        if deadline < client._sweep_at:
            client.wake_by(deadline)
        self.deadline = deadline
        client.busy.add(self)
        self.pool.in_flight += 1
        self.transport.write(ex.data)

    def _parse(self) -> None:
        buf = self.buf
        while True:
            state = self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ProtocolError("answer head too large")
                    return
                lines = bytes(buf[:end]).split(b"\r\n")
                del buf[:end + 4]
                version, _, rest = lines[0].partition(b" ")
                status = int(rest[:3])
                if not version.startswith(b"HTTP/1."):
                    raise ProtocolError(f"not an HTTP/1.x answer: {lines[0][:40]!r}")
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(b":")
                    if not sep:
                        raise ProtocolError(f"malformed header line {line[:40]!r}")
                    key = name.strip().lower().decode("latin-1")
                    text = value.strip().decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
                if 100 <= status < 200:  # 100 Continue and friends: the real answer follows
                    continue
                self.status = status
                self.headers = headers
                connection = headers.get("connection", "").lower()
                self.keep = ("close" not in connection if version == b"HTTP/1.1"
                             else "keep-alive" in connection)
                if self.ex.no_body or status in (204, 304):
                    self._complete(b"")
                    return
                encoding = headers.get("transfer-encoding")
                if encoding is not None and "chunked" in encoding.lower():
                    self.body = bytearray()
                    self.state = _CHUNK_SIZE
                elif "content-length" in headers:
                    need = int(headers["content-length"])
                    if need < 0 or need > self.body_limit:
                        raise ProtocolError(f"bad or too large Content-Length {need}")
                    if len(buf) >= need:  # the usual case: the whole answer in one read
                        body = bytes(buf[:need])
                        del buf[:need]
                        self._complete(body)
                        return
                    self.need = need
                    self.state = _LENGTH
                    return
                else:
                    self.body = bytearray()
                    self.keep = False
                    self.state = _UNTIL_CLOSE
            elif state == _LENGTH:
                need = self.need
                if len(buf) < need:
                    return
                body = bytes(buf[:need])
                del buf[:need]
                self._complete(body)
                return
            elif state == _CHUNK_SIZE:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if len(buf) > 1024:
                        raise ProtocolError("chunk size line too long")
                    return
                size = int(bytes(buf[:eol]).split(b";")[0].strip(), 16)
                del buf[:eol + 2]
                if size < 0 or len(self.body) + size > self.body_limit:
                    raise ProtocolError("chunked body too large")
                if size == 0:
                    self.state = _TRAILERS
                else:
                    self.need = size
                    self.state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                need = self.need
                if len(buf) < need + 2:
                    return
                if buf[need:need + 2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                self.body += buf[:need]
                del buf[:need + 2]
                self.state = _CHUNK_SIZE
            elif state == _TRAILERS:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ProtocolError("trailers too large")
                    return
                del buf[:eol + 2]
                if eol == 0:
                    self._complete(bytes(self.body))
                    return
            else:  # _UNTIL_CLOSE: the body ends when the server closes
                if len(self.body) + len(buf) > self.body_limit:
                    raise ProtocolError("body too large")
                self.body += buf
                buf.clear()
                return

    def _complete(self, body: bytes) -> None:
        ex = self.ex
        self.ex = None
        self.body = None
        self.state = _HEAD
        pool = self.pool
        pool.client.busy.discard(self)
        limiter = pool.limiter
        if limiter is not None:
            if not self.answered:
                limiter.proven(pool.open - pool.connecting)
            limiter.on_answer(pool.in_flight)
        self.answered += 1
        pool.in_flight -= 1
        answer = Response(self.status, self.headers, body)
        if self.keep and not self.buf and self.transport is not None:
            pool.release(self)  # before the callback, so a chained request can reuse it
        else:
            self._drop()
        ex.callback(ex.tag, answer)

    def _fail(self, exc: HttpClientError) -> None:
        ex = self.ex
        self.ex = None
        if ex is not None:
            self.pool.in_flight -= 1
        self.pool.client.busy.discard(self)
        self._drop()
        if ex is not None:
            ex.callback(ex.tag, exc)

    def timed_out(self) -> None:
        ex = self.ex
        if ex is not None and ex.answer_by <= self.deadline:
            self._fail(DeadlineTimeout("written; no answer before its deadline"))
        else:
            if self.pool.limiter is not None:
                self.pool.limiter.timeout()
            self._fail(RequestTimeout(f"no answer within {self.pool.client.timeout_s} s"))

    def _drop(self) -> None:
        """Close for good; the pool stops counting it at once (not at connection_lost)."""
        if self.transport is not None:
            self.transport.close()
        self.pool.forget(self)


# ---------------------------------------------------------------- one origin's pool

class _Pool:
    """Keep-alive connections to one origin: at most ``max_connections`` (with an adaptive
    limit, at most its ``limit``, which also bounds the requests in flight), the most recently
    used reused first; requests beyond that wait here in order.

    With a limit, a connection that cannot be made, or a new one turned away before it
    answered, while others work, lowers the limit to those (``herald.concurrency``); a request
    whose connection could not be made was never written and waits for a working one."""

    def __init__(self, client: "HttpClient", scheme: str, host: str, port: int):
        self.client = client
        self.host = host
        self.port = port
        self.ssl = client._ssl_for(scheme)
        self.idle: list[_Connection] = []
        self.open = 0  # connections alive or being made
        self.connecting = 0  # of those, being made
        self.in_flight = 0  # requests written and not answered
        self.waiting: deque[_Exchange] = deque()
        self.limiter: AdaptiveLimit | None = (client.adaptive_limit() if client.adaptive_limit
                                              else None)

    def submit(self, ex: _Exchange) -> None:
        idle = self.idle
        client = self.client
        now = client.loop.time()
        if ex.expires <= now:
            ex.callback(ex.tag, deadline_passed(BEFORE_WRITE))
            return
        limiter = self.limiter
        if limiter is None:
            cap = client.max_connections
        elif self.in_flight < limiter.limit:
            cap = limiter.limit
        else:
            cap = 0  # as many requests in flight as the limit allows: wait
        if cap:
            while idle:
                conn = idle.pop()
                if conn.transport is None or conn.transport.is_closing():
                    self.forget(conn)
                    continue
                if now - conn.idle_since > client.idle_timeout_s:
                    conn._drop()
                    continue
                client.reused += 1
                conn.send(ex, now)
                return
        if self.open < cap:
            self.open += 1
            client.loop.create_task(self._connect(ex))
        else:
            self.waiting.append(ex)
            if ex.expires != NO_DEADLINE:
                client.wake_by(ex.expires)  # answered at its deadline if still waiting

    def release(self, conn: _Connection) -> None:
        """``conn`` is free: the first waiting request still before its deadline goes on it
        (those past theirs are answered ``DeadlinePassed``), or it waits idle."""
        now = self.client.loop.time()
        waiting = self.waiting
        limiter = self.limiter
        expired = None
        while waiting and (limiter is None or self.in_flight < limiter.limit):
            ex = waiting.popleft()
            if ex.expires > now:
                self.client.reused += 1
                conn.send(ex, now)
                break
            if expired is None:
                expired = []
            expired.append(ex)
        else:
            conn.idle_since = now
            self.idle.append(conn)
        if limiter is not None and waiting:
            self._connect_next()  # the limit may have grown
        if expired:  # after conn has its place: the callbacks may submit more
            for ex in expired:
                ex.callback(ex.tag, deadline_passed(IN_QUEUE))

    def lost(self, conn: _Connection, reason: str) -> HttpClientError:
        """The error for the exchange ``conn`` lost with its connection. A new connection lost
        before any byte of an answer tells the limit it was refused; while others work it was
        turned away, not a sign of an outage, and so was a kept-alive one the provider closed
        as the request went out."""
        limiter = self.limiter
        if limiter is not None and conn.state == _HEAD and not conn.buf:
            working = self.open - self.connecting - 1  # conn is still counted in open
            if not conn.answered:
                limiter.refused(working)
                if working > 0:
                    return ConnectionTurnedAway(
                        f"a new connection was closed before any answer{reason} while "
                        f"{working} others work (turned away; the limit is now {limiter.limit})")
            elif working > 0:
                # A kept-alive connection the provider closed as the request went out (an idle
                # close, a gateway shedding connections): no byte of an answer, others answer.
                return ConnectionTurnedAway(
                    f"a kept-alive connection was closed before any answer{reason} while "
                    f"{working} others work (turned away)")
        return ConnectionClosed(f"connection closed before a whole answer{reason}")

    def _requeue(self, ex: _Exchange, now: float) -> None:
        """``ex`` was never written: it goes on an idle connection, or first in line."""
        idle, client, limiter = self.idle, self.client, self.limiter
        while idle and (limiter is None or self.in_flight < limiter.limit):
            conn = idle.pop()
            if conn.transport is None or conn.transport.is_closing():
                self.forget(conn)
                continue
            if now - conn.idle_since > client.idle_timeout_s:
                conn._drop()
                continue
            client.reused += 1
            conn.send(ex, now)
            return
        self.waiting.appendleft(ex)
        if ex.expires != NO_DEADLINE:
            client.wake_by(ex.expires)

    def expire_waiting(self, now: float) -> float:
        """Answer the waiting requests past their deadline; the earliest deadline left."""
        earliest = NO_DEADLINE
        expired = [ex for ex in self.waiting if ex.expires <= now]
        if expired:
            self.waiting = deque(ex for ex in self.waiting if ex.expires > now)
        for ex in self.waiting:
            if ex.expires < earliest:
                earliest = ex.expires
        for ex in expired:
            ex.callback(ex.tag, deadline_passed(IN_QUEUE))
        return earliest

    def forget(self, conn: _Connection) -> None:
        if conn.dead:
            return
        conn.dead = True
        self.open -= 1
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self._connect_next()

    def _connect_next(self) -> None:
        limiter = self.limiter
        cap = self.client.max_connections if limiter is None else limiter.limit
        if self.waiting and self.open < cap:
            self.open += 1
            self.client.loop.create_task(self._connect(self.waiting.popleft()))

    async def _connect(self, ex: _Exchange) -> None:
        client = self.client
        loop = client.loop
        timeout = client.connect_timeout_s
        cut = ex.expires - loop.time() < timeout  # the deadline ends the wait first
        if cut:
            timeout = ex.expires - loop.time()
            if timeout <= 0:  # it expired waiting for its turn to connect
                self.open -= 1
                ex.callback(ex.tag, deadline_passed(IN_QUEUE))
                self._connect_next()
                return
        self.connecting += 1
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None),
                timeout)
        except (OSError, asyncio.TimeoutError, ssl_module.SSLError) as exc:
            self.open -= 1
            self.connecting -= 1
            if cut and isinstance(exc, asyncio.TimeoutError):
                ex.callback(ex.tag, deadline_passed(CONNECTING))
            else:
                limiter = self.limiter
                working = self.open - self.connecting
                if limiter is not None:
                    limiter.refused(working)
                    if working > 0 and not client.closed:  # never written: it waits for one
                        self._requeue(ex, loop.time())
                        return
                what = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc)
                ex.callback(ex.tag, ConnectError(
                    f"cannot connect to {self.host}:{self.port}: {what}"))
            self._connect_next()
            return
        self.connecting -= 1
        client.connections_opened += 1
        if client.closed:
            conn._fail(ConnectionClosed("client closed"))
            return
        now = loop.time()
        if ex.expires <= now:  # opened just too late: the connection serves the others
            self.release(conn)
            ex.callback(ex.tag, deadline_passed(CONNECTING))
            return
        conn.send(ex, now)

    def close(self) -> None:
        for conn in list(self.idle):
            conn._drop()
        while self.waiting:
            ex = self.waiting.popleft()
            ex.callback(ex.tag, ConnectionClosed("client closed"))


# ---------------------------------------------------------------- the client

class HttpClient:
    """Keep-alive HTTP/1.1 to any number of origins, for ``ProviderRequest`` objects.

    ``max_connections`` bounds each origin's pool; ``timeout_s`` is the longest wait for a
    whole answer once a request is written (a request waiting for a free connection is not
    timed, except by its deadline); ``connect_timeout_s`` bounds making a connection; a
    connection idle longer than ``idle_timeout_s`` is closed instead of reused (providers drop
    idle ones, and a write on a half-closed connection fails). ``ssl_context`` is used for
    ``https`` origins (default: ``ssl.create_default_context()``, which verifies the
    certificate and host name). ``adaptive_limit`` makes each origin's limit
    (``herald.concurrency.AdaptiveLimit``) on connections and requests in flight, within
    ``max_connections``; without it the pool opens up to ``max_connections`` at once.

    A failed request is reported, never retried here: whether a POST to a provider may be
    sent again is the retry policy's decision, not the transport's.
    One client belongs to one event loop (the first it is used on)."""

    def __init__(self, *, max_connections: int = 256, timeout_s: float = 10.0,
                 connect_timeout_s: float = 5.0, idle_timeout_s: float = 30.0,
                 ssl_context: ssl_module.SSLContext | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 adaptive_limit: Callable[[], AdaptiveLimit] | None = None):
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_body_bytes = max_body_bytes
        self.adaptive_limit = adaptive_limit
        self._ssl_context = ssl_context
        self.loop: asyncio.AbstractEventLoop | None = None
        self.busy: set[_Connection] = set()
        self.closed = False
        self.connections_opened = 0
        self.reused = 0
        self.requests = 0
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._targets: dict[tuple[str, str], tuple[_Pool, bytes, bool]] = {}
        self._header_bytes: dict[tuple, bytes] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_at = NO_DEADLINE  # when the sweeper runs next (loop time)
        # The loop's clock less the wall clock (s), for deadlines: read again per batch and
        # per sweep, so a request costs no clock reads for its deadline.
        self._loop_minus_wall = 0.0
        self._tick = max(0.005, min(0.1, timeout_s / 4))

    # -- public API

    async def request(self, req: ProviderRequest) -> Response:
        """Send one request; raises an ``HttpClientError`` when there is no answer."""
        future = self._bind().create_future()

        def settle(_tag: Any, result: Any) -> None:
            if not future.done():
                (future.set_exception if isinstance(result, BaseException)
                 else future.set_result)(result)
        self.submit(req, settle, None)
        return await future

    async def send_batch(self, requests: Sequence[ProviderRequest], max_in_flight: int = 256,
                         keys: Sequence[Hashable | None] | None = None,
                         stop_chain: Callable[[Any], bool] | None = None) -> list[Any]:
        """Send every request, at most ``max_in_flight`` at once; answers in input order, each a
        ``Response`` or an ``HttpClientError`` (a batch never raises for one bad call).

        Requests whose ``keys`` entry is equal (and not None) form a chain: each is written only
        after the previous one's answer arrived, so the provider sees them in list order. If
        ``stop_chain(result)`` is true for a result, the rest of that chain is not sent and
        gets ``ChainHalted`` (e.g. stop a user's later messages behind a retryable failure)."""
        return await self.start_batch(requests, max_in_flight, keys, stop_chain)

    def start_batch(self, requests: Sequence[ProviderRequest], max_in_flight: int = 256,
                    keys: Sequence[Hashable | None] | None = None,
                    stop_chain: Callable[[Any], bool] | None = None,
                    loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future:
        """``send_batch`` without the wait, callable while the loop is not running: requests
        that find a free keep-alive connection are written before this returns, so the
        provider works on them while the caller does something else; the rest go when the
        loop runs. The future resolves to ``send_batch``'s answers. ``loop``: the client's
        loop, when called outside it."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if keys is not None and len(keys) != len(requests):
            raise ValueError("keys must be as long as requests")
        loop = self._bind(loop)
        batch = _Batch(self, requests, max_in_flight, keys, stop_chain, loop.create_future())
        if batch.remaining:
            batch.pump()
        else:
            batch.done.set_result(batch.results)
        return batch.done

    def submit(self, req: ProviderRequest, callback: Callable[[Any, Any], None],
               tag: Any = None) -> None:
        """The callback form under both of the above: ``callback(tag, Response | error)`` is
        called exactly once, possibly before this returns (for a request that cannot be sent).
        Must be called on the client's loop."""
        if self.loop is None:
            self._bind()
        self.requests += 1
        try:
            target = self._targets.get((req.method, req.url))
            if target is None:
                target = self._target(req)
            pool, head, no_body = target
            headers = req.headers
            hkey = tuple(headers.items())
            hbytes = self._header_bytes.get(hkey)
            if hbytes is None:
                hbytes = self._encode_headers(hkey)
            body = req.body or b""
        except (UnsupportedRequest, ValueError, UnicodeError, AttributeError) as exc:
            callback(tag, exc if isinstance(exc, HttpClientError)
                     else UnsupportedRequest(f"cannot send {req.method} {req.url}: {exc}"))
            return
        if self.closed:
            callback(tag, ConnectionClosed("client closed"))
            return
        data = b"%s%sContent-Length: %d\r\n\r\n%s" % (head, hbytes, len(body), body)
        deadline = req.deadline
        expires = NO_DEADLINE if deadline is None else deadline * 0.001 + self._loop_minus_wall
        answer_by = (None if req.answer_by is None
                     else req.answer_by * 0.001 + self._loop_minus_wall)
        pool.submit(_Exchange(data, callback, tag, no_body, pool, expires, answer_by))
        if self._sweeper is None:
            self._sweep_at = self.loop.time() + self._tick
            self._sweeper = self.loop.call_at(self._sweep_at, self._sweep)

    async def close(self) -> None:
        """Close every connection; requests still waiting for one get ``ConnectionClosed``."""
        self.closed = True
        for conn in list(self.busy):
            conn._fail(ConnectionClosed("client closed"))
        for pool in self._pools.values():
            pool.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
            self._sweep_at = NO_DEADLINE
        await asyncio.sleep(0)  # let the transports finish closing

    def stats(self) -> dict:
        """Counters: requests submitted, connections opened, requests sent on a reused one;
        each adaptive limit by origin."""
        return {"requests": self.requests, "connections_opened": self.connections_opened,
                "reused": self.reused,
                "open": sum(p.open for p in self._pools.values()),
                "idle": sum(len(p.idle) for p in self._pools.values()),
                "limits": {f"{p.host}:{p.port}": p.limiter.limit
                           for p in self._pools.values() if p.limiter is not None}}

    # -- internals

    def _bind(self, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.AbstractEventLoop:
        loop = loop or asyncio.get_running_loop()
        if self.loop is None:
            self.loop = loop
        elif self.loop is not loop:
            raise RuntimeError("an HttpClient is used on one event loop only")
        self._loop_minus_wall = loop.time() - time.time()
        return loop

    def _ssl_for(self, scheme: str) -> ssl_module.SSLContext | None:
        if scheme != "https":
            return None
        if self._ssl_context is None:
            self._ssl_context = ssl_module.create_default_context()
        return self._ssl_context

    def _target(self, req: ProviderRequest) -> tuple[_Pool, bytes, bool]:
        if req.http2:
            raise UnsupportedRequest(f"{req.url} needs HTTP/2; this client speaks HTTP/1.1")
        parts = urlsplit(req.url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise UnsupportedRequest(f"not an http(s) URL: {req.url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        origin = (scheme, parts.hostname, port)
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(self, scheme, parts.hostname, port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = port == (443 if scheme == "https" else 80)
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        host_header = host if default_port else f"{host}:{port}"
        head = f"{req.method} {path} HTTP/1.1\r\nHost: {host_header}\r\n".encode("ascii")
        target = (pool, head, req.method == "HEAD")
        if len(self._targets) >= _HEADERS_CACHE_SIZE:
            self._targets.clear()
        self._targets[(req.method, req.url)] = target
        return target

    def _encode_headers(self, items: tuple) -> bytes:
        lines = []
        for name, value in items:
            lower = name.lower()
            if lower in ("host", "content-length", "transfer-encoding", "connection"):
                continue  # the client writes these itself
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}\r\n")
        encoded = "".join(lines).encode("latin-1")
        if len(self._header_bytes) >= _HEADERS_CACHE_SIZE:
            self._header_bytes.clear()
        self._header_bytes[items] = encoded
        return encoded

    def wake_by(self, at: float) -> None:
        """Have the sweeper run by loop time ``at`` (a deadline earlier than its next tick)."""
        if at < self._sweep_at and not self.closed:
            if self._sweeper is not None:
                self._sweeper.cancel()
            self._sweep_at = at
            self._sweeper = self.loop.call_at(at, self._sweep)

    def _sweep(self) -> None:
        """Fail the exchanges past their timeout or deadline, written or waiting; runs every
        tick while any is in flight or waiting, and at the earliest deadline before that."""
        self._sweeper = None
        self._sweep_at = NO_DEADLINE
        now = self.loop.time()
        self._loop_minus_wall = now - time.time()
        wake = now + self._tick
        if self.busy:
            for conn in [c for c in self.busy if c.deadline <= now]:
                conn.timed_out()
            for conn in self.busy:
                if conn.deadline < wake:
                    wake = conn.deadline
        waiting = False
        for pool in self._pools.values():
            if pool.waiting:
                wake = min(wake, pool.expire_waiting(now))
                waiting = waiting or bool(pool.waiting)
        if self.busy or waiting:
            self.wake_by(wake)  # callbacks above may have asked for an earlier run already


class _Batch:
    """``send_batch``'s bookkeeping: the ready queue, per-key chains, results, one future."""

    __slots__ = ("client", "requests", "max_in_flight", "stop_chain", "done", "results",
                 "next_of", "ready", "remaining", "in_flight", "pumping")

    def __init__(self, client: HttpClient, requests: Sequence[ProviderRequest],
                 max_in_flight: int, keys: Sequence[Hashable | None] | None,
                 stop_chain: Callable[[Any], bool] | None, done: asyncio.Future):
        self.client = client
        self.requests = requests
        self.max_in_flight = max_in_flight
        self.stop_chain = stop_chain
        self.done = done
        n = len(requests)
        self.results: list[Any] = [None] * n
        self.remaining = n
        self.in_flight = 0
        self.pumping = False
        if keys is None:
            self.next_of = None
            self.ready = deque(range(n))
        else:  # each key's requests form a linked list; only the head of each is ready
            next_of = [-1] * n
            last: dict[Hashable, int] = {}
            ready = deque()
            for i, key in enumerate(keys):
                if key is None:
                    ready.append(i)
                    continue
                j = last.get(key)
                if j is None:
                    ready.append(i)
                else:
                    next_of[j] = i
                last[key] = i
            self.next_of = next_of
            self.ready = ready

    def pump(self) -> None:
        if self.pumping:  # a callback fired inside submit(): the outer loop goes on
            return
        self.pumping = True
        try:
            ready, requests, submit, finish = self.ready, self.requests, self.client.submit, \
                self.finish
            while self.in_flight < self.max_in_flight and ready:
                i = ready.popleft()
                self.in_flight += 1
                submit(requests[i], finish, i)
        finally:
            self.pumping = False

    def finish(self, i: int, result: Any) -> None:
        self.results[i] = result
        self.remaining -= 1
        self.in_flight -= 1
        if self.done.done():  # the caller's stop_chain raised: send nothing more
            return
        next_of = self.next_of
        if next_of is not None and next_of[i] >= 0 and not self._follow(i, result):
            return
        if self.remaining == 0:
            if not self.done.done():
                self.done.set_result(self.results)
            return
        self.pump()

    def _follow(self, i: int, result: Any) -> bool:
        """Go on with ``i``'s chain after its ``result``: halt it (``stop_chain``), answer the
        next ones whose deadline passed while they waited behind it, or make the next one
        ready. False if the caller's ``stop_chain`` raised."""
        next_of, requests, results = self.next_of, self.requests, self.results
        j = next_of[i]
        now_ms = None
        while j >= 0:
            try:
                stop = self.stop_chain is not None and self.stop_chain(result)
            except Exception as exc:  # noqa: BLE001 - the caller's predicate: its error
                if not self.done.done():
                    self.done.set_exception(exc)
                return False
            if stop:
                while j >= 0:
                    results[j] = ChainHalted(f"not sent: request {i} of the same key "
                                             "stopped the chain")
                    self.remaining -= 1
                    j = next_of[j]
                return True
            deadline = requests[j].deadline
            if deadline is not None:
                if now_ms is None:
                    now_ms = time.time() * 1000.0
                if deadline <= now_ms:
                    result = results[j] = deadline_passed(BEHIND_CHAIN)
                    self.remaining -= 1
                    i, j = j, next_of[j]
                    continue
            self.ready.appendleft(j)  # chains are the batch's critical path: first
            return True
        return True


class BlockingBatchClient:
    """An ``HttpClient`` on an event loop this object owns, for callers that are not async:
    each ``send_batch`` runs the loop until the whole batch is answered. uvloop is used when
    installed and ``use_uvloop`` is not False."""

    def __init__(self, *, use_uvloop: bool | None = None, **client_options: Any):
        self.loop = new_event_loop(use_uvloop)
        self.client = HttpClient(**client_options)

    @property
    def loop_name(self) -> str:
        return type(self.loop).__module__.split(".")[0]

    def send_batch(self, requests: Sequence[ProviderRequest], max_in_flight: int = 256,
                   keys: Sequence[Hashable | None] | None = None,
                   stop_chain: Callable[[Any], bool] | None = None) -> list[Any]:
        return self.loop.run_until_complete(
            self.client.send_batch(requests, max_in_flight, keys, stop_chain))

    def request(self, req: ProviderRequest) -> Response:
        return self.loop.run_until_complete(self.client.request(req))

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.client.close())
            self.loop.close()


def new_event_loop(use_uvloop: bool | None = None) -> asyncio.AbstractEventLoop:
    """uvloop's loop when asked for (True: required; None: if installed), else asyncio's."""
    if use_uvloop is not False:
        try:
            import uvloop
        except ImportError:
            if use_uvloop:
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
