"""Campaign expansion throughput: one Campaign record → N notifications on herald.promo.

The real job (`python -m jobs.expansion`: keyed Python operator emitting one row per batch of
ids, Flink SQL splitting it and writing the JSON, exactly-once Kafka sink) against a segment of
N users, on the MiniCluster next to Kafka on the same 2 cores. The job is started and warmed
up with a small campaign first; then the clock starts when the big campaign record is produced.

* recipients/s from the campaign record: N / (last promo record's Kafka timestamp − produce);
* steady: N / (last − first promo record timestamp);
* visible: when a read_committed reader can see all N (the Kafka transaction of the last
  checkpoint committed), from the topic's end offsets, so within one commit (they count the
  commit markers too);
* exact: every record read back, one per user, the right id, valid Notification JSON.

`--shape per-record` runs the rejected alternative for comparison: the same operator, but
Python emits one (user_id, JSON) row per recipient straight to the Kafka sink.

    python bench/expansion.py [--n 1000000] [--shape batch|per-record] [--batch 10000]
Writes bench/results/expansion.{json,md} (the last 5 runs of each shape/parallelism/batch).
Each run is bounded (--timeout, default 110 s after the job is up).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WARMUP = 1_000
KEEP = 5


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------- the per-record alternative

def run_per_record_job() -> None:
    """The rejected shape, for the comparison: Python emits one row per recipient."""
    from pyflink.common import Row, Types
    from herald.campaigns import recipient_json
    from herald.settings import load_settings
    from jobs.common import make_environments
    from jobs.expansion import JOB_NAME, job_settings, register_expansion_tables
    from operators.expansion import ExpandFunction
    from operators.rows import DLQ_TAG, KEYED_PAYLOAD, STATUS_TAG

    class PerRecord(ExpandFunction):
        def on_timer(self, timestamp, ctx):
            for out in super().on_timer(timestamp, ctx):
                if isinstance(out, Row):  # a batch: one row per recipient instead
                    c = self.state.value().campaign
                    for user_id in out[-1].split("\n"):
                        yield Row(user_id, recipient_json(c, user_id).decode())
                else:
                    yield out

    settings = job_settings(load_settings())
    env, t_env = make_environments(settings, JOB_NAME + "-per-record")
    register_expansion_tables(t_env, settings)
    campaigns = t_env.to_data_stream(t_env.sql_query(
        "SELECT COALESCE(JSON_VALUE(v, '$.campaign_id'), k, '') AS ckey, k, v "
        "FROM expansion_campaigns_in"))
    cancels = t_env.to_data_stream(t_env.sql_query(
        "SELECT '' AS ckey, k, v FROM expansion_control_in WHERE FALSE"))
    records = (campaigns.connect(cancels)
               .key_by(lambda r: r[0], lambda r: r[0], key_type=Types.STRING())
               .process(PerRecord(settings), output_type=KEYED_PAYLOAD))
    statements = t_env.create_statement_set()
    statements.add_insert("expansion_promo_out", t_env.from_data_stream(records))
    statements.add_insert("expansion_status_out",
                          t_env.from_data_stream(records.get_side_output(STATUS_TAG)))
    statements.add_insert("expansion_dlq_out",
                          t_env.from_data_stream(records.get_side_output(DLQ_TAG)))
    statements.attach_as_datastream()
    env.execute(JOB_NAME + "-per-record")


# ---------------------------------------------------------------- one measurement

def campaign(cid: str, segment: str) -> dict:
    t = now_ms()
    return {"campaign_id": cid, "tenant_id": "bench", "audience": {"segment": segment},
            "channels": ["push", "email"],
            "content": {"title": "Spring sale", "body": "20% off everything until Sunday",
                        "data": {"deeplink": "app://sale"}},
            "created_at": t, "expires_at": t + 3_600_000}


class StatusWatch:
    """Reads herald.status (at-least-once sink: immediate) for campaign-level events."""

    def __init__(self, settings):
        from kafka import KafkaConsumer
        self.consumer = KafkaConsumer(settings.topic_status,
                                      bootstrap_servers=settings.kafka_bootstrap,
                                      auto_offset_reset="earliest", enable_auto_commit=False)
        self.events: list[dict] = []

    def wait_complete(self, cid: str, deadline: float, job: subprocess.Popen) -> dict:
        while time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.events.extend(orjson.loads(m.value) for m in batch)
            for e in self.events:
                if e["id"] == cid and e["state"] != "accepted":
                    raise RuntimeError(f"campaign {cid} ended {e['state']}: {e.get('detail')}")
                if e["id"] == cid and "complete" in (e.get("detail") or ""):
                    return e
            if job.poll() is not None:
                raise RuntimeError(f"the job exited with {job.returncode}")
        raise TimeoutError(f"campaign {cid} did not complete in time")


def committed_end(settings, consumer, partitions) -> int:
    return sum(consumer.end_offsets(partitions).values())


def read_promo(settings, partitions, expect: int, timeout_s: float = 60.0) -> list:
    """The committed records of the promo topic (key, value, timestamp), until ``expect``."""
    from kafka import KafkaConsumer
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                             isolation_level="read_committed", enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_bytes=64 << 20,
                             max_partition_fetch_bytes=16 << 20, max_poll_records=50_000)
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expect and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            out.extend((m.key, m.value, m.timestamp) for m in batch)
    consumer.close()
    return out


def drop_topics(settings) -> None:
    """This run's topics go: a million records each are not worth keeping."""
    from kafka.admin import KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.delete_topics(list(settings.topics().values()))
    finally:
        admin.close()


