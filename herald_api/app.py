"""The HTTP API of the contract: validate, enqueue on Kafka with ``acks=all``, answer at once.

Handlers are thin: a body is validated by its model (``herald_api.schemas``, which the OpenAPI
document is generated from), then read by the engine-free core (``herald.models``,
``herald.campaigns``, ``herald_api.records``), which the Kafka path uses too and which decides
last; it is stored through ``herald_api.store`` and produced through ``herald_api.producer``.
Every non-success answer has the contract's shape ``{"error": {"code", "message", "field"}}``;
bad input never gets a 5xx.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from typing import Any, Awaitable, Callable, Mapping

import orjson
import pyarrow as pa
from aiohttp import web

from herald import states
from herald.campaigns import (Campaign, CancelCampaign, campaign_from_dict,
                              check_campaign_fields, check_campaign_id, check_segment_name)
from herald.templates import template_from_dict
from herald.errors import ValidationError
from herald.models import (TENANT_RULE, Notification, check_notification_fields,
                           check_tenant_id, notification_from_dict)
from herald.settings import Settings
from herald_api import schemas
from herald_api.errors import ApiError, Unavailable
from herald_api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from herald_api.metrics import ApiMetrics
from herald_api.openapi import build_openapi
from herald_api.producer import Producer
from herald_api.records import (check_user_id, read_segment_json, segment_from_dict,
                                user_from_dict)
from herald_api.store import (AuditStore, IdempotencyStore, SegmentStore, TemplateStore,
                              UserStore)

log = logging.getLogger("herald_api")

IDEMPOTENCY_KEY = re.compile(schemas.IDEMPOTENCY_KEY_PATTERN)
JSON_TYPES = frozenset({"application/json"})

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", ApiMetrics)
KEYS = web.AppKey("api_keys", dict)
CLOCK = web.AppKey("clock", object)
PRODUCER = web.AppKey("producer", Producer)
REDIS = web.AppKey("redis", object)
IDEM = web.AppKey("idempotency", IdempotencyStore)
AUDIT = web.AppKey("audit", AuditStore)
USERS = web.AppKey("users", UserStore)
SEGMENTS = web.AppKey("segments", SegmentStore)
TEMPLATES = web.AppKey("templates", TemplateStore)

ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "body_too_large",
               415: "unsupported_media_type", 422: "invalid", 429: "too_many_requests",
               503: "unavailable"}


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_api_keys(spec: str) -> dict[bytes, str]:
    """``"key1:acme,key2:globex"`` → {sha256(key): tenant}. Keys are compared by digest."""
    table: dict[bytes, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        key, sep, tenant = item.rpartition(":")
        try:
            valid = bool(sep and key) and check_tenant_id(tenant) == tenant
        except ValidationError:
            valid = False
        if not valid:
            raise ValueError("api_keys: each entry must be '<key>:<tenant>' with a tenant of "
                             f"{TENANT_RULE} (the key itself is not shown)")
        table[hashlib.sha256(key.encode()).digest()] = tenant
    return table


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def error_response(exc: ApiError) -> web.Response:
    return json_response(exc.body(), exc.status, exc.headers)


# ---------------------------------------------------------------- request plumbing

def authenticate(request: web.Request) -> str:
    """The tenant the Bearer key acts for, or 401."""
    challenge = {"WWW-Authenticate": 'Bearer realm="herald"'}
    header = request.headers.get("Authorization")
    if not header:
        raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <api key>' header",
                       "Authorization", challenge)
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer <api key>'",
                       "Authorization", challenge)
    tenant = request.app[KEYS].get(hashlib.sha256(key.strip().encode()).digest())
    if tenant is None:
        raise ApiError(401, "unauthorized", "unknown API key", "Authorization", challenge)
    return tenant


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body: 415 for another type than UTF-8 JSON, 413 past ``limit``, 400 if empty."""
    if request.content_type not in JSON_TYPES:
        got = request.headers.get("Content-Type") or "none"
        raise ApiError(415, "unsupported_media_type",
                       f"the body must be application/json, got {got}", "Content-Type")
    charset = request.charset
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        raise ApiError(415, "unsupported_media_type",
                       f"the body must be UTF-8 JSON, got charset {charset}", "Content-Type")
    too_large = ApiError(413, "body_too_large",
                         f"the body is larger than the limit of {limit} bytes", None)
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks, size = [], 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "malformed_json", "the body is empty; expected a JSON object", None)
    return raw


