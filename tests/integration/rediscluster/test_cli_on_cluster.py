"""The CLI's Redis writes on the local Redis Cluster (herald_stack/redis_cluster.py), with the
settings a cluster deployment gives it (``redis+cluster://``): users, a segment and a quota are
read back the way the API and the job read them, through the cluster client."""
from __future__ import annotations

import asyncio
import uuid

from herald.ratelimit import RedisRateLimiter
from herald.redis_conn import async_redis_client
from herald_api.store import SegmentStore, UserStore
from herald_cli.quota import set_quota
from herald_cli.segments import load_segment, load_users
from herald.segments import SegmentFiles
from udfs.quotas import QuotaStore


def test_users_segments_and_quotas_from_the_cli_on_the_cluster(redis_cluster, cluster_client,
                                                               base_settings, tmp_path):
    run = uuid.uuid4().hex[:8]
    tenant = f"cli{run}"
    settings = base_settings.replace(redis_address=redis_cluster.address,
                                     segments_dir=str(tmp_path / "segments"),
                                     ratelimit_namespace=f"rl{run}")
    users = tmp_path / "users.csv"
    users.write_text("user_id,push_token,platform,phone,email\n" + "".join(
        f"u{i},tok-{i},android,+1555010{i:04d},u{i}@example.com\n" for i in range(300)))
    assert load_users(settings, tenant, users) == f"users of tenant {tenant!r}: 300 written"
    ids = tmp_path / "ids.csv"
    ids.write_text("user_id\n" + "".join(f"u{i}\n" for i in range(0, 300, 3)))
    assert "100 users" in load_segment(settings, tenant, "every-third", ids)
    set_quota(settings, "twilio", 42.0, 10.0, tenant=tenant, control=False)

    async def read_back():
        client = async_redis_client(settings)
        try:
            found = [await UserStore(client).get(tenant, f"u{i}") for i in (0, 150, 299)]
            store = SegmentStore(client, SegmentFiles.from_settings(settings))
            members = await store.read(tenant, "every-third", 0, 1000)
            return found, members
        finally:
            await client.aclose()

    found, members = asyncio.run(read_back())
    assert [(u.user_id, u.contacts.phone) for u, _ in found] == [
        ("u0", "+15550100000"), ("u150", "+15550100150"), ("u299", "+15550100299")]
    assert members == [f"u{i}" for i in range(0, 300, 3)]
    limiter = RedisRateLimiter(cluster_client, namespace=settings.ratelimit_namespace)
    [config] = QuotaStore(cluster_client, limiter).read([("twilio", tenant)]).values()
    assert (config.rate_per_s, config.burst) == (42.0, 10.0)
