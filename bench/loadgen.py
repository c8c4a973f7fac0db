"""Load generator: realistic notifications onto a Kafka topic, fast, keyed by user.

Records follow docs/CONTRACT.md: 300–600 bytes of JSON, users drawn from 1,000,000 with a
Zipf-skewed choice (a precomputed cumulative table, sampled with numpy; s=0.6 by default:
at s=0.8 the hottest user alone gets 1.3% of all records, and with one call in flight per user
(per-user order) its chain bounds every system's rate, bench/results/peers.md), a mix of channels,
platforms, tenants and priorities as options. ``content.data.c`` carries ``created_at`` so the
provider mock's log gives each call's latency (bench/common.added_latencies).

Two modes:
* max-rate: produce N as fast as the client goes (a backlog for throughput runs);
* paced (``--rate R``): open loop, record i is due at start + i/R whatever happened before;
  ``created_at`` is stamped at send time, and the report says the achieved rate and how far
  the generator fell behind its schedule (lag).

    python bench/loadgen.py --topic herald.critical --n 100000 [--rate 1000] [--client confluent]
    python bench/loadgen.py --measure      # both clients, max-rate and paced: results/loadgen.*

The client is confluent-kafka (librdkafka) by default: kafka-python, the project's client, tops
out far below what the throughput runs need (bench/results/loadgen.md). Both are supported.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MIN_BYTES, MAX_BYTES = 300, 600
TENANTS = ("acme", "globex", "initech", "umbrella")
# (channels, share): most critical traffic is push, some falls back to SMS or email.
CHANNEL_MIXES = {
    "push": ((("push",), 1.0),),
    "email": ((("email",), 1.0),),
    "mixed": ((("push",), 0.55), (("push", "sms"), 0.2), (("push", "email"), 0.1),
              (("sms",), 0.1), (("email",), 0.05)),
}
PLATFORM_MIXES = {"android": (("android", 1.0),), "mixed": (("android", 0.7), ("ios", 0.3))}
MESSAGES = (
    ("Your code", "{n:06d} is your verification code. It expires in 5 minutes."),
    ("New sign-in", "A new sign-in to your account from Firefox on Linux near Lyon, France."),
    ("Payment received", "You received EUR {n} from Jane. Tap to see the details."),
    ("New message", "Sam: are we still on for tomorrow at {n} o'clock? Let me know soon."),
    ("Security alert", "Your password was changed. If this was not you, secure your account."),
)
CRITICAL_TTL_MS = 300_000
PROMO_TTL_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def zipf_cdf(users: int, s: float) -> np.ndarray:
    """The cumulative distribution of a Zipf(s) choice of rank 1..users (rank 1 the hottest)."""
    weights = np.arange(1, users + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _pick(mix, u: float):
    acc = 0.0
    for value, share in mix:
        acc += share
        if u < acc:
            return value
    return mix[-1][0]


@dataclass
class RecordFactory:
    """Builds (key, value) pairs; one instance per run (its id prefix and random stream)."""
    run: str = "lg"
    users: int = 1_000_000
    zipf_s: float = 0.6
    priority: str = "critical"
    channels: str = "push"
    platforms: str = "android"
    seed: int = 1
    seq: bool = False
    tenants: int = 0  # 0: the four TENANTS; more: as many tenants, each user always in one
    _cdf: np.ndarray = field(init=False, repr=False)
    _rng: np.random.Generator = field(init=False, repr=False)
    _seqs: dict = field(init=False, repr=False, default_factory=dict)
    _tenants: tuple = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        if self.channels not in CHANNEL_MIXES or self.platforms not in PLATFORM_MIXES:
            raise ValueError(f"channels in {sorted(CHANNEL_MIXES)}, platforms in"
                             f" {sorted(PLATFORM_MIXES)}")
        self._cdf = zipf_cdf(self.users, self.zipf_s)
        self._rng = np.random.default_rng(self.seed)
        self._tenants = TENANTS if self.tenants <= 0 else tuple(
            f"tenant{i:03d}" for i in range(self.tenants))

    def user_ranks(self, n: int) -> np.ndarray:
        """``n`` user indices (0 = the hottest), Zipf-skewed."""
        return np.minimum(np.searchsorted(self._cdf, self._rng.random(n), side="right"),
                          self.users - 1)

    def chunk(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Everything random about the next ``n`` records: users, sizes and mix draws."""
        ranks = self.user_ranks(n)
        sizes = self._rng.integers(MIN_BYTES + 20, MAX_BYTES - 20, n)
        draws = self._rng.random((n, 3))
        return ranks, sizes, draws

    def record(self, i: int, rank: int, size: int, draws, created_at: int) -> tuple[bytes, bytes]:
        """Record ``i`` for user ``rank``: about ``size`` bytes of contract JSON."""
        user = f"u{int(rank):07d}"
        channels = _pick(CHANNEL_MIXES[self.channels], draws[0])
        platform = _pick(PLATFORM_MIXES[self.platforms], draws[1])
        title, body = MESSAGES[int(draws[2] * len(MESSAGES))]
        to: dict = {}
        if "push" in channels:
            to["push_token"] = f"fcm-{int(rank):07d}-{(int(rank) * 2654435761) % 2**32:08x}"
            to["platform"] = platform
        if "sms" in channels:
            to["phone"] = f"+1555{int(rank):07d}"
        if "email" in channels:
            to["email"] = f"user{int(rank)}@example.com"
        ttl = CRITICAL_TTL_MS if self.priority == "critical" else PROMO_TTL_MS
        tenant = self._tenants[int(rank) % len(self._tenants)]
        doc = {"id": f"{self.run}-{i}", "tenant_id": tenant,
               "user_id": user, "priority": self.priority, "channels": list(channels), "to": to,
               "content": {"title": title, "body": body.format(n=i % 1_000_000),
                           "data": {"c": str(created_at), "ref": ""}},
               "created_at": created_at, "expires_at": created_at + ttl}
        if self.seq:
            s = self._seqs.get(user, 0)
            self._seqs[user] = s + 1
            doc["seq"] = s
        value = orjson.dumps(doc)
        pad = int(size) - len(value)
        if pad > 0:  # a reference string in data brings the record to its drawn size
            doc["content"]["data"]["ref"] = "x" * pad
            value = orjson.dumps(doc)
        return user.encode(), value


