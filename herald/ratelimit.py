"""Rate limiting: token-bucket maths, an AIMD policy for throttling answers, and a Redis limiter.

Throttling slows Herald down and never loses a message, so nothing here drops: a take that
cannot be granted answers how long to wait, and the caller backs off (which is backpressure).

* ``TokenBucket``: the maths in plain Python (refill by elapsed time, take n, time until n).
* ``AimdRate``: multiplicative decrease on a throttle answer, additive recovery on successes,
  never above the configured quota; the quota can change at run time (the control stream).
* ``RedisRateLimiter``: one atomic Lua script per take refills and takes from two buckets at
  once, the provider's and the tenant's, with a critical lane: promotional takes may only use
  the provider tokens above ``reserve_fraction`` of its burst; critical takes may use them all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

from redis.exceptions import ResponseError

from herald.errors import HeraldError


class RateLimitConfigError(HeraldError):
    """A bucket has no rate/burst configured, or a batch can never fit it."""


def _check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_count(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return n


# ---------------------------------------------------------------- (a) bucket maths

class TokenBucket:
    """A token bucket on a caller-supplied clock (epoch or monotonic ms; only differences count).

    ``keep`` in ``take``/``wait_ms`` is a floor the take may not go below: how a lower lane is
    kept off a reserve. A clock that steps back does not refill (nor un-refill) the bucket.
    """

    __slots__ = ("rate_per_s", "burst", "tokens", "updated_ms")

    def __init__(self, rate_per_s: float, burst: float, *, now_ms: int = 0,
                 tokens: float | None = None):
        self.rate_per_s = _check_rate("rate_per_s", rate_per_s)
        self.burst = _check_rate("burst", burst)
        self.tokens = self.burst if tokens is None else min(float(tokens), self.burst)
        self.updated_ms = now_ms

    def refill(self, now_ms: int) -> float:
        elapsed = now_ms - self.updated_ms
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate_per_s / 1000.0
            self.tokens = tokens if tokens < self.burst else self.burst
            self.updated_ms = now_ms
        return self.tokens

    def take(self, n: int, now_ms: int, *, keep: float = 0.0) -> int:
        """Take ``n`` tokens: 0 when granted, else the ms to wait before asking again."""
        if self.refill(now_ms) - keep >= n:
            self.tokens -= n
            return 0
        return self.wait_ms(n, now_ms, keep=keep)

    def try_take(self, n: int, now_ms: int, *, keep: float = 0.0) -> bool:
        return self.take(n, now_ms, keep=keep) == 0

    def wait_ms(self, n: int, now_ms: int, *, keep: float = 0.0) -> int:
        """Ms until ``n`` tokens above ``keep`` are there (0 if now). More than the bucket can
        ever hold is an error, not an endless wait."""
        if n + keep > self.burst:
            raise RateLimitConfigError(
                f"{n} tokens (keeping {keep:g}) can never fit a bucket of burst {self.burst:g}")
        missing = n + keep - self.refill(now_ms)
        return 0 if missing <= 0 else max(1, math.ceil(missing * 1000.0 / self.rate_per_s))

    def reconfigure(self, now_ms: int, rate_per_s: float | None = None,
                    burst: float | None = None) -> None:
        """Change rate/burst at run time; tokens earned so far are counted at the old rate."""
        self.refill(now_ms)
        if rate_per_s is not None:
            self.rate_per_s = _check_rate("rate_per_s", rate_per_s)
        if burst is not None:
            self.burst = _check_rate("burst", burst)
            self.tokens = min(self.tokens, self.burst)

    def __repr__(self) -> str:
        return (f"TokenBucket(rate_per_s={self.rate_per_s:g}, burst={self.burst:g}, "
                f"tokens={self.tokens:.3f})")


# ---------------------------------------------------------------- (b) AIMD

class AimdRate:
    """The send rate for one provider, adapted to its throttling answers.

    On a throttle (429, ``Retry-After``, ``QUOTA_EXCEEDED``, Twilio 20429) the rate is
    multiplied by ``decrease_factor`` (never below ``min_rate_per_s``) and sending pauses until
    the Retry-After has passed. A burst of throttles from calls already in flight counts as one
    (one decrease per ``decrease_guard_ms``), or 256 concurrent 429s would floor the rate.
    Recovery adds ``increase_per_s`` at most once per ``increase_interval_ms`` and only when a
    call succeeds, so a rate never grows while nothing gets through, and never above the quota.
    """

    __slots__ = ("quota_per_s", "rate_per_s", "decrease_factor", "min_rate_per_s",
                 "increase_per_s", "increase_interval_ms", "decrease_guard_ms", "hold_until_ms",
                 "_next_increase_ms", "_next_decrease_ms")

    def __init__(self, quota_per_s: float, *, decrease_factor: float = 0.5,
                 min_rate_per_s: float = 1.0, increase_per_s: float | None = None,
                 increase_interval_ms: int = 1_000, decrease_guard_ms: int | None = None):
        """``increase_per_s`` defaults to a tenth of the quota; ``decrease_guard_ms`` to the
        increase interval."""
        self.quota_per_s = _check_rate("quota_per_s", quota_per_s)
        if isinstance(decrease_factor, bool) or not isinstance(decrease_factor, (int, float)) \
                or not 0 < decrease_factor < 1:
            raise ValueError(f"decrease_factor must be in (0, 1), got {decrease_factor!r}")
        self.decrease_factor = float(decrease_factor)
        self.min_rate_per_s = _check_rate("min_rate_per_s", min_rate_per_s)
        self.increase_per_s = (self.quota_per_s / 10 if increase_per_s is None
                               else _check_rate("increase_per_s", increase_per_s))
        if isinstance(increase_interval_ms, bool) or not isinstance(increase_interval_ms, int) \
                or increase_interval_ms < 1:
            raise ValueError(f"increase_interval_ms must be an integer >= 1, "
                             f"got {increase_interval_ms!r}")
        self.increase_interval_ms = increase_interval_ms
        guard = increase_interval_ms if decrease_guard_ms is None else decrease_guard_ms
        if isinstance(guard, bool) or not isinstance(guard, int) or guard < 0:
            raise ValueError(f"decrease_guard_ms must be an integer >= 0, got {guard!r}")
        self.decrease_guard_ms = guard
        self.rate_per_s = self.quota_per_s
        self.hold_until_ms = 0
        self._next_increase_ms = 0
        self._next_decrease_ms = 0

    @property
    def floor_per_s(self) -> float:
        return min(self.min_rate_per_s, self.quota_per_s)

    def on_throttle(self, now_ms: int, retry_after_ms: int | None = None) -> None:
        if retry_after_ms is not None and retry_after_ms > 0:
            self.hold_until_ms = max(self.hold_until_ms, now_ms + int(math.ceil(retry_after_ms)))
        if now_ms >= self._next_decrease_ms:
            self.rate_per_s = max(self.floor_per_s, self.rate_per_s * self.decrease_factor)
            self._next_decrease_ms = now_ms + self.decrease_guard_ms
        # Recovery starts one interval after the pause ends, not while it lasts.
        self._next_increase_ms = max(now_ms, self.hold_until_ms) + self.increase_interval_ms

    def on_success(self, now_ms: int) -> None:
        if self.rate_per_s < self.quota_per_s and now_ms >= self._next_increase_ms:
            self.rate_per_s = min(self.quota_per_s, self.rate_per_s + self.increase_per_s)
            self._next_increase_ms = now_ms + self.increase_interval_ms

    def set_quota(self, quota_per_s: float) -> None:
        """A quota change from the control stream. Lowering clamps the rate at once; raising
        lifts a rate that was running at the old quota straight to the new one, while a rate
        still recovering from throttles keeps climbing additively, now up to the new quota."""
        quota = _check_rate("quota_per_s", quota_per_s)
        at_quota = self.rate_per_s >= self.quota_per_s
        self.quota_per_s = quota
        if at_quota or self.rate_per_s > quota:
            self.rate_per_s = quota

    def hold_off_ms(self, now_ms: int) -> int:
        """Ms left of a provider's Retry-After pause (0 when sending may go on)."""
        return max(0, self.hold_until_ms - now_ms)

    def current_rate(self, now_ms: int) -> float:
        """The rate to send at now: 0 during a Retry-After pause."""
        return 0.0 if now_ms < self.hold_until_ms else self.rate_per_s

    def __repr__(self) -> str:
        return (f"AimdRate(rate_per_s={self.rate_per_s:g}, quota_per_s={self.quota_per_s:g}, "
                f"hold_until_ms={self.hold_until_ms})")


