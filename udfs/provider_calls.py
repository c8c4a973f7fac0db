"""Calling the providers from inside a Flink operator.

``BlockingSender`` is the walking skeleton's call stage: one request at a time on a kept-alive
session. The delivery-core issue replaces it with a batched, concurrent stage chosen by
measurement (bench/call_stage.py).
"""
from __future__ import annotations

import time

import orjson
import requests

from herald import states
from herald.models import Notification, Status
from herald.settings import Settings


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class BlockingSender:
    """Send one notification over its first channel's provider and report a Status."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def send(self, n: Notification) -> Status:
        started = now_ms()
        s = self.settings
        body = {"message": {"token": n.to.push_token or "", "notification": {
            "title": n.content.title or "", "body": n.content.body or ""},
            "data": {**n.content.data, "herald_id": n.id}}}
        answer = self.session.post(
            f"{s.fcm_url}/v1/projects/{s.fcm_project}/messages:send", data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {s.fcm_access_token or 'dev'}",
                     "Content-Type": "application/json"}, timeout=s.provider_timeout_s)
        done = now_ms()
        state = states.DELIVERED if answer.status_code == 200 else states.FAILED
        return Status.of(n, state, done, channel=states.PUSH, provider="fcm", attempt=1,
                         latency_ms=done - n.created_at,
                         detail=None if state == states.DELIVERED else answer.text[:200])
