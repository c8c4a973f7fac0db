"""The Redis rate limiter's Lua script against a real redis-server started for this module.

Time is simulated by passing ``now_ms`` into the script, so nothing here sleeps to wait for
tokens; only the concurrency test uses the server's own clock.
"""
from __future__ import annotations

import itertools
import random
import threading
import time

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herald.ratelimit import BucketConfig, RateLimitConfigError, RedisRateLimiter

T0 = 1_764_000_000_000
START_TIMEOUT_S = 10.0
POLL_S = 0.05

_names = itertools.count()


@pytest.fixture(scope="module")
def redis_client(stack, base_settings):
    """The session's real redis-server, in a database of its own (15) emptied for this module."""
    client = redis.Redis(host=base_settings.redis_host, port=base_settings.redis_port, db=15,
                         socket_timeout=5)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def provider() -> str:
    """A provider name no other test uses, so buckets never leak between tests."""
    return f"prov{next(_names)}"


def limiter(client, reserve: float = 0.2) -> RedisRateLimiter:
    return RedisRateLimiter(client, reserve_fraction=reserve)


def tokens(client, key: str) -> float:
    return float(client.hget(key, "tokens"))


# ---------------------------------------------------------------- a bucket never over-grants

def _assert_no_window_overgrants(grants: list[tuple[int, int]], rate: float, burst: float):
    """For every window [a, b]: granted ≤ burst + rate·(b − a)."""
    times = [t for t, _ in grants]
    prefix = [0]
    for _, g in grants:
        prefix.append(prefix[-1] + g)
    for i in range(len(grants)):
        for j in range(i, len(grants)):
            granted = prefix[j + 1] - prefix[i]
            allowed = burst + rate * (times[j] - times[i]) / 1000.0
            assert granted <= allowed + 1e-6, (i, j, granted, allowed)


def test_never_more_than_the_bucket_grants_in_any_window(redis_client, provider):
    rate, burst = 50.0, 20
    rl = limiter(redis_client, reserve=0.25)
    rl.configure(provider, rate, burst)
    rng = random.Random(11)
    now, grants, denied = T0, [], 0
    for _ in range(600):
        now += rng.choice([0, 0, 1, 5, 20, 60, 150])
        critical = rng.random() < 0.3
        n = rng.randint(1, 5)
        g = rl.take(provider, n, critical=critical, now_ms=now)
        if g.ok:
            assert g.granted == n
            grants.append((now, n))
        else:
            assert g.granted == 0 and g.wait_ms >= 1
            denied += 1
    assert denied > 50 and len(grants) > 50            # the test exercised both outcomes
    _assert_no_window_overgrants(grants, rate, burst)
    total = sum(g for _, g in grants)
    assert total <= burst + rate * (now - T0) / 1000.0
    assert total >= 0.8 * rate * (now - T0) / 1000.0   # and the limiter is not stingy


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.sampled_from([1.0, 7.5, 100.0, 2_000.0]), burst=st.integers(1, 30),
       steps=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 40), st.booleans(),
                                st.booleans()), min_size=1, max_size=60))
def test_any_take_sequence_respects_the_rate(redis_client, rate, burst, steps):
    rl = limiter(redis_client, reserve=0.3)
    name = f"prop{next(_names)}"
    rl.configure(name, rate, burst)
    now, grants = T0, []
    for dt, n, critical, partial in steps:
        now += dt
        # Refused only when the batch can never fit: more than the class may ever hold (a
        # promotional take stops at the reserve), or, taking part of it, not even one token.
        capacity = burst - (0 if critical else 0.3 * burst)
        never_fits = capacity < 1 if partial else n > capacity
        try:
            g = rl.take(name, n, critical=critical, partial=partial, now_ms=now)
        except RateLimitConfigError:
            assert never_fits, (n, burst, critical, partial)
            continue
        assert not never_fits, (n, burst, critical, partial, g)
        assert 0 <= g.granted <= n
        assert (g.wait_ms == 0) == (g.granted == n)
        if g.granted:
            grants.append((now, g.granted))
    _assert_no_window_overgrants(grants, rate, burst)
    if grants:
        assert tokens(redis_client, rl.provider_key(name)) >= -1e-9


def test_waiting_the_answered_time_is_enough(redis_client, provider):
    rl = limiter(redis_client, reserve=0)
    rl.configure(provider, 10, 5)
    assert rl.take(provider, 5, now_ms=T0).ok
    g = rl.take(provider, 3, now_ms=T0)
    assert g == (0, 300)
    assert not rl.take(provider, 3, now_ms=T0 + g.wait_ms - 1).ok
    assert rl.take(provider, 3, now_ms=T0 + g.wait_ms).ok