def measure(shape: str, n: int, batch: int, timeout_s: float, parallelism: int) -> dict:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from bench.common import bench_env, machine, tree_cpu_seconds
    from herald.campaigns import parse_campaign
    from herald.models import parse_notification
    from herald.segments import SegmentFiles
    from herald.settings import load_settings, settings_env
    from herald_stack.components import Stack

    run = uuid.uuid4().hex[:8]
    at_start = machine()  # the load average before this run adds its own
    base = load_settings()
    work = Path(tempfile.mkdtemp(prefix="herald-bench-expansion-"))
    topics = {f"topic_{role}": f"bx{run}.{name}" for role, name in base.topics().items()}
    settings = base.replace(consumer_group=f"bench-{run}", expansion_rest_port=0,
                            segments_dir=str(work / "segments"),
                            flink_checkpoint_dir=str(work / "checkpoints"),
                            expansion_batch_size=batch, flink_parallelism=parallelism,
                            expansion_tick_ms=0,  # the ceiling: unpaced
                            **topics)
    Stack(base).create_topics(list(settings.topics().values()))
    files = SegmentFiles.from_settings(settings)
    files.write("bench", "warmup", [f"w-{i}" for i in range(WARMUP)], now_ms())
    t = time.monotonic()
    files.write("bench", "big", [f"user-{i:08d}" for i in range(n)], now_ms())
    segment_write_s = time.monotonic() - t

    env = {**bench_env(), **settings_env(settings)}
    command = ([sys.executable, "-m", "jobs.expansion"] if shape == "batch" else
               [sys.executable, str(Path(__file__).resolve()), "--child-per-record"])
    log = open(work / "job.log", "wb")
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    watch = StatusWatch(settings)
    partitions = [TopicPartition(settings.topic_promo, p) for p in range(settings.kafka_partitions)]
    ends = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                         isolation_level="read_committed")
    try:
        started = time.monotonic()
        warm = campaign(f"warm-{run}", "warmup")
        producer.send(settings.topic_campaigns, key=warm["campaign_id"].encode(),
                      value=orjson.dumps(warm))
        producer.flush()
        watch.wait_complete(warm["campaign_id"], started + 180, job)
        while committed_end(settings, ends, partitions) < WARMUP:
            time.sleep(0.05)
        startup_s = time.monotonic() - started

        big = campaign(f"big-{run}", "big")
        cpu0 = tree_cpu_seconds(job.pid)
        t0 = now_ms()
        producer.send(settings.topic_campaigns, key=big["campaign_id"].encode(),
                      value=orjson.dumps(big))
        producer.flush()
        deadline = time.monotonic() + timeout_s
        done = watch.wait_complete(big["campaign_id"], deadline, job)
        while committed_end(settings, ends, partitions) < WARMUP + n:
            if time.monotonic() > deadline:
                raise TimeoutError("the records did not all become visible in time")
            time.sleep(0.02)
        visible_at = now_ms()
        cpu = tree_cpu_seconds(job.pid) - cpu0
        # read back while the job runs: the offsets above count commit markers too, so the
        # last transaction may still be committing (killing the job now would abort it)
        records = read_promo(settings, partitions, WARMUP + n)
    finally:
        os.killpg(job.pid, 9)
        job.wait()
        log.close()
        producer.close()
        ends.close()
        watch.consumer.close()
        drop_topics(settings)
    mine = [r for r in records if r[1].startswith(b'{"id":"big-')]
    c = parse_campaign(orjson.dumps(big))
    ids = {r[0] for r in mine}
    exact = len(mine) == n and len(ids) == n and ids == {f"user-{i:08d}".encode()
                                                        for i in range(n)}
    for key, value, _ in mine[:: max(1, n // 1000)]:  # a sample through the full parser
        parsed = parse_notification(value, expected_priority="promotional")
        exact = exact and parsed.id == c.recipient_id(key.decode()) and parsed.user_id == key.decode()
    stamps = sorted(r[2] for r in mine)
    first, last = stamps[0], stamps[-1]
    result = {
        "shape": shape, "recipients": n, "batch_size": batch, "parallelism": parallelism,
        "delivery_guarantee": settings.expansion_delivery_guarantee,
        "checkpoint_interval_ms": settings.flink_checkpoint_interval_ms,
        "recipients_per_s_from_campaign": round(n / max(1, last - t0) * 1000),
        "recipients_per_s_steady": round(n / max(1, last - first) * 1000),
        "first_record_after_ms": first - t0, "last_record_after_ms": last - t0,
        "expansion_complete_event_after_ms": done["at"] - t0,
        "all_visible_read_committed_after_ms": visible_at - t0,
        "job_cpu_s": round(cpu, 1), "job_cpu_s_per_million": round(cpu / n * 1e6, 1),
        "job_startup_s": round(startup_s, 1), "segment_write_s": round(segment_write_s, 2),
        "exact": exact, "records_read": len(mine), "distinct_users": len(ids), **at_start}
    print(json.dumps(result))
    return result


def write_results(result: dict) -> None:
    """Append the run; the last ``KEEP`` runs of each configuration are kept (the machine is
    shared, so one run says little: the spread is part of the result)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "expansion.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    same = ("shape", "parallelism", "batch_size")
    key = tuple(result[k] for k in same)
    mine = [r for r in rows if tuple(r.get(k) for k in same) == key][-(KEEP - 1):]
    rows = [r for r in rows if tuple(r.get(k) for k in same) != key] + mine + [result]
    rows.sort(key=lambda r: (tuple(r.get(k) or 0 for k in same), r["when"]))
    path.write_text(json.dumps(rows, indent=2) + "\n")
    render(rows)


def render(rows: list[dict]) -> None:
    lines = [
        "# Campaign expansion throughput", "",
        "One Campaign record on `herald.campaigns` → one Notification per user on `herald.promo`."
        " Kafka, the expansion job (MiniCluster, thread mode, exactly-once sink, checkpoints"
        " every 5 s) and this script on the same 2 cores (shared with other engineers' runs:"
        " the 1-minute load average at the start is given)."
        " Timings use the promo records' Kafka timestamps; 'visible' is when a read_committed"
        " reader sees all of them (the exactly-once sink commits with each checkpoint)."
        " `python bench/expansion.py [--shape batch|per-record] [--n N]` reproduces a row.", "",
        "| shape | parallelism | recipients | batch | recipients/s from the campaign record |"
        " steady /s | first record after | all visible after | job CPU s per 1M | load 1m |"
        " exact | when |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r.get('parallelism', 1)} | {r['recipients']:,} |"
            f" {r['batch_size']:,} |"
            f" **{r['recipients_per_s_from_campaign']:,}** | {r['recipients_per_s_steady']:,} |"
            f" {r['first_record_after_ms']} ms | {r['all_visible_read_committed_after_ms']} ms |"
            f" {r['job_cpu_s_per_million']} | {r['loadavg_1m_at_start']} |"
            f" {'yes' if r['exact'] else 'NO'} | {r['when']} |")
    lines += ["", "`batch`: the Python operator emits one row per batch (campaign id, the JSON all"
              " recipients share, the ids joined by a newline); Flink SQL (Java) splits it and"
              " writes `{\"id\":…,\"user_id\":…,` + the shared tail per user. `per-record`: the"
              " same operator, but Python writes each recipient's JSON and emits one row per"
              " recipient (the rejected shape).", "",
              "Steps measured on the way (same bench, 1,000,000 recipients, parallelism 1):", "",
              "| design step | recipients/s | job CPU s per 1M | load 1m (at its end) |",
              "|---|---|---|---|",
              "| v1: JSON_STRING per id, chained operators copying each row"
              " (no object reuse) | 73,319 | 17.1 | 6.98 |",
              "| object reuse on (JFR showed 46% of the CPU re-encoding each batch's id string"
              " for the copy of every unnested row), ids escaped with REPLACE, JSON head/tail"
              " from Python; operator and SQL chained in one thread | 225,989 | 6.2 | 3.81 |",
              "| the same, batches rebalanced to the SQL part (the Python operator and the"
              " SQL + sink in two threads): the shipped design | 296,560 | 5.1 | 6.98 |", "",
              "'all visible after' is the exactly-once sink's commit: records become readable"
              " (read_committed) when the checkpoint after them completes.", ""]
    (RESULTS / "expansion.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None,
                        help="recipients (default 1,000,000; 200,000 for per-record)")
    parser.add_argument("--shape", choices=("batch", "per-record"), default="batch")
    parser.add_argument("--batch", type=int, default=10_000, help="recipients per batch row")
    parser.add_argument("--parallelism", type=int, default=2,
                        help="the job's parallelism (the SQL part gets the batches round-robin)")
    parser.add_argument("--timeout", type=float, default=110.0)
    parser.add_argument("--child-per-record", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_per_record:
        run_per_record_job()
        return
    n = args.n or (1_000_000 if args.shape == "batch" else 200_000)
    if args.child_per_record is False and args.shape == "per-record" and args.parallelism != 1:
        parser.error("--shape per-record runs with --parallelism 1 (one keyed emitter)")
    write_results(measure(args.shape, n, args.batch, args.timeout, args.parallelism))


if __name__ == "__main__":
    main()