# ---------------------------------------------------------------- (c) Redis limiter

@dataclass(frozen=True, slots=True)
class BucketConfig:
    """A bucket's refill rate (tokens per second) and burst (its capacity)."""
    rate_per_s: float
    burst: float

    def __post_init__(self) -> None:
        _check_rate("rate_per_s", self.rate_per_s)
        _check_rate("burst", self.burst)


class Grant(NamedTuple):
    """``granted`` tokens taken now; ``wait_ms`` until the rest could be (0 when none is left)."""
    granted: int
    wait_ms: int

    @property
    def ok(self) -> bool:
        return self.wait_ms == 0


# One take, atomic: refill both buckets to `now`, check the lane floor and the hold-off, take
# from both or from neither. Buckets are hashes {tokens, ts, rate, burst, hold_until}; rate/burst
# come from the arguments when given, else from the hash (configure()). A bucket seen for the
# first time starts full. A caller whose clock is behind the stored ts refills nothing. Returns
# {granted, wait_ms}, or {-1, 'HERALD_… reason'} for a bucket without limits or a take that can
# never fit.
_TAKE_FUNCTION = """
local function now_or_server(arg)
  local now = tonumber(arg)
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now
end

local function load(key, rate_arg, burst_arg, now)
  local h = redis.call('HMGET', key, 'tokens', 'ts', 'rate', 'burst', 'hold_until')
  local rate = tonumber(rate_arg) or tonumber(h[3])
  local burst = tonumber(burst_arg) or tonumber(h[4])
  if not rate or not burst or rate <= 0 or burst <= 0 then
    return nil
  end
  local tokens = tonumber(h[1])
  local ts = tonumber(h[2])
  if not tokens or not ts then
    tokens = burst
    ts = now
  end
  if now > ts then
    tokens = tokens + (now - ts) * rate / 1000
    ts = now
  end
  if tokens > burst then tokens = burst end
  return {tokens = tokens, ts = ts, rate = rate, burst = burst,
          hold = tonumber(h[5]) or 0}
end

local function take(pkey, tkey, n, critical, partial, reserve, now, prate, pburst, trate, tburst)
  local p = load(pkey, prate, pburst, now)
  if not p then
    return {-1, 'HERALD_NOCONFIG no rate/burst for ' .. pkey}
  end
  local t = nil
  if tkey then
    t = load(tkey, trate, tburst, now)
    if not t then
      return {-1, 'HERALD_NOCONFIG no rate/burst for ' .. tkey}
    end
  end

  local floor = 0
  if not critical then floor = reserve * p.burst end
  local cap = p.burst - floor
  if t and t.burst < cap then cap = t.burst end
  if (partial and cap < 1) or (not partial and n > cap) then
    return {-1, 'HERALD_TOOBIG ' .. n .. ' tokens can never fit; capacity ' .. cap}
  end
  if p.hold > now then
    return {0, p.hold - now}
  end

  local avail = p.tokens - floor
  if t and t.tokens < avail then avail = t.tokens end
  local grant = 0
  if partial then
    grant = math.floor(math.min(n, avail))
    if grant < 0 then grant = 0 end
  elseif avail >= n then
    grant = n
  end

  if grant > 0 then
    p.tokens = p.tokens - grant
    redis.call('HSET', pkey, 'tokens', string.format('%.17g', p.tokens),
               'ts', string.format('%.17g', p.ts))
    if t then
      t.tokens = t.tokens - grant
      redis.call('HSET', tkey, 'tokens', string.format('%.17g', t.tokens),
                 'ts', string.format('%.17g', t.ts))
    end
  end

  local rest = n - grant
  if rest <= 0 then return {grant, 0} end
  local want = math.min(rest, cap)
  -- A critical caller with more waiting comes back before the bucket climbs past the
  -- promotional floor (half the reserve at most), so a promotional poller never gets a token
  -- meanwhile.
  if critical and partial and reserve > 0 then
    local lane = math.max(1, math.floor(reserve * p.burst / 2))
    if want > lane then want = lane end
  end
  local wait = (want - (p.tokens - floor)) * 1000 / p.rate
  if t then
    local wt = (want - t.tokens) * 1000 / t.rate
    if wt > wait then wait = wt end
  end
  wait = math.ceil(wait)
  if wait < 1 then wait = 1 end
  return {grant, wait}
end
"""

