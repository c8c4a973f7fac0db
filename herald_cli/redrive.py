"""``herald_cli redrive --from-dlq``: dead letters of the delivery stage back into the pipeline.

Each record on ``herald.dlq`` with ``stage: delivery`` is the notification plus ``reason``,
``stage``, ``at`` and ``attempts``; those are stripped and the notification is produced again,
keyed by its user:

* by default to its class's **retry topic**, as a fresh start on its first channel. Not to the
  class topic: the gate remembers every id for ``dedup_ttl_ms`` (24 h) and would drop it as a
  duplicate. Past the gate, what keeps a re-drive safe is the call stage's Redis ``sent``
  marker (an id some provider accepted is never sent again) and the retry wait's dedup on
  ``(id, redrive, step)`` (the same dead letter re-driven twice is sent once);
* with ``--to class``, to the class topic (after the dedup window, or on a fresh deployment).

Filters (``--id``, ``--tenant``, ``--reason``, ``--since``; ``herald_cli.dlq_filter``) pick
which dead letters are taken; the others stay for a later run. Progress is kept per consumer
group: the group's committed offset on each DLQ partition is the first dead letter not yet
handled, and the dead letters at or after it that a filtered run re-drove are remembered in
Redis (``herald:redrive:{group}:{topic}:{partition}``, a sorted set of offsets, pruned as the
committed offset passes them). So a second run never re-drives a record twice, and a dead
letter a filter left is still there for the next run. Parse-stage dead letters (malformed
input) cannot be re-driven as they are and are passed over, counted (once, when a run's
filters take them). ``--dry-run`` lists what would be re-driven and changes nothing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from herald import states
from herald.errors import ValidationError
from herald.models import notification_from_dict
from herald.redis_conn import redis_client as make_redis
from herald.settings import Settings
from herald_cli.dlq_filter import DeadLetterFilter, compile_reason, parse_since
from udfs.requeue import Task, encode_retry

DLQ_FIELDS = ("reason", "stage", "at", "attempts")
SHOWN = 20


@dataclass(frozen=True)
class Letter:
    """One dead letter as the report shows it."""
    key: str
    tenant: str | None = None
    reason: str = ""
    at: int | None = None

    def line(self) -> str:
        when = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at / 1000))
                if self.at is not None else "-")
        reason = self.reason if len(self.reason) <= 80 else self.reason[:77] + "..."
        return f"{self.key}  tenant={self.tenant or '-'}  at={when}  reason={reason}"


@dataclass
class RedriveReport:
    redriven: list[Letter] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    not_matching: int = 0
    already: int = 0  # re-driven by an earlier filtered run
    dry_run: bool = False
    filters: str = "every dead letter"

    def summary(self) -> str:
        verb = "would re-drive" if self.dry_run else "re-drove"
        lines = [f"{verb} {len(self.redriven)} record(s); passed over {len(self.skipped)}"
                 + (f"; {self.not_matching} not matching ({self.filters}) stay"
                    if self.not_matching else "")
                 + (f"; {self.already} re-driven by an earlier run" if self.already else "")]
        lines += [f"  {letter.line()}" for letter in self.redriven[:SHOWN]]
        if len(self.redriven) > SHOWN:
            lines.append(f"  ... and {len(self.redriven) - SHOWN} more")
        lines += [f"  skipped {key}: {why}" for key, why in self.skipped[:SHOWN]]
        if len(self.skipped) > SHOWN:
            lines.append(f"  ... and {len(self.skipped) - SHOWN} more")
        return "\n".join(lines)


def decode(value: bytes | None) -> dict | None:
    try:
        record = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def redrive_record(value: bytes, to: str = "retry") -> tuple[str, str, bytes]:
    """One dead letter → (priority, user key, value to produce). Raises ValidationError if it
    cannot be re-driven."""
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise ValidationError("not JSON") from None
    if not isinstance(record, dict):
        raise ValidationError("not a JSON object")
    if record.get("stage") != states.STAGE_DELIVERY:
        raise ValidationError(f"stage {record.get('stage')!r}: only delivery-stage dead letters "
                              "can be re-driven")
    n = notification_from_dict({k: v for k, v in record.items() if k not in DLQ_FIELDS})
    if to == "class":
        return n.priority, n.user_id, n.to_json()
    at = record.get("at")
    redrive = at if isinstance(at, int) and not isinstance(at, bool) else 0
    return n.priority, n.user_id, encode_retry(Task(n, n.channels[0], redrive=redrive), 0)


def done_key(group: str, tp: TopicPartition) -> str:
    """Offsets at or past the group's committed one that a filtered run re-drove."""
    return f"herald:redrive:{group}:{tp.topic}:{tp.partition}"


def next_mark(mark: int, reached: int, stay: list[int]) -> int:
    """The partition's new committed offset: the first dead letter that stays (not taken by
    this run's filters, nor by an earlier one), else where the run stopped reading."""
    return min([o for o in stay if o >= mark], default=reached)