def decode_object(raw: bytes) -> dict:
    """The body as one JSON object: 400 if malformed, 422 if not an object."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"malformed JSON: {exc}", None) from None
    if not isinstance(obj, dict):
        raise ApiError(422, "not_an_object", f"expected a JSON object, got {_json_type(obj)}",
                       None)
    return obj


async def read_object(request: web.Request, limit: int) -> dict:
    return decode_object(await read_body(request, limit))


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def check_tenant(obj: Mapping, tenant: str) -> None:
    """A body may only speak for the key's own tenant."""
    claimed = obj.get("tenant_id")
    if isinstance(claimed, str) and claimed != tenant:
        raise ApiError(403, "forbidden",
                       f"this API key acts for tenant {tenant!r}, not {claimed!r}", "tenant_id")


def idempotency_key(request: web.Request) -> str | None:
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(value):
        raise ApiError(400, "invalid_header",
                       "'Idempotency-Key' must be 1-255 visible ASCII characters",
                       "Idempotency-Key")
    return value


def validated(parse: Callable[[], Any]) -> Any:
    try:
        return parse()
    except ValidationError as exc:
        raise ApiError.from_validation(exc) from None
    except (TypeError, ValueError) as exc:  # a reader met a JSON type it did not expect
        log.warning("validation raised %s instead of ValidationError: %s", type(exc).__name__, exc)
        raise ApiError(422, "invalid", "a field has a JSON type the contract does not allow",
                       None) from None


def checked(model: type[schemas.BaseModel], obj: Mapping, read: Callable[[], Any]) -> Any:
    """``read()``, the domain reader, once ``obj`` passes ``model`` (the document's schema).
    When the model refuses it, the reader's own refusal is answered if it has one (its message
    is the one a dead letter of the same record carries), else the model's."""
    try:
        schemas.check(model, obj)
    except ValidationError as refused:
        try:
            read()
        except ValidationError as exc:
            raise ApiError.from_validation(exc) from None
        except Exception:  # noqa: BLE001 - a reader need not cope with what the model refused
            pass
        raise ApiError.from_validation(refused) from None
    return validated(read)


def path_id(request: web.Request, name: str, check: Callable[[Any, str], str]) -> str:
    return validated(lambda: check(request.match_info[name], name))


async def once(request: web.Request, keys: list[str], route: str,
               action: Callable[[], Awaitable[tuple[int, dict]]]) -> web.Response:
    """Run ``action`` the first time any of ``keys`` is seen; later, answer what it answered."""
    app = request.app
    ttl = app[SETTINGS].api_idempotency_ttl_s
    claim = await app[IDEM].claim(keys, ttl)
    if claim.answer is not None:
        app[METRICS].idempotent_replays.labels(route).inc()
        return json_response(claim.answer["body"], claim.answer["status"],
                             {"Idempotent-Replayed": "true"})
    if claim.in_progress:
        raise ApiError(409, "in_progress", "a request with the same idempotency key or id is "
                       "still being processed; retry shortly", None, {"Retry-After": "1"})
    try:
        status, body = await action()
    except BaseException:
        await app[IDEM].release(keys, claim.token)
        raise
    await app[IDEM].remember(keys, status, body, ttl)
    return json_response(body, status)


