"""Token-bucket maths and the AIMD policy (the Redis script is tested in tests/integration)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.ratelimit import (AimdRate, BucketConfig, Grant, RateLimitConfigError,
                              RedisRateLimiter, TokenBucket)

T0 = 1_764_000_000_000


# ---------------------------------------------------------------- token bucket

def test_bucket_starts_full_and_takes():
    b = TokenBucket(rate_per_s=10, burst=5, now_ms=T0)
    assert b.take(5, T0) == 0
    assert b.tokens == 0


def test_refill_by_elapsed_time_capped_at_burst():
    b = TokenBucket(rate_per_s=10, burst=5, now_ms=T0, tokens=0)
    assert b.refill(T0 + 200) == pytest.approx(2.0)
    assert b.refill(T0 + 10_000) == 5.0


def test_wait_until_n_available():
    b = TokenBucket(rate_per_s=10, burst=5, now_ms=T0, tokens=0)
    assert b.wait_ms(3, T0) == 300
    assert b.take(3, T0) == 300           # a denied take takes nothing
    assert b.take(3, T0 + 300) == 0


def test_wait_is_at_least_one_ms_when_not_available():
    b = TokenBucket(rate_per_s=1_000_000, burst=5, now_ms=T0, tokens=0.9999999)
    assert b.wait_ms(1, T0) == 1


def test_more_than_the_burst_can_never_be_taken():
    b = TokenBucket(rate_per_s=10, burst=5, now_ms=T0)
    with pytest.raises(RateLimitConfigError):
        b.take(6, T0)
    with pytest.raises(RateLimitConfigError):
        b.take(3, T0, keep=3)


def test_keep_protects_a_reserve():
    b = TokenBucket(rate_per_s=10, burst=10, now_ms=T0)
    assert b.take(8, T0, keep=2) == 0
    assert not b.try_take(1, T0, keep=2)   # the last two are kept
    assert b.try_take(2, T0)               # a lane without the floor may use them


def test_clock_stepping_back_neither_refills_nor_drains():
    b = TokenBucket(rate_per_s=10, burst=5, now_ms=T0, tokens=1)
    assert b.refill(T0 - 5_000) == 1
    assert b.refill(T0 + 100) == pytest.approx(2)


def test_reconfigure_counts_earned_tokens_at_the_old_rate():
    b = TokenBucket(rate_per_s=10, burst=100, now_ms=T0, tokens=0)
    b.reconfigure(T0 + 1_000, rate_per_s=1_000)
    assert b.tokens == pytest.approx(10)
    b.reconfigure(T0 + 1_000, burst=4)
    assert b.tokens == 4


@pytest.mark.parametrize("rate,burst", [(0, 1), (-1, 1), (1, 0), (float("inf"), 1),
                                        (True, 1), ("5", 1)])
def test_bucket_rejects_bad_limits(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)
    with pytest.raises(ValueError):
        BucketConfig(rate, burst)


@given(st.floats(0.5, 5_000), st.integers(1, 50),
       st.lists(st.tuples(st.integers(0, 2_000), st.integers(1, 10)), max_size=60))
def test_bucket_never_grants_more_than_burst_plus_rate_times_time(rate, burst, steps):
    b = TokenBucket(rate_per_s=rate, burst=burst, now_ms=T0)
    now, granted = T0, 0
    for dt, n in steps:
        now += dt
        if n <= burst and b.take(n, now) == 0:
            granted += n
        assert b.tokens >= -1e-9
        assert granted <= burst + (now - T0) * rate / 1000 + 1e-6


@given(st.floats(0.5, 5_000), st.integers(1, 50), st.integers(1, 50), st.floats(0, 50))
def test_waiting_the_answered_time_is_enough(rate, burst, n, tokens):
    n = min(n, burst)
    b = TokenBucket(rate_per_s=rate, burst=burst, now_ms=T0, tokens=tokens)
    wait = b.take(n, T0)
    if wait:
        assert b.take(n, T0 + wait) == 0


# ---------------------------------------------------------------- AIMD

def test_throttle_halves_the_rate_and_holds_off_until_retry_after():
    aimd = AimdRate(100)
    aimd.on_throttle(T0, retry_after_ms=2_000)
    assert aimd.rate_per_s == 50
    assert aimd.hold_off_ms(T0 + 500) == 1_500
    assert aimd.current_rate(T0 + 500) == 0
    assert aimd.current_rate(T0 + 2_000) == 50


def test_a_burst_of_throttles_from_in_flight_calls_counts_once():
    aimd = AimdRate(256, decrease_guard_ms=1_000)
    for i in range(256):
        aimd.on_throttle(T0 + i)
    assert aimd.rate_per_s == 128
    aimd.on_throttle(T0 + 1_000)
    assert aimd.rate_per_s == 64


def test_rate_never_falls_below_the_floor():
    aimd = AimdRate(100, min_rate_per_s=5, decrease_guard_ms=0)
    for i in range(20):
        aimd.on_throttle(T0 + i)
    assert aimd.rate_per_s == 5


def test_floor_never_exceeds_the_quota():
    aimd = AimdRate(3, min_rate_per_s=5, decrease_guard_ms=0)
    aimd.on_throttle(T0)
    assert aimd.rate_per_s == 3


def test_recovers_additively_once_per_interval_on_success():
    aimd = AimdRate(100, increase_per_s=10, increase_interval_ms=1_000)
    aimd.on_throttle(T0)                        # 50, recovery from T0 + 1000
    aimd.on_success(T0 + 500)
    assert aimd.rate_per_s == 50
    aimd.on_success(T0 + 1_000)
    aimd.on_success(T0 + 1_001)                 # same interval: no second step
    assert aimd.rate_per_s == 60
    for k in range(2, 10):
        aimd.on_success(T0 + k * 1_000)
    assert aimd.rate_per_s == 100               # never past the quota


def test_no_increase_without_success():
    aimd = AimdRate(100)
    aimd.on_throttle(T0)
    aimd.current_rate(T0 + 60_000)
    assert aimd.rate_per_s == 50


def test_recovery_waits_for_the_pause_to_end():
    aimd = AimdRate(100, increase_per_s=10)
    aimd.on_throttle(T0, retry_after_ms=30_000)
    aimd.on_success(T0 + 5_000)
    assert aimd.rate_per_s == 50
    aimd.on_success(T0 + 31_000)
    assert aimd.rate_per_s == 60


def test_a_shorter_retry_after_never_shortens_a_pause():
    aimd = AimdRate(100)
    aimd.on_throttle(T0, retry_after_ms=10_000)
    aimd.on_throttle(T0 + 1, retry_after_ms=10)
    assert aimd.hold_until_ms == T0 + 10_000


def test_quota_lowered_clamps_at_once():
    aimd = AimdRate(100)
    aimd.set_quota(40)
    assert (aimd.rate_per_s, aimd.quota_per_s) == (40, 40)


def test_quota_raised_lifts_an_unthrottled_rate():
    aimd = AimdRate(100)
    aimd.set_quota(300)
    assert aimd.rate_per_s == 300


def test_quota_raised_while_recovering_keeps_climbing_to_the_new_quota():
    aimd = AimdRate(100, increase_per_s=100)
    aimd.on_throttle(T0)
    aimd.set_quota(300)
    assert aimd.rate_per_s == 50
    for k in range(1, 10):
        aimd.on_success(T0 + k * 1_000)
    assert aimd.rate_per_s == 300


@given(st.lists(st.tuples(st.sampled_from(["ok", "throttle", "quota"]), st.integers(0, 5_000),
                          st.floats(1, 1_000)), max_size=80))
def test_rate_always_between_floor_and_quota(events):
    aimd = AimdRate(200, min_rate_per_s=2)
    now = T0
    for kind, dt, value in events:
        now += dt
        if kind == "ok":
            aimd.on_success(now)
        elif kind == "throttle":
            aimd.on_throttle(now, retry_after_ms=int(value))
        else:
            aimd.set_quota(value)
        assert aimd.floor_per_s <= aimd.rate_per_s <= aimd.quota_per_s


@pytest.mark.parametrize("kwargs", [{"decrease_factor": 1}, {"decrease_factor": 0},
                                    {"min_rate_per_s": 0}, {"increase_per_s": -1},
                                    {"increase_interval_ms": 0}, {"decrease_guard_ms": -1}])
def test_aimd_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        AimdRate(100, **kwargs)


# ---------------------------------------------------------------- Redis limiter, no server

class _FakeClient:
    def register_script(self, text):
        return lambda keys, args: (1, 0)


def test_limiter_keys_share_a_cluster_hash_slot():
    from redis.crc import key_slot
    limiter = RedisRateLimiter(_FakeClient())
    assert limiter.provider_key("fcm") == "herald:rl:{fcm}"
    assert limiter.tenant_key("fcm", "acme") == "herald:rl:{fcm}:acme"
    assert key_slot(b"herald:rl:{fcm}") == key_slot(b"herald:rl:{fcm}:acme")


@pytest.mark.parametrize("reserve", [-0.1, 1, 1.5, True])
def test_limiter_rejects_bad_reserve(reserve):
    with pytest.raises(ValueError):
        RedisRateLimiter(_FakeClient(), reserve_fraction=reserve)


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_limiter_rejects_bad_counts(n):
    with pytest.raises(ValueError):
        RedisRateLimiter(_FakeClient()).take("fcm", n)


def test_grant_ok_means_nothing_left_to_wait_for():
    assert Grant(3, 0).ok and not Grant(2, 15).ok
