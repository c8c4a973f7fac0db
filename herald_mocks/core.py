"""What every mock shares: the switches, the exact request log, and the ``/_mock/`` admin API.

A provider module only knows its wire format (``MockProvider``); the order in which the switches
apply, and what is logged, is decided once here so all four mocks behave alike:

    outage → malformed/unauthorised request → quota → random failure → invalid recipient → accept

The quota is a sliding window over integer epoch milliseconds, the same clock as the log's
``t_ms``, so no 1000 ms window of the log ever holds more than ``quota_rps`` accepted records.
"""
from __future__ import annotations

import asyncio
import math
import random
import sys
import time
import traceback
from collections import deque
from typing import Any, Callable
from urllib.parse import parse_qs

import orjson


class Request:
    """One parsed HTTP request, HTTP/1.1 or HTTP/2 alike; header names are lower case."""
    __slots__ = ("method", "path", "query", "headers", "body", "http2")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
                 http2: bool = False):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.http2 = http2


class Reply:
    """What to answer; ``code`` is the provider's own error code, kept for the log."""
    __slots__ = ("status", "body", "headers", "code", "content_type")

    def __init__(self, status: int, body: bytes = b"", headers: tuple = (), code: str | None = None,
                 content_type: str | None = "application/json"):
        self.status = status
        self.body = body
        self.headers = headers
        self.code = code
        self.content_type = content_type if body else None


class Parsed:
    """A provider request as understood by the mock: recipient, Herald id, or why it is bad."""
    __slots__ = ("herald_id", "to", "info", "error", "reason")

    def __init__(self, herald_id: str | None = None, to: str | None = None,
                 info: dict | None = None, error: Reply | None = None, reason: str | None = None):
        self.herald_id = herald_id
        self.to = to
        self.info = info
        self.error = error
        self.reason = reason


def json_reply(status: int, obj: Any, headers: tuple = (), code: str | None = None) -> Reply:
    return Reply(status, orjson.dumps(obj), headers, code)


class MockProvider:
    """One provider's wire format. Subclasses fill these in; the state machine calls them."""
    name = "?"
    http2 = False

    def parse(self, req: Request) -> Parsed:
        raise NotImplementedError

    def unavailable(self) -> Reply:
        raise NotImplementedError

    def throttled(self, retry_after_s: int, quota: int, reset_epoch_s: int) -> Reply:
        raise NotImplementedError

    def failure(self, rng: random.Random) -> Reply:
        raise NotImplementedError

    def invalid(self, parsed: Parsed, now_ms: int) -> Reply:
        raise NotImplementedError

    def accept(self, parsed: Parsed, seq: int, now_ms: int) -> tuple[Reply, str]:
        """The success reply and the provider's message id for it."""
        raise NotImplementedError

    def receipts(self, req: Request, parsed: Parsed, message_id: str, now_ms: int,
                 bounced: bool, callback_url: str | None) -> list[Callback]:
        """The delivery receipts the real provider would POST for an accepted message, in
        order (none for push: FCM and APNs answer dead tokens on the send itself)."""
        return []

    def admin_info(self) -> dict:
        """Provider-specific fields for ``/_mock/stats`` (e.g. a verification key)."""
        return {}


class Callback:
    """One receipt POST the mock makes: where, what, with which headers."""
    __slots__ = ("url", "body", "headers")

    def __init__(self, url: str, body: bytes, headers: dict[str, str]):
        self.url = url
        self.body = body
        self.headers = headers


class ConfigError(ValueError):
    """An admin request or CLI flag asked for an impossible switch setting."""


OUTAGE_MODES = ("503", "refuse")
CALLBACK_TRIES = 6


