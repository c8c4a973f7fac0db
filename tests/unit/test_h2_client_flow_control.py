"""udfs/h2_client.py against an HTTP/2 server that holds a request's body with flow control (a
stream window of 16 bytes, opened only when the test says): a body whose window opens at or
after the request's deadline is never completed (the stream is reset; the provider never has a
whole request after expiry), one whose window opens in time is completed and answered."""
from __future__ import annotations

import asyncio
import time

import h2.config
import h2.connection
import h2.events
import h2.settings

from herald.providers.base import ProviderRequest
from udfs.h2_client import H2Client
from udfs.http_client import BODY_HELD, DeadlinePassed

WINDOW = 16


class HoldingServer(asyncio.Protocol):
    """Answers 200 to each whole request; reads a body only as far as its window lets it."""

    def __init__(self, log: dict):
        self.log = log
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW})
        transport.write(self.conn.data_to_send())
        self.log["server"] = self

    def data_received(self, data):
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self.log["bytes"][event.stream_id] = (self.log["bytes"].get(event.stream_id, 0)
                                                      + len(event.data))
                self.log["held"].set()  # the window is spent: the rest is held
            elif isinstance(event, h2.events.StreamEnded):
                self.log["ended"].add(event.stream_id)
                self.conn.send_headers(event.stream_id, [(":status", "200")], end_stream=True)
            elif isinstance(event, h2.events.StreamReset):
                self.log["reset"].add(event.stream_id)
                self.log["was_reset"].set()
        self.transport.write(self.conn.data_to_send())

    def open_windows(self):
        for stream_id in list(self.log["bytes"]):
            if stream_id not in self.log["ended"] | self.log["reset"]:
                self.conn.increment_flow_control_window(65_535, stream_id=stream_id)
        self.conn.increment_flow_control_window(65_535)
        self.transport.write(self.conn.data_to_send())


def _request(port: int, body: bytes, deadline_s: float, answer_s: float) -> ProviderRequest:
    now = time.time()
    return ProviderRequest("POST", f"http://127.0.0.1:{port}/3/device/x", {}, body, http2=True,
                           deadline=int((now + deadline_s) * 1000),
                           answer_by=int((now + answer_s) * 1000))


async def _run(open_after_deadline: bool):
    log = {"bytes": {}, "ended": set(), "reset": set(), "held": asyncio.Event(),
           "was_reset": asyncio.Event()}
    server = await asyncio.get_running_loop().create_server(lambda: HoldingServer(log),
                                                            "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = H2Client(timeout_s=10)
    try:
        # a first, bodiless call: the server's settings (its 16-byte window) are in force after
        assert (await client.request(_request(port, b"", 5, 5))).status == 200
        body = b"x" * 200
        deadline_s = 0.3 if open_after_deadline else 30
        call = asyncio.ensure_future(client.request(_request(port, body, deadline_s, 5)))
        await asyncio.wait_for(log["held"].wait(), 5)
        if open_after_deadline:  # the window opens only once the deadline has passed
            await asyncio.sleep(deadline_s)
        log["server"].open_windows()
        try:
            answer = await asyncio.wait_for(call, 10)
        except DeadlinePassed as exc:
            answer = exc
        if open_after_deadline:
            await asyncio.wait_for(log["was_reset"].wait(), 5)
        return answer, log, len(body)
    finally:
        await client.close()
        server.close()


def test_a_body_held_past_its_deadline_is_never_completed():
    answer, log, size = asyncio.run(_run(open_after_deadline=True))
    assert isinstance(answer, DeadlinePassed) and answer.stage == BODY_HELD
    stream = max(log["bytes"])
    assert log["bytes"][stream] == WINDOW < size  # only what the window let through
    assert stream not in log["ended"] and stream in log["reset"]


def test_a_body_whose_window_opens_in_time_is_completed_and_answered():
    answer, log, size = asyncio.run(_run(open_after_deadline=False))
    assert answer.status == 200
    stream = max(log["bytes"])
    assert log["bytes"][stream] == size and stream in log["ended"]
