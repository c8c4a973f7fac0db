"""Tenant webhooks: ``PUT/GET/DELETE /v1/webhook``, and the dispatcher that calls them.

``python -m herald_api.webhooks`` is a consumer of ``herald.status`` of its own (like the audit
consumer), so a slow or failing tenant endpoint never holds up delivery. Per batch: each event
a webhook hears about (``herald.webhooks.wants``) whose tenant has a webhook and that was not
sent before is POSTed, signed, the calls of the batch in flight together; a call that failed
is put on a retry schedule in Redis (a sorted set by due time) before the batch's offsets are
committed, so neither a crash nor a long backoff loses it or holds the topic back; due retries
are taken from the schedule between batches. After a 2xx a marker per (tenant, id, state)
stops a second call for a replayed event; a crash between the 2xx and the marker can repeat
one call, and ``X-Herald-Event-Id`` lets the receiver drop it.

Redis keys: ``herald:webhook:{tenant}`` (hash: url, secret, updated_at);
``herald:webhook:done:{tenant}:{event id}`` (sent; expires with the audit retention);
``herald:webhook:retry`` (sorted set of pending calls, by due epoch ms);
``herald:webhook:dead:{tenant}`` (list: the last 1000 calls given up).
"""
from __future__ import annotations

import argparse
import logging
import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import redis
import requests
from aiohttp import web
from kafka import KafkaConsumer
from kafka.errors import CommitFailedError
from prometheus_client import start_http_server

from herald.errors import ValidationError
from herald.models import load_object
from herald.redis_conn import redis_client as make_redis
from herald.settings import Settings, load_settings
from herald.webhooks import (EVENT_ID_HEADER, SIGNATURE_HEADER, RetryPolicy, Webhook, body_of,
                             check_public, event_id, sign, succeeded, wants, webhook_from_dict)
from herald_api.metrics import WebhookMetrics

log = logging.getLogger("herald_api.webhooks")

RETRY_KEY = "herald:webhook:retry"
DEAD_KEEP = 1000
RETRY_BATCH = 200


def resolve_host(host: str) -> list[str]:
    return [info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)]


def webhook_key(tenant: str) -> str:
    return f"herald:webhook:{tenant}"


def done_key(tenant: str, eid: str) -> str:
    return f"herald:webhook:done:{tenant}:{eid}"


def dead_key(tenant: str) -> str:
    return f"herald:webhook:dead:{tenant}"


def _text(raw: dict) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                          else v) for k, v in raw.items()}


# ---------------------------------------------------------------- the API's endpoints

async def put_webhook(request: web.Request) -> web.Response:
    from herald_api import schemas
    from herald_api.app import CLOCK, REDIS, SETTINGS, authenticate, check_tenant, checked, \
        json_response, read_object
    app = request.app
    tenant = authenticate(request)
    obj = await read_object(request, app[SETTINGS].api_max_body_bytes)
    check_tenant(obj, tenant)
    hook = checked(schemas.Webhook, obj,
                   lambda: webhook_from_dict(obj, app[SETTINGS].webhook_allow_private))
    now = app[CLOCK]()
    await app[REDIS].hset(webhook_key(tenant), mapping={"url": hook.url, "secret": hook.secret,
                                                        "updated_at": now})
    return json_response({"tenant_id": tenant, "url": hook.url, "updated_at": now})


async def get_webhook(request: web.Request) -> web.Response:
    from herald_api.app import REDIS, authenticate, json_response
    from herald_api.errors import ApiError
    tenant = authenticate(request)
    found = _text(await request.app[REDIS].hgetall(webhook_key(tenant)))
    if not found:
        raise ApiError(404, "not_found", "no webhook for this tenant", None)
    return json_response({"tenant_id": tenant, "url": found["url"],
                          "updated_at": int(found["updated_at"])})  # never the secret


async def delete_webhook(request: web.Request) -> web.Response:
    from herald_api.app import REDIS, authenticate
    tenant = authenticate(request)
    await request.app[REDIS].delete(webhook_key(tenant))
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_put("/v1/webhook", put_webhook)
    app.router.add_get("/v1/webhook", get_webhook)
    app.router.add_delete("/v1/webhook", delete_webhook)


# ---------------------------------------------------------------- the dispatcher

