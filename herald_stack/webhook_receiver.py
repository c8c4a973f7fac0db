"""A tenant's webhook endpoint on this machine: what `make demo` registers for its tenant, and
what the webhook tests call. It records each POST, checks its signature with the tenant's
secret (``herald.webhooks.verify``, as a tenant's own endpoint should), and can answer 500 to
the first call, or to every call, of chosen notification ids to show the dispatcher's retries
and give-ups."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from herald.webhooks import SIGNATURE_HEADER, verify

PATH = "/herald-hook"


class WebhookReceiver:
    """A tiny HTTP server in a thread; ``calls`` holds every POST with its event, body,
    headers, whether its signature held, and the status it was answered with."""

    def __init__(self, secret: str | None = None, host: str = "127.0.0.1", port: int = 0):
        self.secret = secret
        self.calls: list[dict] = []
        self.fail_first: set[str] = set()   # ids answered 500 on their first call
        self.fail_always: set[str] = set()  # ids answered 500 on every call
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.record(body, dict(self.headers), self.headers.get(SIGNATURE_HEADER),
                                self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}{PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="webhook-receiver")
        self.thread.start()

    def record(self, body: bytes, headers: dict, signature: str | None,
               handler: BaseHTTPRequestHandler) -> None:
        event = orjson.loads(body)
        signed = None if self.secret is None else verify(self.secret, signature, body,
                                                         int(time.time()))
        with self.lock:
            first = not any(c["event"]["id"] == event["id"]
                            and c["event"]["state"] == event["state"] for c in self.calls)
            failing = event["id"] in self.fail_always or (first and event["id"] in self.fail_first)
            status = 500 if failing else 204
            self.calls.append({"event": event, "body": body, "status": status,
                               "headers": headers, "signed": signed})
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def ok(self) -> list[dict]:
        """The calls answered 2xx."""
        with self.lock:
            return [c for c in self.calls if c["status"] == 204]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
