"""Retry policy (backoff, jitter, attempts, expiry, Retry-After) and the fallback plan."""
from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald import states
from herald.providers.base import Kind
from herald.retry import (EXHAUSTED, EXPIRED, FALL_BACK, GIVE_UP_EXHAUSTED, GIVE_UP_EXPIRED,
                          MISSING_CONTACT, OUT_OF_TIME, PERMANENT, RETRY, RETRY_HERE, RETRYABLE,
                          THROTTLED, UNAVAILABLE, Attempt, ExponentialBackoffRetry,
                          FallbackPolicy, TimeLeftPolicy, final_state)

NOW = 1_764_000_000_000
FAR = NOW + 10**9


# ---------------------------------------------------------------- construction

@pytest.mark.parametrize("kwargs", [
    {"max_attempts": 0}, {"max_attempts": 2.5}, {"max_attempts": True},
    {"initial_delay_ms": 0}, {"initial_delay_ms": -5}, {"initial_delay_ms": float("nan")},
    {"max_delay_ms": 100, "initial_delay_ms": 500}, {"multiplier": 0.5},
    {"multiplier": float("inf")}, {"rng": random.Random(1), "seed": 1},
])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ExponentialBackoffRetry(**kwargs)


def test_attempts_must_count_at_least_the_failed_try():
    with pytest.raises(ValueError):
        ExponentialBackoffRetry().next_retry(0, NOW, FAR)


# ---------------------------------------------------------------- backoff

def test_ceiling_grows_exponentially_up_to_the_cap():
    policy = ExponentialBackoffRetry(initial_delay_ms=100, max_delay_ms=1_000, multiplier=2)
    assert [policy.ceiling_ms(n) for n in range(1, 7)] == [100, 200, 400, 800, 1_000, 1_000]
    assert policy.ceiling_ms(10_000) == 1_000      # no overflow however many retries


def test_multiplier_one_is_a_constant_ceiling():
    policy = ExponentialBackoffRetry(initial_delay_ms=250, max_delay_ms=1_000, multiplier=1)
    assert policy.ceiling_ms(1) == policy.ceiling_ms(50) == 250


@given(st.integers(1, 30), st.integers(0, 2**32))
def test_full_jitter_stays_within_zero_and_the_ceiling(attempt, seed):
    policy = ExponentialBackoffRetry(max_attempts=100, initial_delay_ms=50, max_delay_ms=5_000,
                                     seed=seed)
    d = policy.next_retry(attempt, NOW, FAR)
    assert d.action == RETRY and d.retry
    assert 0 <= d.delay_ms <= policy.ceiling_ms(attempt) and d.at_ms == NOW + d.delay_ms


def test_jitter_is_reproducible_with_a_seed_and_spread_out():
    a = ExponentialBackoffRetry(max_attempts=1000, seed=7)
    b = ExponentialBackoffRetry(max_attempts=1000, rng=random.Random(7))
    delays_a = [a.next_retry(8, NOW, FAR).delay_ms for _ in range(200)]
    assert delays_a == [b.next_retry(8, NOW, FAR).delay_ms for _ in range(200)]
    assert len(set(delays_a)) > 150                 # not in lockstep
    assert min(delays_a) < 10_000 < max(delays_a)   # covers the range [0, 60s]


# ---------------------------------------------------------------- giving up

def test_gives_up_after_max_attempts():
    policy = ExponentialBackoffRetry(max_attempts=3, seed=1)
    assert policy.next_retry(2, NOW, FAR).action == RETRY
    assert policy.next_retry(3, NOW, FAR).action == GIVE_UP_EXHAUSTED


def test_single_attempt_policy_never_retries():
    assert ExponentialBackoffRetry(max_attempts=1).next_retry(1, NOW, FAR).action == \
        GIVE_UP_EXHAUSTED


def test_never_schedules_a_retry_at_or_after_expiry():
    policy = ExponentialBackoffRetry(initial_delay_ms=1_000, max_delay_ms=1_000, multiplier=1,
                                     max_attempts=100, seed=3)
    for _ in range(500):
        d = policy.next_retry(1, NOW, NOW + 500)
        assert d.action == GIVE_UP_EXPIRED or d.at_ms < NOW + 500


def test_already_expired_gives_up_before_counting_attempts():
    policy = ExponentialBackoffRetry(max_attempts=1)
    assert policy.next_retry(5, NOW, NOW).action == GIVE_UP_EXPIRED


