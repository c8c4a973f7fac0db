"""A small HTTP/2 client for the provider calls that need it (APNs): one connection per origin,
many concurrent streams, on ``h2``.

Chosen over httpx[http2] by measurement (bench/results/mock_throughput.md). On top of the
protocol: a timeout per request, a reconnect when the connection is lost or GOAWAY'd, TLS with
ALPN ``h2`` for the real APNs, and ``send_batch`` with the same contract as
``udfs.http_client.HttpClient.send_batch`` (answers in input order, per-key chains, ``stop_chain``, and a request's ``deadline``: never
written at or after it, whether it waited behind its chain, for a stream or for the
connection; its answer awaited until then at most).
"""
from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from typing import Any, Callable, Hashable, Sequence
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from herald.providers.base import ProviderRequest
from udfs.http_client import (BEFORE_WRITE, BEHIND_CHAIN, BODY_HELD, CONNECTING, IN_QUEUE,
                              NO_DEADLINE, ChainHalted, ConnectError, ConnectionClosed,
                              DeadlineTimeout, HttpClientError, ProtocolError, RequestTimeout,
                              Response, UnsupportedRequest, deadline_passed, loop_deadline)


class H2StreamError(HttpClientError):
    """The stream was reset, or the connection went away before the whole answer arrived."""


class _Stream:
    __slots__ = ("future", "status", "headers", "body")

    def __init__(self, future: asyncio.Future):
        self.future = future
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()


