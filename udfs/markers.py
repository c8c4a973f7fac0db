"""Redis markers that make a provider call happen once per notification id, across restarts.

Keyed state dedups replays of the log; after a restore from a checkpoint the records since that
checkpoint are replayed into state that has never seen them, so Redis is what remembers:

* ``herald:once:{tenant}:{id}`` is claimed right before the call (value ``0``, SET NX) and set
  to ``1`` right after the provider accepts (or deleted, if the call did not happen). Ids are
  chosen by tenants, so the key holds both (a tenant id never contains ``:``): one tenant's id
  never stops another's notification.

A replayed id whose marker is ``1`` is a duplicate and is not sent. A replayed id whose claim is
still ``0`` was in flight when the job died: the provider may or may not have it, and no
provider offers a way to ask. Herald re-sends it (a lost OTP is worse than a second one) and
says so in the status detail. That is the crash window left: at most the calls in flight at the
moment of the crash, and it is measured by the kill test.

Both steps are one Lua script call per batch: the ids travel as arguments of one command, so
the Python side packs one command instead of one or two per id (the pipelined form cost the
call stage ≈ 25 µs per notification), and the claim answers one string of one digit per id.
One key per id, claimed with ``SET NX GET``, is one write each way: a ``sending`` key beside
the ``sent`` one doubled the server's work (bench/results/delivery_throughput.md). The scripts
build the key names, so they need one Redis. On Redis Cluster (``herald.redis_conn``) the
same keys are claimed and settled by scripts that take them as KEYS, one call per key, all in
one cluster pipeline: the client sends each node its calls and follows MOVED and ASK during a
reshard, and a call of one key never meets TRYAGAIN (a call of several keys of a slot half
moved does, until the move ends). The old keys are read first, per slot (decision 020).
``SET ... NX GET`` needs Redis 7.0 or later.

Versions before the tenant scope kept ``herald:sent:{id}``. So that a restore from their
checkpoints does not re-send what they sent, a notification created before the first start of
this version (``herald:once:since``, set once) is also checked against its old key: ``1`` there
is sent before, ``0`` in flight at a crash. Later notifications never read old keys, so a
collision of two tenants' ids can only matter for what was already in the log at the upgrade,
and only until the old keys expire (``dedup_ttl_ms``).

A settle may wait (``settle(..., now=False)``) and ride in the next claim's round trip, or go
with ``flush``: the gate sends a batch in parts, and a round trip per part for its settle
alone was a wait the gate could not use. A settle that waits widens the crash window by as
long as it waits; the gate flushes before each batch ends.
"""
from __future__ import annotations

import time
from typing import Iterable

import redis

from herald.redis_conn import is_cluster, mget

MARKER = "herald:once:{}"  # the argument is ``marker(notification)``
LEGACY = "herald:sent:{}"  # versions without the tenant scope: the id alone
SINCE = "herald:once:since"  # epoch ms: the first start of a version with the tenant scope
CLAIMED, DONE = b"0", b"1"  # the marker's values: a call in flight, a call the provider accepted

# ARGV: ttl_ms, n, marker..., then (position, old id) pairs to check under the old keys → one
# digit per marker: 1 = sent before, 2 = claimed by an earlier (crashed) call, 0 = claimed now,
# ours. A marker the old key says was sent is set to sent under the new key too.
_CLAIM = """
local ttl = ARGV[1]
local n = tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local old = redis.call('SET', 'herald:once:' .. ARGV[2 + i], '0', 'NX', 'PX', ttl, 'GET')
  if not old then
    out[i] = '0'
  elseif old == '1' then
    out[i] = '1'
  else
    out[i] = '2'
  end
end
for j = 3 + n, #ARGV, 2 do
  local i = tonumber(ARGV[j])
  if out[i] == '0' then
    local old = redis.call('GET', 'herald:sent:' .. ARGV[j + 1])
    if old == '1' then
      out[i] = '1'
      redis.call('SET', 'herald:once:' .. ARGV[2 + i], '1', 'PX', ttl)
    elseif old then
      out[i] = '2'
    end
  end
end
return table.concat(out)
"""

# ARGV: ttl_ms, n accepted, accepted id..., released id... (claims dropped without a send; a
# marker that says sent stays: a replay of something delivered is released too).
_SETTLE = """
local ttl = ARGV[1]
local last_accepted = 2 + tonumber(ARGV[2])
for i = 3, #ARGV do
  local key = 'herald:once:' .. ARGV[i]
  if i <= last_accepted then
    redis.call('SET', key, '1', 'PX', ttl)
  elseif redis.call('GET', key) == '0' then
    redis.call('DEL', key)
  end
end
return #ARGV - 2
"""