@given(st.integers(1, 20), st.integers(1, 120_000), st.one_of(st.none(), st.integers(0, 10**6)),
       st.booleans(), st.integers(0, 2**32))
def test_no_retry_ever_lands_at_or_after_expiry(attempt, ttl, retry_after, throttled, seed):
    policy = ExponentialBackoffRetry(max_attempts=10, seed=seed)
    d = policy.next_retry(attempt, NOW, NOW + ttl, retry_after_ms=retry_after,
                          throttled=throttled)
    if d.retry:
        assert NOW <= d.at_ms < NOW + ttl
        if retry_after is not None:
            assert d.delay_ms >= retry_after


# ---------------------------------------------------------------- Retry-After and throttling

def test_retry_after_wins_when_longer():
    policy = ExponentialBackoffRetry(initial_delay_ms=100, max_delay_ms=100, seed=1)
    d = policy.next_retry(1, NOW, FAR, retry_after_ms=30_000)
    assert d.delay_ms == 30_000 and d.at_ms == NOW + 30_000


def test_retry_after_shorter_than_the_backoff_does_not_shorten_it():
    policy = ExponentialBackoffRetry(initial_delay_ms=10_000, max_delay_ms=10_000, multiplier=1,
                                     rng=_FixedRandom(1.0))
    assert policy.next_retry(1, NOW, FAR, retry_after_ms=5).delay_ms == 10_000


def test_retry_after_past_expiry_gives_up_expired():
    policy = ExponentialBackoffRetry(seed=1)
    assert policy.next_retry(1, NOW, NOW + 10_000, retry_after_ms=10_000).action == \
        GIVE_UP_EXPIRED


def test_throttles_do_not_use_up_attempts():
    policy = ExponentialBackoffRetry(max_attempts=2, seed=1)
    d = policy.next_retry(50, NOW, FAR, retry_after_ms=1_000, throttled=True)
    assert d.action == RETRY and d.delay_ms >= 1_000


class _FixedRandom(random.Random):
    """Always draws the top of the range: the deterministic worst case."""

    def __init__(self, fraction: float):
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a, b):
        return a + (b - a) * self.fraction


# ---------------------------------------------------------------- fallback

CHANNELS = ("push", "sms", "email")


@pytest.mark.parametrize("failure", [PERMANENT, EXHAUSTED, MISSING_CONTACT, UNAVAILABLE,
                                     OUT_OF_TIME])
def test_final_failure_moves_to_the_next_channel(failure):
    assert FallbackPolicy().next_channel(CHANNELS, "push", failure) == "sms"
    assert FallbackPolicy().next_channel(CHANNELS, "sms", failure) == "email"


def test_last_channel_has_no_fallback():
    assert FallbackPolicy().next_channel(CHANNELS, "email", PERMANENT) is None
    assert FallbackPolicy().next_channel(("push",), "push", EXHAUSTED) is None


def test_skip_passes_over_opted_out_or_contactless_channels():
    assert FallbackPolicy().next_channel(CHANNELS, "push", PERMANENT, skip={"sms"}) == "email"
    assert FallbackPolicy().next_channel(CHANNELS, "push", PERMANENT,
                                         skip={"sms", "email"}) is None


def test_expired_never_falls_back():
    assert FallbackPolicy().next_channel(CHANNELS, "push", EXPIRED) is None


def test_policy_can_limit_what_falls_back():
    policy = FallbackPolicy(fall_back_on=[PERMANENT])
    assert policy.next_channel(CHANNELS, "push", PERMANENT) == "sms"
    assert policy.next_channel(CHANNELS, "push", EXHAUSTED) is None


@pytest.mark.parametrize("failure", [THROTTLED, RETRYABLE])
def test_non_final_failure_is_a_caller_bug(failure):
    with pytest.raises(ValueError, match="not final"):
        FallbackPolicy().next_channel(CHANNELS, "push", failure)


def test_unknown_failure_or_channel_is_rejected():
    with pytest.raises(ValueError):
        FallbackPolicy().next_channel(CHANNELS, "push", "weird")
    with pytest.raises(ValueError):
        FallbackPolicy().next_channel(CHANNELS, "fax", PERMANENT)


@pytest.mark.parametrize("kinds", [[THROTTLED], [EXPIRED], ["nope"]])
def test_policy_rejects_non_final_or_unknown_fall_back_on(kinds):
    with pytest.raises(ValueError):
        FallbackPolicy(fall_back_on=kinds)