def _route(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


# ---------------------------------------------------------------- middlewares

@web.middleware
async def metrics_middleware(request: web.Request, handler) -> web.StreamResponse:
    began = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        route = _route(request)
        metrics = request.app[METRICS]
        metrics.requests.labels(request.method, route, str(status)).inc()
        metrics.request_seconds.labels(route).observe(time.perf_counter() - began)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except ValidationError as exc:
        return error_response(ApiError.from_validation(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items()
                   if k in ("Allow", "Retry-After", "WWW-Authenticate")}
        message = {404: f"no such resource: {request.method} {request.path}",
                   405: f"{request.method} is not allowed on {request.path}"}.get(
            exc.status, exc.reason)
        code = ERROR_CODES.get(exc.status, "error")
        return error_response(ApiError(exc.status, code, message, None, headers))
    except Exception as exc:
        if _is_unavailable(exc):
            return error_response(Unavailable(f"a backing store did not answer: "
                                              f"{type(exc).__name__}"))
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError(500, "internal", "internal error; it is logged", None))


def _is_unavailable(exc: Exception) -> bool:
    import redis.exceptions
    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                            ConnectionError, TimeoutError))


# ---------------------------------------------------------------- handlers

async def post_notification(request: web.Request) -> web.Response:
    app = request.app
    settings, now = app[SETTINGS], app[CLOCK]()
    tenant = authenticate(request)
    obj = await read_object(request, settings.api_max_body_bytes)
    check_tenant(obj, tenant)
    header_key = idempotency_key(request)

    def read() -> Notification:
        check_notification_fields(obj)
        return notification_from_dict(obj, default_ttl_ms=settings.critical_default_ttl_ms)

    n = checked(schemas.Notification, obj, read)
    if n.is_expired(now):
        raise ApiError(422, "expired", f"notification already expired: 'expires_at' is "
                       f"{n.expires_at}, now is {now} (epoch ms)", "expires_at")
    topic, role = ((settings.topic_critical, "critical") if n.priority == states.CRITICAL
                   else (settings.topic_promo, "promo"))

    async def enqueue() -> tuple[int, dict]:
        await app[PRODUCER].send(role, topic, n.user_id, n.to_json())
        await app[AUDIT].mark_enqueued(n, now)
        return 202, {"id": n.id}

    keys = [app[IDEM].key(tenant, "ntf", n.id)]
    if header_key is not None:
        keys.insert(0, app[IDEM].key(tenant, "hdr:notifications", header_key))
    return await once(request, keys, "/v1/notifications", enqueue)


async def post_campaign(request: web.Request) -> web.Response:
    app = request.app
    settings, now = app[SETTINGS], app[CLOCK]()
    tenant = authenticate(request)
    obj = await read_object(request, settings.api_max_body_bytes)
    check_tenant(obj, tenant)
    header_key = idempotency_key(request)

    def read() -> Campaign:
        check_campaign_fields(obj)
        return campaign_from_dict(obj, now_ms=now, max_id_length=settings.max_id_length)

    c = checked(schemas.Campaign, obj, read)

    async def enqueue() -> tuple[int, dict]:
        await app[PRODUCER].send("campaigns", settings.topic_campaigns, c.campaign_id,
                                 c.to_json())
        await app[AUDIT].campaign_accepted(c, now)
        return 202, {"campaign_id": c.campaign_id}

    keys = [app[IDEM].key(tenant, "cmp", c.campaign_id)]
    if header_key is not None:
        keys.insert(0, app[IDEM].key(tenant, "hdr:campaigns", header_key))
    return await once(request, keys, "/v1/campaigns", enqueue)


