"""`make demo`: the whole stack on this machine, a critical burst and a small campaign through it,
and a report.

Starts Kafka, Redis and the provider mocks, runs the delivery job and the campaign expansion job
on embedded MiniClusters (dashboards on their REST ports, Prometheus on the first free port of
9249-9260), and the HTTP API, the audit consumer and the webhook dispatcher with a demo key
(``demo-key`` for tenant ``demo``, added to ``HERALD_API_KEYS``), and registers a webhook for
the tenant that points at a receiver of the demo's own on this machine. It prints a ``curl`` that sends a notification through
the API, sends one itself that way, sends a handful of critical notifications straight to Kafka
(one repeated, one already expired, one malformed), loads a 2,000-user segment and its users the
way the CLI does, sends one campaign to it, follows all of it with progress, and ends with a
table of outcomes per class and channel and the API notification's audit trail (``GET
/v1/notifications/{id}``) and the signed webhook calls the receiver got. The stack keeps running afterwards; `make stack-down` stops
everything the project started.
"""
from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import orjson
from kafka import KafkaConsumer, KafkaProducer

from herald import states
from herald.settings import PROJECT_ROOT, Settings, load_settings, settings_env
from herald_stack.components import Stack
from herald_stack.processes import Managed, StackError, port_open, wait_until
from herald_stack.webhook_receiver import WebhookReceiver

TENANT = "demo"
DEMO_KEY = "demo-key"
SEGMENT_USERS = 2_000
WEBHOOK_SECRET = "demo-webhook-secret"  # the demo receiver checks each call's signature with it
PROMETHEUS_PORTS = "9249-9260"
FINAL = (states.DELIVERED, states.EXPIRED, states.DUPLICATE, states.FAILED, states.CANCELLED,
         states.OPTED_OUT)
COLUMNS = (states.DELIVERED, states.EXPIRED, states.DUPLICATE, states.FAILED)


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
        n = {"id": f"demo-{run}-{i}", "tenant_id": TENANT, "user_id": f"user-{i % 3}",
             "priority": "critical", "channels": ["push"],
             "to": {"push_token": f"device-token-{i % 3}", "platform": "android"},
             "content": {"title": title, "body": body}, "created_at": now,
             "expires_at": now + 120_000}
        out.append((n["user_id"], orjson.dumps(n)))
    out.append(out[0])  # the same id again: a duplicate, sent once
    expired = {"id": f"demo-{run}-expired", "tenant_id": TENANT, "user_id": "user-0",
               "priority": "critical", "to": {"push_token": "device-token-0", "platform": "android"},
               "content": {"body": "this one expired on the way"}, "created_at": now - 60_000,
               "expires_at": now - 1_000}
    out.append(("user-0", orjson.dumps(expired)))
    out.append((f"demo-{run}-bad", b'{"id": "demo-malformed", "user_id": "user-1", "content": '))
    return out


def start_job(stack: Stack, name: str, module: str, port: int, settings) -> None:
    job = Managed(name, stack.run_dir)
    if job.running():
        return
    if port_open("127.0.0.1", port):
        raise StackError(f"port {port} is taken (a standalone cluster? `make stack-down` stops"
                         f" it), the {name}'s dashboard needs it")
    proc = job.start([sys.executable, "-m", module], cwd=PROJECT_ROOT,
                     env={**os.environ, **settings_env(settings)})
    wait_until(lambda: _dashboard_up(port), f"{name} dashboard", 180, proc, job.log)


def load_audience(settings, run: str) -> str:
    """A segment of SEGMENT_USERS users and their contacts, loaded by the CLI's own functions."""
    from herald_cli.segments import load_segment, load_users
    name = f"demo-{run}"
    with tempfile.TemporaryDirectory() as tmp:
        users = Path(tmp) / "users.csv"
        lines = ["user_id,push_token,platform,email"]
        for i in range(SEGMENT_USERS):  # half reachable by push, half by email only
            token, platform = (f"tok-{run}-{i}", "android") if i % 2 == 0 else ("", "")
            lines.append(f"cu-{run}-{i},{token},{platform},cu{i}@example.com")
        users.write_text("\n".join(lines) + "\n")
        segment = Path(tmp) / "segment.csv"
        segment.write_text("user_id\n" + "".join(f"cu-{run}-{i}\n" for i in range(SEGMENT_USERS)))
        print(f"    {load_users(settings, TENANT, users)}")
        print(f"    {load_segment(settings, TENANT, name, segment)}")
    return name


