"""udfs/log_ends.py against the real broker: the gate's test for "the log holds records not read
yet", which decides whether a wait for input counts towards a seq hold (operators/gate.py); and
the topics' append times it relies on."""
from __future__ import annotations

import time

from kafka import KafkaProducer

from udfs.log_ends import LogEnds


def _append(producer: KafkaProducer, topic: str) -> int:
    """One record on partition 0, with a producer time far in the past; its log time."""
    meta = producer.send(topic, key=b"u", value=b"{}", partition=0,
                         timestamp_ms=int(time.time() * 1000) - 3_600_000).get(timeout=30)
    return meta.timestamp


def test_a_partition_is_newer_only_while_it_holds_a_later_record(stack, test_settings):
    topic = test_settings.topic_critical
    producer = KafkaProducer(bootstrap_servers=test_settings.kafka_bootstrap, acks="all")
    ends = LogEnds(test_settings.kafka_bootstrap, topic)
    try:
        first = _append(producer, topic)
        assert first > int(time.time() * 1000) - 60_000  # the append time, not the producer's
        assert ends.newer_than(0, first - 1) is True
        assert ends.newer_than(0, first) is False  # all read: a wait may count
        later = first
        while later == first:  # a record appended in a later millisecond
            later = _append(producer, topic)
        assert ends.newer_than(0, later - 1) is True
        assert ends.newer_than(0, later) is False
    finally:
        ends.close()
        producer.close()


def test_an_unreachable_log_cannot_say_and_is_not_asked_again_at_once(stack, test_settings):
    ends = LogEnds("127.0.0.1:1", test_settings.topic_critical)  # nothing listens there
    try:
        assert ends.newer_than(0, 0) is True
        assert ends.newer_than(1, 0) is True
        assert ends.looks == 1  # the second answer came from the failed look, not a new one
    finally:
        ends.close()


def test_topics_on_producer_times_are_named(stack, test_settings, unique, capsys):
    from kafka.admin import KafkaAdminClient, NewTopic

    from jobs.delivery import warn_on_producer_times
    from udfs.log_ends import on_producer_times
    created_by_hand = f"t{unique}.by-hand"  # as a user's own tooling creates it: CreateTime
    admin = KafkaAdminClient(bootstrap_servers=test_settings.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(created_by_hand, 1, 1)])
        deadline = time.monotonic() + 30
        while created_by_hand not in admin.list_topics():  # known to every answer from here
            assert time.monotonic() < deadline, "the topic was not created"
    finally:
        admin.close()
    ours = test_settings.topic_critical  # created by the stack
    assert on_producer_times(test_settings.kafka_bootstrap,
                             [ours, created_by_hand, f"t{unique}.none"]) == [created_by_hand]
    warn_on_producer_times(test_settings.replace(topic_promo=created_by_hand))
    err = capsys.readouterr().err
    assert f"topic {created_by_hand} has message.timestamp.type=CreateTime" in err
    assert ours not in err
