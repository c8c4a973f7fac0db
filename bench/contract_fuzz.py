"""A randomized contract test: one seeded scenario per run, checked from outside Herald.

A scenario (all of it drawn from the seed, so a failure replays): three tenants that reuse each
other's notification ids and user ids (each tenant's users have their own push tokens, phones
and emails), users whose records carry `seq` and are produced shuffled within bursts, replays
of records (the same bytes again, sometimes before the original), expiries a few seconds out
and a few already past, critical records produced straight to `herald.critical` and
promotional ones to `herald.promo` (keyed by user id, as an upstream app or the expansion stage
would), over push (FCM and APNs), SMS and email with fallbacks; and the four provider mocks
switched at random moments through their admin API to slow (latency), failing (5xx),
throttling (quota: 429 + Retry-After) and down (503 or refused connections).

The delivery job runs on the MiniCluster against mocks of the run's own. Then the checker reads
`herald.status` to its end and the mocks' logs (every request, with the mock's own receive
time ``t_ms``) and counts each kind of violation (``KINDS``): every count must be 0.

    python bench/contract_fuzz.py --minutes N        # fresh seeds until N minutes are spent
    python bench/contract_fuzz.py --seed S           # replay one scenario
Writes bench/results/contract_fuzz.{json,md}. ``tests/integration/test_contract_fuzz.py`` runs
one scenario with a fixed seed (``HERALD_FUZZ_SEED`` replays another).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import requests  # noqa: E402

PROVIDERS = ("fcm", "apns", "twilio", "sendgrid")
FATES = ("delivered", "expired", "failed", "cancelled", "opted_out")

# Every kind of violation the checker counts; a run passes when all are 0.
KINDS = {
    "lost": "a notification that had to arrive (long expiry, no failure the scenario caused) "
            "was never accepted by a provider for its tenant's contact",
    "duplicate_delivery": "accepted by the providers more than once (beyond a call whose answer "
                          "the scenario cut off)",
    "out_of_order": "accepted before a notification that precedes it (seq, or log order without "
                    "seq) for the same tenant, user and class, which had not been sent round "
                    "the retry topic by then",
    "delivered_after_expiry": "a provider accepted it at or after its expires_at (mock's "
                              "receive time)",
    "request_after_expiry": "a request for it reached a provider at or after its expires_at "
                            "(answered with an error)",
    "answer_after_expiry": "reported delivered although the provider's answer could only come "
                           "after its expires_at (the request's timeout ran past the expiry)",
    "false_delivered": "a `delivered` status without a request accepted by that provider for "
                       "this tenant's contact",
    "unreported_delivery": "final state expired/failed/... while a provider accepted it and "
                           "answered in time",
    "missing_final": "no final state (delivered, expired, failed, ...) on herald.status",
    "conflicting_final": "more than one distinct final state for one notification",
    "false_duplicate": "more `duplicate` events than the replays of this tenant's id",
    "unexcused_failure": "failed (dead-lettered) without the scenario making its last "
                         "channel's provider fail or go down during its life",
    "unexpected_state": "a final state the scenario cannot cause (cancelled, opted_out)",
    "cross_tenant": "a request carrying one tenant's notification reached another tenant's "
                    "contact",
    "misaddressed": "a request for a notification reached another user's contact of its tenant",
    "wrong_content": "a request whose content is not its notification's",
    "unknown_status": "a status event for a (tenant, id) the scenario never produced",
}

CHANNEL_SETS = ((("push",), 3), (("push", "sms"), 3), (("push", "email"), 2), (("sms",), 1),
                (("email",), 1), (("sms", "email"), 1), (("push", "sms", "email"), 2),
                (("email", "push"), 1))
MODES = (("healthy", 35), ("slow", 15), ("failing", 15), ("throttling", 15), ("down", 20))
MARK_RE = re.compile(r"\[([A-Za-z0-9]+)\|([^|\]]+)\|([^|\]]+)\]")
GAP_RE = re.compile(r"seq gap (\d+)\.\.(\d+) not received")  # the gate's `accepted` detail
TIMEOUT_SLACK_MS = 100  # an answer sent this long after expires_at was waited for past it


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------- the scenario

@dataclass
class Note:
    """One logical notification: a tenant's id, produced ``len(copies)`` times."""
    tenant: str
    id: str
    user: str
    klass: str             # "critical" | "promotional"
    channels: tuple
    life: str              # "long" (must arrive) | "short" (a few s) | "stale" (already past)
    ttl_ms: int
    at_s: float            # when the original is produced, from the scenario's start
    copies: list           # offsets (s) of every copy, the original's included, sorted
    seq: int | None = None
    order: int = 0         # position in its stream: seq, or the log order without seq
    record: dict | None = None  # fixed when the first copy is produced
    produced_ms: list = field(default_factory=list)
    logged_ms: list = field(default_factory=list)  # each copy's Kafka timestamp, when known

    @property
    def key(self) -> tuple[str, str]:
        return self.tenant, self.id

    @property
    def stream(self) -> tuple[str, str, str]:
        return self.tenant, self.user, self.klass


@dataclass
class Switch:
    at_s: float
    provider: str
    mode: str
    config: dict


@dataclass
class Scenario:
    seed: int
    run: str
    span_s: float
    tenants: list
    users: list
    contacts: dict         # (tenant, user) → {"push_token", "platform", "phone", "email"}
    notes: list
    switches: list


