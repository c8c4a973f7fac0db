"""Helpers for the provider-layer tests: a mock in a subprocess, notifications, and a sender
that puts an adapter's ProviderRequest on the wire (HTTP/1.1 via requests, HTTP/2 via the
tiny h2 client)."""
from __future__ import annotations

import asyncio
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from herald.models import notification_from_dict
from herald.providers.base import ProviderRequest

ROOT = Path(__file__).resolve().parent.parent
NOW_MS = 1_764_000_000_000


def make_notification(**overrides):
    """A valid critical notification, created at NOW_MS, expiring 30 s later."""
    doc = {"id": "ntf-1", "tenant_id": "acme", "user_id": "u-123", "priority": "critical",
           "channels": ["push", "sms", "email"],
           "to": {"push_token": "0a1b2c3d", "platform": "android", "phone": "+15550100",
                  "email": "a@example.com"},
           "content": {"title": "Your code", "body": "482913 is your code", "data": {"k": "v"}},
           "created_at": NOW_MS, "expires_at": NOW_MS + 30_000}
    for key, value in overrides.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return notification_from_dict(doc)


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> bool:
    """Bounded poll until something accepts on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class MockProcess:
    """``python -m herald_mocks`` in a subprocess; ready once its readiness line is printed."""

    def __init__(self, *args: str, env: dict | None = None, expect: int = 1,
                 timeout: float = 20.0):
        self.args = list(args)
        if "--all" not in self.args and "--port" not in self.args:
            self.args += ["--port", "0"]
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a pipe could fill up and block it
        self.proc = subprocess.Popen([sys.executable, "-m", "herald_mocks", *self.args],
                                     cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True)
        self.ports: dict[str, int] = {}
        self._await_lines(expect, timeout)

    def _await_lines(self, expect: int, timeout: float) -> None:
        """Reads the raw pipe: a buffered readline() could swallow several readiness lines at
        once and leave select() waiting for bytes that never come."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        pending = b""
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while len(self.ports) < expect:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"mock did not report ready: {self.args}")
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"mock exited ({self.proc.wait()}): {self.errors()}")
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in (raw.decode() for raw in lines):
                    if line.startswith("herald-mock ") and " listening on " in line:
                        name = line.split()[1]
                        self.ports[name] = int(line.rsplit(":", 1)[1])
        finally:
            sel.close()

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self, method: str, path: str, json=None, port: int | None = None) -> dict:
        answer = requests.request(method, f"http://127.0.0.1:{port or self.port}/_mock/{path}",
                                  json=json, timeout=10)
        answer.raise_for_status()
        return answer.json()

    def configure(self, **changes) -> dict:
        return self.admin("POST", "config", changes)

    def reset(self) -> None:
        self.admin("POST", "reset", {"config": True})

    def log(self, what: str = "accepted", **params) -> list[dict]:
        query = "&".join(f"{k}={v}" for k, v in {"what": what, **params}.items())
        return self.admin("GET", f"log?{query}")["records"]

    def stats(self) -> dict:
        return self.admin("GET", "stats")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
        self.stderr.close()
        return self.proc.returncode


def send(req: ProviderRequest, session: requests.Session | None = None,
         timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Put a ProviderRequest on the wire: (status, headers, body)."""
    if req.http2:
        return asyncio.run(send_h2([req], timeout))[0]
    http = session or requests
    answer = http.request(req.method, req.url, headers=dict(req.headers), data=req.body,
                          timeout=timeout, allow_redirects=False)
    return answer.status_code, dict(answer.headers), answer.content


async def send_h2(reqs: list[ProviderRequest], timeout: float = 10.0
                  ) -> list[tuple[int, dict, bytes]]:
    """Send HTTP/2 requests concurrently on one connection, as an APNs client would (Herald's
    own client, udfs/h2_client.py)."""
    from udfs.h2_client import H2Client
    client = H2Client(timeout_s=timeout)
    try:
        answers = await asyncio.gather(*(client.request(r) for r in reqs))
        return [(a.status, dict(a.headers), a.body) for a in answers]
    finally:
        await client.close()
