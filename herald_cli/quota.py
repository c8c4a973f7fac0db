"""``herald_cli quota``: a quota change, applied at once and recorded on ``herald.control``.

It is written straight into the limiter's Redis config (the call stages pick it up within
``quota_refresh_ms``) and also produced as a ``kind: quota`` record to ``herald.control``, the
contract's door for quota changes, which the delivery job applies the same way (setting values
twice is harmless).
"""
from __future__ import annotations

from herald.ratelimit import RedisRateLimiter
from herald.redis_conn import redis_client
from herald.settings import Settings
from udfs.quotas import MAX_RATE, MIN_BURST, MIN_RATE, QuotaStore, quota_from_dict


def set_quota(settings: Settings, provider: str, rate_per_s: float, burst: float, *,
              tenant: str | None = None, control: bool = True) -> str:
    record = {"kind": "quota", "provider": provider, "rate_per_s": rate_per_s, "burst": burst}
    if tenant is not None:
        record["tenant_id"] = tenant
    change = quota_from_dict(record)  # the same validation the job applies
    client = redis_client(settings)  # one server or Redis Cluster
    try:
        QuotaStore(client, RedisRateLimiter(client,
                                            reserve_fraction=settings.ratelimit_reserve_fraction,
                                            namespace=settings.ratelimit_namespace)).apply(change)
    finally:
        client.close()
    if control:
        from kafka import KafkaProducer
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        try:
            producer.send(settings.topic_control, key=b"quota", value=change.to_json()).get(30)
        finally:
            producer.close()
    who = provider + (f"/{tenant}" if tenant else "")
    return f"quota {who}: {rate_per_s:g}/s, burst {burst:g}"


def register(commands) -> None:
    """``quota --provider P --rate R --burst B [--tenant T]``."""
    quota = commands.add_parser("quota", help="change a provider's (or a tenant's) quota now")
    quota.add_argument("--provider", required=True, choices=("fcm", "apns", "twilio", "sendgrid"))
    quota.add_argument("--rate", type=float, required=True,
                       help=f"requests per second ({MIN_RATE:g} to {MAX_RATE:,.0f})")
    quota.add_argument("--burst", type=float, required=True,
                       help=f"bucket size in requests ({MIN_BURST:g} to {MAX_RATE:,.0f}: two "
                            "tokens at least, so a promotional take, kept off the critical "
                            "reserve, can fit)")
    quota.add_argument("--tenant", default=None, help="a tenant's own bucket at this provider")
    quota.add_argument("--no-control", action="store_true",
                       help="only write Redis; do not put the record on herald.control")
    quota.set_defaults(run=lambda args, settings: set_quota(
        settings, args.provider, args.rate, args.burst, tenant=args.tenant,
        control=not args.no_control))