# ---------------------------------------------------------------- the API step

def demo_settings(settings: Settings) -> Settings:
    """``settings`` with the demo key, and webhooks to this machine allowed (the demo's
    receiver listens on 127.0.0.1; a deployment keeps them refused)."""
    settings = with_demo_key(settings)
    return settings if settings.webhook_allow_private else settings.replace(
        webhook_allow_private=True)


def with_demo_key(settings: Settings) -> Settings:
    """``settings`` whose API keys include the demo key (for tenant ``demo``)."""
    entry = f"{DEMO_KEY}:{TENANT}"
    keys = [k.strip() for k in settings.api_keys.get_secret_value().split(",") if k.strip()]
    return settings if entry in keys else settings.replace(api_keys=",".join([*keys, entry]))


def api_url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}"


def start_api(run_dir: Path, settings: Settings) -> str:
    """The HTTP API (``python -m herald_api``), the audit consumer (``python -m
    herald_api.audit``) and the webhook dispatcher (``python -m herald_api.webhooks``) as
    background processes with pid files in ``run_dir`` (``make stack-down`` stops them); the
    API's base URL once it answers the demo key."""
    url = api_url(settings)
    env = {**os.environ, **settings_env(settings)}
    api = Managed("api", run_dir)
    if not api.running():
        if port_open(settings.api_host, settings.api_port):
            raise StackError(f"port {settings.api_port} is taken: the API needs it "
                             "(HERALD_API_PORT chooses another)")
        proc = api.start([sys.executable, "-m", "herald_api"], cwd=PROJECT_ROOT, env=env)
        wait_until(lambda: _answers(url + "/healthz") == 200, "the API", 60, proc, api.log)
    if _answers(f"{url}/v1/notifications/no-such-id", DEMO_KEY) == 401:
        raise StackError(f"the API at {url} (started earlier) does not know the demo key: "
                         "`make stack-down`, then `make demo` again")
    for name, module in (("audit-consumer", "herald_api.audit"),
                         ("webhook-dispatcher", "herald_api.webhooks")):
        process = Managed(name, run_dir)
        if not process.running():
            process.start([sys.executable, "-m", module], cwd=PROJECT_ROOT, env=env)
    return url


def register_webhook(url: str, receiver_url: str, key: str = DEMO_KEY) -> tuple[int, dict]:
    """PUT /v1/webhook: the tenant's final statuses go to ``receiver_url``, signed with
    ``WEBHOOK_SECRET``."""
    request = urllib.request.Request(
        f"{url}/v1/webhook", data=orjson.dumps({"url": receiver_url, "secret": WEBHOOK_SECRET}),
        method="PUT", headers={"Authorization": f"Bearer {key}",
                               "Content-Type": "application/json"})
    return _call(request)


def webhook_calls(receiver: WebhookReceiver, notification_id: str,
                  timeout_s: float = 30.0) -> list[dict]:
    """The receiver's calls for ``notification_id``, once it has one (or ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with receiver.lock:
            calls = [c for c in receiver.calls if c["event"].get("id") == notification_id]
        if calls or time.monotonic() >= deadline:
            return calls
        time.sleep(0.25)


def webhook_lines(receiver: WebhookReceiver, notification_id: str) -> list[str]:
    """The summary's webhook part: how many calls came, whether every signature held, and
    the call for the API's notification."""
    mine = webhook_calls(receiver, notification_id)
    with receiver.lock:
        calls = list(receiver.calls)
    signed = sum(1 for c in calls if c["signed"])
    lines = [f"  {len(calls):,} call(s) to {receiver.url}, {signed:,} with a valid "
             f"X-Herald-Signature"]
    for c in mine:
        e = c["event"]
        where = "/".join(x for x in (e.get("channel"), e.get("provider")) if x) or "-"
        lines.append(f"    {e['id']}: {e['state']} {where} at {_clock(e.get('at'))}, event id "
                     f"{c['headers'].get('X-Herald-Event-Id', '-')}, answered {c['status']}")
    if not mine:
        lines.append(f"    (none for {notification_id} yet)")
    return lines


