"""What the call stage reads from Redis for a batch, besides its claims: the users, the named
templates and the cancelled campaigns of the batch, each key once, in the claim's own pipeline
(``SentMarkers.claim(..., lookups=...)``), so a batch still costs one round trip however many
users it holds. Never one request per message.

The users are read by one Lua call for the whole batch (an HMGET per user queued from Python
cost the stage ≈ 40 µs per notification in redis-py's command packing and reply parsing); a
user that is not in the store answers one nil instead of nine.

On Redis Cluster the keys of one batch are in many slots, so each is read by a command of its
own (HMGET, GET) in the same cluster pipeline, which sends each node its share
(docs/decisions/020-redis-cluster.md).
"""
from __future__ import annotations

import hashlib
from typing import Iterable

from herald.campaigns import cancelled_key
from herald.models import Notification
from herald.redis_conn import is_cluster, mget
from herald.templates import template_key
from herald.users import HASH_FIELDS, UserRecord, user_from_values, user_key

# ARGV: user keys → per key the HASH_FIELDS values, or false (nil) when there is no such user.
USERS_SCRIPT = """
local out = {}
for i, key in ipairs(ARGV) do
  if redis.call('EXISTS', key) == 1 then
    out[i] = redis.call('HMGET', key, %s)
  else
    out[i] = false
  end
end
return out
""" % ", ".join(f"'{f}'" for f in HASH_FIELDS)
USERS_SHA = hashlib.sha1(USERS_SCRIPT.encode()).hexdigest()


class BatchLookups:
    """Keys gathered from a batch, queued on a pipeline, answers read back by key."""

    def __init__(self):
        self.users: dict[tuple[str, str], UserRecord | None] = {}
        self.templates: dict[tuple[str, str], bytes | None] = {}
        self.cancelled: set[tuple[str, str]] = set()
        self._campaigns: dict[tuple[str, str], None] = {}
        self._per_key = False  # queued one command per key (Redis Cluster)

    def want(self, n: Notification, *, user: bool) -> None:
        tenant = n.tenant_id
        if user:
            self.users[(tenant, n.user_id)] = None
        if n.content.template is not None:
            self.templates[(tenant, n.content.template)] = None
        if n.campaign_id is not None:
            self._campaigns[(tenant, n.campaign_id)] = None

    @staticmethod
    def load_scripts(client) -> None:
        """Load the lookups' script into a Redis that lacks it (a restart flushes scripts)."""
        client.script_load(USERS_SCRIPT)

    def queue(self, pipe) -> int:
        """Add the reads to ``pipe``; return how many answers they take."""
        if is_cluster(pipe):
            return self._queue_per_key(pipe)
        count = 0
        if self.users:
            pipe.evalsha(USERS_SHA, 0, *(user_key(t, u) for t, u in self.users))
            count += 1
        if self.templates:
            pipe.mget([template_key(t, name) for t, name in self.templates])
            count += 1
        if self._campaigns:
            pipe.mget([cancelled_key(t, c) for t, c in self._campaigns])
            count += 1
        return count

    def _queue_per_key(self, pipe) -> int:
        self._per_key = True
        for t, u in self.users:
            pipe.hmget(user_key(t, u), *HASH_FIELDS)
        for t, name in self.templates:
            pipe.get(template_key(t, name))
        for t, c in self._campaigns:
            pipe.get(cancelled_key(t, c))
        return len(self.users) + len(self.templates) + len(self._campaigns)

    def read(self, answers: list) -> None:
        if self._per_key:
            return self._read_per_key(list(answers))
        rest = list(answers)
        if self.users:
            for key, values in zip(list(self.users), rest.pop(0)):
                self.users[key] = user_from_values(key[1], values) if values else None
        if self.templates:
            self.templates = dict(zip(self.templates, rest.pop(0)))
        if self._campaigns:
            self.cancelled = {key for key, v in zip(self._campaigns, rest.pop(0))
                              if v is not None}

    def _read_per_key(self, rest: list) -> None:
        users, rest = rest[:len(self.users)], rest[len(self.users):]
        for key, values in zip(list(self.users), users):
            found = values is not None and any(v is not None for v in values)
            self.users[key] = user_from_values(key[1], values) if found else None
        templates, rest = rest[:len(self.templates)], rest[len(self.templates):]
        self.templates = dict(zip(self.templates, templates))
        self.cancelled = {key for key, v in zip(self._campaigns, rest) if v is not None}

    def is_cancelled(self, n: Notification) -> bool:
        return n.campaign_id is not None and (n.tenant_id, n.campaign_id) in self.cancelled


def cancelled_campaigns(client, campaigns: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (tenant, campaign id) pairs are cancelled: one MGET."""
    keys = list(dict.fromkeys(campaigns))
    if not keys:
        return set()
    found = mget(client, [cancelled_key(t, c) for t, c in keys])
    return {key for key, v in zip(keys, found) if v is not None}
