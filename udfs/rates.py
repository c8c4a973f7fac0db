"""The call stage's rate control: quotas from Redis, AIMD on throttling answers, token takes.

Per provider, the ceiling is the quota (stored by a ``quota`` control record, else Settings'
default) and the rate in force is an ``AimdRate`` under it: a throttle answer halves it (once
per interval, however many calls of a batch were throttled together) and ``hold()``s the
provider for the Retry-After; successes add back a tenth of the quota per interval. The rate
in force is written into the provider's Redis bucket (``configure``) whenever it changes, so
the Lua take of every worker refills at it and anyone can read it there.

``take`` never drops: it answers how many calls may go now and how long to wait for the rest.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from herald.providers.base import clock_ms
from herald.ratelimit import AimdRate, BucketConfig, Grant, RateLimitConfigError, RedisRateLimiter
from herald.settings import Settings
from udfs.quotas import PROVIDERS, QuotaStore, default_quota, default_tenant_quota

log = logging.getLogger(__name__)


class ProviderRates:
    def __init__(self, settings: Settings, client: Any, *, clock: Callable[[], int] = clock_ms):
        self.settings = settings
        self.limiter = RedisRateLimiter(client, reserve_fraction=settings.ratelimit_reserve_fraction,
                                        namespace=settings.ratelimit_namespace)
        self.store = QuotaStore(client, self.limiter)
        self.clock = clock
        self.quotas: dict[str, BucketConfig] = {}
        self.aimd: dict[str, AimdRate] = {}
        self._written: dict[str, tuple[float, float]] = {}
        self._tenants: dict[tuple[str, str], tuple[int, BucketConfig | None]] = {}
        self._next_refresh = 0
        self.refresh(force=True)

    # ---------------------------------------------------------------- quotas and AIMD

    def _new_aimd(self, quota: BucketConfig) -> AimdRate:
        s = self.settings
        return AimdRate(quota.rate_per_s, decrease_factor=s.aimd_decrease_factor,
                        min_rate_per_s=s.aimd_min_rate_per_s,
                        increase_per_s=max(quota.rate_per_s * s.aimd_increase_fraction, 1e-3),
                        increase_interval_ms=s.aimd_interval_ms)

    def refresh(self, force: bool = False) -> None:
        """Re-read the providers' quotas (at most once per ``quota_refresh_ms``)."""
        now = self.clock()
        if not force and now < self._next_refresh:
            return
        self._next_refresh = now + self.settings.quota_refresh_ms
        stored = self.store.read((p, None) for p in PROVIDERS)
        for provider in PROVIDERS:
            quota = stored.get((provider, None)) or default_quota(self.settings, provider)
            aimd = self.aimd.get(provider)
            if aimd is None:
                self.aimd[provider] = self._new_aimd(quota)
            elif quota != self.quotas.get(provider):
                aimd.set_quota(quota.rate_per_s)
                aimd.increase_per_s = max(quota.rate_per_s * self.settings.aimd_increase_fraction,
                                          1e-3)
            self.quotas[provider] = quota
            self._write(provider, force)

    def _write(self, provider: str, force: bool = False) -> None:
        """Put the rate in force into the shared bucket when it changed (or on start)."""
        wanted = (self.aimd[provider].rate_per_s, self.quotas[provider].burst)
        if force or self._written.get(provider) != wanted:
            self.limiter.configure(provider, wanted[0], wanted[1])
            self._written[provider] = wanted

    def rate(self, provider: str) -> float:
        return self.aimd[provider].rate_per_s

    def on_throttle(self, provider: str, retry_after_ms: int | None) -> None:
        now = self.clock()
        self.aimd[provider].on_throttle(now, retry_after_ms)
        if retry_after_ms:
            self.limiter.hold(provider, retry_after_ms=retry_after_ms)
        self._write(provider)

    def on_success(self, provider: str) -> None:
        aimd = self.aimd[provider]
        if aimd.rate_per_s < aimd.quota_per_s:
            aimd.on_success(self.clock())
            self._write(provider)

    # ---------------------------------------------------------------- tenants

    def prepare_tenants(self, pairs) -> None:
        """Learn the stored quotas of these (provider, tenant) pairs, one round trip for the
        ones not known or older than ``quota_refresh_ms``."""
        now = self.clock()
        stale = [p for p in set(pairs)
                 if p not in self._tenants or self._tenants[p][0] <= now]
        if not stale:
            return
        if len(self._tenants) > 100_000:
            self._tenants.clear()
        found = self.store.read(stale)
        until = now + self.settings.quota_refresh_ms
        for pair in stale:
            self._tenants[pair] = (until, found.get(pair))

    def _tenant_args(self, provider: str, tenant: str | None):
        if tenant is None:
            return None, None
        entry = self._tenants.get((provider, tenant))
        if entry is not None and entry[1] is not None:
            return tenant, None  # configured in Redis: the stored config applies
        default = default_tenant_quota(self.settings)
        return (tenant, default) if default is not None else (None, None)

    # ---------------------------------------------------------------- takes

    def take_many(self, provider: str, tenants: list[tuple[str, int]], *,
                  critical: bool) -> list[Grant]:
        """Up to ``n`` tokens now for each ``(tenant, n)`` of one provider (partial grants, with
        the wait for the rest), in order, in one round trip."""
        takes = []
        for tenant, n in tenants:
            key, limit = self._tenant_args(provider, tenant)
            takes.append((key, n, limit))
        grants = self.limiter.take_many(provider, takes, critical=critical, partial=True)
        return [self._config_lost(provider, tenant, grant)
                if isinstance(grant, RateLimitConfigError) else grant
                for (tenant, _), grant in zip(tenants, grants)]

    def _config_lost(self, provider: str, tenant: str | None,
                     exc: RateLimitConfigError) -> Grant:
        # The bucket lost its config (a flushed Redis) or cannot fit one promotional call:
        # put the config back and wait a little; never send unlimited.
        log.warning("rate limit for %s/%s: %s", provider, tenant, exc)
        self._write(provider, force=True)
        self._tenants.pop((provider, tenant), None)
        return Grant(0, 100)
