"""The Redis key layout on Redis Cluster (docs/decisions/020-redis-cluster.md): every command
Herald sends with more than one key has them in one slot, computed with Redis Cluster's own
CRC16 (``redis.cluster.key_slot``); calls over a batch's keys are one command per key."""
from __future__ import annotations

import pytest
from redis.cluster import ClusterPipeline

from herald.models import notification_from_dict
from herald.ratelimit import RedisRateLimiter
from herald.redis_conn import is_cluster, key_slot, redis_target
from herald.settings import load_settings
from udfs.lookups import BatchLookups
from udfs.markers import MARKER, SentMarkers, marker


class RecordingPipeline(ClusterPipeline):
    """A cluster pipeline that records its commands instead of sending them."""

    def __init__(self):  # noqa: D107 (no cluster behind it)
        self.sent: list[tuple] = []

    def execute_command(self, *args, **kwargs):
        self.sent.append(args)
        return self

    def execute(self, raise_on_error=True):
        return [b"0" if args[0] == "EVAL" else None for args in self.sent]


class FakeClusterClient:
    def __init__(self):
        self.pipes: list[RecordingPipeline] = []
        self.script_keys: list[list[str]] = []

    def register_script(self, source):
        def call(keys=(), args=()):
            self.script_keys.append(list(keys))
            return [1, 0] if len(args) > 2 else 10  # a take's (granted, wait), a hold's end
        return call

    def pipeline(self, transaction=False):
        self.pipes.append(RecordingPipeline())
        return self.pipes[-1]

    def hset(self, *args, **kwargs):
        pass


def command_keys(args: tuple) -> list[str]:
    """The keys of a recorded command, as Redis Cluster routes it."""
    name = args[0]
    if name in ("EVAL", "EVALSHA"):
        return list(args[3:3 + int(args[2])])
    if name in ("GET", "HMGET", "SET", "HSET", "DEL"):
        return [args[1]]
    raise AssertionError(f"unexpected command {name}")


def one_slot(keys: list[str]) -> bool:
    return len({key_slot(k) for k in keys}) == 1


def notes(n: int):
    return [notification_from_dict({
        "id": f"id-{i}", "tenant_id": f"tenant{i % 3}", "user_id": f"u{i}",
        "priority": "critical", "channels": ["push"], "content": {"body": "x"},
        "created_at": 1_764_000_000_000, "expires_at": 1_764_000_600_000,
        **({"content": {"template": "offers", "vars": {}}, "campaign_id": f"c{i % 4}"}
           if i % 2 else {})}) for i in range(n)]


def test_a_batch_claim_and_settle_are_one_key_per_command():
    client = FakeClusterClient()
    m = SentMarkers(client, 60_000, old_keys_before=0)
    m.cluster = True
    batch = notes(50)
    lookups = BatchLookups()
    for n in batch:
        lookups.want(n, user=True)
    m.claim(batch, lookups=lookups)
    m.settle([marker(n) for n in batch[:30]], [marker(n) for n in batch[30:]], now=False)
    m.claim(notes(3))  # the settle rides with this claim
    m.flush()
    sent = [args for pipe in client.pipes for args in pipe.sent]
    assert sent and all(one_slot(command_keys(args)) for args in sent)
    evals = [args for args in sent if args[0] == "EVAL"]
    assert all(int(args[2]) == 1 for args in evals)
    claimed = [args[3] for args in evals if args[1].lstrip().startswith("local ttl = ARGV[1]\nlocal out")]
    assert claimed[:50] == [MARKER.format(marker(n)) for n in batch]
    # users, templates and cancels of the batch: one read each, per key
    reads = [args for args in client.pipes[0].sent if args[0] != "EVAL"]
    assert len(reads) == len(lookups.users) + len(lookups.templates) + len(lookups._campaigns)
    assert (len(lookups.users), len(lookups.templates), len(lookups._campaigns)) == (50, 3, 6)


def test_lookups_on_a_cluster_pipeline_are_per_key():
    pipe = RecordingPipeline()
    assert is_cluster(pipe)
    lookups = BatchLookups()
    for n in notes(20):
        lookups.want(n, user=True)
    assert lookups.queue(pipe) == len(pipe.sent) == 20 + 3 + 6  # users, templates, campaigns
    assert {args[0] for args in pipe.sent} == {"HMGET", "GET"}