class WebhookDispatcher:
    """One consumer-group member: poll, call, schedule retries, commit; then due retries."""

    def __init__(self, settings: Settings, *, redis_client: redis.Redis | None = None,
                 rng: random.Random | None = None, threads: int = 8):
        self.settings = settings
        self.redis = redis_client or make_redis(settings, socket_timeout=10)
        self.policy = RetryPolicy(settings.webhook_backoff_ms, settings.webhook_backoff_max_ms,
                                  settings.webhook_max_attempts)
        self.rng = rng or random.Random()
        self.retention_ms = settings.audit_retention_s * 1000
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="herald-webhook")
        self.http = requests.Session()
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=settings.webhook_consumer_group,
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=1000)
        self.consumer.partitions_for_topic(settings.topic_status)
        self.consumer.subscribe([settings.topic_status])
        self.stop = threading.Event()
        self.metrics = WebhookMetrics()

    # ---- one call

    def _post(self, hook: Webhook, job: dict) -> int | None:
        if not self.settings.webhook_allow_private:
            why = check_public(hook.url, resolve_host)
            if why:
                log.warning("webhook of tenant %s not called: %s", job["tenant_id"], why)
                return None
        body = job["body"].encode()
        headers = {"Content-Type": "application/json", "User-Agent": "Herald-Webhooks/1",
                   SIGNATURE_HEADER: sign(hook.secret, int(time.time()), body),
                   EVENT_ID_HEADER: job["event_id"]}
        try:
            answer = self.http.post(hook.url, data=body, headers=headers,
                                    timeout=self.settings.webhook_timeout_s,
                                    allow_redirects=False)
            answer.close()
            return answer.status_code
        except requests.RequestException as exc:
            log.info("webhook %s: %s", hook.url, type(exc).__name__)
            return None

    def attempt(self, jobs: list[dict]) -> int:
        """Make one call per job (together); retry or give up the failures; return how many
        succeeded. A job whose tenant has no webhook any more, or that was sent, is dropped."""
        hooks: dict[str, Webhook | None] = {}
        for tenant in {j["tenant_id"] for j in jobs}:
            found = _text(self.redis.hgetall(webhook_key(tenant)))
            hooks[tenant] = Webhook(found["url"], found["secret"]) if found else None
        with self.redis.pipeline(transaction=False) as pipe:  # one key a command: a cluster too
            for j in jobs:
                pipe.get(done_key(j["tenant_id"], j["event_id"]))
            sent_before = pipe.execute() if jobs else []
        todo, seen = [], set()
        for job, done in zip(jobs, sent_before):
            key = (job["tenant_id"], job["event_id"])
            if done is None and hooks[job["tenant_id"]] is not None and key not in seen:
                seen.add(key)
                todo.append(job)
        answers = list(self.pool.map(lambda j: self._post(hooks[j["tenant_id"]], j), todo))
        now = time.time_ns() // 1_000_000
        ok = 0
        with self.redis.pipeline(transaction=False) as pipe:
            for job, status in zip(todo, answers):
                made = job["attempts"] + 1
                if succeeded(status):
                    ok += 1
                    pipe.set(done_key(job["tenant_id"], job["event_id"]), now,
                             px=self.retention_ms)
                    continue
                self.metrics.calls.labels("failed").inc()
                delay = self.policy.next_delay_ms(made, self.rng)
                if delay is None:
                    self.metrics.given_up.inc()
                    log.warning("webhook of tenant %s: %s %s given up after %d calls (last: %s)",
                                job["tenant_id"], job["id"], job["state"], made, status)
                    pipe.lpush(dead_key(job["tenant_id"]),
                               orjson.dumps({**job, "attempts": made, "last_status": status}))
                    pipe.ltrim(dead_key(job["tenant_id"]), 0, DEAD_KEEP - 1)
                else:
                    pipe.zadd(RETRY_KEY, {orjson.dumps({**job, "attempts": made}): now + delay})
            pipe.execute()
        self.metrics.calls.labels("sent").inc(ok)
        return ok

    # ---- loops

    def poll_once(self, timeout_ms: int = 200) -> int:
        """One batch of the topic (first calls, failures scheduled, commit), then the due
        retries; return how many status records the batch had."""
        batches = self.consumer.poll(timeout_ms=timeout_ms)
        jobs, count = [], 0
        for records in batches.values():
            for message in records:
                count += 1
                try:
                    event = load_object(message.value)
                except ValidationError:
                    continue  # the audit consumer dead-letters what is not a Status event
                if wants(event) and isinstance(event.get("tenant_id"), str):
                    jobs.append({"tenant_id": event["tenant_id"], "id": event["id"],
                                 "state": event["state"],
                                 "event_id": event_id(event["tenant_id"], event["id"],
                                                      event["state"]),
                                 "body": body_of(event).decode(), "attempts": 0})
        while jobs:  # never commit past calls neither made nor scheduled
            try:
                self.attempt(jobs)
                break
            except redis.exceptions.ConnectionError as exc:
                log.warning("Redis unavailable (%s); retrying the batch", exc)
                if self.stop.wait(0.5):
                    raise
        if count:
            try:
                self.consumer.commit()
            except CommitFailedError as exc:
                log.warning("offset commit failed (%s); the batch will be replayed", exc)
        self.retry_due()
        return count

    def retry_due(self) -> int:
        """Take the due retries off the schedule (each by one dispatcher only) and call."""
        now = time.time_ns() // 1_000_000
        due = self.redis.zrangebyscore(RETRY_KEY, "-inf", now, start=0, num=RETRY_BATCH)
        mine = [raw for raw in due if self.redis.zrem(RETRY_KEY, raw)]
        return self.attempt([orjson.loads(raw) for raw in mine]) if mine else 0

    def run(self) -> None:
        log.info("webhook dispatcher on %s (group %s)", self.settings.topic_status,
                 self.settings.webhook_consumer_group)
        while not self.stop.is_set():
            try:
                self.poll_once()
            except redis.exceptions.ConnectionError as exc:
                log.warning("Redis unavailable (%s); retrying", exc)
                self.stop.wait(0.5)

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.pool.shutdown(wait=True)
        self.http.close()
        self.redis.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Herald's webhook dispatcher")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics (herald_webhook_*) on this port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    dispatcher = WebhookDispatcher(load_settings())
    if args.metrics_port is not None:
        start_http_server(args.metrics_port, registry=dispatcher.metrics.registry)

    def stop(signum: int, frame: Any) -> None:
        dispatcher.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        dispatcher.run()
    finally:
        log.info("stopping: %(sent)d sent, %(failed)d failed calls, %(given_up)d given up",
                 dispatcher.metrics.totals())
        dispatcher.close()


if __name__ == "__main__":
    main()
