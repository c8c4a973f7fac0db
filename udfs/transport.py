"""Every provider call of a batch on one event loop: HTTP/1.1 on the lean client, HTTP/2 (APNs)
on ``udfs.h2_client``, both at once.

For code that is not async (a Flink function): ``send_batch`` runs the loop until the whole
batch is answered. Answers come back in input order, each a ``Response`` or an
``HttpClientError``; requests sharing a key are chained within their protocol (a user's APNs
calls among themselves, their HTTP/1.1 calls among themselves).
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Hashable, Sequence

from herald.providers.base import ProviderRequest
from udfs.h2_client import H2Client
from udfs.http_client import HttpClient, Response, new_event_loop

# What the null transport answers: a 2xx every adapter classifies as accepted.
NULL_ANSWER = Response(200, {"content-type": "application/json"},
                       b'{"name": "projects/null/messages/0", "sid": "SMnull"}')


class ProviderTransport:
    def __init__(self, *, max_connections: int = 256, timeout_s: float = 10.0,
                 use_uvloop: bool | None = None):
        self.loop = new_event_loop(use_uvloop)
        self.http1 = HttpClient(max_connections=max_connections, timeout_s=timeout_s)
        self.http2 = H2Client(timeout_s=timeout_s)

    def send_batch(self, requests: Sequence[ProviderRequest], max_in_flight: int = 256,
                   keys: Sequence[Hashable | None] | None = None,
                   stop_chain: Callable[[Any], bool] | None = None) -> list[Any]:
        if not requests:
            return []
        return self.loop.run_until_complete(
            self._send(requests, max_in_flight, keys, stop_chain))

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
    measuring the pipeline's own ceiling (``provider_transport = "null"``); never for delivery."""

    def send_batch(self, requests, max_in_flight: int = 256, keys=None, stop_chain=None):
        return [NULL_ANSWER] * len(requests)

    def close(self) -> None:
        pass


def make_transport(settings) -> "ProviderTransport | NullTransport":
    if settings.provider_transport == "null":
        return NullTransport()
    if settings.provider_transport != "http":
        raise ValueError(f"provider_transport must be 'http' or 'null', "
                         f"not {settings.provider_transport!r}")
    return ProviderTransport(max_connections=settings.provider_max_in_flight,
                             timeout_s=settings.provider_timeout_s)