def test_a_caller_with_a_clock_behind_gets_no_extra_tokens(redis_client, provider):
    rl = limiter(redis_client, reserve=0)
    rl.configure(provider, 1_000, 10)
    assert rl.take(provider, 10, now_ms=T0 + 1_000).ok
    assert not rl.take(provider, 1, now_ms=T0).ok     # 1 s behind: not a refill
    assert rl.take(provider, 1, now_ms=T0 + 1_001).ok


# ---------------------------------------------------------------- the critical lane

def test_promotional_takes_stop_at_the_reserve_critical_ones_do_not(redis_client, provider):
    rl = limiter(redis_client, reserve=0.25)
    rl.configure(provider, 1, 100)
    assert rl.take(provider, 75, now_ms=T0).ok
    promo = rl.take(provider, 1, now_ms=T0)
    assert promo == (0, 1_000)                          # waits, never dropped
    assert rl.take(provider, 25, critical=True, now_ms=T0).ok
    assert not rl.take(provider, 1, critical=True, now_ms=T0).ok


def test_reserve_holds_while_the_bucket_refills(redis_client, provider):
    rl = limiter(redis_client, reserve=0.25)
    rl.configure(provider, 1, 100)
    assert rl.take(provider, 100, critical=True, now_ms=T0).ok
    # 10 s later there are 10 tokens, all inside the reserve of 25
    assert not rl.take(provider, 1, now_ms=T0 + 10_000).ok
    assert rl.take(provider, 10, critical=True, now_ms=T0 + 10_000).ok
    # the promotional lane gets its first token once the bucket is above the reserve again
    assert rl.take(provider, 1, now_ms=T0 + 10_000 + 26_000).ok


def test_promotional_traffic_cannot_starve_critical(redis_client, provider):
    rl = limiter(redis_client, reserve=0.2)
    rl.configure(provider, 100, 50)
    now, critical_waits = T0, []
    for i in range(2_000):                              # 20 s of greedy promotional batches
        now += 10
        rl.take(provider, 10, partial=True, now_ms=now)
        if i % 50 == 0:
            critical_waits.append(rl.take(provider, 1, critical=True, now_ms=now).wait_ms)
    assert critical_waits == [0] * len(critical_waits)


def test_a_waiting_critical_backlog_keeps_the_refill_from_promotional_pollers(redis_client,
                                                                                provider):
    # Both classes come back when their answered wait is over (as the call stage does): while
    # critical calls still wait, every token that refills goes to them, none to promotional.
    rl = limiter(redis_client, reserve=0.2)
    rl.configure(provider, 100, 100)
    assert rl.take(provider, 100, critical=True, now_ms=T0).ok   # the bucket is empty
    critical_left, promo_granted = 300, 0
    due = {"critical": T0 + 1, "promo": T0}
    while critical_left:
        who = min(due, key=due.get)
        now = due[who]
        if who == "critical":
            grant = rl.take(provider, critical_left, critical=True, partial=True, now_ms=now)
            critical_left -= grant.granted
            assert grant.wait_ms <= 100 or not critical_left     # 10 tokens at 100/s
        else:
            grant = rl.take(provider, 50, partial=True, now_ms=now)
            promo_granted += grant.granted
        due[who] = now + max(grant.wait_ms, 1)
    assert promo_granted == 0


# ---------------------------------------------------------------- tenants

def test_tenant_bucket_limits_one_tenant_without_touching_another(redis_client, provider):
    rl = limiter(redis_client, reserve=0)
    rl.configure(provider, 1, 100)
    rl.configure(provider, 1, 5, tenant="acme")
    rl.configure(provider, 1, 5, tenant="globex")
    assert rl.take(provider, 5, tenant="acme", now_ms=T0).ok
    held_back = rl.take(provider, 1, tenant="acme", now_ms=T0)
    assert held_back == (0, 1_000)
    assert rl.take(provider, 5, tenant="globex", now_ms=T0).ok
    # the tenant's refusal took nothing from the provider bucket: both or neither
    assert tokens(redis_client, rl.provider_key(provider)) == pytest.approx(90)
    assert tokens(redis_client, rl.tenant_key(provider, "acme")) == pytest.approx(0)