# Redis Cluster: the same steps on KEYS (of one slot; Herald passes one key per call). Claim ARGV: ttl_ms, then per key the value
# of its old key ('' when none or not looked up) → one digit per key, as _CLAIM answers.
_CLAIM_KEYS = """
local ttl = ARGV[1]
local out = {}
for i, key in ipairs(KEYS) do
  local old = redis.call('SET', key, '0', 'NX', 'PX', ttl, 'GET')
  if not old then
    local legacy = ARGV[1 + i]
    if legacy == '1' then
      out[i] = '1'
      redis.call('SET', key, '1', 'PX', ttl)
    elseif legacy ~= '' then
      out[i] = '2'
    else
      out[i] = '0'
    end
  elseif old == '1' then
    out[i] = '1'
  else
    out[i] = '2'
  end
end
return table.concat(out)
"""

# Settle ARGV: ttl_ms, n: the first n KEYS were accepted, the rest released.
_SETTLE_KEYS = """
local ttl = ARGV[1]
local n = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  if i <= n then
    redis.call('SET', key, '1', 'PX', ttl)
  elseif redis.call('GET', key) == '0' then
    redis.call('DEL', key)
  end
end
return #KEYS
"""

SENT_BEFORE, IN_FLIGHT_AT_CRASH = ord("1"), ord("2")


def marker(n) -> str:
    """A notification's marker name: its tenant and id (a tenant id never contains ``:``)."""
    return f"{n.tenant_id}:{n.id}"


