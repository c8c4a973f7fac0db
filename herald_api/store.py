"""What the API keeps in Redis, behind small classes so a backend can be swapped (segments may
move to Parquet) without touching the handlers.

Key layout (``{tenant}`` is a configured tenant name: no ``:`` in it):

- ``herald:user:{tenant}:{user_id}`` (hash): the flat user record; the layout is
  ``herald.users``'s, shared with the CLI and the delivery path.
- ``herald:segment:{tenant}:{name}`` (list): the segment's user ids, in the order given;
  ``herald:segment:{tenant}:{name}:meta`` (hash): ``count``, ``updated_at``. The same ids are
  also written as a Parquet version (``herald.segments``): that file is what the expansion
  reads.
- ``herald:idem:{tenant}:{scope}:{key}`` (string): the first answer ``{"status", "body"}``, or
  a pending marker while the first request runs. Scopes: ``ntf`` (notification id), ``cmp``
  (campaign id), ``hdr:{route}`` (an ``Idempotency-Key`` header).
- ``herald:audit:{tenant}:{id}`` (hash): the latest ``state``, its ``at`` and ``rank``; ``id``,
  ``tenant_id``, ``user_id``, ``priority``, ``campaign_id``; ``enqueued_at`` (set by the API);
  ``counted:{state}`` and ``counted:*`` markers so campaign counts move once per (id, state);
  ``final``: the final state a campaign's recipient is counted under, if any.
- ``herald:audit:{tenant}:{id}:attempts`` (hash): one field per distinct Status event,
  ``{at}|{attempt}|{state}|{channel}|{provider}``, whose value is the event's JSON.
- ``herald:template:{tenant}:{name}`` (string): a template's JSON (``herald.templates``).
- ``herald:cancelled:{tenant}:{campaign_id}`` (string): the campaign is cancelled, for the
  delivery path (``herald.campaigns.cancelled_key``); written on ``DELETE``.
- ``herald:campaign:{tenant}:{campaign_id}`` (hash): what the API accepted: ``accepted_at``,
  ``created_at``, ``expires_at``, ``send_at``, ``audience``, ``cancel_requested_at``.
- ``herald:campaign:{tenant}:{campaign_id}:counts`` (hash): per state, the distinct recipients
  that reached it; ``recipients`` (distinct ids seen); ``final:{state}``, the recipients whose
  latest state is that final state (each counted once); from campaign-level events (a Status
  event whose ``id`` is the campaign id): ``campaign_state``/``campaign_state_at``,
  ``expansion`` (its phase), ``expansion_done``, ``expanded`` and ``total`` (the largest
  reported). ``herald.campaigns.campaign_status`` turns these into the state and progress.

Audit keys expire ``audit_retention_s`` after their last write; idempotency keys after
``api_idempotency_ttl_s``. Users and segments do not expire.

On Redis Cluster (``herald.redis_conn``; docs/decisions/020-redis-cluster.md) the keys one
call uses together share a hash tag, and only there (one server keeps the names above): the
idempotency keys a request claims, ``herald:idem:{<tenant>}:…``; a notification's audit hash
and attempts and, for a campaign's recipient, its campaign's hashes,
``herald:audit:{<tenant>:<group>}:<id>`` and ``herald:campaign:{<tenant>:<campaign_id>}``
(``<group>`` is the id up to its first ``:``, which is the campaign id for a recipient,
``{campaign_id}:{user_id}``). MULTI/EXEC is not used there (redis-py's cluster pipelines have
none): the steps go as a plain pipeline.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import orjson
import pyarrow as pa

from herald import states
from herald.campaigns import (RECIPIENT_FINAL, Campaign, CancelCampaign, campaign_status,
                              phase_of, queue_cancelled)
from herald.models import Notification
from herald.redis_conn import beside, is_cluster
from herald.segments import SegmentFiles
from herald.templates import Template, template_json, template_key
from herald.users import UserRecord, queue_put, user_key  # noqa: F401 (user_key: re-exported)

PREFIX = "herald"
PENDING = "pending:"
SEGMENT_WRITE_BATCH = 10_000
# A notification's state while the API has enqueued it and no status event is stored yet.
ENQUEUED = "enqueued"

# Which state an attempt list ends in, when two events share a timestamp: the more final one.
# ``duplicate`` says a later submission was dropped; it never replaces a known state.
STATE_RANK = {states.ACCEPTED: 0, states.RETRYING: 1, states.FALLBACK: 1,
              states.DELIVERED: 2, states.EXPIRED: 2, states.CANCELLED: 2, states.OPTED_OUT: 2,
              states.FAILED: 2, states.DUPLICATE: -1,
              # a receipt comes after the delivery it reports on; a dead contact is a side note
              states.DELIVERED_TO_HANDSET: 3, states.BOUNCED: 3, states.TOKEN_INVALID: -1}
# States that never move a campaign recipient's final count (it stays under `delivered`)
KEEPS_FINAL = states.RECEIPT_STATES | {states.TOKEN_INVALID}


# ---------------------------------------------------------------- keys

def segment_key(tenant: str, name: str) -> str:
    return f"{PREFIX}:segment:{tenant}:{name}"


def segment_meta_key(tenant: str, name: str) -> str:
    return f"{PREFIX}:segment:{tenant}:{name}:meta"


def idem_key(tenant: str, scope: str, key: str, tagged: bool = False) -> str:
    """``tagged`` (Redis Cluster): the tenant is the hash tag, so a request's keys share a slot."""
    return f"{PREFIX}:idem:{{{tenant}}}:{scope}:{key}" if tagged else \
        f"{PREFIX}:idem:{tenant}:{scope}:{key}"