def test_provider_bucket_limits_all_tenants_together(redis_client, provider):
    rl = limiter(redis_client, reserve=0)
    rl.configure(provider, 1, 6)
    limit = BucketConfig(1, 100)
    assert rl.take(provider, 4, tenant="a", tenant_limit=limit, now_ms=T0).ok
    assert not rl.take(provider, 4, tenant="b", tenant_limit=limit, now_ms=T0).ok
    assert not redis_client.exists(rl.tenant_key(provider, "b"))   # a refusal writes nothing


def test_wait_is_the_longer_of_the_two_buckets(redis_client, provider):
    rl = limiter(redis_client, reserve=0)
    rl.configure(provider, 10, 10)                      # 100 ms a token
    rl.configure(provider, 1, 10, tenant="slow")        # 1 s a token
    assert rl.take(provider, 10, tenant="slow", now_ms=T0).ok
    assert rl.take(provider, 2, tenant="slow", now_ms=T0).wait_ms == 2_000


# ---------------------------------------------------------------- batches

def test_batch_take_is_all_or_nothing(redis_client, provider):
    rl = limiter(redis_client, reserve=0)
    rl.configure(provider, 100, 500)
    assert rl.take(provider, 400, now_ms=T0) == (400, 0)
    assert rl.take(provider, 200, now_ms=T0) == (0, 1_000)
    assert tokens(redis_client, rl.provider_key(provider)) == pytest.approx(100)


def test_partial_batch_takes_what_is_there_and_says_when_the_rest_is(redis_client, provider):
    rl = limiter(redis_client, reserve=0)
    rl.configure(provider, 100, 500)
    assert rl.take(provider, 450, now_ms=T0).ok
    g = rl.take(provider, 200, partial=True, now_ms=T0)
    assert g == (50, 1_500)
    assert rl.take(provider, 150, partial=True, now_ms=T0 + g.wait_ms) == (150, 0)


def test_batch_larger_than_the_lane_can_ever_hold_is_an_error(redis_client, provider):
    rl = limiter(redis_client, reserve=0.2)
    rl.configure(provider, 100, 100)
    with pytest.raises(RateLimitConfigError, match="never fit"):
        rl.take(provider, 90, now_ms=T0)                # promotional lane holds 80
    assert rl.take(provider, 90, critical=True, now_ms=T0).ok
    assert rl.take(provider, 500, partial=True, critical=True, now_ms=T0 + 10_000).granted == 100


def test_batch_takes_draw_the_whole_batch_at_once(redis_client, provider):
    """A batch of 100 is granted as one take: 10 batches drain a burst of 1000 exactly."""
    rl = limiter(redis_client, reserve=0)
    rl.configure(provider, 1, 1_000)
    rl.configure(provider, 1, 1_000, tenant="acme")
    for _ in range(10):
        assert rl.take(provider, 100, tenant="acme", now_ms=T0).ok
    assert not rl.take(provider, 1, tenant="acme", now_ms=T0).ok


def _one_by_one(rl, provider, takes, **flags):
    out = []
    for tenant, n, limit in takes:
        try:
            out.append(rl.take(provider, n, tenant=tenant, tenant_limit=limit, **flags))
        except RateLimitConfigError as exc:
            out.append(exc)
    return out


@pytest.mark.parametrize("seed", [3, 17, 2026])
def test_takes_for_several_tenants_in_one_call_match_the_takes_one_by_one(redis_client, seed):
    """A part's takes for all its tenants in one round trip (``take_many``) grant, wait and
    leave the buckets exactly as the same takes one after another; a tenant without limits
    fails alone. Seeded: a failure names its seed."""
    rng = random.Random(seed)
    provider = f"many{next(_names)}"
    many = RedisRateLimiter(redis_client, reserve_fraction=0.2, namespace=f"m{seed}")
    single = RedisRateLimiter(redis_client, reserve_fraction=0.2, namespace=f"s{seed}")
    tenants = ["acme", "globex", "initech", "umbrella", None, "nolimits"]
    limits = {"acme": None, "globex": BucketConfig(30, 60), "initech": BucketConfig(5, 10),
              "umbrella": BucketConfig(50, 40), None: None, "nolimits": None}
    for rl in (many, single):
        rl.configure(provider, 200, 300)
        rl.configure(provider, 40, 80, tenant="acme")
    now = T0
    for step in range(200):
        now += rng.choice([0, 0, 3, 10, 50, 200])
        if rng.random() < 0.03:
            until = now + rng.choice([5, 100])
            for rl in (many, single):
                rl.hold(provider, until_ms=until)
        takes = [(t, rng.randint(1, 40), limits[t])
                 for t in rng.sample(tenants, rng.randint(1, len(tenants)))]
        flags = {"critical": rng.random() < 0.4, "partial": rng.random() < 0.7, "now_ms": now}
        got = many.take_many(provider, takes, **flags)
        want = _one_by_one(single, provider, takes, **flags)
        def plain(results, namespace):
            return [str(r).replace(namespace, "") if isinstance(r, Exception) else r
                    for r in results]
        assert plain(got, f"m{seed}:") == plain(want, f"s{seed}:"), (seed, step, takes)
        assert all("no rate/burst" in str(g) for g, (t, _, _) in zip(got, takes)
                   if t == "nolimits"), (seed, step, got)
        for tenant in ("acme", "globex", "initech", "umbrella"):
            a = redis_client.hget(many.tenant_key(provider, tenant), "tokens")
            b = redis_client.hget(single.tenant_key(provider, tenant), "tokens")
            assert a == b, (seed, step, tenant)
        assert redis_client.hget(many.provider_key(provider), "tokens") == \
               redis_client.hget(single.provider_key(provider), "tokens"), (seed, step)