# ---------------------------------------------------------------- producers

class _Confluent:
    name = "confluent-kafka"

    def __init__(self, bootstrap: str):
        from confluent_kafka import Producer
        self.p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": 1,
                           "batch.size": 1 << 20, "queue.buffering.max.messages": 500_000,
                           "compression.type": "none"})

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.p.produce(topic, value, key)
                return
            except BufferError:
                self.p.poll(0.01)

    def poll(self) -> None:
        self.p.poll(0)

    def flush(self) -> None:
        self.p.flush(60)

    def close(self) -> None:
        self.p.flush(60)


class _KafkaPython:
    name = "kafka-python"

    def __init__(self, bootstrap: str):
        from kafka import KafkaProducer
        self.p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1,
                               batch_size=256 * 1024)

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.p.send(topic, key=key, value=value)

    def poll(self) -> None:
        pass

    def flush(self) -> None:
        self.p.flush()

    def close(self) -> None:
        self.p.flush()
        self.p.close()


def make_producer(client: str, bootstrap: str):
    return {"confluent": _Confluent, "kafka-python": _KafkaPython}[client](bootstrap)


class Progress:
    """One stderr line, rewritten at most once a second."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.total, self.label, self.enabled = total, label, enabled and sys.stderr.isatty()
        self.started = self.last = time.monotonic()

    def update(self, done: int, extra: str = "") -> None:
        t = time.monotonic()
        if not self.enabled or t - self.last < 1.0:
            return
        self.last = t
        rate = done / max(1e-9, t - self.started)
        sys.stderr.write(f"\r{self.label}: {done:,}/{self.total:,} ({100 * done / self.total:.0f}%)"
                         f" {rate:,.0f}/s {extra}   ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


# ---------------------------------------------------------------- the run

CHUNK = 4096


def generate(topic: str, n: int, *, bootstrap: str = "127.0.0.1:19092",
             rate: float | None = None, client: str = "confluent",
             factory: RecordFactory | None = None, progress: bool = True,
             stop=None) -> dict:
    """Produce ``n`` records onto ``topic``; max-rate if ``rate`` is None, else paced open loop.

    ``stop`` (a threading.Event) ends a paced run early. Returns the report (achieved rate,
    bytes, lag behind the schedule for paced runs).
    """
    factory = factory or RecordFactory()
    producer = make_producer(client, bootstrap)
    bar = Progress(n, f"loadgen {topic}", progress)
    sent = total_bytes = 0
    max_lag_s = 0.0
    lag_samples: list[float] = []
    started = time.monotonic()
    cpu0 = time.process_time()  # every thread of this process, librdkafka's included
    i = 0
    while i < n:
        if stop is not None and stop.is_set():
            break
        count = min(CHUNK, n - i)
        ranks, sizes, draws = factory.chunk(count)
        j = 0
        while j < count:
            if rate:
                t = time.monotonic()
                due = min(count, int((t - started) * rate) - i + 1)  # records due by now
                if due <= j:
                    time.sleep(min(0.001, (i + j - (t - started) * rate) / rate))
                    producer.poll()
                    continue
                lag = (t - started) - (i + j) / rate  # how late the first due record goes out
                lag_samples.append(lag)
                max_lag_s = max(max_lag_s, lag)
                upto = due
            else:
                upto = count
            created = now_ms()
            for k in range(j, upto):
                key, value = factory.record(i + k, ranks[k], sizes[k], draws[k], created)
                producer.send(topic, key, value)
                total_bytes += len(value)
            sent += upto - j
            j = upto
            producer.poll()
            bar.update(sent, f"lag {max_lag_s:.2f} s" if rate else "")
        i += count
    produced_s = time.monotonic() - started
    producer.flush()
    flushed_s = time.monotonic() - started
    producer.close()
    cpu = time.process_time() - cpu0
    bar.done()
    lag_samples.sort()
    return {"client": producer.name, "mode": "paced" if rate else "max-rate",
            "target_rate": rate, "n": sent, "bytes_avg": round(total_bytes / max(1, sent)),
            "achieved_rate": round(sent / max(1e-9, produced_s)),
            "rate_with_flush": round(sent / max(1e-9, flushed_s)),
            "elapsed_s": round(flushed_s, 2), "cpu_s": round(cpu, 2),
            "records_per_cpu_s": round(sent / max(1e-9, cpu)),
            "lag_p99_s": round(lag_samples[int(0.99 * (len(lag_samples) - 1))], 3)
            if lag_samples else None,
            "lag_max_s": round(max_lag_s, 3) if rate else None,
            "users": factory.users, "zipf_s": factory.zipf_s}


# ---------------------------------------------------------------- --measure

def measure(bootstrap: str, n: int, paced_rate: float, paced_s: float) -> None:
    import os
    import uuid

    from bench.common import RESULTS, drop_topics, machine
    from herald_stack.components import Stack
    from herald.settings import load_settings

    topic = f"bl{uuid.uuid4().hex[:8]}.loadgen"
    Stack(load_settings()).create_topics([topic])
    at_start = machine()
    runs = []
    for client in ("kafka-python", "confluent"):
        count = n if client == "confluent" else n // 4
        runs.append(generate(topic, count, bootstrap=bootstrap, client=client))
        print(json.dumps(runs[-1]), flush=True)
        runs.append(generate(topic, int(paced_rate * paced_s), bootstrap=bootstrap,
                             client=client, rate=paced_rate))
        print(json.dumps(runs[-1]), flush=True)
    drop_topics(bootstrap, topic)
    doc = {"machine": at_start, "loadavg_1m_at_end": round(os.getloadavg()[0], 2), "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loadgen.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_md(doc)


def write_md(doc: dict) -> None:
    from bench.common import RESULTS, write_markdown
    at_start, runs = doc["machine"], doc["runs"]
    lines = ["# Load generator rate", "",
             f"Measured {at_start['when']} on {at_start['cpus']} shared cores (load 1m"
             f" {at_start['loadavg_1m_at_start']} at the start, {doc['loadavg_1m_at_end']} at the"
             " end; above 2 others competed and a figure is a floor). Records of 300–600 bytes,"
             f" 1,000,000 users, Zipf s={runs[0]['zipf_s']}, acks=1, linger 5 ms, one producer"
             " process, the broker on the same cores. `python bench/loadgen.py --measure`"
             " reproduces it.", "",
             "| client | mode | records | avg bytes | achieved records/s | with flush /s |"
             " records per CPU-second | lag p99 / max s |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        mode = f"paced {r['target_rate']:.0f}/s" if r["target_rate"] else "max-rate"
        lag = f"{r['lag_p99_s']} / {r['lag_max_s']}" if r["target_rate"] else "-"
        lines.append(f"| {r['client']} | {mode} | {r['n']:,} | {r['bytes_avg']} |"
                     f" {r['achieved_rate']:,} | {r['rate_with_flush']:,} |"
                     f" {r['records_per_cpu_s']:,} | {lag} |")
    cost = {r["client"]: 1e6 / r["records_per_cpu_s"] for r in runs if not r["target_rate"]}
    if len(cost) == 2:
        kp, ck = cost["kafka-python"], cost["confluent-kafka"]
        lines += ["", f"The generator uses confluent-kafka: at max rate kafka-python cost"
                  f" {kp:.0f} µs of CPU per record against {ck:.1f} µs ({kp / ck:.0f}× more),"
                  " CPU the system under test needs on the same 2 cores; under load it also"
                  " missed a paced target that confluent-kafka held (lag column)."]
    write_markdown(RESULTS / "loadgen.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", default="herald.critical")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=None, help="paced: records/s (open loop)")
    parser.add_argument("--client", choices=("confluent", "kafka-python"), default="confluent")
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--zipf", type=float, default=0.6,
                        help="Zipf exponent of the user choice (0.6: the hottest user gets"
                             " 0.16%% of the records, the top 1%% of users 15%%)")
    parser.add_argument("--priority", choices=("critical", "promotional"), default="critical")
    parser.add_argument("--channels", choices=sorted(CHANNEL_MIXES), default="push")
    parser.add_argument("--platforms", choices=sorted(PLATFORM_MIXES), default="android")
    parser.add_argument("--seq", action="store_true", help="per-user seq numbers from 0")
    parser.add_argument("--run", default=None, help="id prefix (default: random)")
    parser.add_argument("--measure", action="store_true",
                        help="measure both clients; write bench/results/loadgen.{json,md}")
    args = parser.parse_args(argv)
    if args.measure:
        measure(args.bootstrap, args.n, args.rate or 2_000, 10)
        return
    import uuid
    factory = RecordFactory(run=args.run or uuid.uuid4().hex[:8], users=args.users,
                            zipf_s=args.zipf, priority=args.priority, channels=args.channels,
                            platforms=args.platforms, seq=args.seq)
    print(json.dumps(generate(args.topic, args.n, bootstrap=args.bootstrap, rate=args.rate,
                              client=args.client, factory=factory)))


if __name__ == "__main__":
    main()