# One take in one round trip. KEYS: the provider's bucket, the tenant's (optional). ARGV: n,
# critical, partial, reserve, now ('' for the server's clock), provider rate and burst, tenant
# rate and burst ('' for the stored ones).
TAKE_LUA = _TAKE_FUNCTION + """
local r = take(KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3] == '1',
               tonumber(ARGV[4]), now_or_server(ARGV[5]), ARGV[6], ARGV[7], ARGV[8], ARGV[9])
if r[1] < 0 then return redis.error_reply(r[2]) end
return r
"""

# One provider's takes for several tenants in one round trip, one after another as separate
# takes would be (each sees what the ones before it took), on one clock. KEYS: the provider's
# bucket, then the tenants' buckets (one slot: the provider's hash tag). ARGV: critical,
# partial, reserve, now, provider rate and burst, then per take: n, the index in KEYS of its
# tenant's bucket (0: none), tenant rate and burst. Returns {granted, wait_ms, …}, with
# {-1, reason} for a take that failed (the others still happen).
TAKE_MANY_LUA = _TAKE_FUNCTION + """
local critical = ARGV[1] == '1'
local partial = ARGV[2] == '1'
local reserve = tonumber(ARGV[3])
local now = now_or_server(ARGV[4])
local out = {}
for i = 7, #ARGV, 4 do
  local k = tonumber(ARGV[i + 1])
  local tkey = nil
  if k > 0 then tkey = KEYS[k] end
  local r = take(KEYS[1], tkey, tonumber(ARGV[i]), critical, partial, reserve, now,
                 ARGV[5], ARGV[6], ARGV[i + 2], ARGV[i + 3])
  out[#out + 1] = r[1]
  out[#out + 1] = r[2]
end
return out
"""