@pytest.mark.parametrize("namespace", ["herald:rl", "rl1234"])
@pytest.mark.parametrize("provider", ["fcm", "apns", "twilio", "sendgrid"])
def test_a_take_touches_its_provider_and_tenant_buckets_in_one_slot(namespace, provider):
    client = FakeClusterClient()
    limiter = RedisRateLimiter(client, reserve_fraction=0, namespace=namespace)
    for tenant in ("acme", "globex", "t0123456789"):
        limiter.take(provider, 5, tenant=tenant, now_ms=1)
    # a part's takes for all its tenants of one provider: one script call, one slot
    limiter.take_many(provider, [("acme", 5, None), (None, 2, None), ("globex", 1, None)],
                      now_ms=1)
    assert len(client.script_keys[-1]) == 3
    limiter.hold(provider, until_ms=10)
    assert client.script_keys and all(one_slot(keys) for keys in client.script_keys)
    assert len(client.script_keys[0]) == 2
    # the tag is the provider: each provider's buckets on a slot of their own
    assert key_slot(limiter.provider_key(provider)) == key_slot(provider)


def test_the_cluster_is_chosen_by_the_setting_or_the_url():
    s = load_settings({})
    assert redis_target(s) == (s.redis_host, s.redis_port, False)
    assert redis_target(s.replace(redis_cluster=True))[2] is True
    assert redis_target(s.replace(redis_address="redis+cluster://10.0.0.5:7000")) == \
        ("10.0.0.5", 7000, True)
    assert redis_target(s.replace(redis_address="redis://10.0.0.6:6380")) == \
        ("10.0.0.6", 6380, False)
    assert load_settings({"HERALD_REDIS_CLUSTER": "true"}).redis_cluster is True
    with pytest.raises(ValueError):
        redis_target(s.replace(redis_address="http://x:1"))


@pytest.mark.parametrize("event", [
    {"id": "n-1", "tenant_id": "acme", "state": "delivered", "at": 1},
    {"id": "cmp1:u-7", "tenant_id": "acme", "state": "delivered", "at": 1,
     "campaign_id": "cmp1"},
    {"id": "cmp1", "tenant_id": "acme", "state": "accepted", "at": 1, "campaign_id": "cmp1",
     "expanded": 3},
    {"id": "a:b:c", "tenant_id": "globex", "state": "failed", "at": 1}])
def test_an_audit_write_touches_one_slot_on_the_cluster(event):
    from herald_api.store import audit_write_args, campaign_counts_key
    keys, _ = audit_write_args(event, 1000, tagged=True)
    assert len(keys) == 3 and one_slot(keys)
    if event.get("campaign_id"):
        assert keys[2] == campaign_counts_key(event["tenant_id"], event["campaign_id"], True)
    # one server keeps today's names
    plain, _ = audit_write_args(event, 1000)
    assert plain[0] == f"herald:audit:{event['tenant_id']}:{event['id']}"


def test_a_requests_idempotency_keys_share_the_tenants_slot_on_the_cluster():
    from herald_api.store import idem_key
    keys = [idem_key("acme", "hdr:notifications", "k1", True), idem_key("acme", "ntf", "n-1", True)]
    assert one_slot(keys) and key_slot(keys[0]) == key_slot("acme")
    assert idem_key("acme", "ntf", "n-1") == "herald:idem:acme:ntf:n-1"


@pytest.mark.parametrize("key", ["herald:segment:acme:vip", "herald:segment:acme:a{b}c",
                                 "herald:segment:acme:{", "herald:segment:acme:a{b"])
def test_a_staging_key_is_in_its_segments_slot(key):
    """(A key with a ``}`` and no hash tag, e.g. of a segment ``a}b`` or ``a{}b``, has no other
    name in its slot: such a segment cannot be uploaded to a cluster, decision 020.)"""
    from herald.redis_conn import beside
    staging = beside(key, ":staging:0123")
    assert staging != key and key_slot(staging) == key_slot(key)