def api_notification(notification_id: str, now_ms: int | None = None) -> dict:
    """A critical push to a demo device, as the API takes it (the id is the caller's)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return {"id": notification_id, "tenant_id": TENANT, "user_id": "user-api",
            "priority": "critical", "channels": ["push"],
            "to": {"push_token": "device-token-api", "platform": "android"},
            "content": {"title": "Hello", "body": "Your first notification through Herald"},
            "created_at": now}


def curl_command(url: str, key: str = DEMO_KEY) -> str:
    """A ``curl`` that sends a notification through the API, for a POSIX shell: a fresh id
    and ``created_at`` each time it is run (so a copy still works tomorrow)."""
    body = orjson.dumps(api_notification("NID", 0)).decode()
    body = body.replace('"NID"', '"hello-\'"$(date +%s)"\'"').replace(
        '"created_at":0', '"created_at":\'"$(date +%s000)"\'')
    return (f"curl -sS {url}/v1/notifications -H {shlex.quote('Authorization: Bearer ' + key)}"
            f" -H 'Content-Type: application/json' \\\n     -d '{body}'")


def send_through_api(url: str, notification: dict, key: str = DEMO_KEY) -> tuple[int, dict]:
    """POST /v1/notifications: (HTTP status, answer)."""
    request = urllib.request.Request(f"{url}/v1/notifications", data=orjson.dumps(notification),
                                     method="POST", headers={
                                         "Authorization": f"Bearer {key}",
                                         "Content-Type": "application/json"})
    return _call(request)


def audit_trail(url: str, notification_id: str, key: str = DEMO_KEY,
                timeout_s: float = 120.0) -> dict:
    """GET /v1/notifications/{id} until it has a final state (the audit consumer has stored
    its last status event); the last answer if none came in ``timeout_s``."""
    request = urllib.request.Request(f"{url}/v1/notifications/{notification_id}",
                                     headers={"Authorization": f"Bearer {key}"})
    deadline = time.monotonic() + timeout_s
    found: dict = {}
    while time.monotonic() < deadline:
        status, found = _call(request)
        if status == 200 and found.get("state") in FINAL:
            return found
        time.sleep(0.25)
    return found


def trail_lines(found: dict) -> list[str]:
    """The audit trail as the summary prints it: one line per status event."""
    lines = [f"  {found.get('id')}: {found.get('state', '?')} "
             f"(enqueued by the API at {_clock(found.get('enqueued_at'))})"]
    for event in found.get("attempts", []):
        where = "/".join(x for x in (event.get("channel"), event.get("provider")) if x) or "-"
        latency = event.get("latency_ms")
        lines.append(f"    {_clock(event.get('at'))}  {event['state']:<10} {where:<10}"
                     + (f" {latency} ms" if latency is not None else "")
                     + (f"  {event['detail']}" if event.get("detail") else ""))
    return lines


def _clock(at_ms: int | None) -> str:
    if at_ms is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(at_ms / 1000)) + f".{at_ms % 1000:03d}"


def _call(request: urllib.request.Request) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, orjson.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"{}")


def _answers(url: str, key: str | None = None) -> int | None:
    """The HTTP status ``url`` answers with (None: nothing listens)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        return _call(urllib.request.Request(url, headers=headers))[0]
    except (OSError, ValueError):
        return None


