"""`make demo`: the whole stack on this machine, a few notifications through it, and a report.

Starts Kafka, Redis and the provider mocks, runs the delivery job on the embedded MiniCluster
(its dashboard on the REST port), sends a handful of critical notifications including a
malformed one and an already expired one, and prints what happened to each. The stack keeps
running afterwards; `make stack-down` stops everything the project started.
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from collections import Counter

import orjson
from kafka import KafkaConsumer, KafkaProducer

from herald.settings import PROJECT_ROOT, load_settings, settings_env
from herald_stack.components import Stack
from herald_stack.processes import Managed, StackError, port_open, wait_until


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def demo_notifications(run: str) -> list[tuple[str | None, bytes]]:
    now = int(time.time() * 1000)
    out = []
    for i, (title, body) in enumerate([("Your code", "482913 is your Herald code"),
                                       ("Security alert", "New sign-in from Lisbon"),
                                       ("New message", "Ana: are we still on for 7?"),
                                       ("Your code", "120044 is your Herald code"),
                                       ("Payment", "Card ending 4242 charged 12.00 EUR")]):
        n = {"id": f"demo-{run}-{i}", "tenant_id": "demo", "user_id": f"user-{i % 3}",
             "priority": "critical", "channels": ["push"],
             "to": {"push_token": f"device-token-{i % 3}", "platform": "android"},
             "content": {"title": title, "body": body}, "created_at": now,
             "expires_at": now + 120_000}
        out.append((n["user_id"], orjson.dumps(n)))
    expired = {"id": f"demo-{run}-expired", "tenant_id": "demo", "user_id": "user-0",
               "priority": "critical", "to": {"push_token": "device-token-0", "platform": "android"},
               "content": {"body": "this one expired on the way"}, "created_at": now - 60_000,
               "expires_at": now - 1_000}
    out.append(("user-0", orjson.dumps(expired)))
    out.append((f"demo-{run}-bad", b'{"id": "demo-malformed", "user_id": "user-1", "content": '))
    return out


def main() -> int:
    settings = load_settings()
    stack = Stack(settings)
    try:
        step("installing what is missing and starting Kafka, Redis and the provider mocks")
        stack.up()
        step(f"Kafka {settings.kafka_bootstrap}, Redis {settings.redis_host}:{settings.redis_port},"
             f" mock FCM {settings.fcm_url}")
        job = Managed("delivery-job", stack.run_dir)
        if not job.running():
            if port_open("127.0.0.1", settings.flink_rest_port):
                raise StackError(f"port {settings.flink_rest_port} is taken (a standalone cluster?"
                                 " `make stack-down` stops it), the demo's dashboard needs it")
            step("starting the delivery job on the embedded Flink MiniCluster")
            proc = job.start([sys.executable, "-m", "jobs.delivery"], cwd=PROJECT_ROOT,
                             env={**os.environ, **settings_env(settings)})
            wait_until(lambda: _dashboard_up(settings.flink_rest_port), "flink dashboard", 120,
                       proc, job.log)
        step(f"Flink dashboard: http://localhost:{settings.flink_rest_port}"
             " (job 'herald-delivery': backpressure and busy time per operator)")
    except StackError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1

    run = uuid.uuid4().hex[:6]
    records = demo_notifications(run)
    step(f"sending {len(records)} notifications to {settings.topic_critical} "
         "(5 good, 1 already expired, 1 malformed)")
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for key, value in records:
        producer.send(settings.topic_critical, key=key.encode(), value=value)
    producer.flush()

    consumer = KafkaConsumer(settings.topic_status, settings.topic_dlq,
                             bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", group_id=None)
    seen_status: dict[str, dict] = {}
    dead: list[dict] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and (len(seen_status) < 6 or not dead):
        for batch in consumer.poll(timeout_ms=500).values():
            for message in batch:
                value = orjson.loads(message.value)
                if message.topic == settings.topic_dlq:
                    if f"demo-{run}-bad" == (message.key or b"").decode():
                        dead.append(value)
                        print(f"    dead-lettered: {value['reason']}", flush=True)
                elif value["id"].startswith(f"demo-{run}-"):
                    seen_status[value["id"]] = value
                    latency = value.get("latency_ms")
                    print(f"    {value['id']:>22}  {value['state']:<10} {value.get('provider', '-'):<5}"
                          f" {'' if latency is None else f'{latency} ms'}", flush=True)
    consumer.close()

    counts = Counter(s["state"] for s in seen_status.values())
    print("\nsummary")
    print(f"  {'state':<12}{'critical/push':>14}")
    for state in ("delivered", "expired", "failed"):
        print(f"  {state:<12}{counts.get(state, 0):>14}")
    print(f"  {'dead-letter':<12}{len(dead):>14}")
    print(f"\nThe stack and the job keep running; Flink dashboard http://localhost:"
          f"{settings.flink_rest_port}. Stop everything with `make stack-down`.")
    complete = counts.get("delivered") == 5 and counts.get("expired") == 1 and len(dead) == 1
    return 0 if complete else 1


def _dashboard_up(port: int) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jobs/overview", timeout=2) as r:
            return any(j["state"] == "RUNNING" for j in orjson.loads(r.read())["jobs"])
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
