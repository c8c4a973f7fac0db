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

Progress is a consumer group's committed offsets, so a second run picks up where the first
stopped and never re-drives a record twice; parse-stage dead letters (malformed input) cannot be
re-driven as they are and are passed over, counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from herald import states
from herald.errors import ValidationError
from herald.models import notification_from_dict
from herald.settings import Settings
from udfs.requeue import Task, encode_retry

DLQ_FIELDS = ("reason", "stage", "at", "attempts")


@dataclass
class RedriveReport:
    redriven: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would re-drive" if self.dry_run else "re-drove"
        lines = [f"{verb} {len(self.redriven)} record(s); passed over {len(self.skipped)}"]
        lines += [f"  skipped {key}: {why}" for key, why in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


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


def redrive_dlq(settings: Settings, *, limit: int | None = None, to: str = "retry",
                dry_run: bool = False, group: str | None = None,
                poll_timeout_ms: int = 1_000) -> RedriveReport:
    report = RedriveReport(dry_run=dry_run)
    group = group or f"{settings.consumer_group}-redrive"
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest")
    producer = None if dry_run else KafkaProducer(bootstrap_servers=settings.kafka_bootstrap,
                                                  acks="all")
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
        done: dict[TopicPartition, int] = {}
        sends = []
        stop = False
        while not stop and any(consumer.position(tp) < end[tp] for tp in partitions):
            for tp, messages in consumer.poll(timeout_ms=poll_timeout_ms).items():
                for message in messages:
                    if message.offset >= end[tp]:
                        continue  # arrived after we started: the next run's
                    key = message.key.decode("utf-8", "replace") if message.key else "(no key)"
                    try:
                        priority, user, value = redrive_record(message.value, to)
                    except ValidationError as exc:
                        report.skipped.append((key, str(exc)))
                    else:
                        if producer is not None:
                            sends.append(producer.send(topics[(to, priority)],
                                                       key=user.encode(), value=value))
                        report.redriven.append(key)
                    done[tp] = message.offset + 1
                    if limit is not None and len(report.redriven) >= limit:
                        stop = True
                        break
                if stop:
                    break
        if producer is not None:
            producer.flush()
            for future in sends:
                future.get(30)  # every record is on its topic before we commit past it
            if done:
                consumer.commit({tp: OffsetAndMetadata(offset, "", -1)
                                 for tp, offset in done.items()})
    finally:
        consumer.close()
        if producer is not None:
            producer.close()
    return report


def register(commands) -> None:
    """``redrive --from-dlq``."""
    redrive = commands.add_parser(
        "redrive", help="send dead letters of the delivery stage back into the pipeline")
    redrive.add_argument("--from-dlq", action="store_true", required=True,
                         help="read the dead-letter topic (the only source there is)")
    redrive.add_argument("--limit", type=_positive, default=None, metavar="N",
                         help="re-drive at most N records (default: all not re-driven yet)")
    redrive.add_argument("--to", choices=("retry", "class"), default="retry",
                         help="retry: the class's retry topic, past the gate's dedup (default);"
                              " class: the class topic itself (only useful once the gate's"
                              " dedup window, dedup_ttl_ms, has passed)")
    redrive.add_argument("--dry-run", action="store_true",
                         help="show what would be re-driven; produce and commit nothing")
    redrive.add_argument("--group", default=None,
                         help="consumer group that remembers what was re-driven "
                              "(default: <consumer_group>-redrive)")
    redrive.set_defaults(run=lambda args, settings: redrive_dlq(
        settings, limit=args.limit, to=args.to, dry_run=args.dry_run,
        group=args.group).summary())


def _positive(text: str) -> int:
    import argparse
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
