"""Listening sockets for the mocks, and the refuse-mode outage (listener closed, then reopened)."""
from __future__ import annotations

import asyncio

from herald_mocks.core import MockConfig, MockState, now_epoch_ms
from herald_mocks.http1 import Http1Protocol, client_of, reset

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class SniffProtocol(asyncio.Protocol):
    """Picks HTTP/2 (prior-knowledge h2c) or HTTP/1.1 from a connection's first bytes, so the
    APNs mock serves HTTP/2 and the admin API with plain HTTP/1.1 tools on one port."""

    def __init__(self, state: MockState, connections: set):
        self.state = state
        self.connections = connections
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = min(len(self.buf), len(H2_PREFACE))
        if self.buf[:n] == H2_PREFACE[:n]:
            if n < len(H2_PREFACE):
                return
            from herald_mocks.h2server import H2Protocol
            client = client_of(self.transport)
            if not self.state.admit_connection(client):  # h2: counted from its preface
                self.connections.discard(self)
                reset(self.transport)
                return
            inner: asyncio.Protocol = H2Protocol(self.state, self.connections, self.buf)
            inner.client = client
        else:
            inner = Http1Protocol(self.state, self.connections, self.buf)
        self.connections.discard(self)
        self.inner = inner
        self.transport.set_protocol(inner)
        inner.connection_made(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)


class MockServer:
    """One mock on one port. ``start`` returns once the socket accepts connections."""

    def __init__(self, state: MockState, host: str = "127.0.0.1", port: int = 0):
        self.state = state
        self.host = host
        self.port = port
        self.connections: set = set()
        self._server: asyncio.base_events.Server | None = None
        self._timers: list[asyncio.TimerHandle] = []
        state.on_config_change.append(self._schedule_outage)
        state.on_config_change.append(self._enforce_cap)

    def _protocol(self) -> asyncio.Protocol:
        if self.state.provider.http2:
            return SniffProtocol(self.state, self.connections)
        return Http1Protocol(self.state, self.connections)

    async def start(self) -> None:
        await self._listen()
        self._schedule_outage(self.state.config)

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port,
                                                reuse_address=True, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def listening(self) -> bool:
        return self._server is not None

    def _schedule_outage(self, config: MockConfig) -> None:
        """A refuse-mode outage closes the listener and every open connection at its start and
        listens again at its end; 503-mode outages need no timers (each request checks)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if config.outage is None or config.outage[0] != "refuse":
            if self._server is None:  # an outage was cancelled while down
                asyncio.get_running_loop().create_task(self._up())
            return
        _, start, end = config.outage
        loop = asyncio.get_running_loop()
        now = now_epoch_ms()
        if end <= now:
            return
        # call_soon at least, so the admin reply that set the outage is written first
        self._timers.append(loop.call_later(max(0, start - now) / 1000, self._down))
        self._timers.append(loop.call_later((end - now) / 1000,
                                            lambda: loop.create_task(self._up())))

    def _enforce_cap(self, config: MockConfig) -> None:
        """A cap switched on closes each client's idle connections beyond it, as a gateway
        restarted with the cap would; a connection with a request under way keeps it."""
        cap = config.max_client_connections
        if cap is None:
            return
        held: dict[str, int] = {}
        for conn in list(self.connections):
            client = getattr(conn, "client", None)
            if client is None:
                continue
            held[client] = held.get(client, 0) + 1
            if held[client] > cap and not getattr(conn, "busy", True) and not conn.buf:
                held[client] -= 1
                conn.close()

    def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self.connections):
            conn.close()

    async def _up(self) -> None:
        if self._server is None:
            await self._listen()

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._down()
        session = self.state._session
        if session is not None and not session.closed:
            await session.close()
        self.state.close()
