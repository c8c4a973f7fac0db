"""Herald's Redis calls on the local Redis Cluster: the sent markers, the batch lookups and the
token buckets, and a slot moved under them half way (ASK, then MOVED)."""
from __future__ import annotations

from itertools import count

from herald.models import notification_from_dict
from herald.ratelimit import RedisRateLimiter
from herald.redis_conn import key_slot
from herald.users import UserRecord, queue_put, Contacts
from tests.integration.records import note, now_ms
from udfs.lookups import BatchLookups, cancelled_campaigns
from udfs.markers import CLAIMED, DONE, LEGACY, MARKER, SentMarkers, marker


def notes(unique: str, names, tenant: str = "acme"):
    return [notification_from_dict(note(unique, name, f"u-{name}", tenant_id=tenant))
            for name in names]


def key(n) -> str:
    return MARKER.format(marker(n))


def names_in_slot(unique: str, tenant: str, how_many: int, slot: int | None = None):
    """Notification names whose markers share one slot (the first name's, or ``slot``)."""
    out = []
    for i in count():
        n, = notes(unique, [f"s{i}"], tenant)
        if slot is None:
            slot = key_slot(key(n))
        if key_slot(key(n)) == slot:
            out.append(f"s{i}")
            if len(out) == how_many:
                return out, slot


def test_markers_claim_settle_and_read_across_slots(cluster_client, unique):
    m = SentMarkers(cluster_client, ttl_ms=60_000, old_keys_before=0)
    batch = notes(unique, range(40))
    assert len({key_slot(key(n)) for n in batch}) > 30  # the batch spans slots and nodes
    assert m.claim(batch) == (set(), set())
    assert all(cluster_client.get(key(n)) == CLAIMED for n in batch)
    accepted, released = batch[:30], batch[30:]
    m.settle([marker(n) for n in accepted], [marker(n) for n in released], now=False)
    fresh = notes(unique, ["f1", "f2"])
    assert m.claim(fresh) == (set(), set())  # the waiting settle rode with this claim
    assert all(cluster_client.get(key(n)) == DONE for n in accepted)
    assert not any(cluster_client.exists(key(n)) for n in released)
    # A replay: accepted ones are sent before; an unsettled claim is a crash's in-flight call.
    assert m.claim(batch + fresh) == ({marker(n) for n in accepted},
                                      {marker(n) for n in fresh})
    assert m.sent(batch) == ({marker(n) for n in accepted}, {marker(n) for n in released})


def test_old_keys_are_read_on_the_cluster_too(cluster_client, unique):
    m = SentMarkers(cluster_client, ttl_ms=60_000, old_keys_before=now_ms() + 60_000)
    sent, crashed, fresh = notes(unique, ["old-sent", "old-crashed", "new"])
    cluster_client.set(LEGACY.format(sent.id), "1", px=60_000)
    cluster_client.set(LEGACY.format(crashed.id), "0", px=60_000)
    assert m.claim([sent, crashed, fresh]) == ({marker(sent)}, {marker(crashed)})
    assert cluster_client.get(key(sent)) == DONE


def test_lookups_read_users_templates_and_cancels_per_key(cluster_client, unique):
    tenant = f"t{unique}"
    pipe = cluster_client.pipeline(transaction=False)
    users = [UserRecord(user_id=f"u{i}", contacts=Contacts(push_token=f"tok{i}",
                                                           platform="android"))
             for i in range(10)]
    for user in users:
        queue_put(pipe, tenant, user, now_ms())
    pipe.execute()
    cluster_client.set(f"herald:cancelled:{tenant}:c1", "1")
    lookups = BatchLookups()
    for i in range(12):  # two users without a record
        n = notification_from_dict(note(unique, f"n{i}", f"u{i}", tenant_id=tenant,
                                        campaign_id=f"c{i % 3}"))
        lookups.want(n, user=True)
    m = SentMarkers(cluster_client, ttl_ms=60_000, old_keys_before=0)
    m.claim(notes(unique, ["l1"]), lookups=lookups)
    assert {u: (r.contacts.push_token if r else None) for (_, u), r in lookups.users.items()} \
        == {**{f"u{i}": f"tok{i}" for i in range(10)}, "u10": None, "u11": None}
    assert lookups.cancelled == {(tenant, "c1")}
    assert cancelled_campaigns(cluster_client, [(tenant, "c0"), (tenant, "c1")]) == {(tenant, "c1")}


def test_a_slot_moved_half_way_loses_no_marker_and_no_bucket(redis_cluster, cluster_client,
                                                             unique):
    """The markers of one slot are moved key by key to another node while claims and token
    takes go on: claims meet ASK half way and MOVED after; what was sent stays sent, a fresh
    id is claimed once."""
    tenant = f"t{unique}"
    names, slot = names_in_slot(unique, tenant, 12)
    m = SentMarkers(cluster_client, ttl_ms=60_000, old_keys_before=0)
    sent = notes(unique, names[:8], tenant)
    m.claim(sent)
    m.settle([marker(n) for n in sent])
    limiter = RedisRateLimiter(cluster_client, reserve_fraction=0, namespace=f"rl{unique}")
    limiter.configure("fcm", 1000, 1000)
    limiter.configure("fcm", 1000, 1000, tenant=tenant)
    assert key_slot(limiter.provider_key("fcm")) == key_slot(limiter.tenant_key("fcm", tenant))
    seen = {}
    source = redis_cluster.owner(slot)
    to = next(p for p in redis_cluster.ports if p != source)

    def keys_on(port: int) -> int:
        with redis_cluster.node(port) as node:
            return node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)

    def midway():
        # some moved, some not: a key missing at the source answers ASK
        seen["split"] = keys_on(source) > 0 and keys_on(to) > 0
        seen["replay"] = m.claim(sent)
        seen["fresh"] = m.claim(notes(unique, names[8:10], tenant))

    moved = redis_cluster.migrate_slot(slot, to, batch=3, midway=midway)
    assert moved >= 8 and seen["split"]
    assert seen["replay"] == ({marker(n) for n in sent}, set())
    assert seen["fresh"] == (set(), set())
    assert redis_cluster.owner(slot) == to
    # After the move (MOVED, then the client's new map): the same answers, nothing lost.
    assert m.claim(sent) == ({marker(n) for n in sent}, set())
    late = notes(unique, names[8:12], tenant)
    assert m.claim(late) == (set(), {marker(n) for n in late[:2]})
    # The buckets' slot moved too: takes go on from the tokens left.
    bucket_slot = key_slot(limiter.provider_key("fcm"))
    first = limiter.take("fcm", 600, tenant=tenant, now_ms=1_000)
    redis_cluster.migrate_slot(bucket_slot, next(p for p in redis_cluster.ports
                                                 if p != redis_cluster.owner(bucket_slot)))
    second = limiter.take("fcm", 600, tenant=tenant, now_ms=1_000, partial=True)
    assert (first.granted, second.granted) == (600, 400)