def make_scenario(seed: int, run: str, notifications: int = 600, span_s: float = 30.0,
                  tenants: int = 3, users: int = 12, *, lives: tuple = (57, 40, 3),
                  promotional: float = 0.2, replays: float = 0.12,
                  seq_share: float = 0.7) -> Scenario:
    """The whole scenario from ``seed``; ``run`` only names the tenants (so Redis keys of two
    runs of one seed never meet) and never changes what is drawn. ``lives``: weights of long
    (must arrive), short (a few s) and stale expiries; ``promotional``, ``replays``,
    ``seq_share``: the shares of promotional notes, of notes replayed, of streams with `seq`
    (bench/stress.py draws backlogs with its own mix; the defaults are the fuzz test's)."""
    rng = random.Random(seed)
    names = [f"{n}{run}" for n in ("acme", "globex", "initech", "umbrella", "hooli")[:tenants]]
    user_ids = [f"u{i}" for i in range(users)]
    contacts = {}
    for ti, t in enumerate(names):
        for ui, u in enumerate(user_ids):
            ios = rng.random() < 0.3
            token = (hashlib.sha256(f"{t}/{u}".encode()).hexdigest() if ios
                     else f"tok-{t}-{u}")
            contacts[(t, u)] = {"push_token": token, "platform": "ios" if ios else "android",
                                "phone": f"+1555{ti}{ui:06d}", "email": f"{u}@{t}.example.com"}
    seq_streams: dict = {}
    per_tenant = Counter()
    notes: list[Note] = []
    channel_sets, channel_weights = zip(*CHANNEL_SETS)
    while len(notes) < notifications:
        tenant = rng.choice(names)
        user = rng.choice(user_ids)
        klass = "promotional" if rng.random() < promotional else "critical"
        stream = (tenant, user, klass)
        if stream not in seq_streams:
            seq_streams[stream] = rng.random() < seq_share
        start = rng.uniform(0, span_s - 1)
        for _ in range(min(rng.randint(1, 4), notifications - len(notes))):
            life = rng.choices(("long", "short", "stale"), lives)[0]
            ttl = (600_000 if life == "long" else int(rng.uniform(2_500, 8_000))
                   if life == "short" else -2_000)
            at = start + rng.uniform(0, 0.6)
            copies = [at]
            if rng.random() < replays:
                copies += [max(0.0, at + rng.uniform(-1.5, 4.0))
                           for _ in range(rng.randint(1, 2))]
            note = Note(tenant, f"x-{per_tenant[tenant]}", user, klass,
                        rng.choices(channel_sets, channel_weights)[0], life, ttl, at,
                        sorted(copies))
            per_tenant[tenant] += 1
            notes.append(note)
    # Order within a stream: seq'd streams number their notes by time, then each burst's
    # production order is shuffled (the producer's clock is not its seq); the others are
    # ordered by the log (their first copy's position, fixed when produced).
    by_stream = defaultdict(list)
    for note in notes:
        by_stream[note.stream].append(note)
    for stream, group in by_stream.items():
        group.sort(key=lambda n: n.at_s)
        if not seq_streams[stream]:
            continue
        for i, note in enumerate(group):
            note.seq = i
        bursts, current = [], [group[0]]
        for note in group[1:]:
            if note.at_s - current[0].at_s < 0.6:
                current.append(note)
            else:
                bursts.append(current)
                current = [note]
        bursts.append(current)
        for burst in bursts:
            times = [n.at_s for n in burst]
            rng.shuffle(times)
            for note, t in zip(burst, times):
                shift = t - note.at_s
                note.at_s = t
                note.copies = sorted(max(0.0, c + shift) for c in note.copies)
    # Each provider's phases: random modes, one of them the provider's own disturbance, so
    # every scenario has a slow, a failing, a throttling and a down provider at some moment.
    switches = []
    modes, mode_weights = zip(*MODES)
    own = ["slow", "failing", "throttling", "down"]
    rng.shuffle(own)
    for provider, guaranteed in zip(PROVIDERS, own):
        phases, t = [], rng.uniform(0, 3)
        while t < span_s:
            length = min(rng.uniform(3, 8), span_s - t)
            phases.append([t, length, rng.choices(modes, mode_weights)[0]])
            t += length
        if phases:  # a span shorter than the first phase's start has none
            rng.choice(phases)[2] = guaranteed
        for t, length, mode in phases:
            switches.append(Switch(round(t, 3), provider, mode, mode_config(mode, length, rng)))
        switches.append(Switch(span_s, provider, "healthy", mode_config("healthy", 0, rng)))
    switches.sort(key=lambda s: s.at_s)
    return Scenario(seed, run, span_s, names, user_ids, contacts, notes, switches)


def mode_config(mode: str, length_s: float, rng: random.Random) -> dict:
    """A full mock config for one phase (every switch named, so a phase undoes the last)."""
    config = {"latency_ms": 0, "latency_jitter_ms": 0, "failure_rate": 0.0, "quota_rps": None,
              "outage": None, "seed": rng.randrange(1 << 30)}
    if mode == "slow":
        config["latency_ms"] = rng.choice((1_000, 3_000, 6_000))
    elif mode == "failing":
        config["failure_rate"] = rng.choice((0.3, 0.6, 0.9))
    elif mode == "throttling":
        config["quota_rps"] = rng.choice((3, 10, 30))
    elif mode == "down":
        config["outage"] = {"mode": rng.choice(("503", "refuse")), "start_in_s": 0,
                            "duration_s": round(max(length_s - 0.2, 0.5), 3)}
    return config


