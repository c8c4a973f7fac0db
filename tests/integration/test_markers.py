"""The sent/sending markers (udfs.markers) against the real redis-server of the session."""
from __future__ import annotations

import redis

from udfs.markers import CLAIMED, DONE, SENT, SentMarkers


def markers(base_settings) -> tuple[SentMarkers, redis.Redis]:
    client = redis.Redis(host=base_settings.redis_host, port=base_settings.redis_port)
    return SentMarkers(client, ttl_ms=60_000), client


def test_fresh_ids_are_claimed_and_nothing_is_reported(stack, base_settings, unique):
    m, client = markers(base_settings)
    ids = [f"{unique}-{i}" for i in range(3)]
    assert m.claim(ids) == (set(), set())
    assert all(client.get(SENT.format(i)) == CLAIMED for i in ids)


def test_a_claim_left_by_a_crash_is_reported_in_flight(stack, base_settings, unique):
    m, _ = markers(base_settings)
    ids = [f"{unique}-a", f"{unique}-b"]
    m.claim(ids[:1])  # the "crashed" run claimed a and never settled
    assert m.claim(ids) == (set(), {ids[0]})


def test_settle_marks_accepted_sent_and_drops_every_claim(stack, base_settings, unique):
    m, client = markers(base_settings)
    accepted, released = [f"{unique}-ok1", f"{unique}-ok2"], [f"{unique}-no"]
    m.claim(accepted + released)
    m.settle(accepted, released)
    assert all(client.get(SENT.format(i)) == DONE for i in accepted)
    assert not client.exists(SENT.format(released[0]))
    assert 0 < client.pttl(SENT.format(accepted[0])) <= 60_000
    # A replay: the accepted ones are sent before, the released one is claimed afresh.
    assert m.claim(accepted + released) == (set(accepted), set())
    assert client.get(SENT.format(released[0])) == CLAIMED
    # Releasing what was sent before (a replay goes out as released) keeps its marker.
    m.settle([], accepted + released)
    assert all(client.get(SENT.format(i)) == DONE for i in accepted)
    assert not client.exists(SENT.format(released[0]))


class CountingRedis(redis.Redis):
    """Counts the commands the client sends (each is one round trip here)."""
    sent = 0

    def execute_command(self, *args, **options):
        self.sent += 1
        return super().execute_command(*args, **options)


def test_a_large_batch_is_one_command_each_way(stack, base_settings, unique):
    client = CountingRedis(host=base_settings.redis_host, port=base_settings.redis_port)
    m = SentMarkers(client, ttl_ms=60_000)
    m.settle([], m.claim([f"{unique}-warm"])[0] or [f"{unique}-warm"])  # scripts loaded
    client.sent = 0
    ids = [f"{unique}-{i}" for i in range(5_000)]
    assert m.claim(ids) == (set(), set())
    m.settle(ids[:4_000], ids[4_000:])
    assert client.sent == 2  # one EVALSHA each way
    assert client.get(SENT.format(ids[0])) == DONE and not client.exists(SENT.format(ids[-1]))


def test_a_claim_with_lookups_survives_a_redis_that_lost_its_scripts(stack, base_settings,
                                                                      unique):
    from herald.models import notification_from_dict
    from tests.integration.records import note
    from udfs.lookups import BatchLookups
    m, client = markers(base_settings)
    client.script_flush()  # what a Redis restart does
    lookups = BatchLookups()
    lookups.want(notification_from_dict(note(unique, "x", f"{unique}-nobody")), user=True)
    assert m.claim([f"{unique}-x"], lookups=lookups) == (set(), set())
    assert client.get(SENT.format(f"{unique}-x")) == CLAIMED
    assert list(lookups.users.values()) == [None]  # read (the user script loaded too): absent


def test_a_settle_that_waits_rides_in_the_next_claim(stack, base_settings, unique):
    m, client = markers(base_settings)
    accepted, released, later = f"{unique}-ok", f"{unique}-no", f"{unique}-next"
    m.claim([accepted, released])
    m.settle([accepted], [released], now=False)
    assert client.get(SENT.format(accepted)) == CLAIMED  # not sent yet
    # The next claim carries it, before its own claims: the released id is claimed afresh.
    assert m.claim([later, released]) == (set(), set())
    assert client.get(SENT.format(accepted)) == DONE
    assert client.get(SENT.format(released)) == CLAIMED
    m.settle([later], [released], now=False)
    m.flush()
    assert client.get(SENT.format(later)) == DONE and not client.exists(SENT.format(released))
    m.flush()  # nothing waits: nothing is sent
