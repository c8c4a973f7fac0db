"""A local 3-master Redis Cluster (herald_stack/redis_cluster.py), started once per test session
for the tests in this folder, beside the stack's single server."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def redis_cluster(stack, base_settings):
    """The cluster, started if it is not running; stopped at the end if this session started
    it (kept with HERALD_KEEP_STACK=1, like the stack)."""
    from herald_stack.redis_cluster import RedisClusterStack
    cluster = RedisClusterStack(Path(base_settings.stack_dir))
    started = not cluster.ready()
    cluster.start()
    yield cluster
    if started and os.environ.get("HERALD_KEEP_STACK") != "1":
        cluster.stop()


@pytest.fixture
def cluster_client(redis_cluster, base_settings):
    """A RedisCluster client built the way Herald builds it (herald.redis_conn)."""
    from herald.redis_conn import redis_client
    client = redis_client(base_settings.replace(redis_address=redis_cluster.address))
    yield client
    client.close()