def record_of(scenario: Scenario, note: Note, at_ms: int) -> dict:
    """The note's record as first produced at ``at_ms``: every copy is these bytes."""
    created = at_ms - 10_000 if note.life == "stale" else at_ms
    expires = at_ms + note.ttl_ms
    content = f"[{note.tenant}|{note.id}|{note.user}] {note.life} {note.klass}"
    record = {"id": note.id, "tenant_id": note.tenant, "user_id": note.user,
              "priority": note.klass, "channels": list(note.channels),
              "to": dict(scenario.contacts[(note.tenant, note.user)]),
              "content": {"title": note.tenant, "body": content},
              "created_at": created, "expires_at": expires}
    if note.seq is not None:
        record["seq"] = note.seq
    return record


# ---------------------------------------------------------------------------- the run

class Mocks:
    """The four provider mocks of this run's own, each in its own process (one event loop per
    provider, as real providers are apart: a busy mock does not delay another's receive
    times), so switching them disturbs no one else's test."""

    def __init__(self, log_dir: Path, timeout_s: float = 30.0):
        from herald_stack.processes import free_port
        self.ports = {p: free_port() for p in PROVIDERS}
        self.stderr = open(log_dir / "mocks.stderr", "wb")
        self.procs = {}
        try:
            for provider, port in self.ports.items():
                self.procs[provider] = subprocess.Popen(
                    [sys.executable, "-m", "herald_mocks", "--provider", provider, "--port",
                     str(port)], cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                    stdout=subprocess.PIPE, stderr=self.stderr)
            deadline = time.monotonic() + timeout_s
            for provider, proc in self.procs.items():
                self._await_ready(provider, proc, deadline)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _await_ready(provider: str, proc: subprocess.Popen, deadline: float) -> None:
        pending = b""
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            while b" listening on " not in pending:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"the {provider} mock did not report ready")
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"the {provider} mock exited ({proc.wait()})")
                pending += chunk
        finally:
            sel.close()

    def url(self, provider: str) -> str:
        return f"http://127.0.0.1:{self.ports[provider]}"

    def configure(self, provider: str, config: dict) -> tuple[int, int]:
        """Apply ``config``; (epoch ms before the request, after the answer): the switch took
        effect in between."""
        deadline = time.monotonic() + 10
        while True:
            before = now_ms()
            try:
                answer = requests.post(f"{self.url(provider)}/_mock/config", json=config,
                                       timeout=10)
                break
            except requests.ConnectionError:
                # A refused-connection outage closes the admin API's port too, until it ends
                # by itself (its duration stops short of the next switch).
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        answer.raise_for_status()
        return before, now_ms()

    def log(self, provider: str) -> list[dict]:
        answer = requests.get(f"{self.url(provider)}/_mock/log", params={"what": "all"},
                              timeout=60)
        answer.raise_for_status()
        return answer.json()["records"]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            proc.stdout.close()
        self.stderr.close()


