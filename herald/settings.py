"""Herald's settings: one typed, immutable object from env vars and an optional TOML file.

``load_settings`` reads them with pydantic-settings. Precedence: explicit overrides >
``HERALD_<NAME>`` environment variables > the TOML file named by ``HERALD_CONFIG`` > defaults.
A value that does not parse (a number, a boolean, one of a closed set) is an error naming where
it came from. ``Settings(...)`` alone is the defaults and its arguments, no environment.
Secrets are ``SecretStr``: masked when printed, read with ``get_secret_value()``.

``Settings`` is a frozen pydantic dataclass, not a ``BaseSettings`` model: operators read it per
record, and a model's ``__getattr__`` keeps CPython 3.11 from specialising attribute reads
(27 ns against 8 ns). pydantic-settings reads the sources through a model made from its fields.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import ConfigDict, SecretStr, ValidationError, field_validator
from pydantic.dataclasses import dataclass

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "HERALD_"
CONFIG_VAR = "HERALD_CONFIG"  # the TOML file's path
DELIVERY_CLASSES = ("critical", "promotional")


class SettingsError(ValueError):
    """Settings that cannot be read: each bad value named by the env var, file or argument."""


# Unknown names refused; numbers in the TOML file taken for string settings
# (flink_prometheus_port = 9249), as the env's strings are.
@dataclass(frozen=True, config=ConfigDict(extra="forbid", coerce_numbers_to_str=True,
                                            defer_build=True))
class Settings:
    # Where the local stack keeps its binaries, data, logs and pid files.
    stack_dir: str = str(PROJECT_ROOT / ".stack")

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_controller_port: int = 19093
    kafka_partitions: int = 4
    topic_critical: str = "herald.critical"
    topic_campaigns: str = "herald.campaigns"
    topic_promo: str = "herald.promo"
    topic_control: str = "herald.control"
    topic_status: str = "herald.status"
    topic_dlq: str = "herald.dlq"
    # Per-minute rollups of herald.status (jobs/rollup.py): an extension of the contract's topics.
    topic_rollup: str = "herald.rollup"
    consumer_group: str = "herald-delivery"

    # Redis
    redis_host: str = "127.0.0.1"
    redis_port: int = 16379
    # Redis Cluster (docs/decisions/020-redis-cluster.md): every client is redis-py's
    # RedisCluster, redis_host:redis_port one of its nodes. Or give redis_address as
    # redis+cluster://host:port (redis://host:port: one server); it overrides host and port.
    redis_cluster: bool = False
    redis_address: str = ""

    # Semantics
    critical_default_ttl_ms: int = 300_000
    # Per-user order: how long a gap in `seq` is held before moving on (and at a user's start).
    gap_timeout_ms: int = 2_000
    # Replays of an id within this window are caught by keyed state (the Redis marker, kept as
    # long, catches re-sends after a restore from a checkpoint).
    dedup_ttl_ms: int = 86_400_000
    max_id_length: int = 256
    # The gate keeps this many users' (pickled) states between batches (a read cache in front
    # of keyed state; every change is still written through), and sweeps each partition's
    # state this often so idle users' expired state leaves memory.
    gate_cache_users: int = 200_000
    state_sweep_interval_ms: int = 600_000

    # Providers (base URLs are the only difference between the mocks and the real thing)
    fcm_url: str = "http://127.0.0.1:18101"
    fcm_project: str = "herald-dev"
    fcm_access_token: SecretStr = SecretStr("")
    apns_url: str = "http://127.0.0.1:18102"
    apns_topic: str = "dev.herald.app"
    apns_key_id: str = "HERALDKEY1"
    apns_team_id: str = "HERALDTEAM"
    apns_private_key: SecretStr = SecretStr("")
    twilio_url: str = "http://127.0.0.1:18103"
    twilio_account_sid: str = "ACherald0000000000000000000000000"
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_from: str = "+15550000000"
    sendgrid_url: str = "http://127.0.0.1:18104"
    sendgrid_api_key: SecretStr = SecretStr("")
    sendgrid_from: str = "herald@example.com"
    # Records are collected per lane (one per gate subtask) over this window, per class, and a
    # gate subtask works one batch at a time, each costing a provider round trip: the window
    # must stay longer than that or the batches queue (10 ms against a 10 ms mock: seconds of
    # critical latency at 300/s; 40 ms: p50/p99 37/115 ms, bench/results/isolation.md).
    # With more lanes than subtasks each lane's window is this × the lanes per subtask, so a
    # subtask still makes about one batch per this window (gate_lanes below).
    # Priority at the quota holds at any window: a critical caller waiting for tokens comes
    # back before promotional takes could start (herald/ratelimit.py).
    critical_batch_window_ms: int = 40
    promo_batch_window_ms: int = 50
    # The promotional operators' threads run at this nice level (0: not lowered), so on a
    # shared TaskManager the critical ones get a core first (operators/threads.py).
    promo_thread_nice: int = 10
    # The Python interpreter's GIL switch interval in the job's operators (0: Python's 5 ms).
    python_switch_interval_ms: float = 0.5
    # The cycle collector's first-generation threshold in the job's interpreter (0: Python's
    # 700). A batch makes thousands of short-lived containers, so at 700 it collected 4,900
    # times in a 300k null run, 1.8-2.4 s of the interpreter's time; at 20,000, 66 times and
    # 0.6 s (operators/threads.py).
    python_gc_gen0_threshold: int = 20_000
    # Promotional operators wait while a critical batch is in the same interpreter, this long
    # at most per step (0: they never wait; operators/threads.py).
    promo_yield_max_ms: float = 200.0
    provider_timeout_s: float = 10.0
    provider_max_in_flight: int = 256
    # Adaptive concurrency per provider endpoint (herald.concurrency, issue 15.2): connections
    # and requests in flight start at provider_concurrency_initial and grow while calls are
    # answered, up to provider_max_in_flight; a new connection turned away or not made while
    # others work pins the limit to those, and one more is tried after a hold that doubles up
    # to provider_concurrency_probe_max_ms (so a cap's end is noticed within it). false: up to
    # provider_max_in_flight connections at once and connection faults counted as provider
    # faults, as before (for comparisons; bench/connection_faults.py).
    provider_concurrency_adaptive: bool = True
    provider_concurrency_initial: int = 8
    provider_concurrency_probe_max_ms: int = 2_000
    # The gate sends a batch in parts of about this many notifications (a user's all in one
    # part), each part's calls under way while it decides the next, so the provider's work
    # and the gate's overlap (0: the whole batch as one part; udfs/call_stage.py).
    send_part_records: int = 256
    # Parts left under way while the next is decided; older parts are completed (answers
    # classified, statuses out) meanwhile, so the provider is never left waiting on the gate.
    send_parts_ahead: int = 1
    # "http" calls the providers; "null" answers every call at once in-process (benchmarks of
    # the pipeline's own ceiling only: nothing is delivered).
    provider_transport: Literal["http", "null"] = "http"

    # Which classes this delivery job runs ("critical,promotional": both, the default). Run one
    # job per class on a shared machine so each has its own JVM and Python interpreter; the
    # promotional-only job then runs at `promo_job_nice` as a whole (jobs/delivery.py says why),
    # and so does the expansion job, always.
    delivery_classes: str = "critical,promotional"
    promo_job_nice: int = 10
    promo_job_rest_port: int = 8084  # the promotional-only job's MiniCluster dashboard

    # Flink
    flink_parallelism: int = 1
    # Key groups: fixed, so a savepoint restores at any parallelism up to it.
    flink_max_parallelism: int = 128
    # Lanes per class: the window collects `partition mod lanes`, a batch per non-empty lane,
    # and a lane is worked by one gate subtask (operators/lanes.py), so the job's parallelism
    # must be at most the lanes (it fails at start otherwise) and should divide them. Like the
    # max parallelism it leaves room to grow: 2 lanes run at parallelism 1 or 2. Each lane a
    # subtask works is a batch per window, and each batch a provider round trip: at 4 batches
    # per 40 ms window and a 10 ms provider a subtask fell behind (p50 2.2 s at 300/s), so the
    # window grows with the lanes per subtask (80 ms for 2 lanes at parallelism 1;
    # docs/decisions/021-gate-lanes.md). Run at least lanes / 2 subtasks.
    # A lane's users keep their state under the lane's key: it changes only with a fresh start.
    # 0 = the job's parallelism, the default before 021 (restore such a savepoint with
    # HERALD_GATE_LANES set to the parallelism it was taken at, docs/OPERATIONS.md).
    gate_lanes: int = 2
    # Lanes spread over the subtasks (lane mod P decides the subtask). False: in order, as
    # before 021, only to restore a savepoint written then with 4, 6, 8... lanes.
    gate_lanes_spread: bool = True
    flink_checkpoint_interval_ms: int = 5_000
    # How long what the gates and call operators emit (statuses, retries, dead letters) may wait
    # in a network buffer before it is flushed: off the path to the provider, so longer than the
    # job's 5 ms (`execution.buffer-timeout`), which makes each output's flusher thread wake
    # 200 times a second.
    flink_status_buffer_timeout_ms: int = 50
    # Where the embedded job keeps its checkpoints ("" = <stack_dir>/flink/checkpoints).
    flink_checkpoint_dir: str = ""
    flink_rest_port: int = 8081
    # Flink's buffer debloating: in-flight data between tasks ≈ this many ms (0: off). Off by
    # default: the gate keeps up at low rates without it (one batch per lane per window); the
    # kill tests pass with it on (docs/decisions/010-buffer-debloating.md).
    flink_buffer_debloat_target_ms: int = 0
    # Flink's `pipeline.object-reuse`: chained Java operators hand a record on without a
    # defensive copy (the SQL window, the conversions around the Python operators, the sinks;
    # Python operators get their own copies anyway). bench/results/object_reuse.md measures it.
    flink_object_reuse: bool = True
    flink_python_mode: Literal["thread", "process"] = "thread"
    flink_jars_dir: str = str(PROJECT_ROOT / ".stack" / "flink-jars")
    flink_watermark_idle_ms: int = 1_000
    flink_max_out_of_orderness_ms: int = 2_000
    # The embedded MiniCluster's Prometheus reporter: a port or a range ("9249-9260"; each job
    # takes the first free one), "" = none. A cluster's reporter is in flink-conf/config.yaml.
    flink_prometheus_port: str = ""

    # Mocks (the local provider stand-ins)
    mock_fcm_port: int = 18101
    mock_apns_port: int = 18102
    mock_twilio_port: int = 18103
    mock_sendgrid_port: int = 18104

    # Twilio posts delivery receipts here (the API's receipt endpoint); Herald adds
    # ``herald_id=<id>&tenant_id=<tenant>`` to each message's StatusCallback so the receipt (and
    # the mock's log) names the notification. Receipts are checked with twilio_auth_token.
    twilio_status_callback_url: str = "http://127.0.0.1:8080/v1/receipts/twilio"
    # SendGrid's Event Webhook posts to /v1/receipts/sendgrid; when set, it must carry
    # ``?token=<this>`` in the URL configured at SendGrid (a shared secret; see CONTRACT.md)
    sendgrid_webhook_secret: SecretStr = SecretStr("")
    # SendGrid's signed Event Webhook: its verification key (base64 DER, as SendGrid shows it);
    # when set, each POST's ECDSA signature over timestamp + body must verify
    sendgrid_webhook_public_key: str = ""

    # Tenant webhooks (herald_api.webhooks): each final status POSTed to the tenant's URL, signed
    webhook_consumer_group: str = "herald-webhooks"
    webhook_timeout_s: float = 5.0               # one POST; no answer by then is a failure
    webhook_max_attempts: int = 8                # then the event is given up (logged, counted)
    webhook_backoff_ms: int = 500                # first retry after this, doubling, with jitter
    webhook_backoff_max_ms: int = 60_000
    # Tenants' URLs may point at loopback, private or link-local addresses (a receiver next to
    # Herald, the demo, the tests); off, such a URL is refused at registration and at each call
    webhook_allow_private: bool = False

    # HTTP API (herald_api): ``python -m herald_api``
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # Per-tenant Bearer keys, "key1:acme,key2:globex": each key acts for exactly one tenant
    api_keys: SecretStr = SecretStr("")
    api_max_body_bytes: int = 1_048_576          # any request body; larger → 413
    api_max_segment_bytes: int = 33_554_432      # PUT /v1/segments/{name} bodies (big id lists)
    api_idempotency_ttl_s: int = 86_400          # Idempotency-Key / repeated id remembered this long
    api_produce_timeout_s: float = 10.0          # acks=all produce; past it → 503, nothing promised

    # Audit store (herald_api.audit): every Status event in Redis, kept this long after its last one
    audit_consumer_group: str = "herald-audit"
    audit_retention_s: int = 604_800

    # Segments (herald.segments): immutable Parquet files, one per upload, under
    # <segments_dir>/<tenant>/<name>/ ("" = <stack_dir>/data/segments). On a cluster this must
    # be a path every TaskManager sees (a shared volume).
    segments_dir: str = ""
    segment_row_group_size: int = 65_536       # rows per Parquet row group (the unit read)
    segment_versions_kept: int = 3             # replaced versions kept for running expansions

    # Campaign expansion (jobs/expansion.py)
    # Recipients per batch row the Python operator hands to Flink SQL, which expands it.
    expansion_batch_size: int = 10_000
    # Pause between two batches of one campaign (processing-time timers): a campaign is capped at
    # expansion_batch_size * 1000 / expansion_tick_ms recipients/s; 0 = as fast as the sink takes
    # (≈ 300k/s on one core, bench/results/expansion.md). 500 ms: 20k/s, far above what delivery
    # sends, and the million records land over 50 s instead of 3–4 s of two saturated cores:
    # critical p99 during a 1M campaign 2.0 s → 1.0 s (bench/results/latency_campaign.md).
    expansion_tick_ms: int = 500
    # A campaign-level `accepted` progress event at most this often per campaign (plus the last).
    expansion_progress_interval_ms: int = 1_000
    # A finished campaign's state is kept this long past its expiry (a replayed campaign record
    # is recognised and not expanded again; a cancel that came first is remembered as long).
    expansion_state_retention_ms: int = 86_400_000
    # herald.promo sink: "exactly-once" (Kafka transactions committed with each checkpoint: a
    # restore re-emits nothing a read_committed reader saw) or "at-least-once" (visible at once;
    # a restore re-emits the batches after the last checkpoint, ids dedup'd in delivery).
    expansion_delivery_guarantee: Literal["exactly-once", "at-least-once"] = "exactly-once"
    # The embedded expansion job's dashboard (the delivery job has flink_rest_port).
    expansion_rest_port: int = 8082

    # Status rollups (jobs/rollup.py, sql/status_rollup.sql): tumbling event-time windows over
    # herald.status by its `at`, per priority, provider and state; a window is emitted once the
    # watermark (the latest `at` seen less this lateness) has passed its end.
    rollup_window_s: int = 60
    rollup_max_out_of_orderness_ms: int = 5_000
    # The embedded rollup job's dashboard.
    rollup_rest_port: int = 8083

    # Users and preferences in the delivery path (issue 5)
    # Critical notifications ignore the user's quiet hours (an OTP cannot wait for the morning);
    # promotional ones are held until the quiet period ends.
    quiet_hours_bypass_critical: bool = True
    # Critical notifications honour channel opt-outs too; False lets a critical notification
    # whose inline contacts cover its channels skip the user lookup.
    critical_honours_opt_outs: bool = True
    # A cancelled campaign is remembered in Redis this long (herald:cancelled:{tenant}:{id});
    # keep it longer than any campaign lives.
    campaign_cancel_retention_ms: int = 604_800_000
    # Compiled templates the call stage keeps (by stored text, so an update is seen at once).
    template_cache_entries: int = 1_024

    # Provider stage: rate limits, retries, fallback, circuit breaker (issue 4)
    # Retryable answers are re-queued on a retry topic per class (read back by the same job).
    topic_retry_critical: str = "herald.retry.critical"
    topic_retry_promo: str = "herald.retry.promo"
    # Redis token buckets: provider (and tenant) buckets live under this prefix.
    ratelimit_namespace: str = "herald:rl"
    # Share of each provider bucket's burst that only critical traffic may use.
    ratelimit_reserve_fraction: float = 0.2
    # Default quotas (requests/s and burst) per provider; a `quota` record on herald.control
    # (or `python -m herald_cli quota`) overrides them at run time, kept in Redis.
    quota_fcm_rate_per_s: float = 10_000.0      # FCM's default: 600,000 messages/min per project
    quota_fcm_burst: float = 1_000.0
    quota_apns_rate_per_s: float = 10_000.0     # Apple publishes none; keep it in line with FCM
    quota_apns_burst: float = 1_000.0
    quota_twilio_rate_per_s: float = 100.0      # a messaging service's pool; 1/s for one long code
    quota_twilio_burst: float = 100.0
    quota_sendgrid_rate_per_s: float = 1_000.0
    quota_sendgrid_burst: float = 1_000.0
    # Per-tenant bucket when no tenant quota is configured (0 = no tenant bucket).
    quota_tenant_rate_per_s: float = 0.0
    quota_tenant_burst: float = 0.0
    # How often the call stage re-reads quotas from Redis.
    quota_refresh_ms: int = 1_000
    # AIMD on throttling answers: multiply the rate by this, recover by a share of the quota
    # per interval, never below the minimum.
    aimd_decrease_factor: float = 0.5
    aimd_increase_fraction: float = 0.1
    aimd_interval_ms: int = 1_000
    aimd_min_rate_per_s: float = 1.0
    # A throttled call waits in the operator (backpressure) up to this long; longer Retry-After
    # answers send it round the retry topic instead, so checkpoints are not held up.
    throttle_inline_max_ms: int = 5_000
    # Retries of retryable answers (5xx, timeouts): full-jitter exponential backoff, capped by
    # attempts (per channel, the first try included) and by expires_at.
    retry_max_attempts: int = 5
    retry_initial_delay_ms: int = 500
    retry_max_delay_ms: int = 60_000
    retry_multiplier: float = 2.0
    # Circuit breaker per provider: open after this many consecutive provider faults, for this
    # long; then one probe. Calls to an open provider are re-queued (not failed).
    breaker_failure_threshold: int = 5
    breaker_cool_down_ms: int = 5_000
    # Fallback by time left (herald.retry.TimeLeftPolicy): a retry on the current channel is
    # scheduled only if each later channel would still have this long before expires_at once
    # it is due; else the next channel is tried now. As long as one call's timeout
    # (provider_timeout_s), so a fallback always gets a whole call. 0: fall back only when no
    # retry fits before expiry. (A channel whose circuit is open is left at once, whatever
    # the time.)
    fallback_reserve_ms: int = 10_000
    # A request is written this long before expires_at or earlier, and its answer is awaited
    # until expires_at, so a user's next call is written no sooner than this after it: the
    # trip to the provider (stalls included) must stay under it for "never at or after
    # expiry" and "in order at the provider" to hold (docs/OPERATIONS.md, semantics).
    provider_write_margin_ms: int = 50

    @field_validator("delivery_classes")
    @classmethod
    def _known_classes(cls, value: str) -> str:
        named = [c.strip() for c in value.split(",") if c.strip()]
        if not named or not set(named) <= set(DELIVERY_CLASSES):
            raise ValueError(f"delivery_classes must name {' and/or '.join(DELIVERY_CLASSES)}, "
                             f"not {value!r}")
        return value

    @property
    def data_dir(self) -> Path:
        return Path(self.stack_dir) / "data"

    @property
    def segments_path(self) -> Path:
        return Path(self.segments_dir) if self.segments_dir else self.data_dir / "segments"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis_host}:{self.redis_port}/0"

    def topics(self) -> dict[str, str]:
        """Every contract topic, by role."""
        return {f.name[len("topic_"):]: getattr(self, f.name)
                for f in dataclasses.fields(self) if f.name.startswith("topic_")}

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes``, checked as the constructor checks them."""
        return dataclasses.replace(self, **changes)


