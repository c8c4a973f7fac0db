"""Every provider call of a batch on one event loop: HTTP/1.1 on the lean client, HTTP/2 (APNs)
on ``udfs.h2_client``, both at once.

For code that is not async (a Flink function): ``send_batch`` runs the loop until the whole
batch is answered. Answers come back in input order, each a ``Response`` or an
``HttpClientError``; requests sharing a key are chained within their protocol (a user's APNs
calls among themselves, their HTTP/1.1 calls among themselves).

``start`` and ``wait`` split ``send_batch`` in two so the caller can work while the provider
does: ``start`` writes the HTTP/1.1 requests that find a free connection and returns, ``poll``
lets the loop read answers and write what waited, without blocking, and ``wait`` runs the loop
until that batch is answered. Several batches may be under way at once; keys chain only within
a batch, so a caller keeps each key (user) in one batch at a time.
"""
from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable, Hashable, Sequence

from herald.concurrency import AdaptiveLimit
from herald.providers.base import ProviderRequest, clock_ms
from udfs.h2_client import H2Client
from udfs.http_client import BEFORE_WRITE, HttpClient, Response, deadline_passed, new_event_loop

# What the null transport answers: a 2xx every adapter classifies as accepted.
NULL_ANSWER = Response(200, {"content-type": "application/json"},
                       b'{"name": "projects/null/messages/0", "sid": "SMnull"}')


class ProviderTransport:
    def __init__(self, *, max_connections: int = 256, timeout_s: float = 10.0,
                 use_uvloop: bool | None = None,
                 adaptive_limit: Callable[[], AdaptiveLimit] | None = None):
        """``adaptive_limit`` makes each HTTP/1.1 endpoint's concurrency limit (None: fixed).
        HTTP/2 keeps one connection per origin and the server's stream limit (SETTINGS)."""
        self.loop = new_event_loop(use_uvloop)
        self.http1 = HttpClient(max_connections=max_connections, timeout_s=timeout_s,
                                adaptive_limit=adaptive_limit)
        self.http2 = H2Client(timeout_s=timeout_s)

    def send_batch(self, requests: Sequence[ProviderRequest], max_in_flight: int = 256,
                   keys: Sequence[Hashable | None] | None = None,
                   stop_chain: Callable[[Any], bool] | None = None) -> list[Any]:
        return self.wait(self.start(requests, max_in_flight, keys, stop_chain))

    def start(self, requests: Sequence[ProviderRequest], max_in_flight: int = 256,
              keys: Sequence[Hashable | None] | None = None,
              stop_chain: Callable[[Any], bool] | None = None) -> asyncio.Future:
        """The batch under way: a future of its answers (``wait`` runs the loop for it)."""
        if not any(r.http2 for r in requests):
            return self.http1.start_batch(requests, max_in_flight, keys, stop_chain,
                                          loop=self.loop)
        # HTTP/2 streams are coroutines: they start when the loop next runs.
        return self.loop.create_task(self._send(requests, max_in_flight, keys, stop_chain))

    def wait(self, pending: asyncio.Future) -> list[Any]:
        """Run the loop until ``pending``'s batch is answered; its answers in input order."""
        return self.loop.run_until_complete(pending)

    def poll(self) -> None:
        """One turn of the loop without waiting: handle the answers that have arrived, write
        the requests that were waiting for them."""
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()

    async def _send(self, requests, max_in_flight, keys, stop_chain) -> list[Any]:
        h2 = [i for i, r in enumerate(requests) if r.http2]
        if not h2:
            return await self.http1.send_batch(requests, max_in_flight, keys, stop_chain)
        h1 = [i for i, r in enumerate(requests) if not r.http2]

        def part(indices):
            return ([requests[i] for i in indices],
                    None if keys is None else [keys[i] for i in indices])

        jobs = []
        for client, indices in ((self.http1, h1), (self.http2, h2)):
            if indices:
                reqs, ks = part(indices)
                jobs.append((indices, client.send_batch(reqs, max_in_flight, ks, stop_chain)))
        answers = await asyncio.gather(*(job for _, job in jobs))
        results: list[Any] = [None] * len(requests)
        for (indices, _), got in zip(jobs, answers):
            for i, result in zip(indices, got):
                results[i] = result
        return results

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.http1.close())
            self.loop.run_until_complete(self.http2.close())
            self.loop.close()


class NullTransport:
    """Answers every call at once, in-process, as accepted: no network, no provider. For
    measuring the pipeline's own ceiling (``provider_transport = "null"``); never for delivery.
    A request at or past its deadline is answered ``DeadlinePassed``, as the clients do."""

    def send_batch(self, requests, max_in_flight: int = 256, keys=None, stop_chain=None):
        answers = [NULL_ANSWER] * len(requests)
        now = clock_ms()
        for i, req in enumerate(requests):
            deadline = req.deadline
            if deadline is not None and deadline <= now:
                answers[i] = deadline_passed(BEFORE_WRITE)
        return answers

    def start(self, requests, max_in_flight: int = 256, keys=None, stop_chain=None) -> list:
        return self.send_batch(requests)  # the answers are the handle: nothing is under way

    def wait(self, pending: list) -> list:
        return pending

    def poll(self) -> None:
        pass

    def close(self) -> None:
        pass


def make_transport(settings) -> "ProviderTransport | NullTransport":
    if settings.provider_transport == "null":
        return NullTransport()
    if settings.provider_transport != "http":
        raise ValueError(f"provider_transport must be 'http' or 'null', "
                         f"not {settings.provider_transport!r}")
    return ProviderTransport(max_connections=settings.provider_max_in_flight,
                             timeout_s=settings.provider_timeout_s,
                             adaptive_limit=adaptive_limit(settings))


def adaptive_limit(settings) -> Callable[[], AdaptiveLimit] | None:
    """What makes each provider endpoint's limit, from the settings (None: fixed)."""
    if not settings.provider_concurrency_adaptive:
        return None
    probe_max = settings.provider_concurrency_probe_max_ms
    return functools.partial(AdaptiveLimit, initial=settings.provider_concurrency_initial,
                             maximum=settings.provider_max_in_flight,
                             probe_min_ms=min(250, probe_max), probe_max_ms=probe_max)