class StatusFollower:
    """Reads a topic from its start, every partition, as it grows."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 30.0):
        from kafka import KafkaConsumer, TopicPartition
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      group_id=None)
        deadline = time.monotonic() + timeout_s
        partitions = self.consumer.partitions_for_topic(topic)
        while not partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: no partitions")
            self.consumer.poll(timeout_ms=100)
            partitions = self.consumer.partitions_for_topic(topic)
        self.tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)
        self.events: list[dict] = []

    def poll(self, timeout_ms: int = 300) -> list[dict]:
        new = []
        for batch in self.consumer.poll(timeout_ms=timeout_ms).values():
            new.extend(orjson.loads(m.value) for m in batch)
        self.events.extend(new)
        return new

    def to_end(self, timeout_s: float = 60.0) -> list[dict]:
        """Everything up to the end offsets as they are now."""
        end = self.consumer.end_offsets(self.tps)
        deadline = time.monotonic() + timeout_s
        while any(self.consumer.position(tp) < end[tp] for tp in self.tps):
            if time.monotonic() > deadline:
                raise TimeoutError("could not read herald.status to its end offsets")
            self.poll(200)
        return self.events

    def close(self) -> None:
        self.consumer.close()


@dataclass
class RunData:
    """What a run leaves for the checker."""
    scenario: Scenario
    statuses: list
    mock_logs: dict            # provider → every request the mock logged
    switch_log: list           # (provider, mode, config, epoch ms before, after)
    provider_timeout_ms: int
    timings: dict
    gap_timeout_ms: int = 2_000  # the job's: how long a seq gap in the log is waited for


def run_scenario(scenario: Scenario, settings, log_dir: Path, *, drain_s: float = 150.0,
                 progress=None) -> RunData:
    """Run ``scenario`` through a fresh delivery job on ``settings`` (its topics must exist and
    be the run's own) with mocks of its own; everything it starts is stopped before it returns."""
    from bench.common import start_system, stop_system
    from kafka import KafkaProducer
    say = progress or (lambda _msg: None)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    mocks = Mocks(log_dir)
    job = None
    follower = None
    producer = None
    switch_log: list = []
    timings: dict = {}
    try:
        settings = settings.replace(
            fcm_url=mocks.url("fcm"), apns_url=mocks.url("apns"),
            twilio_url=mocks.url("twilio"), sendgrid_url=mocks.url("sendgrid"),
            ratelimit_namespace=f"rl{scenario.run}", dedup_ttl_ms=900_000,
            flink_checkpoint_dir=str(log_dir / "checkpoints"))
        job = start_system([sys.executable, "-m", "jobs.delivery"], settings,
                           log_dir / "delivery.log")
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                 linger_ms=0, max_in_flight_requests_per_connection=1)
        follower = StatusFollower(settings.kafka_bootstrap, settings.topic_status)

        def alive() -> None:
            if job.poll() is not None:
                tail = (log_dir / "delivery.log").read_text(errors="replace").splitlines()[-30:]
                raise RuntimeError(f"the delivery job exited ({job.returncode}):\n" +
                                   "\n".join(tail))

        warm_up(producer, follower, settings, scenario.run, alive)
        timings["job_ready_s"] = round(time.monotonic() - started, 1)
        say(f"job ready after {timings['job_ready_s']} s; scenario {scenario.seed} starts")

        # The schedule: copies produced and mocks switched at their moments.
        events = [(c, 1, note) for note in scenario.notes for c in note.copies]
        events += [(s.at_s, 0, s) for s in scenario.switches]
        events.sort(key=lambda e: (e[0], e[1]))
        t0 = time.monotonic()
        position = 0
        i = 0
        while i < len(events):
            due = t0 + events[i][0]
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.5))  # pacing the scenario's own schedule
                if wait > 0.5:
                    alive()
                    follower.poll(0)
                continue
            sent = False
            while i < len(events) and t0 + events[i][0] <= time.monotonic():
                _, kind, item = events[i]
                i += 1
                if kind == 0:
                    before, after = mocks.configure(item.provider, item.config)
                    switch_log.append((item.provider, item.mode, item.config, before, after))
                    continue
                at = now_ms()
                if item.record is None:
                    item.record = record_of(scenario, item, at)
                    item.order = item.seq if item.seq is not None else position
                    position += 1
                item.produced_ms.append(at)
                topic = settings.topic_critical if item.klass == "critical" else \
                    settings.topic_promo
                producer.send(topic, key=item.user.encode(), value=orjson.dumps(item.record))
                sent = True
            if sent:
                producer.flush()
        timings["schedule_s"] = round(time.monotonic() - t0, 1)
        say(f"schedule done ({len(events)} events in {timings['schedule_s']} s); draining")

        # Drain: until every copy has its terminal event (a final state or `duplicate`).
        copies = {n.key: len(n.copies) for n in scenario.notes}
        deadline = time.monotonic() + drain_s
        while True:
            outcome = Counter((e.get("tenant_id"), e.get("id")) for e in follower.events
                              if e.get("state") in FATES or e.get("state") == "duplicate")
            waiting = sum(1 for k, c in copies.items() if outcome[k] < c)
            if not waiting or time.monotonic() > deadline:
                break
            alive()
            follower.poll(500)
        timings["drain_s"] = round(time.monotonic() - t0 - timings["schedule_s"], 1)
        timings["unfinished_at_drain_end"] = waiting
        say(f"drained in {timings['drain_s']} s ({waiting} notifications unfinished)")
        statuses = list(follower.to_end())
        logs = {p: mocks.log(p) for p in PROVIDERS}
        # Everything the checker reads, for a look afterwards (`check(load_run(path))`).
        (log_dir / "run.json").write_bytes(orjson.dumps({
            "scenario": {**{k: v for k, v in scenario.__dict__.items()
                            if k not in ("notes", "contacts")},
                         "contacts": [[t, u, c] for (t, u), c in scenario.contacts.items()]},
            "notes": [n.__dict__ for n in scenario.notes], "statuses": statuses,
            "mock_logs": logs, "switch_log": switch_log, "timings": timings,
            "provider_timeout_ms": int(settings.provider_timeout_s * 1000)},
            default=lambda o: o.__dict__))
    finally:
        if follower is not None:
            follower.close()
        if producer is not None:
            producer.close()
        if job is not None:
            stop_system(job)
        mocks.stop()
    timings["total_s"] = round(time.monotonic() - started, 1)
    return RunData(scenario, statuses, logs, switch_log,
                   int(settings.provider_timeout_s * 1000), timings)


def warm_up(producer, follower: "StatusFollower", settings, run: str, alive,
            timeout_s: float = 240.0) -> None:
    """One critical notification per provider, of a tenant the checker ignores
    (``warm{run}``), and wait until all are delivered: the job is running and every client
    has connected. ``alive()`` raises if the job died."""
    warm_tenant = f"warm{run}"
    warm = []
    for i, (channel, platform) in enumerate((("push", "android"), ("push", "ios"),
                                             ("sms", None), ("email", None))):
        t = now_ms()
        to = {"push_token": hashlib.sha256(b"warm").hexdigest() if platform == "ios"
              else "tok-warm", "platform": platform or "android", "phone": "+15559990000",
              "email": "warm@warm.example.com"}
        warm.append({"id": f"warm-{i}", "tenant_id": warm_tenant, "user_id": f"w{i}",
                     "priority": "critical", "channels": [channel], "to": to,
                     "content": {"body": "warm-up"}, "created_at": t,
                     "expires_at": t + 600_000})
    for record in warm:
        producer.send(settings.topic_critical, key=record["user_id"].encode(),
                      value=orjson.dumps(record))
    producer.flush()
    deadline = time.monotonic() + timeout_s
    while len({e["id"] for e in follower.events if e.get("tenant_id") == warm_tenant
               and e["state"] == "delivered"}) < len(warm):
        alive()
        if time.monotonic() > deadline:
            raise TimeoutError("the job never delivered its warm-up notifications")
        follower.poll()