def _audit_tag(tenant: str, notification_id: str) -> str:
    """A notification's hash tag on Redis Cluster: its tenant and its id up to the first ``:``
    (a campaign's recipients and the campaign's own events share their campaign's)."""
    return f"{{{tenant}:{notification_id.split(':', 1)[0]}}}"


def audit_key(tenant: str, notification_id: str, tagged: bool = False) -> str:
    if tagged:
        return f"{PREFIX}:audit:{_audit_tag(tenant, notification_id)}:{notification_id}"
    return f"{PREFIX}:audit:{tenant}:{notification_id}"


def attempts_key(tenant: str, notification_id: str, tagged: bool = False) -> str:
    return f"{audit_key(tenant, notification_id, tagged)}:attempts"


def campaign_key(tenant: str, campaign_id: str, tagged: bool = False) -> str:
    if tagged:
        return f"{PREFIX}:campaign:{{{tenant}:{campaign_id}}}"
    return f"{PREFIX}:campaign:{tenant}:{campaign_id}"


def campaign_counts_key(tenant: str, campaign_id: str, tagged: bool = False) -> str:
    return f"{campaign_key(tenant, campaign_id, tagged)}:counts"


def pipeline(redis, transaction: bool):
    """A pipeline; a transaction on one server, a plain pipeline on Redis Cluster."""
    return redis.pipeline(transaction=transaction and not is_cluster(redis))


def attempt_field(event: dict) -> str:
    """The dedup identity of one Status event: a replay of it lands on the same field."""
    return "|".join(str(event.get(k) if event.get(k) is not None else "")
                    for k in ("at", "attempt", "state", "channel", "provider"))


# ---------------------------------------------------------------- Lua

# Claim every key, or return the first one already set: one round trip, atomic.
CLAIM_LUA = """
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v then return {i, v} end
end
for _, k in ipairs(KEYS) do redis.call('SET', k, ARGV[1], 'PX', ARGV[2]) end
return {0, ''}
"""

# Redis Cluster: a segment's new list (KEYS[1], the staging key) in place of the old (KEYS[2]);
# ARGV[1] '0': the segment is empty, drop it.
SEGMENT_SWAP_LUA = """
if ARGV[1] == '1' then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('PERSIST', KEYS[2])
else
  redis.call('DEL', KEYS[2])
end
return 1
"""

