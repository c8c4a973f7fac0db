"""Provider and tenant quotas: the ``quota`` control record, and where quotas live (Redis).

A quota change travels as a record on ``herald.control``::

    {"kind": "quota", "provider": "fcm", "tenant_id": "acme", "rate_per_s": 500, "burst": 50}

(``tenant_id`` optional: without it the provider's own bucket changes). It is applied by
writing it into the limiter's Redis config: the bucket hash gets ``quota_rate``/``quota_burst``
(the ceiling the call stage's AIMD works under) and, through ``RedisRateLimiter.configure``,
``rate``/``burst`` (what the Lua take uses right now). Every worker of every job reads the same
hash, so a change reaches them all within ``quota_refresh_ms`` and survives restarts, with no
Flink state to keep in step. Providers with nothing stored use the defaults from Settings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import orjson

from herald.errors import ValidationError
from herald.models import load_object
from herald.ratelimit import BucketConfig, RedisRateLimiter
from herald.settings import Settings

QUOTA = "quota"
PROVIDERS = ("fcm", "apns", "twilio", "sendgrid")
MAX_RATE = 10_000_000.0
MIN_RATE = 0.001  # requests per second
MIN_BURST = 2.0   # tokens
QUOTA_RATE, QUOTA_BURST = "quota_rate", "quota_burst"


@dataclass(frozen=True, slots=True)
class QuotaChange:
    provider: str
    rate_per_s: float
    burst: float
    tenant_id: str | None = None
    kind: str = QUOTA

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "provider": self.provider, "rate_per_s": self.rate_per_s,
               "burst": self.burst}
        if self.tenant_id is not None:
            out["tenant_id"] = self.tenant_id
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def _number(obj: Mapping, name: str, minimum: float, why: str = "") -> float:
    value = obj.get(name)
    if value is None:
        raise ValidationError(f"missing required field '{name}'", name, "missing_field")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(f"'{name}' must be a number, got {value!r}", name)
    if value < minimum or value > MAX_RATE:
        raise ValidationError(f"'{name}' must be between {minimum:g} and {MAX_RATE:,.0f}, "
                              f"got {value!r}" + (f" ({why})" if why else ""), name)
    return float(value)


def quota_from_dict(obj: Mapping) -> QuotaChange:
    """Validate one quota control record (strict: a typo must not silently change a quota)."""
    if obj.get("kind") != QUOTA:
        raise ValidationError(f"'kind' must be {QUOTA!r}, got {obj.get('kind')!r}", "kind")
    unknown = sorted(set(obj) - {"kind", "provider", "tenant_id", "rate_per_s", "burst", "at"})
    if unknown:
        raise ValidationError(f"unknown fields in a quota record: {', '.join(unknown)}",
                              unknown[0])
    provider = obj.get("provider")
    if provider not in PROVIDERS:
        raise ValidationError(f"'provider' must be one of {', '.join(PROVIDERS)}, got "
                              f"{provider!r}", "provider")
    tenant = obj.get("tenant_id")
    if tenant is not None and (not isinstance(tenant, str) or not tenant.strip()
                               or len(tenant) > 256):
        raise ValidationError("'tenant_id' must be a non-empty string", "tenant_id")
    rate = _number(obj, "rate_per_s", MIN_RATE)
    # Two tokens at least, so a promotional take (kept off the critical reserve) can ever fit.
    burst = _number(obj, "burst", MIN_BURST,
                    "a bucket holds 2 tokens at least, so a promotional take, kept off the "
                    "critical reserve, can ever fit")
    return QuotaChange(provider, rate, burst, tenant)


def parse_quota(raw: bytes | str) -> QuotaChange:
    return quota_from_dict(load_object(raw))


def default_quota(settings: Settings, provider: str) -> BucketConfig:
    return BucketConfig(float(getattr(settings, f"quota_{provider}_rate_per_s")),
                        float(getattr(settings, f"quota_{provider}_burst")))


def default_tenant_quota(settings: Settings) -> BucketConfig | None:
    if settings.quota_tenant_rate_per_s > 0 and settings.quota_tenant_burst > 0:
        return BucketConfig(settings.quota_tenant_rate_per_s, settings.quota_tenant_burst)
    return None


class QuotaStore:
    """Quotas in the limiter's Redis hashes (see the module doc)."""

    def __init__(self, client: Any, limiter: RedisRateLimiter):
        self.client = client
        self.limiter = limiter

    def key(self, provider: str, tenant: str | None = None) -> str:
        return (self.limiter.provider_key(provider) if tenant is None
                else self.limiter.tenant_key(provider, tenant))

    def apply(self, change: QuotaChange) -> None:
        """Set a quota for every worker, at once (the bucket's current rate included)."""
        self.client.hset(self.key(change.provider, change.tenant_id),
                         mapping={QUOTA_RATE: repr(change.rate_per_s),
                                  QUOTA_BURST: repr(change.burst)})
        self.limiter.configure(change.provider, change.rate_per_s, change.burst,
                               tenant=change.tenant_id)

    def read(self, keys: Iterable[tuple[str, str | None]]) -> dict[tuple[str, str | None],
                                                                 BucketConfig | None]:
        """The stored quota of each (provider, tenant) key, None where nothing is stored."""
        keys = list(keys)
        if not keys:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for provider, tenant in keys:
            pipe.hmget(self.key(provider, tenant), QUOTA_RATE, QUOTA_BURST)
        out = {}
        for key, (rate, burst) in zip(keys, pipe.execute()):
            try:
                out[key] = (BucketConfig(float(rate), float(burst))
                            if rate is not None and burst is not None else None)
            except ValueError:
                out[key] = None
        return out