def load_run(path: Path) -> RunData:
    """A run written by ``run_scenario`` (its ``run.json``), to be checked again."""
    raw = orjson.loads(Path(path).read_bytes())
    sc = raw["scenario"]
    contacts = {(t, u): c for t, u, c in sc["contacts"]}
    scenario = Scenario(sc["seed"], sc["run"], sc["span_s"], sc["tenants"], sc["users"],
                        contacts, [Note(**{**n, "channels": tuple(n["channels"])})
                                   for n in raw["notes"]],
                        [Switch(**s) for s in sc["switches"]])
    return RunData(scenario, raw["statuses"], raw["mock_logs"],
                   [tuple(s) for s in raw["switch_log"]], raw["provider_timeout_ms"],
                   raw["timings"], raw.get("gap_timeout_ms", 2_000))


# ---------------------------------------------------------------------------- the checker

@dataclass
class Report:
    seed: int
    run: str
    counts: dict               # kind → violations
    examples: dict             # kind → a few of them, for people
    info: dict                 # what happened, for people (not checked)
    timings: dict

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        bad = {k: v for k, v in self.counts.items() if v}
        lines = [f"contract fuzz seed {self.seed} (run {self.run}): "
                 f"{'no violations' if not bad else f'{self.total} violations'}",
                 "  violations: " + ", ".join(f"{k}={v}" for k, v in self.counts.items()),
                 "  info: " + ", ".join(f"{k}={v}" for k, v in self.info.items()),
                 "  timings: " + ", ".join(f"{k}={v}" for k, v in self.timings.items())]
        for kind in bad:
            lines.append(f"  {kind} ({KINDS[kind]}), e.g.:")
            lines.extend(f"    {e}" for e in self.examples[kind][:5])
        lines.append(f"  replay: HERALD_FUZZ_SEED={self.seed} .venv/bin/python -m pytest "
                     f"tests/integration/test_contract_fuzz.py -s   (or python "
                     f"bench/contract_fuzz.py --seed {self.seed})")
        return "\n".join(lines)


class Timeline:
    """The mocks' switches as the checker needs them: per provider, the latency in force at a
    moment (a set: a switch is only known to have happened between two instants), when
    refused-connection outages began, and when the provider was failing or down."""

    def __init__(self, switch_log: list):
        self.latency = defaultdict(lambda: [(0, 0, 0)])  # provider → [(before, after, ms)]
        self.refuse_starts = defaultdict(list)           # provider → [(before, after)]
        self.bad = defaultdict(list)                     # provider → [(from, until)]
        last_bad = {}
        for provider, mode, config, before, after in sorted(switch_log, key=lambda s: s[3]):
            self.latency[provider].append((before, after, config["latency_ms"]))
            if provider in last_bad:
                self.bad[provider].append((last_bad.pop(provider), after))
            if mode in ("failing", "down"):
                last_bad[provider] = before
            if mode == "down" and config["outage"]["mode"] == "refuse":
                self.refuse_starts[provider].append((before, after))
        for provider, since in last_bad.items():
            self.bad[provider].append((since, 1 << 62))

    def latencies(self, provider: str, t: int) -> list[int]:
        steps = self.latency[provider]
        known = 0
        out = []
        for before, after, ms in steps:
            if after <= t:
                known = ms
            elif before <= t:
                out.append(ms)
        return [known] + out

    def answer_lost(self, provider: str, t: int) -> bool:
        """A refused-connection outage began while a request received at ``t`` awaited its
        answer: the mock dropped the connection, so the caller never heard it was accepted."""
        latest = t + max(self.latencies(provider, t)) + TIMEOUT_SLACK_MS
        return any(after >= t and before <= latest
                   for before, after in self.refuse_starts[provider])

    def disturbed(self, provider: str, since: int, until: int) -> bool:
        return any(a <= until and b >= since for a, b in self.bad[provider])


def provider_for(channel: str, platform: str | None) -> str:
    if channel == "push":
        return "apns" if platform == "ios" else "fcm"
    return {"sms": "twilio", "email": "sendgrid"}[channel]


# A status detail of a call re-sent because its claim was left in flight by a crash
# (udfs/call_stage.py RESENT_AFTER_CRASH): the one repeat the contract allows.
IN_FLIGHT_AT_A_CRASH = "in flight at a crash"