# Drop our pending markers (and only ours) after a failed first attempt.
RELEASE_LUA = """
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('DEL', k) end
end
return 0
"""

# One Status event into the audit store; idempotent: a replayed event finds its field taken and
# changes nothing but the expiry. KEYS: audit hash, attempts hash, campaign counts (or a dummy).
# ARGV: field, event JSON, at, state, rank, ttl ms, id, tenant, user, priority, campaign id ('' if
# none), '1' if the event is about the campaign itself, '1' if state is a recipient's final
# state ('2': a receipt, which leaves the recipient's final count as it is); for campaign-level events: expanded, total, expansion phase ('' when not given).
# A recipient counts under ``final:{state}`` for its latest state while that state is final
# (``final`` in its audit hash says which), so each recipient is counted once.
AUDIT_WRITE_LUA = """
local new = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
if new == 1 then
  local at, rank = tonumber(ARGV[3]), tonumber(ARGV[5])
  local cur = redis.call('HMGET', KEYS[1], 'at', 'rank', 'state')
  local take
  if not cur[3] then take = true
  elseif rank < 0 then take = false
  else
    local cat, crank = tonumber(cur[1]), tonumber(cur[2])
    take = at > cat or (at == cat and rank >= crank)
  end
  if take then redis.call('HSET', KEYS[1], 'state', ARGV[4], 'at', ARGV[3], 'rank', ARGV[5]) end
  redis.call('HSET', KEYS[1], 'id', ARGV[7], 'tenant_id', ARGV[8], 'user_id', ARGV[9],
             'priority', ARGV[10])
  if ARGV[11] ~= '' then
    redis.call('HSET', KEYS[1], 'campaign_id', ARGV[11])
    if ARGV[12] == '1' then
      if take then
        redis.call('HSET', KEYS[3], 'campaign_state', ARGV[4], 'campaign_state_at', ARGV[3])
        if ARGV[16] ~= '' then redis.call('HSET', KEYS[3], 'expansion', ARGV[16]) end
      end
      if ARGV[16] == 'done' then redis.call('HSET', KEYS[3], 'expansion_done', '1') end
      for i, name in ipairs({'expanded', 'total'}) do
        local n = tonumber(ARGV[13 + i])
        if n and n > (tonumber(redis.call('HGET', KEYS[3], name)) or 0) then
          redis.call('HSET', KEYS[3], name, n)
        end
      end
    else
      if redis.call('HSETNX', KEYS[1], 'counted:' .. ARGV[4], '1') == 1 then
        redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
      end
      if redis.call('HSETNX', KEYS[1], 'counted:*', '1') == 1 then
        redis.call('HINCRBY', KEYS[3], 'recipients', 1)
      end
      if take and ARGV[13] ~= '2' then
        local was = redis.call('HGET', KEYS[1], 'final') or ''
        local now = ''
        if ARGV[13] == '1' then now = ARGV[4] end
        if was ~= now then
          if was ~= '' then redis.call('HINCRBY', KEYS[3], 'final:' .. was, -1) end
          if now ~= '' then
            redis.call('HINCRBY', KEYS[3], 'final:' .. now, 1)
            redis.call('HSET', KEYS[1], 'final', now)
          else
            redis.call('HDEL', KEYS[1], 'final')
          end
        end
      end
    end
    redis.call('PEXPIRE', KEYS[3], ARGV[6])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return new
"""