class SentMarkers:
    def __init__(self, client: redis.Redis, ttl_ms: int, *, old_keys_before: int | None = None):
        """``old_keys_before``: notifications created before it are checked under the old keys
        too; by default the first start of this version, kept in Redis (``SINCE``)."""
        self.client = client
        self.ttl_ms = ttl_ms
        if old_keys_before is None:
            client.set(SINCE, time.time_ns() // 1_000_000, nx=True)
            old_keys_before = int(client.get(SINCE))
        self.old_keys_before = old_keys_before
        # After this, every old key has expired: nothing is looked up under them any more.
        self.old_keys_until = old_keys_before + ttl_ms
        self._claim = client.register_script(_CLAIM)
        self._settle = client.register_script(_SETTLE)
        self.cluster = is_cluster(client)
        self._accepted: list[str] = []  # settles not sent yet (``settle(..., now=False)``)
        self._not_sent: list[str] = []

    def claim(self, notes: list, *, lookups=None) -> tuple[set[str], set[str]]:
        """Claim ``notes`` (notifications) for sending, in one round trip; ``lookups``
        (``udfs.lookups``) rides along with its reads in the same pipeline.

        Returns the markers (``marker(n)``) already sent: do not send; and those in flight at
        an earlier crash: send, and say so.
        """
        if not notes:
            return set(), set()
        marks = [marker(n) for n in notes]
        args = [self.ttl_ms, len(marks), *marks]
        if time.time_ns() // 1_000_000 < self.old_keys_until:
            before = self.old_keys_before
            for i, n in enumerate(notes, 1):
                if n.created_at < before:
                    args += (i, n.id)
        if self.cluster:
            found = self._claim_cluster(lookups, notes, marks)
        elif lookups is None and not self.waiting:
            found = self._claim(args=args)
        else:
            found = self._claim_with(lookups, args)
        if found.count(b"0") == len(marks):  # the usual batch: all fresh
            return set(), set()
        already = {m for m, f in zip(marks, found) if f == SENT_BEFORE}
        crashed = {m for m, f in zip(marks, found) if f == IN_FLIGHT_AT_CRASH}
        return already, crashed

    def sent(self, notes: list) -> tuple[set[str], set[str]]:
        """Read only, for notifications that will not be sent (expired): the markers of those
        a provider accepted before (sent), and of those a crash left in flight (the provider
        may have them). After a restore, a record delivered before the crash and replayed past
        its expiry must not be reported ``expired`` as if it never went. Settles that wait are
        sent first (one round trip more only then)."""
        if not notes:
            return set(), set()
        self.flush()
        marks = [marker(n) for n in notes]
        keys = [MARKER.format(m) for m in marks]
        legacy = []
        if time.time_ns() // 1_000_000 < self.old_keys_until:
            legacy = [(i, LEGACY.format(n.id)) for i, n in enumerate(notes)
                      if n.created_at < self.old_keys_before]
        values = mget(self.client, keys + [k for _, k in legacy])
        found = values[:len(keys)]
        for (i, _), value in zip(legacy, values[len(keys):]):
            if found[i] is None:
                found[i] = value
        return ({m for m, v in zip(marks, found) if v == DONE},
                {m for m, v in zip(marks, found) if v == CLAIMED})

    def _claim_with(self, lookups, args: list) -> bytes:
        """The claim script in one pipeline with the lookups' reads and the settles that
        waited (first: an id released there may be claimed again here). EVALSHA is queued by
        hand: redis-py's scripts in a pipeline ask SCRIPT EXISTS first, a round trip each."""
        settle = self._take_pending()
        while True:
            pipe = self.client.pipeline(transaction=False)
            extra = 0
            if settle is not None:
                pipe.evalsha(self._settle.sha, 0, *settle)
                extra += 1
            if lookups is not None:
                extra += lookups.queue(pipe)
            pipe.evalsha(self._claim.sha, 0, *args)
            try:
                answers = pipe.execute()
            except redis.exceptions.NoScriptError:  # a restarted Redis: load them, go again
                self.client.script_load(_CLAIM)  # (a settle done twice changes nothing)
                self.client.script_load(_SETTLE)
                if lookups is not None:
                    lookups.load_scripts(self.client)
                continue
            if lookups is not None:
                lookups.read(answers[1 if settle is not None else 0:extra])
            return answers[extra]

    def _claim_cluster(self, lookups, notes: list, marks: list[str]) -> bytes:
        """The claim on Redis Cluster: the old keys read first (only while they may exist),
        then one pipeline of the waiting settles, the lookups' reads and one claim script per
        key. EVAL, not EVALSHA: a node that takes over a slot during a reshard may never have
        seen the script."""
        keys = [MARKER.format(m) for m in marks]
        legacy = [""] * len(keys)
        if time.time_ns() // 1_000_000 < self.old_keys_until:
            old = [(i, LEGACY.format(n.id)) for i, n in enumerate(notes)
                   if n.created_at < self.old_keys_before]
            if old:
                for (i, _), value in zip(old, mget(self.client, [k for _, k in old])):
                    legacy[i] = "" if value is None else value.decode()
        pipe = self.client.pipeline(transaction=False)
        settles = self._queue_settle_cluster(pipe, self._take_pending())
        extra = lookups.queue(pipe) if lookups is not None else 0
        for key, old in zip(keys, legacy):
            pipe.execute_command("EVAL", _CLAIM_KEYS, 1, key, self.ttl_ms, old)
        answers = pipe.execute()
        if lookups is not None:
            lookups.read(answers[settles:settles + extra])
        return b"".join(answers[settles + extra:])

    def _queue_settle_cluster(self, pipe, settle: list | None) -> int:
        """Queue a settle (``_take_pending``'s arguments) as one script call per key."""
        if settle is None:
            return 0
        ttl, n, marks = settle[0], settle[1], settle[2:]
        for i, m in enumerate(marks):
            pipe.execute_command("EVAL", _SETTLE_KEYS, 1, MARKER.format(m), ttl,
                                 1 if i < n else 0)
        return len(marks)

    def settle(self, accepted: Iterable[str], not_sent: Iterable[str] = (), *,
               now: bool = True) -> None:
        """Mark ``accepted`` sent and drop every claim, these and ``not_sent`` (markers, as
        ``claim`` names them): in one round trip now, or (``now=False``) with the next claim or
        ``flush``."""
        self._accepted.extend(accepted)
        self._not_sent.extend(not_sent)
        if now:
            self.flush()

    def flush(self) -> None:
        """Send the settles that waited (one round trip, none if nothing waits)."""
        settle = self._take_pending()
        if settle is None:
            return
        if self.cluster:
            pipe = self.client.pipeline(transaction=False)
            self._queue_settle_cluster(pipe, settle)
            pipe.execute()
        else:
            self._settle(args=settle)

    @property
    def waiting(self) -> bool:
        """Settles wait for the next claim or ``flush``: the acceptances they carry are not
        in Redis yet, so no status may say ``delivered`` for them yet."""
        return bool(self._accepted or self._not_sent)

    def _take_pending(self) -> list | None:
        """The settle script's arguments for everything waiting, which stops waiting."""
        if not self.waiting:
            return None
        accepted, not_sent = self._accepted, self._not_sent
        self._accepted, self._not_sent = [], []
        return [self.ttl_ms, len(accepted), *accepted, *not_sent]