def check(data: RunData, *, restarts: bool = False) -> Report:
    """Count every violation of the contract in one run (see ``KINDS``).

    ``restarts``: the run had crashes or job restarts (bench/stress.py's faults). A
    notification accepted once more after one is not a duplicate when its status reports it
    re-sent as a call in flight at a crash (``info["reported_in_flight"]`` counts those
    reports, to be held to what a crash can leave in flight), and status events may repeat
    (the status sink is at-least-once and a restore replays records since its checkpoint), so
    only a `duplicate` event for a notification produced once is a false one."""
    sc = data.scenario
    counts = {k: 0 for k in KINDS}
    examples = defaultdict(list)

    def flag(kind: str, example) -> None:
        counts[kind] += 1
        if len(examples[kind]) < 10:
            examples[kind].append(example)

    timeline = Timeline(data.switch_log)
    notes = {n.key: n for n in sc.notes if n.record is not None}
    owner = {}  # (provider, recipient) → (tenant, user)
    for (tenant, user), c in sc.contacts.items():
        owner[(provider_for("push", c["platform"]), c["push_token"])] = (tenant, user)
        owner[("twilio", c["phone"])] = (tenant, user)
        owner[("sendgrid", c["email"])] = (tenant, user)

    # The providers' side: each request given to the notification it was for.
    requests_of = defaultdict(list)  # key → every request for it (any result), in mock order
    totals = Counter()
    for provider, records in data.mock_logs.items():
        for r in records:
            who = owner.get((provider, r.get("to")))
            if who is None:
                continue  # the warm-up's recipients
            totals[f"{provider}:{r['result']}"] += 1
            tenant, user = who
            key = (tenant, r.get("herald_id"))
            body = orjson.dumps(r.get("request")).decode()
            marks = MARK_RE.findall(body)
            if key not in notes:
                flag("cross_tenant", f"{provider} request for id {r.get('herald_id')!r} to "
                                     f"{tenant}/{user}, who have no such notification")
                continue
            note = notes[key]
            if user != note.user:
                flag("misaddressed", f"{key} for {note.user} went to {user}'s {provider}")
            if not marks:
                flag("wrong_content", f"{key} at {provider}: no content mark in {body[:200]}")
            for mark_tenant, mark_id, mark_user in marks:
                if mark_tenant != tenant:
                    flag("cross_tenant", f"{mark_tenant}'s {mark_id} reached {tenant}/{user} "
                                         f"at {provider} as {key}")
                elif (mark_id, mark_user) != (note.id, note.user):
                    flag("wrong_content", f"{key} at {provider} carried {mark_id}/{mark_user}")
            requests_of[key].append(dict(r, provider=provider))

    # Herald's side: the status events of each notification.
    statuses = defaultdict(list)
    for s in data.statuses:
        if s.get("tenant_id") not in sc.tenants:
            continue
        key = (s["tenant_id"], s["id"])
        if key not in notes:
            flag("unknown_status", {k: s.get(k) for k in ("tenant_id", "id", "state", "detail")})
            continue
        statuses[key].append(s)

    accepted_at = {}  # key → its first accepted request
    fates_seen = Counter()
    for key, note in notes.items():
        expires = note.record["expires_at"]
        reqs = requests_of[key]
        # in time order across providers: a repeat is judged by the earlier acceptances
        accepted = sorted((r for r in reqs if r["result"] == "accepted"),
                          key=lambda r: r["t_ms"])
        events = statuses[key]
        fates = [e for e in events if e["state"] in FATES]
        states_of = sorted({e["state"] for e in fates})
        duplicates = sum(e["state"] == "duplicate" for e in events)
        for state in states_of:
            fates_seen[state] += 1
        for r in reqs:
            if r["t_ms"] >= expires:
                kind = ("delivered_after_expiry" if r["result"] == "accepted"
                        else "request_after_expiry")
                flag(kind, f"{key} ({note.life}, ttl {note.ttl_ms} ms) reached {r['provider']} "
                           f"{r['t_ms'] - expires} ms after expires_at ({r['result']})")
        if not fates:
            flag("missing_final", f"{key}: events {[e['state'] for e in events]}")
        if len(states_of) > 1:
            flag("conflicting_final", f"{key}: {states_of}")
        if (duplicates and len(note.copies) == 1) if restarts else \
                duplicates > len(note.copies) - 1:
            flag("false_duplicate", f"{key}: {duplicates} duplicate events for "
                                    f"{len(note.copies)} copies; states {states_of}")
        for state in states_of:
            if state in ("cancelled", "opted_out"):
                flag("unexpected_state", f"{key}: {state}")
        if accepted:
            accepted_at[key] = accepted[0]
        resent = restarts and any(IN_FLIGHT_AT_A_CRASH in (e.get("detail") or "")
                                  for e in events)
        if resent:
            totals["reported_in_flight"] += 1
        if len(accepted) > 1:
            lost_answers = [r for r in accepted[:-1]
                            if timeline.answer_lost(r["provider"], r["t_ms"])
                            or min(timeline.latencies(r["provider"], r["t_ms"]))
                            >= data.provider_timeout_ms]
            if len(accepted) - 1 > len(lost_answers) + resent:
                flag("duplicate_delivery", f"{key}: accepted {len(accepted)} times at "
                                           f"{[(r['provider'], r['t_ms']) for r in accepted]}"
                                           + ("; reported in flight at a crash" if resent
                                              else ""))
            elif len(accepted) - 1 > len(lost_answers):
                totals["resent_in_flight_at_a_crash"] += 1
            else:
                totals["resent_after_a_lost_answer"] += 1
        for e in fates:
            if e["state"] != "delivered":
                continue
            provider = e.get("provider")
            proof = [r for r in accepted if provider in (None, r["provider"])]
            if not proof:
                flag("false_delivered", f"{key}: delivered by {provider} ({e.get('detail')!r}); "
                                        f"accepted: {[r['provider'] for r in accepted]}")
                continue
            answered = min(r["t_ms"] + min(timeline.latencies(r["provider"], r["t_ms"]))
                           for r in proof)
            if answered >= expires + TIMEOUT_SLACK_MS:
                flag("answer_after_expiry", f"{key}: {provider} answered at the earliest "
                                            f"{answered - expires} ms after expires_at, "
                                            f"reported delivered at {e['at'] - expires:+} ms")
        if accepted and fates and "delivered" not in states_of:
            in_time = [r for r in accepted
                       if not timeline.answer_lost(r["provider"], r["t_ms"])
                       and r["t_ms"] + max(timeline.latencies(r["provider"], r["t_ms"]))
                       < min(expires, r["t_ms"] + data.provider_timeout_ms) - 50]
            if in_time and not resent:  # (a crash's call in flight: said so, expired)
                flag("unreported_delivery", f"{key}: {states_of} but accepted by "
                                            f"{in_time[0]['provider']} at "
                                            f"{in_time[0]['t_ms'] - expires:+} ms to expiry")
        if "failed" in states_of:
            failed = next(e for e in fates if e["state"] == "failed")
            provider = failed.get("provider") or provider_for(
                failed.get("channel") or note.channels[-1], note.record["to"]["platform"])
            if not timeline.disturbed(provider, note.produced_ms[0], failed["at"]):
                flag("unexcused_failure", f"{key}: failed on {failed.get('channel')} "
                                          f"({failed.get('detail')!r}) while {provider} was up")
        if note.life == "long" and not accepted and "failed" not in states_of:
            flag("lost", f"{key}: channels {note.channels}, states "
                         f"{[(e['state'], e.get('channel'), e.get('detail')) for e in events]}")

    # Order per tenant, user and class, at the providers' logs.
    by_stream = defaultdict(list)
    for key, r in accepted_at.items():
        by_stream[notes[key].stream].append((notes[key], r))
    # The contract lets the gate move on once the log has gone gap_timeout_ms past a held
    # record (a later seq of the stream) without its predecessor, reporting the skipped seqs
    # in an `accepted` event (or, for a stream's first seqs, starting the sequence at the
    # lowest one held, unreported), and a late seq is still delivered.
    stream_notes = defaultdict(list)
    for n in notes.values():
        stream_notes[n.stream].append(n)
    skipped = defaultdict(set)
    for key, events in statuses.items():
        for e in events:
            gap = GAP_RE.search(e.get("detail") or "") if e["state"] == "accepted" else None
            if gap:
                skipped[notes[key].stream].update(range(int(gap[1]), int(gap[2]) + 1))

    def in_log(n: Note) -> int | None:
        """When ``n`` first reached the log: its record's Kafka timestamp, else when produced."""
        return (n.logged_ms or n.produced_ms or [None])[0]

    def came_late(earlier: Note) -> bool:
        """A later seq of ``earlier``'s stream was in the log gap_timeout_ms or more before
        it."""
        if earlier.seq is None or in_log(earlier) is None:
            return False
        cutoff = in_log(earlier) - data.gap_timeout_ms
        return any(n.seq is not None and n.seq > earlier.seq and in_log(n) is not None
                   and in_log(n) <= cutoff for n in stream_notes[earlier.stream])
    excused = gap_excused = gap_reported = 0
    causes = Counter()
    for stream, items in by_stream.items():
        items.sort(key=lambda item: item[0].order)
        for j, (later, r_later) in enumerate(items):
            for earlier, r_earlier in items[:j]:
                if not arrived_before(r_later, r_earlier):
                    continue
                if sent_round(earlier, statuses, requests_of) <= r_later["t_ms"]:
                    excused += 1
                    continue
                if came_late(earlier):  # not in the log in time
                    gap_excused += 1
                    gap_reported += earlier.seq in skipped[stream]
                    continue
                history = [e["state"] + (f" ({e['detail'][:60]})" if e.get("detail") else "")
                           for e in statuses[earlier.key] if e["state"] != "duplicate"]
                causes[out_of_order_cause(statuses[earlier.key], r_earlier, r_later)] += 1
                flag("out_of_order", f"{stream}: {later.id} (order {later.order}) at "
                                     f"{r_later['provider']} {r_later['t_ms']} before "
                                     f"{earlier.id} (order {earlier.order}) at "
                                     f"{r_earlier['provider']} {r_earlier['t_ms']}; "
                                     f"{earlier.id}: {history}")
                break

    info = {"notifications": len(notes), "copies": sum(len(n.copies) for n in notes.values()),
            "must_arrive": sum(n.life == "long" for n in notes.values()),
            "tenants": len(sc.tenants), "streams_with_seq": len({n.stream for n in notes.values()
                                                                  if n.seq is not None}),
            **{f"final_{s}": fates_seen[s] for s in FATES if fates_seen[s]},
            "duplicate_events": sum(e["state"] == "duplicate" for evs in statuses.values()
                                    for e in evs),
            # (earlier, later) pairs the README's exception covers: not violations
            "overtook_a_retry": excused, "switches": len(data.switch_log),
            "late_seq_after_gap_timeout": gap_excused, "of_them_gap_reported": gap_reported,
            **{f"out_of_order_{c}": n for c, n in sorted(causes.items())},
            **dict(sorted(totals.items()))}
    return Report(sc.seed, sc.run, counts, dict(examples), info, data.timings)