def audit_write_args(event: dict, retention_ms: int,
                     tagged: bool = False) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``AUDIT_WRITE_LUA`` for one (already validated) Status event;
    ``tagged``: the Redis Cluster names, all three keys in one slot."""
    tenant, nid = event["tenant_id"], event["id"]
    campaign_id = event.get("campaign_id") or ""
    keys = [audit_key(tenant, nid, tagged), attempts_key(tenant, nid, tagged),
            campaign_counts_key(tenant, campaign_id, tagged) if campaign_id
            else audit_key(tenant, nid, tagged)]
    about_campaign = bool(campaign_id) and nid == campaign_id
    expansion = [_count(event.get("expanded")), _count(event.get("total")),
                 phase_of(event) or ""] if about_campaign else ["", "", ""]
    args = [attempt_field(event), orjson.dumps(event), event["at"], event["state"],
            STATE_RANK.get(event["state"], 0), retention_ms, nid, tenant,
            event.get("user_id") or "", event.get("priority") or "", campaign_id,
            "1" if about_campaign else "0",
            "1" if event["state"] in RECIPIENT_FINAL else
            "2" if event["state"] in KEEPS_FINAL else "0", *expansion]
    return keys, args


def _count(value: Any) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else ""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _hash(raw: dict) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


# ---------------------------------------------------------------- users

class UserStore:
    """User records as Redis hashes: the delivery path reads them in batches (HMGET)."""

    def __init__(self, redis):
        self.redis = redis

    async def put(self, tenant: str, user: UserRecord, now_ms: int) -> None:
        async with pipeline(self.redis, True) as pipe:  # replace, never merge
            queue_put(pipe, tenant, user, now_ms)
            await pipe.execute()

    async def get(self, tenant: str, user_id: str) -> tuple[UserRecord, int] | None:
        raw = _hash(await self.redis.hgetall(user_key(tenant, user_id)))
        if not raw:
            return None
        return UserRecord.from_hash(raw), int(raw.get("updated_at", 0))


# ---------------------------------------------------------------- templates

class TemplateStore:
    """Templates as one JSON string each (``herald.templates``): the call stage MGETs them."""

    def __init__(self, redis):
        self.redis = redis

    async def put(self, tenant: str, template: Template, now_ms: int) -> None:
        await self.redis.set(template_key(tenant, template.name), template_json(template, now_ms))

    async def get(self, tenant: str, name: str) -> dict | None:
        raw = await self.redis.get(template_key(tenant, name))
        return orjson.loads(raw) if raw is not None else None


# ---------------------------------------------------------------- segments

class SegmentStore:
    """Segments as Redis lists, read back in batches by index (a resumable cursor), and as
    Parquet versions (``files``) for the expansion job.

    The interface (put / info / read) is what a Parquet-backed store would implement too.
    ``files`` defaults to the directory the ``HERALD_*`` settings name (``segments_dir``).
    """

    def __init__(self, redis, files: SegmentFiles | None = None):
        self.redis = redis
        if files is None:
            from herald.settings import load_settings
            files = SegmentFiles.from_settings(load_settings())
        self.files = files

    async def put(self, tenant: str, name: str, user_ids: Sequence[str] | pa.Array,
                  now_ms: int, *, checked: bool = False) -> int:
        """Replace the segment atomically: readers see the old list or the new one, never a mix.
        ``checked``: the ids passed ``herald.segments.check_ids`` already. An Arrow array is
        turned into strings one write batch at a time, between awaits."""
        # the Parquet version first: ids it refuses change nothing
        await asyncio.to_thread(self.files.write, tenant, name, user_ids, now_ms,
                                checked=checked)
        key, meta = segment_key(tenant, name), segment_meta_key(tenant, name)
        # in the key's slot (Redis Cluster), so RENAME can take it there
        staging = beside(key, f":staging:{uuid.uuid4().hex}")
        try:
            for start in range(0, len(user_ids), SEGMENT_WRITE_BATCH):
                batch = user_ids[start:start + SEGMENT_WRITE_BATCH]
                if isinstance(batch, pa.Array):  # via numpy: 7x faster than to_pylist
                    batch = batch.to_numpy(zero_copy_only=False).tolist()
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(staging, *batch)
                    pipe.expire(staging, 3600)  # a crashed upload leaves nothing behind
                    await pipe.execute()
            if is_cluster(self.redis):  # the swap in one script (its keys share a slot)
                await self.redis.eval(SEGMENT_SWAP_LUA, 2, staging, key,
                                      "1" if user_ids else "0")
                await self.redis.hset(meta, mapping={"count": len(user_ids),
                                                     "updated_at": now_ms})
            else:
                async with self.redis.pipeline(transaction=True) as pipe:
                    if user_ids:
                        pipe.rename(staging, key)
                        pipe.persist(key)
                    else:
                        pipe.delete(key)
                    pipe.hset(meta, mapping={"count": len(user_ids), "updated_at": now_ms})
                    await pipe.execute()
        finally:
            await self.redis.delete(staging)
        return len(user_ids)

    async def info(self, tenant: str, name: str) -> dict | None:
        raw = _hash(await self.redis.hgetall(segment_meta_key(tenant, name)))
        if not raw:
            return None
        return {"count": int(raw["count"]), "updated_at": int(raw["updated_at"])}

    async def read(self, tenant: str, name: str, start: int, count: int) -> list[str]:
        ids = await self.redis.lrange(segment_key(tenant, name), start, start + count - 1)
        return [_text(i) for i in ids]


# ---------------------------------------------------------------- idempotency

@dataclass(frozen=True, slots=True)
class Claim:
    """Outcome of claiming idempotency keys: ours to run (``token``), answered, or in flight."""
    token: str | None = None
    answer: dict | None = None
    in_progress: bool = False


class IdempotencyStore:
    """First answer per key (SET NX with a TTL): a repeat gets that answer and enqueues nothing."""

    def __init__(self, redis):
        self.redis = redis
        self._claim = redis.register_script(CLAIM_LUA)
        self._release = redis.register_script(RELEASE_LUA)
        self.tagged = is_cluster(redis)

    def key(self, tenant: str, scope: str, key: str) -> str:
        return idem_key(tenant, scope, key, self.tagged)

    async def claim(self, keys: Sequence[str], ttl_s: int) -> Claim:
        token = PENDING + uuid.uuid4().hex
        index, value = await self._claim(keys=list(keys), args=[token, ttl_s * 1000])
        if int(index) == 0:
            return Claim(token=token)
        value = _text(value)
        if value.startswith(PENDING):
            return Claim(in_progress=True)
        return Claim(answer=orjson.loads(value))

    async def remember(self, keys: Iterable[str], status: int, body: dict, ttl_s: int) -> None:
        answer = orjson.dumps({"status": status, "body": body})
        async with pipeline(self.redis, True) as pipe:
            for key in keys:
                pipe.set(key, answer, ex=ttl_s)
            await pipe.execute()

    async def release(self, keys: Sequence[str], token: str) -> None:
        await self._release(keys=list(keys), args=[token])


# ---------------------------------------------------------------- audit and campaigns

class AuditStore:
    """Reads the audit store the status consumer writes; records what the API accepted."""

    def __init__(self, redis, retention_s: int):
        self.redis = redis
        self.retention_s = retention_s
        self.tagged = is_cluster(redis)

    async def mark_enqueued(self, n: Notification, now_ms: int) -> None:
        key = audit_key(n.tenant_id, n.id, self.tagged)
        async with pipeline(self.redis, True) as pipe:
            for name, value in (("id", n.id), ("tenant_id", n.tenant_id), ("user_id", n.user_id),
                                ("priority", n.priority), ("enqueued_at", now_ms)):
                pipe.hsetnx(key, name, value)
            if n.campaign_id:
                pipe.hsetnx(key, "campaign_id", n.campaign_id)
            pipe.expire(key, self.retention_s)
            await pipe.execute()

    async def notification(self, tenant: str, notification_id: str) -> dict | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(audit_key(tenant, notification_id, self.tagged))
            pipe.hvals(attempts_key(tenant, notification_id, self.tagged))
            meta, events = await pipe.execute()
        meta = _hash(meta)
        if not meta or meta.get("tenant_id") != tenant:
            return None
        attempts = sorted((orjson.loads(e) for e in events),
                          key=lambda e: (e.get("at", 0), STATE_RANK.get(e.get("state"), 0),
                                         e.get("attempt", 0)))
        out: dict[str, Any] = {"id": notification_id, "tenant_id": tenant,
                               "user_id": meta.get("user_id") or None,
                               "priority": meta.get("priority") or None,
                               "state": meta.get("state", ENQUEUED),
                               "updated_at": int(meta["at"]) if "at" in meta else None,
                               "enqueued_at": int(meta["enqueued_at"]) if "enqueued_at" in meta
                               else None,
                               "attempts": attempts}
        if meta.get("campaign_id"):
            out["campaign_id"] = meta["campaign_id"]
        return out

    async def campaign_accepted(self, c: Campaign, now_ms: int) -> None:
        mapping = {"accepted_at": now_ms, "created_at": c.created_at, "expires_at": c.expires_at,
                   "audience": orjson.dumps(c.audience.to_dict()) if c.audience.segment else
                   orjson.dumps({"user_ids": len(c.audience.user_ids or ())})}
        if c.send_at is not None:
            mapping["send_at"] = c.send_at
        key = campaign_key(c.tenant_id, c.campaign_id, self.tagged)
        async with pipeline(self.redis, True) as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self._campaign_ttl(c.expires_at, now_ms))
            await pipe.execute()

    async def campaign_cancel_requested(self, cancel: CancelCampaign, cancel_ttl_ms: int) -> None:
        """Note the request, and put the cancel in force for the delivery path at once (the
        ``herald:cancelled`` record the call stage checks per batch)."""
        key = campaign_key(cancel.tenant_id, cancel.campaign_id, self.tagged)
        async with pipeline(self.redis, True) as pipe:
            queue_cancelled(pipe, cancel, cancel.at, cancel_ttl_ms)
            pipe.hsetnx(key, "cancel_requested_at", cancel.at)
            pipe.expire(key, self.retention_s, gt=True)
            pipe.expire(key, self.retention_s, nx=True)
            await pipe.execute()

    async def campaign_exists(self, tenant: str, campaign_id: str) -> bool:
        """The API accepted it, or the audit store has campaign-level events for it (a campaign
        written straight to Kafka, once the expansion has seen it)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(campaign_key(tenant, campaign_id, self.tagged))
            pipe.hexists(campaign_counts_key(tenant, campaign_id, self.tagged), "campaign_state")
            accepted, seen = await pipe.execute()
        return bool(accepted) or bool(seen)

    async def campaign(self, tenant: str, campaign_id: str) -> dict | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(campaign_key(tenant, campaign_id, self.tagged))
            pipe.hgetall(campaign_counts_key(tenant, campaign_id, self.tagged))
            meta, counts = await pipe.execute()
        meta, counts = _hash(meta), _hash(counts)
        if not meta and not counts:
            return None
        state, progress = campaign_status(
            phase=counts.get("expansion") or None,
            expansion_done=counts.get("expansion_done") == "1",
            expanded=int(counts.get("expanded", 0)), recipients=int(counts.get("recipients", 0)),
            finals={s: int(counts.get(f"final:{s}", 0)) for s in RECIPIENT_FINAL},
            cancel_requested="cancel_requested_at" in meta, total=int(counts.get("total", 0)))
        by_state = {s: int(counts[s]) for s in sorted(states.STATES) if s in counts}
        out: dict[str, Any] = {"campaign_id": campaign_id, "tenant_id": tenant, "state": state,
                               "progress": progress, "states": by_state}
        for name in ("accepted_at", "created_at", "expires_at", "send_at", "cancel_requested_at"):
            if name in meta:
                out[name] = int(meta[name])
        if "audience" in meta:
            out["audience"] = orjson.loads(meta["audience"])
        return out

    def _campaign_ttl(self, expires_at: int, now_ms: int) -> int:
        """Kept for the campaign's life plus the audit retention."""
        return max(0, (expires_at - now_ms) // 1000) + self.retention_s