def redrive_dlq(settings: Settings, *, limit: int | None = None, to: str = "retry",
                dry_run: bool = False, group: str | None = None,
                where: DeadLetterFilter | None = None, redis_client=None,
                poll_timeout_ms: int = 1_000) -> RedriveReport:
    where = where or DeadLetterFilter()
    report = RedriveReport(dry_run=dry_run, filters=where.describe())
    group = group or f"{settings.consumer_group}-redrive"
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest")
    producer = None if dry_run else KafkaProducer(bootstrap_servers=settings.kafka_bootstrap,
                                                  acks="all")
    client = redis_client or make_redis(settings)  # one server or Redis Cluster
    topics = {
        ("retry", states.CRITICAL): settings.topic_retry_critical,
        ("retry", states.PROMOTIONAL): settings.topic_retry_promo,
        ("class", states.CRITICAL): settings.topic_critical,
        ("class", states.PROMOTIONAL): settings.topic_promo,
    }
    try:
        partitions = [TopicPartition(settings.topic_dlq, p)
                      for p in sorted(consumer.partitions_for_topic(settings.topic_dlq) or ())]
        consumer.assign(partitions)
        end = consumer.end_offsets(partitions)
        mark = {tp: consumer.position(tp) for tp in partitions}
        earlier = {tp: {int(o) for o in client.zrangebyscore(done_key(group, tp), mark[tp], "+inf")}
                   for tp in partitions}
        taken: dict[TopicPartition, list[int]] = {tp: [] for tp in partitions}
        stay: dict[TopicPartition, list[int]] = {tp: [] for tp in partitions}
        reached = dict(mark)
        sends = []
        stop = False
        while not stop and any(consumer.position(tp) < end[tp] for tp in partitions):
            for tp, messages in consumer.poll(timeout_ms=poll_timeout_ms).items():
                for message in messages:
                    if message.offset >= end[tp]:
                        continue  # arrived after we started: the next run's
                    reached[tp] = message.offset + 1
                    if message.offset in earlier[tp]:
                        report.already += 1
                        continue
                    key = message.key.decode("utf-8", "replace") if message.key else "(no key)"
                    record = decode(message.value)
                    if not where.matches(record, key):
                        report.not_matching += 1
                        stay[tp].append(message.offset)
                        continue
                    taken[tp].append(message.offset)
                    try:
                        priority, user, value = redrive_record(message.value, to)
                    except ValidationError as exc:
                        report.skipped.append((key, str(exc)))
                    else:
                        if producer is not None:
                            sends.append(producer.send(topics[(to, priority)],
                                                       key=user.encode(), value=value))
                        record = record or {}
                        at = record.get("at")
                        report.redriven.append(Letter(
                            key, record.get("tenant_id"), str(record.get("reason") or ""),
                            at if isinstance(at, int) and not isinstance(at, bool) else None))
                    if limit is not None and len(report.redriven) >= limit:
                        stop = True
                        break
                if stop:
                    break
        if producer is not None:
            producer.flush()
            for future in sends:
                future.get(30)  # every record is on its topic before it counts as done
            new_marks = {tp: next_mark(mark[tp], reached[tp], stay[tp]) for tp in partitions}
            with client.pipeline(transaction=False) as pipe:
                for tp in partitions:
                    above = [o for o in taken[tp] if o >= new_marks[tp]]
                    if above:
                        pipe.zadd(done_key(group, tp), {str(o): o for o in above})
                pipe.execute()
            moved = {tp: OffsetAndMetadata(new_marks[tp], "", -1) for tp in partitions
                     if new_marks[tp] != mark[tp]}
            if moved:
                consumer.commit(moved)
            with client.pipeline(transaction=False) as pipe:
                for tp in partitions:
                    pipe.zremrangebyscore(done_key(group, tp), "-inf", f"({new_marks[tp]}")
                pipe.execute()
    finally:
        consumer.close()
        if producer is not None:
            producer.close()
        if redis_client is None:
            client.close()
    return report


def filter_from_args(args, now_ms: int | None = None) -> DeadLetterFilter:
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return DeadLetterFilter(
        ids=frozenset(args.id or ()), tenant=args.tenant,
        reason=compile_reason(args.reason) if args.reason is not None else None,
        since_ms=parse_since(args.since, now_ms) if args.since is not None else None)


def register(commands) -> None:
    """``redrive --from-dlq [filters]``."""
    redrive = commands.add_parser(
        "redrive", help="send dead letters of the delivery stage back into the pipeline")
    redrive.add_argument("--from-dlq", action="store_true", required=True,
                         help="read the dead-letter topic (the only source there is)")
    redrive.add_argument("--id", action="append", metavar="ID",
                         help="only this notification id (exact; repeat for several)")
    redrive.add_argument("--tenant", metavar="TENANT", help="only this tenant's dead letters")
    redrive.add_argument("--reason", metavar="REGEX",
                         help="only dead letters whose reason matches this regular expression "
                              "(searched anywhere, case sensitive: a plain word is a substring)")
    redrive.add_argument("--since", metavar="TIME",
                         help="only dead letters written at or after TIME: an ISO time "
                              "(2026-12-05T22:00:00Z; no zone = UTC) or a duration back from "
                              "now (90s, 30m, 2h, 1d, 1w)")
    redrive.add_argument("--limit", type=_positive, default=None, metavar="N",
                         help="re-drive at most N records (default: all not re-driven yet)")
    redrive.add_argument("--to", choices=("retry", "class"), default="retry",
                         help="retry: the class's retry topic, past the gate's dedup (default);"
                              " class: the class topic itself (only useful once the gate's"
                              " dedup window, dedup_ttl_ms, has passed)")
    redrive.add_argument("--dry-run", action="store_true",
                         help="list what would be re-driven; produce, remember and commit "
                              "nothing")
    redrive.add_argument("--group", default=None,
                         help="consumer group that remembers what was re-driven "
                              "(default: <consumer_group>-redrive)")
    redrive.set_defaults(run=lambda args, settings: redrive_dlq(
        settings, limit=args.limit, to=args.to, dry_run=args.dry_run,
        group=args.group, where=filter_from_args(args)).summary())


def _positive(text: str) -> int:
    import argparse
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
