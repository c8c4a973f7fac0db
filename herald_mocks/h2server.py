"""HTTP/2 cleartext (prior knowledge) server side, on the ``h2`` state machine.

APNs speaks only HTTP/2, so its mock must too: a client that cannot multiplex streams on one
connection would pass against an HTTP/1.1 mock and fail against Apple.
"""
from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from herald_mocks.core import MockState, Reply, Request

MAX_CONCURRENT_STREAMS = 1000  # what APNs advertises


class H2Protocol(asyncio.Protocol):
    """One HTTP/2 connection; every stream is answered independently (latency included)."""

    def __init__(self, state: MockState, connections: set, initial: bytes = b""):
        self.state = state
        self.connections = connections
        self.initial = initial
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.streams: dict[int, tuple[list, bytearray]] = {}
        self.pending: dict[int, bytes] = {}  # response bodies waiting for flow-control window
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.client: str | None = None  # counted towards max_client_connections (server.py)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS:
                                   MAX_CONCURRENT_STREAMS})
        self.transport.write(self.conn.data_to_send())
        if self.initial:
            data, self.initial = self.initial, b""
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.transport = None
        if self.client is not None:
            self.state.release_connection(self.client)
            self.client = None

    def close(self) -> None:
        if self.transport is not None:
            self.conn.close_connection()
            self.transport.write(self.conn.data_to_send())
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.transport.write(self.conn.data_to_send())
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.streams[event.stream_id] = (event.headers, bytearray())
            elif isinstance(event, h2.events.DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream[1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id in self.streams:
                    self._dispatch(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.streams.pop(event.stream_id, None)
                self.pending.pop(event.stream_id, None)
            elif isinstance(event, h2.events.WindowUpdated):
                for sid in ([event.stream_id] if event.stream_id else list(self.pending)):
                    if sid in self.pending:
                        self._send_body(sid, self.pending.pop(sid))
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.transport.write(self.conn.data_to_send())
                self.transport.close()
                return
        if self.transport is not None:
            self.transport.write(self.conn.data_to_send())

    def _dispatch(self, stream_id: int) -> None:
        raw_headers, body = self.streams.pop(stream_id)
        headers: dict[str, str] = {}
        for name, value in raw_headers:
            headers[name.lower()] = value
        target = headers.get(":path", "/")
        path, _, query = target.partition("?")
        req = Request(headers.get(":method", "GET"), path, query, headers, bytes(body), http2=True)
        reply, delay = self.state.handle(req)
        if delay > 0:
            self.loop.call_later(delay, self._respond, stream_id, reply)
        else:
            self._respond(stream_id, reply, flush=False)

    def _respond(self, stream_id: int, reply: Reply, flush: bool = True) -> None:
        if self.transport is None:
            return
        headers = [(":status", str(reply.status))]
        if reply.content_type:
            headers.append(("content-type", reply.content_type))
        headers.append(("content-length", str(len(reply.body))))
        headers.extend((name.lower(), value) for name, value in reply.headers)
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not reply.body)
            if reply.body:
                self._send_body(stream_id, reply.body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return  # the client reset the stream meanwhile
        if flush:
            self.transport.write(self.conn.data_to_send())

    def _send_body(self, stream_id: int, data: bytes) -> None:
        while data:
            window = min(self.conn.local_flow_control_window(stream_id),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pending[stream_id] = data
                return
            chunk, data = data[:window], data[window:]
            self.conn.send_data(stream_id, chunk, end_stream=not data)