async def delete_campaign(request: web.Request) -> web.Response:
    app = request.app
    settings, now = app[SETTINGS], app[CLOCK]()
    tenant = authenticate(request)
    campaign_id = path_id(request, "campaign_id", check_campaign_id)
    header_key = idempotency_key(request)
    if not await app[AUDIT].campaign_exists(tenant, campaign_id):
        raise ApiError(404, "not_found", f"no campaign {campaign_id!r} for this tenant",
                       "campaign_id")
    cancel = CancelCampaign(campaign_id=campaign_id, tenant_id=tenant, at=now)

    async def enqueue() -> tuple[int, dict]:
        await app[PRODUCER].send("control", settings.topic_control, cancel.kind, cancel.to_json())
        await app[AUDIT].campaign_cancel_requested(cancel, settings.campaign_cancel_retention_ms)
        return 202, {"campaign_id": campaign_id, "cancel_requested_at": now}

    if header_key is None:
        status, body = await enqueue()
        return json_response(body, status)
    keys = [app[IDEM].key(tenant, "hdr:cancel", header_key)]
    return await once(request, keys, "/v1/campaigns/{campaign_id}", enqueue)


async def get_notification(request: web.Request) -> web.Response:
    tenant = authenticate(request)
    notification_id = path_id(request, "id", check_user_id)
    found = await request.app[AUDIT].notification(tenant, notification_id)
    if found is None:
        raise ApiError(404, "not_found", f"no notification {notification_id!r} for this tenant",
                       "id")
    return json_response(found)


async def get_campaign(request: web.Request) -> web.Response:
    tenant = authenticate(request)
    campaign_id = path_id(request, "campaign_id", check_campaign_id)
    found = await request.app[AUDIT].campaign(tenant, campaign_id)
    if found is None:
        raise ApiError(404, "not_found", f"no campaign {campaign_id!r} for this tenant",
                       "campaign_id")
    return json_response(found)


async def put_user(request: web.Request) -> web.Response:
    app = request.app
    tenant = authenticate(request)
    user_id = path_id(request, "user_id", check_user_id)
    obj = await read_object(request, app[SETTINGS].api_max_body_bytes)
    check_tenant(obj, tenant)
    user = checked(schemas.User, obj, lambda: user_from_dict(obj, user_id))
    now = app[CLOCK]()
    await app[USERS].put(tenant, user, now)
    return json_response({**user.to_dict(), "tenant_id": tenant, "updated_at": now})


async def get_user(request: web.Request) -> web.Response:
    tenant = authenticate(request)
    user_id = path_id(request, "user_id", check_user_id)
    found = await request.app[USERS].get(tenant, user_id)
    if found is None:
        raise ApiError(404, "not_found", f"no user {user_id!r} for this tenant", "user_id")
    user, updated_at = found
    return json_response({**user.to_dict(), "tenant_id": tenant, "updated_at": updated_at})


async def put_segment(request: web.Request) -> web.Response:
    """A segment may hold millions of ids: decoding and checking them runs in a worker thread,
    in Arrow where it can (which releases the GIL), so the loop keeps answering meanwhile."""
    app = request.app
    tenant = authenticate(request)
    name = request.match_info["name"]
    raw = await read_body(request, app[SETTINGS].api_max_segment_bytes)
    obj = await asyncio.to_thread(read_segment_json, raw)
    if obj is None:  # not a body Arrow takes as it is: the strict reader says why
        obj = await asyncio.to_thread(decode_object, raw)
    check_tenant(obj, tenant)
    # Arrow's explicit schema typed the ids as strings already; check_ids checks each one
    ids = obj.get("user_ids")
    shape = {**obj, "user_ids": []} if isinstance(ids, pa.Array) else obj
    name, user_ids = await asyncio.to_thread(checked, schemas.Segment, shape,
                                             lambda: segment_from_dict(obj, name))
    now = app[CLOCK]()
    count = await app[SEGMENTS].put(tenant, name, user_ids, now,
                                    checked=isinstance(user_ids, pa.Array))
    return json_response({"name": name, "tenant_id": tenant, "count": count, "updated_at": now})


async def get_segment(request: web.Request) -> web.Response:
    tenant = authenticate(request)
    name = request.match_info["name"]
    name = validated(lambda: check_segment_name(name, "name"))
    info = await request.app[SEGMENTS].info(tenant, name)
    if info is None:
        raise ApiError(404, "not_found", f"no segment {name!r} for this tenant", "name")
    return json_response({"name": name, "tenant_id": tenant, **info})


