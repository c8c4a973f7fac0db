"""A lean HTTP/1.1 server on ``asyncio.Protocol``: keep-alive, pipelining, chunked bodies.

Why not aiohttp's server: its per-request machinery (request/response objects, middleware,
streams) costs several times what the mock itself does, and the mocks must out-run Herald in
the benchmarks (see bench/mock_throughput.py for the measured numbers). Parsing here is just
enough for well-behaved clients; anything odd gets a 400 and a closed connection.
"""
from __future__ import annotations

import asyncio
import socket
import struct
from http import HTTPStatus

from herald_mocks.core import MockState, Reply, Request

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def serialize(reply: Reply, keep_alive: bool) -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\n" % (reply.status, _REASONS.get(reply.status, b"Unknown"))]
    if reply.content_type:
        parts.append(b"Content-Type: %s\r\n" % reply.content_type.encode())
    parts.append(b"Content-Length: %d\r\n" % len(reply.body))
    for name, value in reply.headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(reply.body)
    return b"".join(parts)


def client_of(transport: asyncio.BaseTransport) -> str:
    """The peer's address, the unit ``max_client_connections`` counts by."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def reset(transport: asyncio.BaseTransport) -> None:
    """Close with a TCP RST (SO_LINGER 0), the way a gateway turns a connection away."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``start``: (body, end offset), or None if incomplete."""
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0].strip() or b"0", 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)  # skip trailers, if any
            return (bytes(out), end + 4) if end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos:pos + size]
        pos += size + 2
        if len(out) > MAX_BODY_BYTES:
            raise ValueError("body too large")


class Http1Protocol(asyncio.Protocol):
    """One connection. Requests are answered strictly in order: while one waits out its added
    latency, later pipelined requests stay in the buffer.

    The connection counts towards its client's ``max_client_connections`` from its first
    request that is not an admin call (so the admin API stays reachable however many
    connections the client holds); over the cap it is reset there, the request unread."""

    def __init__(self, state: MockState, connections: set, initial: bytes = b""):
        self.state = state
        self.connections = connections
        self.buf = bytearray(initial)
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.continued = False
        self.loop = asyncio.get_running_loop()
        self.client: str | None = None  # set once counted towards max_client_connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        if self.buf:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.transport = None
        if self.client is not None:
            self.state.release_connection(self.client)
            self.client = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._process()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _bad(self, status: int, message: str) -> None:
        body = b'{"error": "%s"}' % message.encode()
        self.transport.write(serialize(Reply(status, body), keep_alive=False))
        self.transport.close()
        self.buf.clear()

    def _process(self) -> None:
        buf = self.buf
        while buf and not self.busy and self.transport is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    self._bad(431, "request head too large")
                return
            lines = buf[:end].decode("latin-1").split("\r\n")
            try:
                method, target, version = lines[0].split(" ")
            except ValueError:
                return self._bad(400, "malformed request line")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding", "").lower().endswith("chunked"):
                try:
                    done = _dechunk(buf, end + 4)
                except ValueError:
                    return self._bad(413, "body too large")
                if done is None:
                    self._maybe_continue(headers)
                    return
                body, total = done
            else:
                try:
                    length = int(headers.get("content-length", "0"))
                except ValueError:
                    return self._bad(400, "bad content-length")
                if length > MAX_BODY_BYTES:
                    return self._bad(413, "body too large")
                total = end + 4 + length
                if len(buf) < total:
                    self._maybe_continue(headers)
                    return
                body = bytes(buf[end + 4:total])
            del buf[:total]
            self.continued = False
            path, _, query = target.partition("?")
            if self.client is None and not path.startswith("/_mock/"):
                client = client_of(self.transport)
                if not self.state.admit_connection(client):
                    self.buf.clear()
                    reset(self.transport)
                    return
                self.client = client
            conn = headers.get("connection", "").lower()
            keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
            reply, delay = self.state.handle(Request(method, path, query, headers, body))
            if delay > 0:
                self.busy = True
                self.loop.call_later(delay, self._send_later, reply, keep_alive)
                return
            self.transport.write(serialize(reply, keep_alive))
            if not keep_alive:
                self.transport.close()
                return

    def _maybe_continue(self, headers: dict) -> None:
        if not self.continued and headers.get("expect", "").lower() == "100-continue":
            self.continued = True
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _send_later(self, reply: Reply, keep_alive: bool) -> None:
        self.busy = False
        if self.transport is None:
            return
        self.transport.write(serialize(reply, keep_alive))
        if not keep_alive:
            self.transport.close()
            return
        self._process()