def main() -> int:
    settings = load_settings()
    if not settings.flink_prometheus_port:
        settings = settings.replace(flink_prometheus_port=PROMETHEUS_PORTS)
    settings = demo_settings(settings)
    stack = Stack(settings)
    started = time.monotonic()
    try:
        step("installing what is missing and starting Kafka, Redis and the provider mocks")
        stack.up()
        step(f"Kafka {settings.kafka_bootstrap}, Redis {settings.redis_host}:{settings.redis_port},"
             f" mock FCM {settings.fcm_url}")
        step("starting the delivery and expansion jobs on embedded Flink MiniClusters")
        start_job(stack, "delivery-job", "jobs.delivery", settings.flink_rest_port, settings)
        start_job(stack, "expansion-job", "jobs.expansion", settings.expansion_rest_port, settings)
        step(f"starting the HTTP API on {api_url(settings)} (key {DEMO_KEY!r} for tenant "
             f"{TENANT!r}), the audit consumer and the webhook dispatcher")
        url = start_api(stack.run_dir, settings)
    except StackError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    receiver = WebhookReceiver(WEBHOOK_SECRET)
    hooked, answer = register_webhook(url, receiver.url)
    step(f"PUT /v1/webhook -> {hooked}: tenant {TENANT!r}'s final statuses go to {receiver.url}"
         + ("" if hooked == 200 else f" ({orjson.dumps(answer).decode()})"))

    run = uuid.uuid4().hex[:6]
    curl = curl_command(url)
    step(f"a notification through the API, as you can send one yourself:\n\n{curl}\n")
    api_id = f"api-{run}"
    status, answer = send_through_api(url, api_notification(api_id))
    print(f"    POST /v1/notifications -> {status} {orjson.dumps(answer).decode()}", flush=True)
    consumer = KafkaConsumer(settings.topic_status, settings.topic_dlq, settings.topic_promo,
                             bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="latest", group_id=None,
                             isolation_level="read_committed")
    consumer.poll(timeout_ms=1000)  # joined at the end of each topic: only this run is read
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")

    records = demo_notifications(run)
    step(f"sending {len(records)} notifications to {settings.topic_critical} "
         "(5 good, 1 repeated, 1 already expired, 1 malformed)")
    for key, value in records:
        producer.send(settings.topic_critical, key=key.encode(), value=value)
    producer.flush()

    step(f"loading a {SEGMENT_USERS:,}-user segment and its users (herald_cli segments/users load)")
    segment = load_audience(settings, run)
    campaign_id = f"demo-{run}-sale"
    now = int(time.time() * 1000)
    campaign = {"campaign_id": campaign_id, "tenant_id": TENANT, "audience": {"segment": segment},
                "channels": ["push", "email"],
                "content": {"title": "Spring sale", "body": "20% off everything today"},
                "created_at": now, "expires_at": now + 600_000}
    step(f"campaign {campaign_id} to {settings.topic_campaigns}")
    producer.send(settings.topic_campaigns, key=campaign_id.encode(), value=orjson.dumps(campaign))
    producer.flush()
    producer.close()

    final: dict[str, dict] = {}  # id → its last final status event
    expanded, dead, critical_ids = 0, [], {f"demo-{run}-{i}" for i in range(5)} | {f"demo-{run}-expired"}
    last_print = 0.0
    deadline = time.monotonic() + 150

    def campaign_done() -> int:
        return sum(1 for i in final if i.startswith(campaign_id + ":"))

    while time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            for message in batch:
                value = orjson.loads(message.value)
                if message.topic == settings.topic_promo:
                    expanded += value.get("campaign_id") == campaign_id
                elif message.topic == settings.topic_dlq:
                    if (message.key or b"").decode().startswith(f"demo-{run}-"):
                        dead.append(value)
                elif value.get("id", "").startswith(f"demo-{run}-") and value["state"] in FINAL:
                    if value["id"] in critical_ids and value["state"] != states.DUPLICATE:
                        latency = value.get("latency_ms")
                        print(f"    {value['id']:>22}  {value['state']:<10} "
                              f"{value.get('provider') or '-':<5}"
                              f" {'' if latency is None else f'{latency} ms'}", flush=True)
                    key = value["id"] + ("#dup" if value["state"] == states.DUPLICATE else "")
                    final[key] = value
        if time.monotonic() - last_print >= 2:
            last_print = time.monotonic()
            print(f"    campaign: {expanded:,}/{SEGMENT_USERS:,} expanded onto "
                  f"{settings.topic_promo}, {campaign_done():,} with a final status", flush=True)
        critical_done = len([i for i in final if not i.startswith(campaign_id)]) >= 7
        if critical_done and dead and campaign_done() >= SEGMENT_USERS:
            break
    consumer.close()
    print(f"    campaign: {expanded:,}/{SEGMENT_USERS:,} expanded, {campaign_done():,} with a "
          f"final status", flush=True)

    table: Counter = Counter()
    for value in final.values():
        table[(value["priority"], value.get("channel") or "-", value["state"])] += 1
    print("\nsummary (each notification's final status)")
    print(f"  {'class':<12}{'channel':<9}" + "".join(f"{c:>11}" for c in COLUMNS))
    for priority, channel in sorted({(p, ch) for p, ch, _ in table}):
        print(f"  {priority:<12}{channel:<9}"
              + "".join(f"{table[(priority, channel, c)]:>11,}" for c in COLUMNS))
    print(f"  dead letters: {len(dead)} ({', '.join(sorted({d['stage'] for d in dead}))})")
    missing = Counter(d["reason"].split(";")[-1].strip()[:60] for d in dead
                      if d.get("stage") == states.STAGE_DELIVERY)
    for reason, n in missing.most_common(3):
        print(f"    {n:>5} × {reason}")
    if any("missing_contact" in reason for reason in missing):
        print("  (a campaign's notifications carry no contacts: until the delivery job looks "
              "them up in the user records, they fail with missing_contact)")
    trail = audit_trail(url, api_id) if status == 202 else {}
    print(f"\naudit trail of the API's notification (GET {url}/v1/notifications/{api_id})")
    print("\n".join(trail_lines(trail)) if trail else "  (none: the API refused it)")
    print(f"\nwebhook (the tenant's endpoint, PUT {url}/v1/webhook)")
    hook_calls = webhook_calls(receiver, api_id)
    print("\n".join(webhook_lines(receiver, api_id)))
    if hooked == 200:  # the receiver goes with the demo: so does the webhook
        _call(urllib.request.Request(f"{url}/v1/webhook", method="DELETE",
                                     headers={"Authorization": f"Bearer {DEMO_KEY}"}))
    receiver.stop()
    prometheus = _prometheus_port()
    print(f"\nFlink dashboards: delivery http://localhost:{settings.flink_rest_port}, expansion "
          f"http://localhost:{settings.expansion_rest_port} (backpressure, busy time, and "
          f"Herald's metrics under each operator's Metrics tab)")
    if prometheus:
        print(f"Prometheus: http://localhost:{prometheus}/metrics "
              f"(flink_taskmanager_job_task_operator_priority_herald_*)")
    print(f"API: {url} (OpenAPI at {url}/openapi.json, docs/API.md); send one yourself:\n\n"
          f"{curl}\n\nthen GET {url}/v1/notifications/<its id> with the same "
          "Authorization header shows its status and audit trail.")
    print(f"The stack, the jobs, the API, the audit consumer and the webhook dispatcher keep "
          f"running "
          f"({time.monotonic() - started:.0f} s for this demo). Stop everything with "
          "`make stack-down`.")
    states_seen = Counter(v["state"] for k, v in final.items() if not k.startswith(campaign_id))
    complete = (states_seen.get("delivered") == 5 and states_seen.get("expired") == 1
                and states_seen.get("duplicate") == 1 and campaign_done() == SEGMENT_USERS
                and trail.get("state") == states.DELIVERED
                and any(c["signed"] and c["event"]["state"] == states.DELIVERED
                        for c in hook_calls))
    return 0 if complete else 1


def _prometheus_port() -> int | None:
    """The first port of the range whose /metrics carries Herald's metrics."""
    first, last = (int(p) for p in PROMETHEUS_PORTS.split("-"))
    for port in range(first, last + 1):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                if b"herald_sends" in r.read():
                    return port
        except OSError:
            continue
    return None


def _dashboard_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jobs/overview", timeout=2) as r:
            return any(j["state"] == "RUNNING" for j in orjson.loads(r.read())["jobs"])
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
