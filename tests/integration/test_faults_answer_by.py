"""A request is written no later than its ``deadline`` (expires_at less the trip) and its answer
is awaited until its ``answer_by`` (expires_at): an answer that comes after the write deadline
but before expires_at is a delivery, and a user's next call is not written until the earlier
one is answered or expires_at has passed (bench/stress.py's slow-provider run: a call written
just before its write deadline was abandoned at once, and the user's next call, to another
provider, reached it 5 ms before the earlier one reached its own)."""
from __future__ import annotations

import asyncio
import time

from tests.integration.test_h2_client_deadlines import apns, apns_mock, apns_request  # noqa: F401
from tests.integration.test_http_client import RawServer, deadline_in, raw_request
from udfs.h2_client import H2Client
from udfs.http_client import DeadlineTimeout, HttpClient, Response


def test_an_answer_after_the_write_deadline_but_before_answer_by_is_taken():
    seen: list = []

    async def answer(server, head, body, writer):
        seen.append((head.split(b" ")[1].decode(), int(time.time() * 1000)))
        await asyncio.sleep(0.4)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        return True

    async def go():
        async with RawServer(answer) as server:
            client = HttpClient(max_connections=4, timeout_s=10)
            try:
                first = raw_request(server.port, "/first")
                first.deadline, first.answer_by = deadline_in(0.2), deadline_in(1.0)
                then = raw_request(server.port, "/then")  # the same user's next call
                then.deadline = then.answer_by = deadline_in(5.0)
                cut = raw_request(server.port, "/cut")    # no answer_by: cut at the deadline
                cut.deadline = deadline_in(0.2)
                answers = await client.send_batch([first, then, cut], keys=["u", "u", "v"])
                return answers
            finally:
                await client.close()
    first, then, cut = asyncio.run(go())
    assert isinstance(first, Response) and first.status == 200, first
    assert isinstance(then, Response), then
    assert isinstance(cut, DeadlineTimeout), cut
    arrived = dict(seen)
    # The next call of the chain went only once the first was answered (0.4 s after it).
    assert arrived["/then"] - arrived["/first"] >= 400, seen


def test_an_apns_answer_before_answer_by_is_taken(apns):  # noqa: F811
    apns.configure(latency_ms=400)

    async def go():
        client = H2Client(timeout_s=10)
        try:
            late = apns_request(apns.url, "h2-answer-by", deadline_in(0.2))
            late.answer_by = deadline_in(1.0)
            cut = apns_request(apns.url, "h2-cut", deadline_in(0.2))
            return await client.send_batch([late, cut])
        finally:
            await client.close()
    late, cut = asyncio.run(go())
    assert isinstance(late, Response) and late.status == 200, late
    assert isinstance(cut, DeadlineTimeout), cut