def test_accepts_the_provider_layers_outcome_kinds():
    assert FallbackPolicy().next_channel(list(CHANNELS), "push", Kind.PERMANENT) == "sms"
    with pytest.raises(ValueError):
        FallbackPolicy().next_channel(CHANNELS, "push", Kind.THROTTLED)
    assert FallbackPolicy(fall_back_on=[Kind.PERMANENT]).fall_back_on == {PERMANENT}


# ---------------------------------------------------------------- time left: retry or fall back

def test_a_critical_alert_with_20_s_to_live_keeps_the_reserve_for_its_next_channel():
    policy = TimeLeftPolicy(reserve_ms=10_000)
    assert policy.decide(1, time_left_ms=20_000, retry_delay_ms=500) == RETRY_HERE
    assert policy.decide(1, time_left_ms=20_000, retry_delay_ms=10_000) == RETRY_HERE
    assert policy.decide(1, time_left_ms=20_000, retry_delay_ms=10_001) == FALL_BACK
    assert policy.decide(1, time_left_ms=9_000, retry_delay_ms=0) == FALL_BACK


def test_each_later_channel_needs_its_own_reserve():
    policy = TimeLeftPolicy(reserve_ms=4_000)
    assert policy.decide(1, time_left_ms=9_000, retry_delay_ms=1_000) == RETRY_HERE
    assert policy.decide(2, time_left_ms=9_000, retry_delay_ms=1_000) == RETRY_HERE
    assert policy.decide(2, time_left_ms=9_000, retry_delay_ms=1_001) == FALL_BACK
    assert policy.decide(3, time_left_ms=9_000, retry_delay_ms=0) == FALL_BACK


def test_with_no_channel_left_it_retries_here_and_expiry_is_the_retry_policys_call():
    policy = TimeLeftPolicy(reserve_ms=10_000)
    assert policy.decide(0, time_left_ms=1_000, retry_delay_ms=900) == RETRY_HERE
    assert policy.decide(0, time_left_ms=1_000, retry_delay_ms=None) == RETRY_HERE


def test_no_retry_before_expiry_means_fall_back_while_a_channel_is_left():
    for reserve in (0, 10_000):
        assert TimeLeftPolicy(reserve_ms=reserve).decide(1, 60_000, None) == FALL_BACK


def test_a_zero_reserve_falls_back_only_when_the_retry_cannot_happen():
    policy = TimeLeftPolicy(reserve_ms=0)
    assert policy.decide(2, time_left_ms=100, retry_delay_ms=99) == RETRY_HERE
    assert policy.decide(2, time_left_ms=100, retry_delay_ms=101) == FALL_BACK


@given(channels=st.integers(0, 3), time_left=st.integers(-1_000, 100_000),
       delay=st.none() | st.integers(0, 100_000), reserve=st.integers(0, 30_000))
def test_a_retry_here_always_leaves_every_later_channel_its_reserve(channels, time_left, delay,
                                                                    reserve):
    decision = TimeLeftPolicy(reserve_ms=reserve).decide(channels, time_left, delay)
    assert decision in (RETRY_HERE, FALL_BACK)
    if channels and decision == RETRY_HERE:
        assert delay is not None and time_left - delay >= channels * reserve
    if channels == 0:
        assert decision == RETRY_HERE


@pytest.mark.parametrize("kwargs", [{"reserve_ms": -1}, {"reserve_ms": True},
                                    {"reserve_ms": 1.5}, {"reserve_ms": None}])
def test_time_left_policy_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        TimeLeftPolicy(**kwargs)


def test_time_left_policy_rejects_a_negative_channel_count_or_delay():
    with pytest.raises(ValueError):
        TimeLeftPolicy(reserve_ms=1).decide(-1, 1_000, 0)
    with pytest.raises(ValueError):
        TimeLeftPolicy(reserve_ms=1).decide(1, 1_000, -5)


# ---------------------------------------------------------------- history and final state

def test_attempt_history_serialises_without_empty_fields():
    a = Attempt(channel="push", provider="fcm", attempt=2, at=NOW, outcome=PERMANENT,
                status=404)
    assert a.to_dict() == {"channel": "push", "provider": "fcm", "attempt": 2, "at": NOW,
                           "outcome": "permanent", "status": 404}


def test_final_state_matches_the_contract():
    assert final_state(EXPIRED) == states.EXPIRED
    assert final_state(PERMANENT) == final_state(EXHAUSTED) == states.FAILED