def out_of_order_cause(earlier_events: list, r_earlier: dict, r_later: dict) -> str:
    """A hint for people, not a verdict: what the overtaken notification went through."""
    if any(e["state"] == "fallback" for e in earlier_events):
        return "behind_a_fallback"
    if (r_earlier["provider"] == "apns") != (r_later["provider"] == "apns"):
        return "http2_and_http1"
    return "other"


def arrived_before(a: dict, b: dict) -> bool:
    """Request ``a`` reached its provider before ``b`` reached its own: by the mock's own
    order on one provider, by receive time across providers (a tie decides nothing)."""
    if a["provider"] == b["provider"]:
        return a["seq"] < b["seq"]
    return a["t_ms"] < b["t_ms"]


def sent_round(note: Note, statuses: dict, requests_of: dict) -> int:
    """When ``note`` was first known to go round the retry topic (a `retrying` event, or a
    provider's error answer other than a throttle, which waits in the batch and keeps the
    user's order): the README lets later messages overtake it from then."""
    times = [e["at"] for e in statuses[note.key] if e["state"] == "retrying"]
    times += [r["t_ms"] for r in requests_of[note.key]
              if r["result"] == "rejected" and r.get("reason") != "quota"]
    return min(times, default=1 << 62)


# ---------------------------------------------------------------------------- bench CLI

