"""Loading segments and users: the CLI as a user runs it (a subprocess, real Redis), and the
API's segment store writing the same Parquet version the expansion reads."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from herald.segments import SegmentFiles, read_batches
from herald.settings import PROJECT_ROOT, settings_env
from herald_api.records import UserRecord
from herald_api.store import SegmentStore, segment_key, segment_meta_key, user_key


@pytest.fixture
def settings(test_settings, tmp_path):
    return test_settings.replace(segments_dir=str(tmp_path / "segments"))


@pytest.fixture
def rclient(settings):
    client = redis.Redis(host=settings.redis_host, port=settings.redis_port,
                         decode_responses=True)
    yield client
    client.close()


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "herald_cli", *args], cwd=PROJECT_ROOT,
                          env={**os.environ, **settings_env(settings)}, capture_output=True,
                          text=True, timeout=120)


def test_segments_load_from_csv_writes_parquet_and_the_api_view(settings, rclient, tmp_path,
                                                                unique):
    tenant, ids = f"t{unique}", [f"00{i}" for i in range(25_000)]
    path = tmp_path / "members.csv"
    path.write_text("user_id,ignored\n" + "".join(f"{u},x\n" for u in ids))
    out = cli(settings, "segments", "load", "spring", str(path), "--tenant", tenant)
    assert out.returncode == 0, out.stderr
    assert f"segment 'spring' of tenant '{tenant}': 25000 users" in out.stdout
    current = SegmentFiles.from_settings(settings).current(tenant, "spring")
    assert sum(read_batches(current, 0, 4_096), []) == ids  # text kept: "007" stays "007"
    assert rclient.hget(segment_meta_key(tenant, "spring"), "count") == "25000"
    assert rclient.llen(segment_key(tenant, "spring")) == 25_000


def test_segments_load_from_parquet_replaces_the_segment(settings, tmp_path, unique):
    tenant = f"t{unique}"
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"user_id": ["a", "b", "c"]}), first)
    pq.write_table(pa.table({"user_id": ["d"], "score": [1.5]}), second)
    assert cli(settings, "segments", "load", "s", str(first), "--tenant", tenant).returncode == 0
    assert cli(settings, "segments", "load", "s", str(second), "--tenant", tenant).returncode == 0
    current = SegmentFiles.from_settings(settings).current(tenant, "s")
    assert list(read_batches(current)) == [["d"]]


def test_a_bad_segment_file_is_refused_and_nothing_changes(settings, rclient, tmp_path, unique):
    tenant = f"t{unique}"
    path = tmp_path / "dup.csv"
    path.write_text("user_id\na\nb\na\n")
    out = cli(settings, "segments", "load", "s", str(path), "--tenant", tenant)
    assert out.returncode != 0 and "lists user 'a' twice" in out.stderr
    assert SegmentFiles.from_settings(settings).current(tenant, "s") is None
    assert not rclient.exists(segment_meta_key(tenant, "s"))


def test_users_load_writes_the_hashes_the_api_reads(settings, rclient, tmp_path, unique):
    tenant = f"t{unique}"
    path = tmp_path / "users.csv"
    path.write_text(
        "user_id,push_token,platform,phone,email,locale,opt_outs,quiet_start,quiet_end,quiet_tz\n"
        "u1,tok-1,android,,,en-GB,sms;email,22:00,07:00,Europe/London\n"
        "u2,,,+15550100,b@example.com,,,,,\n")
    rclient.hset(user_key(tenant, "u2"), mapping={"user_id": "u2", "push_token": "stale"})
    out = cli(settings, "users", "load", str(path), "--tenant", tenant)
    assert out.returncode == 0, out.stderr
    assert f"users of tenant '{tenant}': 2 written" in out.stdout
    u1 = UserRecord.from_hash(rclient.hgetall(user_key(tenant, "u1")))
    assert (u1.contacts.push_token, u1.contacts.platform, u1.locale, u1.opt_outs) == (
        "tok-1", "android", "en-GB", ("sms", "email"))
    assert (u1.quiet_hours.start, u1.quiet_hours.end, u1.quiet_hours.tz) == (
        "22:00", "07:00", "Europe/London")
    u2 = rclient.hgetall(user_key(tenant, "u2"))
    assert "push_token" not in u2 and u2["phone"] == "+15550100"  # replaced, not merged
    assert int(u2["updated_at"]) > 0


def test_users_load_from_parquet_refuses_bad_rows_unless_told(settings, rclient, tmp_path,
                                                              unique):
    tenant = f"t{unique}"
    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": ["ok", "bad"], "platform": ["ios", "windows"],
                             "push_token": ["t1", "t2"]}), path)
    out = cli(settings, "users", "load", str(path), "--tenant", tenant)
    assert out.returncode != 0
    assert "row 2 (user_id 'bad'): 'contacts.platform' must be 'ios' or 'android'" in out.stderr
    assert not rclient.exists(user_key(tenant, "ok"))  # nothing written
    out = cli(settings, "users", "load", str(path), "--tenant", tenant, "--skip-invalid")
    assert out.returncode == 0 and "1 written, 1 invalid rows skipped" in out.stdout
    assert rclient.hget(user_key(tenant, "ok"), "platform") == "ios"


def test_the_api_segment_store_writes_the_version_the_expansion_reads(settings, unique):
    import redis.asyncio as aioredis
    tenant = f"t{unique}"
    files = SegmentFiles.from_settings(settings)

    async def put() -> int:
        client = aioredis.Redis(host=settings.redis_host, port=settings.redis_port)
        try:
            return await SegmentStore(client, files).put(tenant, "api", ["x", "y"], 1)
        finally:
            await client.aclose()
    assert asyncio.run(put()) == 2
    assert list(read_batches(files.current(tenant, "api"))) == [["x", "y"]]
