"""The sent markers (udfs.markers) against the real redis-server of the session."""
from __future__ import annotations

import redis

from herald.models import notification_from_dict
from tests.integration.records import note, now_ms
from udfs.markers import CLAIMED, DONE, LEGACY, MARKER, SentMarkers, marker


def markers(base_settings, **options) -> tuple[SentMarkers, redis.Redis]:
    client = redis.Redis(host=base_settings.redis_host, port=base_settings.redis_port)
    return SentMarkers(client, ttl_ms=60_000, **options), client


def notes(unique: str, *names, tenant: str = "acme", **extra):
    return [notification_from_dict(note(unique, name, f"u-{name}", tenant_id=tenant, **extra))
            for name in names]


def key(n) -> str:
    return MARKER.format(marker(n))


def test_fresh_ids_are_claimed_and_nothing_is_reported(stack, base_settings, unique):
    m, client = markers(base_settings)
    batch = notes(unique, 0, 1, 2)
    assert m.claim(batch) == (set(), set())
    assert all(client.get(key(n)) == CLAIMED for n in batch)


def test_a_claim_left_by_a_crash_is_reported_in_flight(stack, base_settings, unique):
    m, _ = markers(base_settings)
    batch = notes(unique, "a", "b")
    m.claim(batch[:1])  # the "crashed" run claimed a and never settled
    assert m.claim(batch) == (set(), {marker(batch[0])})


def test_settle_marks_accepted_sent_and_drops_every_claim(stack, base_settings, unique):
    m, client = markers(base_settings)
    accepted, released = notes(unique, "ok1", "ok2"), notes(unique, "no")
    m.claim(accepted + released)
    m.settle([marker(n) for n in accepted], [marker(n) for n in released])
    assert all(client.get(key(n)) == DONE for n in accepted)
    assert not client.exists(key(released[0]))
    assert 0 < client.pttl(key(accepted[0])) <= 60_000
    # A replay: the accepted ones are sent before, the released one is claimed afresh.
    assert m.claim(accepted + released) == ({marker(n) for n in accepted}, set())
    assert client.get(key(released[0])) == CLAIMED
    # Releasing what was sent before (a replay goes out as released) keeps its marker.
    m.settle([], [marker(n) for n in accepted + released])
    assert all(client.get(key(n)) == DONE for n in accepted)
    assert not client.exists(key(released[0]))


def test_two_tenants_one_id_are_two_markers(stack, base_settings, unique):
    """Ids are chosen by tenants: acme's x-1 being sent says nothing about globex's x-1."""
    m, client = markers(base_settings)
    acme, = notes(unique, "x-1", tenant=f"acme{unique}")
    globex, = notes(unique, "x-1", tenant=f"globex{unique}")
    assert acme.id == globex.id
    assert m.claim([acme]) == (set(), set())
    m.settle([marker(acme)])
    assert m.claim([globex, acme]) == ({marker(acme)}, set())  # only acme's was sent
    assert client.get(key(globex)) == CLAIMED and client.get(key(acme)) == DONE


def test_old_keys_stop_a_resend_of_what_was_in_the_log_before_the_upgrade(stack, base_settings,
                                                                          unique):
    """A version without the tenant scope marked `herald:sent:{id}`; after a restore from its
    checkpoint, what it sent is not sent again and what it had in flight is reported so. A
    notification created after the upgrade never reads an old key."""
    upgrade = now_ms()
    m, client = markers(base_settings, old_keys_before=upgrade)
    sent, in_flight, fresh = notes(unique, "sent", "flight", "fresh",
                                   created_at=upgrade - 5_000)
    later, = notes(unique, "later", created_at=upgrade + 1)
    client.set(LEGACY.format(sent.id), DONE, px=60_000)
    client.set(LEGACY.format(in_flight.id), CLAIMED, px=60_000)
    client.set(LEGACY.format(later.id), DONE, px=60_000)  # another tenant's id, before it
    assert m.claim([sent, in_flight, fresh, later]) == ({marker(sent)}, {marker(in_flight)})
    assert client.get(key(sent)) == DONE  # carried over: the next look needs no old key
    assert client.get(key(later)) == CLAIMED and client.get(key(fresh)) == CLAIMED
    # Once the old keys have all expired (dedup_ttl_ms after the upgrade), none is read.
    m.old_keys_until = 0
    gone, = notes(unique, "gone", created_at=upgrade - 5_000)
    client.set(LEGACY.format(gone.id), DONE, px=60_000)
    assert m.claim([gone]) == (set(), set())


def test_the_upgrade_time_is_kept_once(stack, base_settings):
    first, _ = markers(base_settings)
    second, _ = markers(base_settings)
    assert first.old_keys_before == second.old_keys_before <= now_ms()


class CountingRedis(redis.Redis):
    """Counts the commands the client sends (each is one round trip here)."""
    sent = 0

    def execute_command(self, *args, **options):
        self.sent += 1
        return super().execute_command(*args, **options)


def test_a_large_batch_is_one_command_each_way(stack, base_settings, unique):
    client = CountingRedis(host=base_settings.redis_host, port=base_settings.redis_port)
    m = SentMarkers(client, ttl_ms=60_000)
    warm = notes(unique, "warm")
    m.claim(warm)
    m.settle([], [marker(warm[0])])  # scripts loaded
    client.sent = 0
    batch = notes(unique, *range(5_000))
    assert m.claim(batch) == (set(), set())
    marks = [marker(n) for n in batch]
    m.settle(marks[:4_000], marks[4_000:])
    assert client.sent == 2  # one EVALSHA each way
    assert client.get(key(batch[0])) == DONE and not client.exists(key(batch[-1]))


def test_a_claim_with_lookups_survives_a_redis_that_lost_its_scripts(stack, base_settings,
                                                                      unique):
    from udfs.lookups import BatchLookups
    m, client = markers(base_settings)
    client.script_flush()  # what a Redis restart does
    lookups = BatchLookups()
    batch = [notification_from_dict(note(unique, "x", f"{unique}-nobody"))]
    lookups.want(batch[0], user=True)
    assert m.claim(batch, lookups=lookups) == (set(), set())
    assert client.get(key(batch[0])) == CLAIMED
    assert list(lookups.users.values()) == [None]  # read (the user script loaded too): absent


def test_a_settle_that_waits_rides_in_the_next_claim(stack, base_settings, unique):
    m, client = markers(base_settings)
    accepted, released, later = notes(unique, "ok", "no", "next")
    m.claim([accepted, released])
    m.settle([marker(accepted)], [marker(released)], now=False)
    assert client.get(key(accepted)) == CLAIMED  # not sent yet
    # The next claim carries it, before its own claims: the released id is claimed afresh.
    assert m.claim([later, released]) == (set(), set())
    assert client.get(key(accepted)) == DONE
    assert client.get(key(released)) == CLAIMED
    m.settle([marker(later)], [marker(released)], now=False)
    m.flush()
    assert client.get(key(later)) == DONE and not client.exists(key(released))
    m.flush()  # nothing waits: nothing is sent