async def put_template(request: web.Request) -> web.Response:
    app = request.app
    tenant = authenticate(request)
    name = request.match_info["name"]
    obj = await read_object(request, app[SETTINGS].api_max_body_bytes)
    check_tenant(obj, tenant)
    template = checked(schemas.Template, obj, lambda: template_from_dict(obj, name))
    now = app[CLOCK]()
    await app[TEMPLATES].put(tenant, template, now)
    return json_response({**template.source, "tenant_id": tenant, "updated_at": now})


async def get_template(request: web.Request) -> web.Response:
    tenant = authenticate(request)
    name = request.match_info["name"]
    validated(lambda: check_segment_name(name, "name"))  # the same naming rule
    found = await request.app[TEMPLATES].get(tenant, name)
    if found is None:
        raise ApiError(404, "not_found", f"no template {name!r} for this tenant", "name")
    return json_response({**found, "tenant_id": tenant})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(),
                        headers={"Content-Type": METRICS_CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return json_response(build_openapi(request.app[SETTINGS]))


# ---------------------------------------------------------------- the app

def create_app(settings: Settings, *, redis=None, producer: Producer | None = None,
               clock: Callable[[], int] = wall_clock_ms) -> web.Application:
    """The API. Redis and the producer are made at startup unless given (tests may share them)."""
    limit = max(settings.api_max_body_bytes, settings.api_max_segment_bytes)
    app = web.Application(middlewares=[metrics_middleware, error_middleware],
                          client_max_size=limit + 1)
    app[SETTINGS] = settings
    app[METRICS] = ApiMetrics()
    app[KEYS] = parse_api_keys(settings.api_keys.get_secret_value())
    app[CLOCK] = clock
    if not app[KEYS]:
        log.warning("no API keys configured (HERALD_API_KEYS): every /v1 request gets 401")

    async def startup(app: web.Application) -> None:
        if redis is None:
            from herald.redis_conn import async_redis_client  # one server or Redis Cluster
            app[REDIS] = async_redis_client(settings, socket_timeout=5, socket_connect_timeout=5)
        else:
            app[REDIS] = redis
        app[IDEM] = IdempotencyStore(app[REDIS])
        app[AUDIT] = AuditStore(app[REDIS], settings.audit_retention_s)
        app[USERS] = UserStore(app[REDIS])
        app[SEGMENTS] = SegmentStore(app[REDIS])
        app[TEMPLATES] = TemplateStore(app[REDIS])
        app[PRODUCER] = producer or Producer(settings, app[METRICS])
        if producer is None:
            await app[PRODUCER].start()

    async def cleanup(app: web.Application) -> None:
        if producer is None and PRODUCER in app:
            await app[PRODUCER].close()
        if redis is None and REDIS in app:
            await app[REDIS].aclose()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.router.add_post("/v1/notifications", post_notification)
    app.router.add_get("/v1/notifications/{id}", get_notification)
    app.router.add_post("/v1/campaigns", post_campaign)
    app.router.add_get("/v1/campaigns/{campaign_id}", get_campaign)
    app.router.add_delete("/v1/campaigns/{campaign_id}", delete_campaign)
    app.router.add_put("/v1/users/{user_id}", put_user)
    app.router.add_get("/v1/users/{user_id}", get_user)
    app.router.add_put("/v1/segments/{name}", put_segment)
    app.router.add_get("/v1/segments/{name}", get_segment)
    app.router.add_put("/v1/templates/{name}", put_template)
    app.router.add_get("/v1/templates/{name}", get_template)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    from herald_api import receipts, webhooks  # receipts: no Bearer key, signed instead
    receipts.add_routes(app, settings, clock)
    webhooks.add_routes(app)
    return app