def scenario_settings(base, run: str):
    """``base`` with topics and a consumer group of the run's own, created now."""
    from herald_stack.components import Stack
    topics = {f"topic_{role}": f"fuzz{run}.{name}" for role, name in base.topics().items()}
    settings = base.replace(consumer_group=f"fuzz-{run}", flink_rest_port=0, **topics)
    Stack(settings).create_topics(list(settings.topics().values()))
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="run fresh seeds until this much time is spent")
    parser.add_argument("--seed", type=int, action="append",
                        help="run this seed (repeatable) instead of fresh ones")
    parser.add_argument("--notifications", type=int, default=1_200)
    parser.add_argument("--span-s", type=float, default=60.0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    from bench.common import bench_settings, drop_topics, machine
    from herald_stack.components import Stack
    base = bench_settings()
    Stack(base).up()
    started = time.monotonic()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "?"
    seeds = list(args.seed or [])
    fresh = random.SystemRandom()
    reports = []
    when = {**machine(), "commit": commit}
    while seeds or (not args.seed and time.monotonic() - started < args.minutes * 60):
        seed = seeds.pop(0) if seeds else fresh.randrange(1 << 31)
        run = uuid.uuid4().hex[:6]
        settings = scenario_settings(base, run)
        scenario = make_scenario(seed, run, args.notifications, args.span_s)
        tmp = Path(tempfile.mkdtemp(prefix=f"herald-fuzz-{seed}-{run}-"))
        try:
            data = run_scenario(scenario, settings, tmp,
                                progress=lambda m: print(f"[{seed}] {m}", flush=True))
        finally:
            drop_topics(settings.kafka_bootstrap, f"fuzz{run}.")
        report = check(data)
        print(report.summary(), flush=True)
        if report.total:  # kept for a look: check(load_run(path)) reads it again
            print(f"  the run's data and logs: {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        reports.append(report)
    if not args.no_write:
        write_results(reports, when, args)
    return 1 if any(r.total for r in reports) else 0


def write_results(reports: list[Report], when: dict, args) -> None:
    from bench.common import RESULTS, write_markdown
    RESULTS.mkdir(parents=True, exist_ok=True)
    totals = {k: sum(r.counts[k] for r in reports) for k in KINDS}
    out = {"machine": when, "notifications_per_scenario": args.notifications,
           "span_s": args.span_s, "scenarios": len(reports),
           "notifications": sum(r.info["notifications"] for r in reports),
           "violations": totals,
           "runs": [{"seed": r.seed, "run": r.run, "violations": r.counts, "info": r.info,
                     "timings": r.timings, "examples": r.examples} for r in reports]}
    (RESULTS / "contract_fuzz.json").write_text(json.dumps(out, indent=2, default=str))
    short = {k: k.replace("_", " ") for k in KINDS}
    lines = [
        "# Randomized contract test", "",
        f"Run {when['when']} on commit {when.get('commit', '?')} ({when['cpus']} cores, load "
        f"{when['loadavg_1m_at_start']} at the start): {len(reports)} scenarios of "
        f"{args.notifications} notifications produced over "
        f"{args.span_s:g} s, fresh seeds; the delivery job on the MiniCluster, mocks of each "
        f"run's own switched at random moments (`python bench/contract_fuzz.py --minutes N`; "
        f"`--seed S` replays one). Every count must be 0; what each kind means is in "
        f"`bench/contract_fuzz.py` (`KINDS`).", "",
        f"Total over {out['notifications']:,} notifications: " + (
            "**no violations**." if not any(totals.values()) else ", ".join(
                f"**{k}** {v}" for k, v in totals.items() if v) + "."), "",
        "| seed | notifications | copies | delivered | expired | failed | violations |",
        "|---|---|---|---|---|---|---|"]
    for r in reports:
        bad = ", ".join(f"{short[k]} {v}" for k, v in r.counts.items() if v) or "0"
        lines.append(f"| {r.seed} | {r.info['notifications']} | {r.info['copies']} | "
                     f"{r.info.get('final_delivered', 0)} | {r.info.get('final_expired', 0)} | "
                     f"{r.info.get('final_failed', 0)} | {bad} |")
    lines += ["", "| violation | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in totals.items()]
    write_markdown(RESULTS / "contract_fuzz.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