# Atomic max(): a throttle seen by one worker pauses every worker of that provider.
HOLD_LUA = """
local until_ms = tonumber(ARGV[1])
if not until_ms then
  local t = redis.call('TIME')
  until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
end
local current = tonumber(redis.call('HGET', KEYS[1], 'hold_until')) or 0
if until_ms > current then
  redis.call('HSET', KEYS[1], 'hold_until', until_ms)
  return until_ms
end
return current
"""


class RedisRateLimiter:
    """Provider and tenant token buckets in Redis, shared by every worker.

    Keys are ``{namespace}:{<provider>}`` and ``{namespace}:{<provider>}:<tenant>``: the braces
    are a Redis Cluster hash tag, so both buckets of a take live in one slot and one script can
    touch both. Ask for many tokens at once (``take(n=...)``) to send a batch per round trip;
    ``partial=True`` grants what is there now instead of waiting for all of it.
    """

    def __init__(self, client: Any, *, reserve_fraction: float = 0.2,
                 namespace: str = "herald:rl"):
        """``client`` is a redis-py ``Redis`` (or ``RedisCluster``); ``reserve_fraction`` of
        each provider bucket's burst is kept for critical takes."""
        if isinstance(reserve_fraction, bool) or not isinstance(reserve_fraction, (int, float)) \
                or not 0 <= reserve_fraction < 1:
            raise ValueError(f"reserve_fraction must be in [0, 1), got {reserve_fraction!r}")
        self.client = client
        self.reserve_fraction = float(reserve_fraction)
        self.namespace = namespace
        self._take = client.register_script(TAKE_LUA)
        self._take_many = client.register_script(TAKE_MANY_LUA)
        self._hold = client.register_script(HOLD_LUA)

    def provider_key(self, provider: str) -> str:
        return f"{self.namespace}:{{{provider}}}"

    def tenant_key(self, provider: str, tenant: str) -> str:
        return f"{self.namespace}:{{{provider}}}:{tenant}"

    def configure(self, provider: str, rate_per_s: float, burst: float, *,
                  tenant: str | None = None) -> None:
        """Set a bucket's rate and burst for every worker (a quota change from the control
        stream lands here); tokens already earned are kept, up to the new burst."""
        config = BucketConfig(rate_per_s, burst)
        key = self.provider_key(provider) if tenant is None else self.tenant_key(provider, tenant)
        self.client.hset(key, mapping={"rate": repr(float(config.rate_per_s)),
                                       "burst": repr(float(config.burst))})

    def take(self, provider: str, n: int = 1, *, tenant: str | None = None,
             critical: bool = False, partial: bool = False, now_ms: int | None = None,
             provider_limit: BucketConfig | None = None,
             tenant_limit: BucketConfig | None = None) -> Grant:
        """Take ``n`` tokens from the provider bucket (and the tenant's, if ``tenant``).

        Limits given here override the configured ones for this call (e.g. an ``AimdRate``'s
        current rate). ``now_ms`` defaults to the Redis server's clock, one clock for all
        workers. Raises ``RateLimitConfigError`` when a bucket has no limits or ``n`` can never
        fit it (split the batch, or use ``partial``).
        """
        _check_count(n)
        keys = [self.provider_key(provider)]
        if tenant is not None:
            keys.append(self.tenant_key(provider, tenant))
        args = [n, 1 if critical else 0, 1 if partial else 0, repr(self.reserve_fraction),
                "" if now_ms is None else int(now_ms),
                *_limit_args(provider_limit), *_limit_args(tenant_limit)]
        try:
            granted, wait_ms = self._take(keys=keys, args=args)
        except ResponseError as exc:
            text = str(exc)
            if "HERALD_NOCONFIG" in text or "HERALD_TOOBIG" in text:
                raise RateLimitConfigError(text.split(" ", 1)[-1]) from None
            raise
        return Grant(int(granted), int(wait_ms))

    def take_many(self, provider: str,
                  takes: Sequence[tuple[str | None, int, BucketConfig | None]], *,
                  critical: bool = False, partial: bool = False, now_ms: int | None = None,
                  provider_limit: BucketConfig | None = None
                  ) -> list[Grant | RateLimitConfigError]:
        """``take`` for several tenants of one provider in one round trip: per
        ``(tenant or None, n, tenant_limit)``, in order, its ``Grant``, or the
        ``RateLimitConfigError`` that ``take`` would have raised for it."""
        keys = [self.provider_key(provider)]
        args: list = [1 if critical else 0, 1 if partial else 0, repr(self.reserve_fraction),
                      "" if now_ms is None else int(now_ms), *_limit_args(provider_limit)]
        for tenant, n, tenant_limit in takes:
            _check_count(n)
            index = 0
            if tenant is not None:
                keys.append(self.tenant_key(provider, tenant))
                index = len(keys)
            args += [n, index, *_limit_args(tenant_limit)]
        flat = self._take_many(keys=keys, args=args)
        out: list[Grant | RateLimitConfigError] = []
        for granted, second in zip(flat[::2], flat[1::2]):
            if int(granted) < 0:
                text = second.decode() if isinstance(second, bytes) else str(second)
                out.append(RateLimitConfigError(text.split(" ", 1)[-1]))
            else:
                out.append(Grant(int(granted), int(second)))
        return out

    def hold(self, provider: str, *, until_ms: int | None = None,
             retry_after_ms: int | None = None) -> int:
        """Pause every take on ``provider``: until ``until_ms``, or ``retry_after_ms`` from
        now on the Redis clock. Returns the end of the pause in force (a longer one wins)."""
        if (until_ms is None) == (retry_after_ms is None):
            raise ValueError("give until_ms or retry_after_ms, exactly one")
        args = ([int(until_ms), ""] if until_ms is not None
                else ["", int(math.ceil(retry_after_ms))])
        return int(self._hold(keys=[self.provider_key(provider)], args=args))


def _limit_args(limit: BucketConfig | None) -> tuple[str, str]:
    if limit is None:
        return "", ""
    return repr(float(limit.rate_per_s)), repr(float(limit.burst))