@functools.cache
def _sources() -> tuple[type, type, type]:
    """pydantic-settings' model of Settings (its fields, the HERALD_ prefix) and the env and
    TOML sources. Built at the first load: the job's operators only unpickle Settings, and
    pydantic-settings (asyncio and all) would double the import time of this module."""
    from pydantic import create_model
    from pydantic_settings import (BaseSettings, EnvSettingsSource, SettingsConfigDict,
                                   TomlConfigSettingsSource)

    class Sources(BaseSettings):
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    hints = typing.get_type_hints(Settings)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(Settings)}
    return create_model("HeraldSettings", __base__=Sources, **fields), EnvSettingsSource, \
        TomlConfigSettingsSource


def _read_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``HERALD_<NAME>`` variables of ``env`` by setting name, as pydantic-settings reads
    os.environ (names case-insensitive)."""
    model, env_source, _ = _sources()
    source = env_source(model)
    source.env_vars = {k.lower(): v for k, v in env.items()}
    return source()


def _read_file(path: str) -> dict[str, Any]:
    if not Path(path).is_file():  # pydantic-settings skips a missing file; a named one must be
        raise SettingsError(f"{CONFIG_VAR}={path!r}: no such file")
    model, _, toml_source = _sources()
    return toml_source(model, toml_file=path).toml_data


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``HERALD_<NAME>`` env vars and the optional ``HERALD_CONFIG`` TOML file."""
    env = os.environ if env is None else env
    path = env.get(CONFIG_VAR)
    layers = {"file": _read_file(path) if path else {}, "env": _read_env(env),
              "argument": overrides}
    try:
        return Settings(**{k: v for values in layers.values() for k, v in values.items()})
    except ValidationError as exc:
        raise SettingsError(_explain(exc, layers, path)) from None


def _explain(exc: ValidationError, layers: Mapping[str, Mapping[str, Any]],
             path: str | None) -> str:
    """One line per bad value, named as the user wrote it; a secret's value is never shown."""
    secret = {name for name, hint in typing.get_type_hints(Settings).items() if hint is SecretStr}
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        where = next((w for w in ("argument", "env", "file") if name in layers[w]), "")
        shown = {"argument": f"argument {name}", "env": f"{ENV_PREFIX}{name.upper()}",
                 "file": f"{name} in {path}"}.get(where, name)
        if error["type"] == "unexpected_keyword_argument":
            problems.append(f"unknown setting {shown}")
            continue
        value = "***" if name in secret else repr(layers[where][name]) if where else ""
        problems.append(f"{shown}={value}: {error['msg']}")
    return "invalid settings: " + "; ".join(problems)


def settings_env(settings: Settings) -> dict[str, str]:
    """``HERALD_*`` variables that rebuild ``settings`` in a child process (jobs, mocks)."""
    values = ((f.name, getattr(settings, f.name)) for f in dataclasses.fields(settings))
    return {f"{ENV_PREFIX}{name.upper()}": str(value.get_secret_value()
                                               if isinstance(value, SecretStr) else value)
            for name, value in values}