# ---------------------------------------------------------------- configuration and holds

def test_unconfigured_bucket_is_an_error_not_unlimited(redis_client, provider):
    rl = limiter(redis_client)
    with pytest.raises(RateLimitConfigError, match="no rate"):
        rl.take(provider, 1, now_ms=T0)
    rl.configure(provider, 10, 10)
    with pytest.raises(RateLimitConfigError, match="no rate"):
        rl.take(provider, 1, tenant="nobody", now_ms=T0)


def test_limits_in_the_call_override_the_configured_ones(redis_client, provider):
    rl = limiter(redis_client, reserve=0)
    rl.configure(provider, 1, 10)
    assert rl.take(provider, 10, now_ms=T0).ok
    # an AIMD-lowered or raised rate passed per call drives the refill of this interval
    fast = BucketConfig(rate_per_s=1_000, burst=10)
    assert rl.take(provider, 10, provider_limit=fast, now_ms=T0 + 10).ok


def test_quota_change_at_run_time_keeps_earned_tokens(redis_client, provider):
    rl = limiter(redis_client, reserve=0)
    rl.configure(provider, 10, 100)
    assert rl.take(provider, 100, now_ms=T0).ok
    rl.configure(provider, 1_000, 100)                   # the control stream raised the quota
    assert rl.take(provider, 50, now_ms=T0 + 50).ok      # 1000/s refills 50 in 50 ms
    rl.configure(provider, 1_000, 20)                    # burst lowered below what is left
    assert rl.take(provider, 20, critical=True, now_ms=T0 + 10_000).ok
    assert not rl.take(provider, 1, critical=True, now_ms=T0 + 10_000).ok


def test_hold_pauses_every_take_until_retry_after(redis_client, provider):
    rl = limiter(redis_client, reserve=0)
    rl.configure(provider, 100, 100)
    assert rl.hold(provider, until_ms=T0 + 5_000) == T0 + 5_000
    assert rl.hold(provider, until_ms=T0 + 1_000) == T0 + 5_000    # a longer pause wins
    assert rl.take(provider, 1, critical=True, now_ms=T0) == (0, 5_000)
    assert rl.take(provider, 1, now_ms=T0 + 5_000).ok


def test_server_clock_is_used_when_no_time_is_given(redis_client, provider):
    rl = limiter(redis_client, reserve=0)
    rl.configure(provider, 1, 3)
    assert [rl.take(provider).ok for _ in range(4)] == [True, True, True, False]
    assert rl.hold(provider, retry_after_ms=60_000) > T0


def test_concurrent_takes_never_overgrant(redis_client, provider):
    """Several workers against one bucket on the server clock: the script is atomic."""
    rate, burst = 200.0, 20
    rl = limiter(redis_client, reserve=0)
    rl.configure(provider, rate, burst)
    granted = [0] * 4
    pool = redis.ConnectionPool(**redis_client.connection_pool.connection_kwargs)

    def worker(i: int) -> None:
        mine = RedisRateLimiter(redis.Redis(connection_pool=pool), reserve_fraction=0)
        for _ in range(300):
            if mine.take(provider, 1).ok:
                granted[i] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    elapsed = time.monotonic() - started
    pool.disconnect()
    assert sum(granted) <= burst + rate * elapsed + 1
    assert sum(granted) >= burst