class _H2Connection(asyncio.Protocol):
    """One HTTP/2 connection; ``request`` opens a stream per call."""

    def __init__(self, authority: str, scheme: str):
        self.authority = authority
        self.scheme = scheme
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.streams: dict[int, _Stream] = {}
        self.pending: dict[int, tuple[bytes, float]] = {}  # stream → (body left, its deadline)
        self.transport: asyncio.Transport | None = None
        self.slot = asyncio.Event()
        self.usable = True  # False after GOAWAY or loss: new streams go to a new connection

    # -- protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.usable = False
        self._fail_all(H2StreamError(f"connection lost{': ' + str(exc) if exc else ''}"))

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.usable = False
            self._fail_all(ProtocolError(f"HTTP/2 protocol error: {exc}"))
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    for name, value in event.headers:
                        if name == ":status":
                            stream.status = int(value)
                        else:
                            stream.headers[name] = value
            elif isinstance(event, h2.events.DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.body.extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None and not stream.future.done():
                    stream.future.set_result(Response(stream.status, stream.headers,
                                                      bytes(stream.body)))
                self.slot.set()
            elif isinstance(event, h2.events.StreamReset):
                stream = self.streams.pop(event.stream_id, None)
                self.pending.pop(event.stream_id, None)
                if stream is not None and not stream.future.done():
                    stream.future.set_exception(
                        H2StreamError(f"stream reset: {event.error_code!r}"))
                self.slot.set()
            elif isinstance(event, h2.events.WindowUpdated):
                now = asyncio.get_running_loop().time()
                for sid in ([event.stream_id] if event.stream_id else list(self.pending)):
                    if sid in self.pending:
                        data, expires = self.pending.pop(sid)
                        if expires <= now:
                            self._abandon_body(sid)
                        else:
                            self._send_body(sid, data, expires)
            elif isinstance(event, h2.events.ConnectionTerminated):
                # GOAWAY: streams above last_stream_id were not processed (safe to resend);
                # the others still get their answers. No new streams on this connection.
                self.usable = False
                last = event.last_stream_id or 0
                for sid in [s for s in self.streams if s > last]:
                    stream = self.streams.pop(sid)
                    if not stream.future.done():
                        stream.future.set_exception(
                            ConnectError(f"GOAWAY {event.error_code!r}: stream not processed"))
                self.slot.set()
        if self.transport is not None:
            self.transport.write(self.conn.data_to_send())

    def _fail_all(self, exc: Exception) -> None:
        for stream in self.streams.values():
            if not stream.future.done():
                stream.future.set_exception(exc)
        self.streams.clear()
        self.pending.clear()
        self.slot.set()

    def _send_body(self, stream_id: int, data: bytes, expires: float) -> None:
        """Write as much of a body as the flow-control windows allow; the rest waits for a
        WINDOW_UPDATE (and is dropped if that comes at or after ``expires``)."""
        while data:
            window = min(self.conn.local_flow_control_window(stream_id),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pending[stream_id] = (data, expires)
                return
            chunk, data = data[:window], data[window:]
            self.conn.send_data(stream_id, chunk, end_stream=not data)

    def _abandon_body(self, stream_id: int) -> None:
        """A body held by flow control past its deadline: the stream is reset, never ended, so
        the provider does not have a whole request at or after the deadline."""
        stream = self.streams.pop(stream_id, None)
        try:
            self.conn.reset_stream(stream_id)
        except h2.exceptions.H2Error:
            pass
        if stream is not None and not stream.future.done():
            stream.future.set_exception(deadline_passed(BODY_HELD))

    # -- one request

    async def request(self, req: ProviderRequest, path: str, timeout_s: float,
                      expires: float = NO_DEADLINE, answer_by: float | None = None) -> Response:
        """One stream; ``expires``: the request's deadline on the loop's clock, ``answer_by``
        when its answer is awaited until at most (default: ``expires``)."""
        loop = asyncio.get_running_loop()
        if answer_by is None:
            answer_by = expires
        while self.usable and len(self.streams) >= self.conn.remote_settings.max_concurrent_streams:
            self.slot.clear()
            if expires == NO_DEADLINE:
                await self.slot.wait()
                continue
            try:
                await asyncio.wait_for(self.slot.wait(), expires - loop.time())
            except asyncio.TimeoutError:
                raise deadline_passed(IN_QUEUE) from None
        if self.transport is None or not self.usable:
            raise ConnectError("HTTP/2 connection is closed")  # nothing was written
        now = loop.time()
        if expires <= now:
            raise deadline_passed(BEFORE_WRITE)
        sid = self.conn.get_next_available_stream_id()
        stream = self.streams[sid] = _Stream(asyncio.get_running_loop().create_future())
        headers = [(":method", req.method), (":path", path), (":scheme", self.scheme),
                   (":authority", self.authority)]
        headers += [(k.lower(), v) for k, v in req.headers.items()
                    if k.lower() not in ("host", "connection", "content-length")]
        if req.body:
            headers.append(("content-length", str(len(req.body))))
        self.conn.send_headers(sid, headers, end_stream=not req.body)
        if req.body:
            self._send_body(sid, req.body, expires)
        self.transport.write(self.conn.data_to_send())
        wait, cut = timeout_s, answer_by - now < timeout_s  # awaited until answer_by at most
        if cut:
            wait = answer_by - now
        try:
            return await asyncio.wait_for(stream.future, wait)
        except asyncio.TimeoutError:
            self.streams.pop(sid, None)
            held = self.pending.pop(sid, None) is not None  # its body never wholly written
            try:
                self.conn.reset_stream(sid)
                if self.transport is not None:
                    self.transport.write(self.conn.data_to_send())
            except h2.exceptions.H2Error:
                pass
            if held and cut:
                raise deadline_passed(BODY_HELD) from None
            if cut:
                raise DeadlineTimeout("written; no answer before its deadline") from None
            raise RequestTimeout(f"no answer within {timeout_s} s") from None

    def close(self) -> None:
        self.usable = False
        if self.transport is not None:
            try:
                self.conn.close_connection()
                self.transport.write(self.conn.data_to_send())
            except h2.exceptions.H2Error:
                pass
            self.transport.close()


class H2Client:
    """HTTP/2 to any number of origins: one live connection per origin, made on first use and
    again after a loss. ``https`` origins use TLS with ALPN ``h2`` (the real APNs); ``http``
    ones use h2c with prior knowledge (the mock). Never retries: that is the policy's call."""

    def __init__(self, *, timeout_s: float = 10.0, connect_timeout_s: float = 5.0,
                 ssl_context: ssl_module.SSLContext | None = None):
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._ssl_context = ssl_context
        self._conns: dict[tuple[str, str, int], _H2Connection] = {}
        self._connecting: dict[tuple[str, str, int], asyncio.Future] = {}
        self.connections_opened = 0
        self.requests = 0

    def _ssl(self) -> ssl_module.SSLContext:
        if self._ssl_context is None:
            ctx = ssl_module.create_default_context()
            ctx.set_alpn_protocols(["h2"])
            self._ssl_context = ctx
        return self._ssl_context

    async def _connection(self, scheme: str, host: str, port: int) -> _H2Connection:
        origin = (scheme, host, port)
        conn = self._conns.get(origin)
        if conn is not None and conn.usable and conn.transport is not None:
            return conn
        waiting = self._connecting.get(origin)
        if waiting is not None:  # one connect per origin at a time; the others wait for it
            return await asyncio.shield(waiting)
        loop = asyncio.get_running_loop()
        future = self._connecting[origin] = loop.create_future()
        try:
            tls = self._ssl() if scheme == "https" else None
            authority = host if port == (443 if tls else 80) else f"{host}:{port}"
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _H2Connection(authority, scheme), host, port,
                                       ssl=tls, server_hostname=host if tls else None),
                self.connect_timeout_s)
            if tls is not None:
                ssl_object = conn.transport.get_extra_info("ssl_object")
                if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                    conn.close()
                    raise ConnectError(f"{host}:{port} did not agree to HTTP/2 (ALPN)")
        except (OSError, asyncio.TimeoutError, ssl_module.SSLError) as exc:
            what = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            error = ConnectError(f"cannot connect to {host}:{port}: {what}")
            future.set_exception(error)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise error from None
        except ConnectError as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            self._connecting.pop(origin, None)
        self.connections_opened += 1
        self._conns[origin] = conn
        future.set_result(conn)
        return conn

    async def request(self, req: ProviderRequest) -> Response:
        """One call; raises an ``HttpClientError`` when there is no answer."""
        self.requests += 1
        parts = urlsplit(req.url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise UnsupportedRequest(f"not an http(s) URL: {req.url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        expires = answer_by = NO_DEADLINE
        if req.deadline is not None:
            loop = asyncio.get_running_loop()
            expires = answer_by = loop_deadline(loop, req.deadline)
            if expires <= loop.time():
                raise deadline_passed(BEFORE_WRITE)
        if req.answer_by is not None:
            answer_by = loop_deadline(asyncio.get_running_loop(), req.answer_by)
        conn = self._conns.get((scheme, parts.hostname, port))
        if conn is None or not conn.usable or conn.transport is None:
            conn = await self._connection_by(scheme, parts.hostname, port, expires)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return await conn.request(req, path, self.timeout_s, expires, answer_by)

    async def _connection_by(self, scheme: str, host: str, port: int,
                             expires: float) -> _H2Connection:
        """``_connection``, waited for until ``expires`` at most; the connect itself goes on
        (shielded) for the requests after this one."""
        if expires == NO_DEADLINE:
            return await self._connection(scheme, host, port)
        loop = asyncio.get_running_loop()
        connecting = asyncio.ensure_future(self._connection(scheme, host, port))
        try:
            return await asyncio.wait_for(asyncio.shield(connecting), expires - loop.time())
        except asyncio.TimeoutError:
            # Its outcome is for the next request; retrieved here so a failure is not logged.
            connecting.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise deadline_passed(CONNECTING) from None

    async def send_batch(self, requests: Sequence[ProviderRequest], max_in_flight: int = 256,
                         keys: Sequence[Hashable | None] | None = None,
                         stop_chain: Callable[[Any], bool] | None = None) -> list[Any]:
        """Like ``HttpClient.send_batch``: every answer (or error) in input order; requests
        with an equal key go one after another; ``stop_chain`` halts the rest of a chain."""
        n = len(requests)
        results: list[Any] = [None] * n
        chains: dict[Any, list[int]] = {}
        for i in range(n):
            key = keys[i] if keys is not None else None
            chains.setdefault(("k", key) if key is not None else ("i", i), []).append(i)
        gate = asyncio.Semaphore(max(1, max_in_flight))

        async def one(i: int) -> Any:
            async with gate:
                try:
                    return await self.request(requests[i])
                except HttpClientError as exc:
                    return exc

        async def chain(indices: list[int]) -> None:
            for pos, i in enumerate(indices):
                deadline = requests[i].deadline
                if pos and deadline is not None and deadline <= time.time() * 1000.0:
                    results[i] = deadline_passed(BEHIND_CHAIN)  # expired behind the last one
                else:
                    results[i] = await one(i)
                if stop_chain is not None and stop_chain(results[i]):
                    for j in indices[pos + 1:]:
                        results[j] = ChainHalted(f"not sent: request {i} of the same key "
                                                 "stopped the chain")
                    return

        if chains:
            await asyncio.gather(*(chain(c) for c in chains.values()))
        return results

    async def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        await asyncio.sleep(0)


__all__ = ["H2Client", "H2StreamError", "ConnectionClosed"]
