"""udfs/h2_client.py against the APNs mock made slow: a request is never written at or after
its deadline (``ProviderRequest.deadline``, from ``expires_at``), whether it waits behind a
user's earlier call or for an answer; the mock's own log says what reached it and when."""
from __future__ import annotations

import asyncio
import time

import pytest

from herald.providers.registry import Registry
from herald.settings import Settings
from tests.helpers_mocks import MockProcess, make_notification
from udfs.h2_client import H2Client
from udfs.http_client import (BEFORE_WRITE, BEHIND_CHAIN, DeadlinePassed, DeadlineTimeout,
                              RequestTimeout, Response)


@pytest.fixture(scope="module")
def apns_mock():
    proc = MockProcess("--provider", "apns")
    yield proc
    proc.stop()


@pytest.fixture
def apns(apns_mock):
    apns_mock.reset()
    return apns_mock


def apns_request(url: str, herald_id: str, deadline: int):
    t = int(time.time() * 1000)
    n = make_notification(id=herald_id, created_at=t, expires_at=t + 60_000,
                          to={"push_token": "ab" * 32, "platform": "ios"})
    req = Registry().for_channel("push", "ios").build_request(n, n.to, Settings(apns_url=url))
    req.deadline = deadline
    return req


def deadline_in(seconds: float) -> int:
    return int((time.time() + seconds) * 1000)


def test_a_users_chained_apns_calls_stop_at_the_deadline(apns):
    apns.configure(latency_ms=250)
    deadline = deadline_in(0.9)
    ids = [f"h2-chain-{i}" for i in range(8)]

    async def go():
        client = H2Client(timeout_s=10)
        try:
            return await client.send_batch([apns_request(apns.url, i, deadline) for i in ids],
                                           keys=["u"] * 8)
        finally:
            await client.close()
    answers = asyncio.run(go())
    logged = apns.log(what="all")
    written = [i for i, a in zip(ids, answers) if not isinstance(a, DeadlinePassed)]
    assert [r["herald_id"] for r in logged] == written == ids[:len(written)]
    assert 0 < len(written) < 8
    assert all(r["t_ms"] < deadline for r in logged), [r["t_ms"] - deadline for r in logged]
    for a in answers[len(written):]:
        assert isinstance(a, DeadlinePassed) and a.stage in (BEHIND_CHAIN, BEFORE_WRITE)
    assert all(isinstance(a, (Response, DeadlineTimeout)) for a in answers[:len(written)])


def test_an_unanswered_apns_call_is_abandoned_at_its_deadline(apns):
    apns.configure(latency_ms=5_000)

    async def go():
        client = H2Client(timeout_s=10)
        try:
            return await client.send_batch([apns_request(apns.url, "h2-held", deadline_in(0.3)),
                                            apns_request(apns.url, "h2-late",
                                                         deadline_in(-0.001))])
        finally:
            await client.close()
    held, late = asyncio.run(go())
    assert isinstance(held, DeadlineTimeout) and isinstance(held, RequestTimeout)
    assert isinstance(late, DeadlinePassed) and late.stage == BEFORE_WRITE
    assert [r["herald_id"] for r in apns.log(what="all")] == ["h2-held"]
