"""The one place Herald's Redis clients are built: one ``redis-server``, or Redis Cluster.

``redis_cluster = true`` (``HERALD_REDIS_CLUSTER``), or a ``redis_address`` of the form
``redis+cluster://host:port``, makes every client redis-py's ``RedisCluster`` with the address
as its seed node; else ``redis.Redis`` as before. The cluster client follows MOVED and ASK
itself (commands, scripts and pipelines alike) and retries TRYAGAIN during a reshard.

Key layout on Redis Cluster (docs/decisions/020-redis-cluster.md): key names are the same in
both deployments. A call that touches several keys either has them under one hash tag already
(the rate limiter's ``herald:rl:{<provider>}...``) or is split into calls of one key, or of
one slot (``mget``): a batch's ``sent`` markers, user reads, template and cancel reads.
"""
from __future__ import annotations

from typing import Any, Iterable
from urllib.parse import urlsplit

from redis.cluster import key_slot as _key_slot

CLUSTER_SCHEME = "redis+cluster"


def redis_target(settings) -> tuple[str, int, bool]:
    """(host, port, cluster?) from the settings: ``redis_address`` when given, else
    ``redis_host``/``redis_port``; cluster when the address's scheme or ``redis_cluster`` says so."""
    address = getattr(settings, "redis_address", "")
    cluster = bool(getattr(settings, "redis_cluster", False))
    if not address:
        return settings.redis_host, settings.redis_port, cluster
    parts = urlsplit(address)
    if parts.scheme not in ("redis", CLUSTER_SCHEME) or not parts.hostname:
        raise ValueError(f"redis_address: expected redis://host:port or "
                         f"{CLUSTER_SCHEME}://host:port, got {address!r}")
    return parts.hostname, parts.port or 6379, cluster or parts.scheme == CLUSTER_SCHEME


def redis_client(settings, **options: Any):
    """A blocking client: ``RedisCluster`` on a cluster, else ``redis.Redis``."""
    host, port, cluster = redis_target(settings)
    if cluster:
        from redis.cluster import RedisCluster
        return RedisCluster(host=host, port=port, **options)
    import redis
    return redis.Redis(host=host, port=port, **options)


def async_redis_client(settings, **options: Any):
    """An asyncio client: ``redis.asyncio.RedisCluster`` on a cluster, else ``redis.asyncio.Redis``."""
    host, port, cluster = redis_target(settings)
    if cluster:
        from redis.asyncio.cluster import RedisCluster
        return RedisCluster(host=host, port=port, **options)
    import redis.asyncio as aioredis
    return aioredis.Redis(host=host, port=port, **options)


def is_cluster(client: Any) -> bool:
    """True for a cluster client or a cluster client's pipeline (sync or asyncio)."""
    from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import ClusterPipeline, RedisCluster
    return isinstance(client, (RedisCluster, ClusterPipeline, AsyncRedisCluster,
                               AsyncClusterPipeline))


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster slot of a key (CRC16 of its hash tag, or of the whole key)."""
    return _key_slot(key.encode() if isinstance(key, str) else key)


def beside(key: str, suffix: str) -> str:
    """A new key name in ``key``'s slot (e.g. a staging key RENAMEd onto ``key``): ``key``'s own
    hash tag when it has one, else the whole of ``key`` as the tag. A key with a ``}`` but no
    tag gets ``key + suffix`` (fine on one server; on a cluster, another slot)."""
    start = key.find("{")
    if start >= 0 and key.find("}", start + 1) > start + 1:  # a tag of one character or more
        return f"{key}{suffix}"
    if "}" not in key:
        return f"{{{key}}}{suffix}"
    return f"{key}{suffix}"


def mget(client: Any, keys: Iterable[str]) -> list:
    """MGET on one server; on a cluster one MGET per slot (``mget_nonatomic``), answers in order."""
    keys = list(keys)
    if is_cluster(client):
        return client.mget_nonatomic(keys)
    return client.mget(keys)
