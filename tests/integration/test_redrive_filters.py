"""``herald_cli redrive`` filters against the real Kafka and Redis: only the dead letters that
match are re-driven, the others stay for a later run, and no run re-drives one twice."""
from __future__ import annotations

import orjson
import pytest

from herald.models import dead_letter
from herald.settings import settings_env
from herald_cli.__main__ import main as cli
from tests.integration.kafka_io import produce, read_all
from tests.integration.records import note, now_ms
from udfs.requeue import decode_retry

HOUR = 3_600_000


@pytest.fixture
def run_cli(test_settings, monkeypatch, capsys):
    for name, value in settings_env(test_settings).items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> str:
        capsys.readouterr()
        assert cli(["redrive", "--from-dlq", *args]) == 0, capsys.readouterr().err
        return capsys.readouterr().out
    return run


def redriven(settings) -> list[tuple[str, int]]:
    """(notification id, redrive) of every record on the critical retry topic."""
    out = []
    for _, value in read_all(settings.kafka_bootstrap, settings.topic_retry_critical):
        task, _ = decode_retry(value)
        out.append((task.n.id, task.redrive))
    return sorted(out)


def test_only_matching_dead_letters_are_redriven_and_the_others_stay(test_settings, run_cli,
                                                                     unique):
    s, t = test_settings, now_ms()
    failed_email = "every channel failed; email: sendgrid 400 invalid_email"

    def letter(name, tenant, reason, at, user):
        n = note(unique, name, user, tenant_id=tenant)
        return n["id"], at, (n["id"], dead_letter(n, reason, "delivery", at))

    a = letter("a", "acme", failed_email, t - 600_000, "u1")           # acme, email, recent
    b = letter("b", "globex", failed_email, t - 600_000, "u2")         # another tenant
    c = letter("c", "acme", "every channel failed; push: timeout", t - 600_000, "u3")
    d = letter("d", "acme", failed_email, t - 3 * HOUR, "u4")          # too old for --since 1h
    malformed = ("bad", dead_letter(b'{"id": "x", ', "malformed JSON", "parse", t))
    produce(s.kafka_bootstrap, s.topic_dlq, [a[2], b[2], c[2], d[2], malformed])
    acme_email = ("--tenant", "acme", "--reason", "invalid_(email|token)", "--since", "1h")

    out = run_cli(*acme_email, "--dry-run")
    assert out.startswith("would re-drive 1 record(s); passed over 0; 4 not matching")
    assert a[0] in out and all(x[0] not in out for x in (b, c, d))
    assert redriven(s) == []  # a dry run produces nothing ...

    out = run_cli(*acme_email)  # ... and remembers nothing: the same run takes `a` now
    assert out.startswith("re-drove 1 record(s)")
    assert redriven(s) == [(a[0], a[1])]  # redrive = the dead letter's `at`

    assert run_cli(*acme_email).startswith("re-drove 0 record(s)")
    out = run_cli("--id", c[0])
    assert out.startswith("re-drove 1 record(s); passed over 0; 3 not matching")
    assert redriven(s) == sorted([(a[0], a[1]), (c[0], c[1])])

    # with no filter, what the filtered runs left is re-driven, and nothing a second time
    out = run_cli()
    assert out.startswith("re-drove 2 record(s); passed over 1")  # b and d; the parse letter
    assert b[0] in out and d[0] in out and a[0] not in out and c[0] not in out
    assert "skipped bad: stage 'parse'" in out
    assert redriven(s) == sorted([(x[0], x[1]) for x in (a, b, c, d)])
    assert run_cli().startswith("re-drove 0 record(s); passed over 0")
    assert redriven(s) == sorted([(x[0], x[1]) for x in (a, b, c, d)])


def test_a_filtered_run_leaves_the_committed_offset_at_the_first_letter_that_stays(
        test_settings, redis_client, run_cli, unique):
    """Progress is the group's committed offset plus, past it, the offsets a filtered run took
    (in Redis); once the offset passes them they are pruned."""
    from kafka import KafkaConsumer, TopicPartition
    s, t = test_settings, now_ms()
    letters = [note(unique, i, "same-user") for i in range(4)]
    produce(s.kafka_bootstrap, s.topic_dlq,  # one key: one partition, in this order
            [("same-key", dead_letter(n, "every channel failed", "delivery", t)) for n in letters])
    group = f"{s.consumer_group}-redrive"
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        [tp] = [TopicPartition(s.topic_dlq, p) for p in consumer.partitions_for_topic(s.topic_dlq)
                if read_offsets(consumer, s.topic_dlq, p)]
        key = f"herald:redrive:{group}:{tp.topic}:{tp.partition}"
        first = read_offsets(consumer, s.topic_dlq, tp.partition)[0]

        run_cli("--id", letters[0]["id"], "--id", letters[2]["id"])
        assert consumer.committed(tp) == first + 1          # letters[1] stays: it holds it
        assert sorted(int(m) for m in redis_client.zrange(key, 0, -1)) == [first + 2]

        run_cli("--id", letters[1]["id"])
        assert consumer.committed(tp) == first + 3          # 0-2 done; letters[3] stays
        assert redis_client.zrange(key, 0, -1) == []        # pruned below the offset

        run_cli()
        assert consumer.committed(tp) == first + 4
    finally:
        consumer.close()
    assert [i for i, _ in redriven(s)] == sorted(n["id"] for n in letters)


def read_offsets(consumer, topic: str, partition: int) -> list[int]:
    """Offsets holding records on one partition now."""
    from kafka import TopicPartition
    tp = TopicPartition(topic, partition)
    start = consumer.beginning_offsets([tp])[tp]
    end = consumer.end_offsets([tp])[tp]
    return list(range(start, end))
