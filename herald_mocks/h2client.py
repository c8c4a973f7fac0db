"""A tiny asyncio HTTP/2 client (h2c prior knowledge, or TLS with ALPN h2 if given an SSL
context): one connection, many concurrent streams.

It is here for the APNs mock's tests and benchmark, and as the measured baseline for the
delivery engine's APNs client (bench/mock_throughput.py compares it with httpx[http2]).
"""
from __future__ import annotations

import asyncio
import ssl as _ssl

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class H2Error(Exception):
    """The stream was reset or the connection went away before the answer was complete."""


class _Stream:
    __slots__ = ("future", "status", "headers", "body")

    def __init__(self, future: asyncio.Future):
        self.future = future
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()


class H2Client(asyncio.Protocol):
    def __init__(self, authority: str, scheme: str = "http"):
        self.authority = authority
        self.scheme = scheme
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.streams: dict[int, _Stream] = {}
        self.pending: dict[int, bytes] = {}
        self.transport: asyncio.Transport | None = None
        self.slot = asyncio.Event()
        self.closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(cls, host: str, port: int, ssl: _ssl.SSLContext | None = None,
                      timeout: float = 10.0) -> "H2Client":
        loop = asyncio.get_running_loop()
        _, client = await asyncio.wait_for(
            loop.create_connection(lambda: cls(f"{host}:{port}", "https" if ssl else "http"),
                                   host, port, ssl=ssl), timeout)
        return client

    # -------------------------------------------------------------- protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail_all(H2Error(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail_all(H2Error(f"protocol error: {exc}"))
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
                    stream.future.set_result((stream.status, stream.headers, bytes(stream.body)))
                self.slot.set()
            elif isinstance(event, h2.events.StreamReset):
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None and not stream.future.done():
                    stream.future.set_exception(H2Error(f"stream reset: {event.error_code!r}"))
                self.slot.set()
            elif isinstance(event, h2.events.WindowUpdated):
                for sid in ([event.stream_id] if event.stream_id else list(self.pending)):
                    if sid in self.pending:
                        self._send_body(sid, self.pending.pop(sid))
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._fail_all(H2Error(f"GOAWAY: {event.error_code!r}"))
        if self.transport is not None:
            self.transport.write(self.conn.data_to_send())

    def _fail_all(self, exc: Exception) -> None:
        for stream in self.streams.values():
            if not stream.future.done():
                stream.future.set_exception(exc)
        self.streams.clear()
        self.slot.set()

    def _send_body(self, stream_id: int, data: bytes) -> None:
        while data:
            window = min(self.conn.local_flow_control_window(stream_id),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pending[stream_id] = data
                return
            chunk, data = data[:window], data[window:]
            self.conn.send_data(stream_id, chunk, end_stream=not data)

    # -------------------------------------------------------------- API

    async def request(self, method: str, path: str, headers: list[tuple[str, str]] | dict = (),
                      body: bytes = b"", timeout: float = 30.0
                      ) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-case headers, body) of one request, on its own stream."""
        while len(self.streams) >= self.conn.remote_settings.max_concurrent_streams:
            self.slot.clear()
            await self.slot.wait()
        if self.transport is None:
            raise H2Error("connection is closed")
        items = headers.items() if isinstance(headers, dict) else headers
        sid = self.conn.get_next_available_stream_id()
        stream = self.streams[sid] = _Stream(asyncio.get_running_loop().create_future())
        self.conn.send_headers(
            sid, [(":method", method), (":path", path), (":scheme", self.scheme),
                  (":authority", self.authority)] + [(k.lower(), v) for k, v in items],
            end_stream=not body)
        if body:
            self._send_body(sid, body)
        self.transport.write(self.conn.data_to_send())
        return await asyncio.wait_for(stream.future, timeout)

    async def close(self) -> None:
        if self.transport is not None:
            self.conn.close_connection()
            self.transport.write(self.conn.data_to_send())
            self.transport.close()
        await self.closed