class MockConfig:
    """The run-time switches; ``update`` is both the CLI's and ``POST /_mock/config``'s door."""

    KEYS = ("quota_rps", "latency_ms", "latency_jitter_ms", "failure_rate", "seed", "invalid",
            "invalid_add", "invalid_remove", "outage", "max_client_connections", "callbacks",
            "callback_url", "bounce")

    def __init__(self) -> None:
        self.quota_rps: int | None = None
        self.latency_ms: float = 0.0
        self.latency_jitter_ms: float = 0.0
        self.failure_rate: float = 0.0
        self.seed: int = 0
        self.invalid: set[str] = set()
        # (mode, start_ms, end_ms) or None
        self.outage: tuple[str, int, int] | None = None
        # Connections served at once per client address (None: any number); one more is reset
        # (MockState.admit_connection), as a gateway capping a client's connections does.
        self.max_client_connections: int | None = None
        # Delivery receipts (Twilio status callbacks, SendGrid's Event Webhook), off by default:
        # sent after each accepted message to its StatusCallback (Twilio) or to callback_url
        # (SendGrid's account-wide webhook URL; it overrides StatusCallback for Twilio too).
        # A recipient in `bounce` is accepted, and its receipt reports it undeliverable.
        self.callbacks: bool = False
        self.callback_url: str | None = None
        self.bounce: set[str] = set()

    def to_dict(self) -> dict:
        out = {"quota_rps": self.quota_rps, "latency_ms": self.latency_ms,
               "latency_jitter_ms": self.latency_jitter_ms, "failure_rate": self.failure_rate,
               "seed": self.seed, "invalid": sorted(self.invalid), "outage": None,
               "max_client_connections": self.max_client_connections,
               "callbacks": self.callbacks, "callback_url": self.callback_url,
               "bounce": sorted(self.bounce)}
        if self.outage:
            mode, start, end = self.outage
            out["outage"] = {"mode": mode, "start_ms": start, "end_ms": end}
        return out

    def update(self, changes: dict, now_ms: int) -> None:
        """Apply a partial config; all-or-nothing, so a bad key changes nothing."""
        if not isinstance(changes, dict):
            raise ConfigError("config must be a JSON object")
        unknown = sorted(set(changes) - set(self.KEYS))
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)} "
                              f"(known: {', '.join(self.KEYS)})")
        new = dict(self.__dict__)
        new["invalid"] = set(self.invalid)
        new["bounce"] = set(self.bounce)
        if "quota_rps" in changes:
            q = changes["quota_rps"]
            if q is not None and (isinstance(q, bool) or not isinstance(q, int) or q < 0):
                raise ConfigError("quota_rps must be a non-negative integer or null")
            new["quota_rps"] = q
        for key in ("latency_ms", "latency_jitter_ms"):
            if key in changes:
                v = changes[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                    raise ConfigError(f"{key} must be a non-negative number")
                new[key] = float(v)
        if "max_client_connections" in changes:
            v = changes["max_client_connections"]
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ConfigError("max_client_connections must be a non-negative integer or null")
            new["max_client_connections"] = v
        if "failure_rate" in changes:
            v = changes["failure_rate"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError("failure_rate must be a number in [0, 1]")
            new["failure_rate"] = float(v)
        if "seed" in changes:
            if isinstance(changes["seed"], bool) or not isinstance(changes["seed"], int):
                raise ConfigError("seed must be an integer")
            new["seed"] = changes["seed"]
        for key in ("invalid", "invalid_add", "invalid_remove"):
            if key in changes:
                v = changes[key]
                if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                    raise ConfigError(f"{key} must be a list of strings")
        if "invalid" in changes:
            new["invalid"] = set(changes["invalid"])
        new["invalid"] |= set(changes.get("invalid_add", ()))
        new["invalid"] -= set(changes.get("invalid_remove", ()))
        if "outage" in changes:
            new["outage"] = parse_outage(changes["outage"], now_ms)
        if "callbacks" in changes:
            if not isinstance(changes["callbacks"], bool):
                raise ConfigError("callbacks must be true or false")
            new["callbacks"] = changes["callbacks"]
        if "callback_url" in changes:
            url = changes["callback_url"]
            if url is not None and (not isinstance(url, str)
                                    or not url.startswith(("http://", "https://"))):
                raise ConfigError("callback_url must be an http(s) URL or null")
            new["callback_url"] = url
        if "bounce" in changes:
            v = changes["bounce"]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError("bounce must be a list of strings")
            new["bounce"] = set(v)
        self.__dict__.update(new)


def parse_outage(spec: Any, now_ms: int) -> tuple[str, int, int] | None:
    """``{"mode", "start_ms"|"start_in_s", "end_ms"|"duration_s"}`` → (mode, start, end)."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ConfigError("outage must be an object or null")
    unknown = set(spec) - {"mode", "start_ms", "end_ms", "start_in_s", "duration_s"}
    if unknown:
        raise ConfigError(f"unknown outage keys: {', '.join(sorted(unknown))}")
    mode = str(spec.get("mode", "503"))
    if mode not in OUTAGE_MODES:
        raise ConfigError(f"outage mode must be one of {OUTAGE_MODES}, got {mode!r}")

    def number(key: str) -> float | None:
        v = spec.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"outage {key} must be a number")
        return v

    start = number("start_ms")
    start = int(start) if start is not None else now_ms + int(1000 * (number("start_in_s") or 0))
    end = number("end_ms")
    if end is None:
        duration = number("duration_s")
        if duration is None:
            raise ConfigError("outage needs end_ms or duration_s")
        end = start + int(1000 * duration)
    end = int(end)
    if end <= start:
        raise ConfigError("outage must end after it starts")
    return mode, start, end


def now_epoch_ms() -> int:
    return time.time_ns() // 1_000_000


class MockState:
    """One mock's switches, log and counters, and the dispatcher every protocol calls."""

    def __init__(self, provider: MockProvider, config: MockConfig | None = None,
                 log_path: str | None = None):
        self.provider = provider
        self.config = config or MockConfig()
        self.started_ms = now_epoch_ms()
        self.log_path = log_path
        self._log_file = open(log_path, "ab") if log_path else None
        self._pending_lines: list[bytes] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        # called with the config after every change (the server schedules refuse-mode outages)
        self.on_config_change: list[Callable[[MockConfig], None]] = []
        self.client_connections: dict[str, int] = {}  # connections served, per client address
        self._callback_tasks: set = set()
        self._session = None  # aiohttp session for receipts, made on the first one
        self._clear()

    # ------------------------------------------------------------------ bookkeeping

    def _clear(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.latency_rng = random.Random(self.config.seed + 1)
        self.seq = 0
        self.lines: list[bytes] = []  # record seq s is lines[s - 1]: every request is logged
        self.line_ids: list[str | None] = []
        self.line_accepted = bytearray()
        self.received = 0
        self.accepted = 0
        self.rejected = 0
        self.by_reason: dict[str, int] = {}
        self.by_status: dict[int, int] = {}
        self.accepted_per_id: dict[str, int] = {}
        self.accepted_per_second: dict[int, int] = {}
        self.window: deque[int] = deque()
        self.reset_ms = now_epoch_ms()
        self.connections_reset = 0
        self.callbacks_sent = 0
        self.callbacks_failed = 0

    # ------------------------------------------------------------------ connections per client

    def admit_connection(self, client: str) -> bool:
        """Count a new connection of ``client`` (its address) as served, or refuse it: False
        when the client already has ``max_client_connections``; the caller resets it unread."""
        held = self.client_connections.get(client, 0)
        cap = self.config.max_client_connections
        if cap is not None and held >= cap:
            self.connections_reset += 1
            return False
        self.client_connections[client] = held + 1
        return True

    def release_connection(self, client: str) -> None:
        held = self.client_connections.get(client, 0) - 1
        if held > 0:
            self.client_connections[client] = held
        else:
            self.client_connections.pop(client, None)

    def close(self) -> None:
        self.flush()
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def flush(self) -> None:
        self._flush_handle = None
        if self._log_file and self._pending_lines:
            self._log_file.write(b"".join(self._pending_lines))
            self._log_file.flush()
        self._pending_lines.clear()

    def _append(self, record: dict, accepted: bool) -> None:
        """Keep the record as its JSON line (half the memory of a dict, and ``/_mock/log``
        becomes a join) plus the two fields the log filters on."""
        line = memoryview(orjson.dumps(record)).tobytes()  # orjson's bytes keep a 4 KiB buffer
        self.lines.append(line)
        self.line_ids.append(record["herald_id"])
        self.line_accepted.append(accepted)
        if self._log_file:
            self._pending_lines.append(line + b"\n")
            if self._flush_handle is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    self.flush()
                else:  # one write per 20 ms keeps the file current without a syscall per request
                    self._flush_handle = loop.call_later(0.02, self.flush)

    def _admit(self, now_ms: int) -> int:
        """0 if the quota admits a request now, else whole seconds until it would."""
        window = self.window
        horizon = now_ms - 1000
        while window and window[0] <= horizon:
            window.popleft()
        if len(window) < self.config.quota_rps:
            window.append(now_ms)
            return 0
        if not window:  # quota 0: nothing is ever admitted
            return 1
        return max(1, math.ceil((window[0] - horizon) / 1000))

    # ------------------------------------------------------------------ the request path

    def handle(self, req: Request) -> tuple[Reply, float]:
        """Answer one request; the float is the added latency in seconds (0 for admin calls).

        A bug in a mock answers 500 with the traceback rather than a dropped connection, which
        Herald would take for a provider outage."""
        try:
            return self._handle(req)
        except Exception:  # noqa: BLE001 - reported to the client and stderr, never swallowed
            trace = traceback.format_exc()
            print(trace, file=sys.stderr, flush=True)
            return json_reply(500, {"error": "mock bug", "traceback": trace}), 0.0

    def _handle(self, req: Request) -> tuple[Reply, float]:
        if req.path.startswith("/_mock/"):
            return self.admin(req), 0.0
        now_ms = time.time_ns() // 1_000_000
        cfg = self.config
        provider = self.provider
        p = provider.parse(req)
        self.received += 1
        self.seq = seq = self.seq + 1
        outage = cfg.outage
        message_id = None
        if outage is not None and outage[1] <= now_ms < outage[2]:
            reply, reason = provider.unavailable(), "outage"
        elif p.error is not None:
            reply, reason = p.error, p.reason
        elif cfg.quota_rps is not None and (wait := self._admit(now_ms)):
            reply, reason = provider.throttled(wait, cfg.quota_rps, now_ms // 1000 + wait), "quota"
        elif cfg.failure_rate and self.rng.random() < cfg.failure_rate:
            reply, reason = provider.failure(self.rng), "random_failure"
        elif p.to in cfg.invalid:
            reply, reason = provider.invalid(p, now_ms), "invalid_recipient"
        else:
            reply, message_id = provider.accept(p, seq, now_ms)
            reason = None
            if cfg.callbacks:
                self._send_receipts(provider.receipts(req, p, message_id, now_ms,
                                                      p.to in cfg.bounce, cfg.callback_url))
        record = {"seq": seq, "t_ms": now_ms, "provider": provider.name,
                  "result": "rejected" if reason else "accepted", "herald_id": p.herald_id,
                  "to": p.to, "status": reply.status}
        status = reply.status
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if reason is None:
            self.accepted += 1
            record["message_id"] = message_id
            hid = p.herald_id
            if hid is not None:
                self.accepted_per_id[hid] = self.accepted_per_id.get(hid, 0) + 1
            sec = now_ms // 1000
            self.accepted_per_second[sec] = self.accepted_per_second.get(sec, 0) + 1
        else:
            self.rejected += 1
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
            record["reason"] = reason
            record["code"] = reply.code
        if p.info:
            record.update(p.info)
        self._append(record, reason is None)
        delay_ms = cfg.latency_ms
        if cfg.latency_jitter_ms:
            delay_ms += self.latency_rng.uniform(0, cfg.latency_jitter_ms)
        return reply, delay_ms / 1000.0

    # ------------------------------------------------------------------ receipts

    def _send_receipts(self, callbacks: list[Callback]) -> None:
        if not callbacks:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (a unit test calling handle): nothing to send with
        task = loop.create_task(self._post_all(callbacks))
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_tasks.discard)

    async def _post_all(self, callbacks: list[Callback]) -> None:
        """POST one message's receipts in order, each retried on a 5xx, 409, 429 or a lost
        connection (0.2 s doubling, 6 tries), as the providers retry; other 4xx are not."""
        import aiohttp
        import yarl
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        for cb in callbacks:
            for attempt in range(CALLBACK_TRIES):
                try:
                    # the URL exactly as given (yarl would decode %3A in the query, and
                    # Twilio's signature is over the URL as Herald set it)
                    async with self._session.post(yarl.URL(cb.url, encoded=True), data=cb.body,
                                                  headers=cb.headers) as answer:
                        await answer.read()
                        status = answer.status
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    status = None
                if status is not None and status < 500 and status not in (409, 429):
                    break
                if attempt + 1 < CALLBACK_TRIES:
                    await asyncio.sleep(0.2 * 2 ** attempt)
            ok = status is not None and 200 <= status < 300
            self.callbacks_sent += ok
            self.callbacks_failed += not ok
            if not ok:
                return  # the later receipts of a message make no sense without this one

    # ------------------------------------------------------------------ admin API

    def admin(self, req: Request) -> Reply:
        route = (req.method, req.path.rstrip("/"))
        try:
            if route == ("GET", "/_mock/log"):
                return self._get_log(parse_qs(req.query), "accepted")
            if route == ("GET", "/_mock/rejected"):
                return self._get_log(parse_qs(req.query), "rejected")
            if route == ("GET", "/_mock/stats"):
                return json_reply(200, self.stats())
            if route == ("GET", "/_mock/rate"):
                per_second = {str(k): v for k, v in sorted(self.accepted_per_second.items())}
                return json_reply(200, {"provider": self.provider.name,
                                        "accepted_per_second": per_second,
                                        "max": max(self.accepted_per_second.values(), default=0)})
            if route == ("GET", "/_mock/config"):
                return json_reply(200, self.config.to_dict())
            if route == ("POST", "/_mock/config"):
                changes = orjson.loads(req.body or b"{}")
                self.config.update(changes, now_epoch_ms())
                if "seed" in changes:
                    self.rng = random.Random(self.config.seed)
                    self.latency_rng = random.Random(self.config.seed + 1)
                for callback in self.on_config_change:
                    callback(self.config)
                return json_reply(200, self.config.to_dict())
            if route == ("POST", "/_mock/reset"):
                return self._reset(orjson.loads(req.body or b"{}"))
            if route == ("GET", "/_mock/health"):
                return json_reply(200, {"ok": True, "provider": self.provider.name})
        except orjson.JSONDecodeError as exc:
            return json_reply(400, {"error": f"malformed JSON: {exc}"})
        except ValueError as exc:  # ConfigError, or a bad number in the query string
            return json_reply(400, {"error": str(exc)})
        return json_reply(404, {"error": f"no admin endpoint {req.method} {req.path}"})

    def _get_log(self, query: dict, default_what: str) -> Reply:
        what = query.get("what", [default_what])[0]
        if what not in ("accepted", "rejected", "all"):
            raise ConfigError("what must be accepted, rejected or all")
        since = max(0, int(query.get("since", ["0"])[0]))
        hid = query.get("herald_id", [None])[0]
        limit = int(query.get("limit", ["0"])[0]) or None
        ids, accepted = self.line_ids, self.line_accepted
        want = None if what == "all" else (what == "accepted")
        picked = [i for i in range(since, len(self.lines))
                  if (want is None or bool(accepted[i]) == want) and (hid is None or ids[i] == hid)]
        if limit is not None:
            picked = picked[:limit]
        last = picked[-1] + 1 if limit is not None and picked else self.seq
        head = orjson.dumps({"provider": self.provider.name, "what": what, "count": len(picked),
                             "next_since": last})
        body = b"".join((head[:-1], b',"records":[', b",".join(self.lines[i] for i in picked),
                         b"]}"))
        return Reply(200, body)

    def stats(self) -> dict:
        duplicates = sum(1 for n in self.accepted_per_id.values() if n > 1)
        return {"provider": self.provider.name, "received": self.received,
                "accepted": self.accepted, "rejected": self.rejected,
                "by_reason": dict(self.by_reason),
                "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                "accepted_unique_ids": len(self.accepted_per_id),
                "accepted_duplicate_ids": duplicates,
                "max_accepted_per_second": max(self.accepted_per_second.values(), default=0),
                "connections_reset": self.connections_reset,
                "callbacks_sent": self.callbacks_sent, "callbacks_failed": self.callbacks_failed,
                "client_connections": sum(self.client_connections.values()),
                "since_ms": self.reset_ms, "started_ms": self.started_ms,
                "log_file": self.log_path, "config": self.config.to_dict(),
                **self.provider.admin_info()}

    def _reset(self, body: dict) -> Reply:
        """Forget log and counters (and truncate the log file); ``{"config": true}`` also
        restores default switches."""
        if not isinstance(body, dict):
            raise ConfigError("reset body must be a JSON object")
        if body.get("config"):
            self.config.__dict__.update(MockConfig().__dict__)
            for callback in self.on_config_change:
                callback(self.config)
        self.flush()
        if self._log_file:
            self._log_file.truncate(0)
            self._log_file.seek(0)
        self._clear()
        return json_reply(200, {"ok": True, "provider": self.provider.name})
