"""The call stage's per-batch reads: every user, template and campaign of a batch read once,
in the claim's own pipeline: one round trip per batch, whatever its size."""
from __future__ import annotations

from collections import Counter

from herald.campaigns import cancelled_key
from herald.models import notification_from_dict
from herald.templates import template_key
from herald.users import HASH_FIELDS, user_key
from udfs.lookups import USERS_SHA, BatchLookups, cancelled_campaigns
from udfs.markers import SentMarkers


class FakeRedis:
    """Enough of redis-py for the stage's reads: strings, hashes, pipelines; counts round trips
    (one per pipeline execute or direct command) and commands."""

    def __init__(self, strings=None, hashes=None):
        self.strings = dict(strings or {})
        self.hashes = dict(hashes or {})
        self.round_trips = 0
        self.commands = Counter()
        self.user_reads = Counter()

    def pipeline(self, transaction=False):
        return FakePipeline(self)

    def register_script(self, source):
        """The markers' Lua scripts, run like the claim script (1 = sent before, 2 = claimed
        earlier, 0 = claimed now); in a pipeline they come as ``evalsha(sha, 0, *args)``."""
        def call(keys=(), args=()):
            self.round_trips += 1
            return self._run("evalsha", "sha", 0, *args)
        call.sha = "sha"
        return call

    def _run(self, name, *args, **kwargs):
        self.commands[name] += 1
        if name == "mget":
            return [self.strings.get(k) for k in args[0]]
        if name == "hmget":
            h = self.hashes.get(args[0], {})
            return [h.get(f) for f in args[1]]
        if name == "evalsha" and args[0] == USERS_SHA:  # udfs.lookups' users script
            self.user_reads.update(args[2:])
            return [[h.get(f) for f in HASH_FIELDS] if (h := self.hashes.get(k)) else None
                    for k in args[2:]]
        if name == "evalsha":  # the claim script
            found = b""
            for i in args[4:4 + args[3]]:  # sha, numkeys, ttl, n, markers
                old = self.strings.get(f"herald:once:{i}")
                if old is None:
                    self.strings[f"herald:once:{i}"] = b"0"
                found += b"0" if old is None else b"1" if old == b"1" else b"2"
            return found
        raise NotImplementedError(name)

    def mget(self, keys):
        self.round_trips += 1
        return self._run("mget", keys)


class FakePipeline:
    def __init__(self, client):
        self.client = client
        self.queued = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.queued.append((name, args, kwargs))

    def execute(self):
        self.client.round_trips += 1
        return [self.client._run(name, *a, **kw) for name, a, kw in self.queued]


def note(i: int, user: str, **extra):
    doc = {"id": f"n{i}", "tenant_id": "acme", "user_id": user, "priority": "promotional",
           "content": {"body": "hi"}, "created_at": 1_764_000_000_000,
           "expires_at": 1_764_000_060_000}
    doc.update(extra)
    return notification_from_dict(doc)


def user_hash(token: str, **extra) -> dict:
    return {"user_id": "x", "push_token": token.encode(), "platform": b"android", **extra}


def test_a_batch_reads_its_users_templates_and_cancels_in_the_claims_round_trip():
    users = {user_key("acme", f"u{u}"): user_hash(f"tok{u}") for u in range(0, 100, 2)}
    fake = FakeRedis(strings={template_key("acme", "welcome"): b'{"t": 1}',
                              cancelled_key("acme", "cmp-x"): b"1764000000000"},
                     hashes=users)
    batch = [note(i, f"u{i % 100}", campaign_id="cmp-x" if i % 3 == 0 else "cmp-y",
                  content={"template": "welcome"} if i % 5 == 0 else {"body": "b"})
             for i in range(1_000)]
    lookups = BatchLookups()
    for n in batch:
        lookups.want(n, user=True)
    SentMarkers(fake, 60_000, old_keys_before=0).claim(batch, lookups=lookups)

    assert fake.round_trips == 1
    assert fake.commands["mget"] == 2                    # templates, cancels
    assert fake.commands["evalsha"] == 2                 # the 100 users in one call, the claims
    assert len(fake.user_reads) == 100 and set(fake.user_reads.values()) == {1}
    assert lookups.users[("acme", "u2")].contacts.push_token == "tok2"
    assert lookups.users[("acme", "u1")] is None         # not in the store
    assert lookups.templates == {("acme", "welcome"): b'{"t": 1}'}
    assert lookups.is_cancelled(batch[0]) and not lookups.is_cancelled(batch[1])


def test_what_is_not_wanted_is_not_read():
    fake = FakeRedis()
    lookups = BatchLookups()
    for i in range(10):
        lookups.want(note(i, f"u{i}"), user=False)
    SentMarkers(fake, 60_000, old_keys_before=0).claim(
        [note(i, f"u{i}") for i in range(10)], lookups=lookups)
    assert fake.round_trips == 1
    assert fake.commands == {"evalsha": 1}               # only the claim itself


def test_the_user_record_is_read_from_the_hash_fields_delivery_needs():
    fake = FakeRedis(hashes={user_key("acme", "u1"): {
        "push_token": b"t", "platform": b"ios", "locale": b"pt-BR", "opt_outs": b"sms,email",
        "quiet_start": b"22:00", "quiet_end": b"07:00", "quiet_tz": b"Europe/Lisbon"}})
    lookups = BatchLookups()
    lookups.want(note(1, "u1"), user=True)
    SentMarkers(fake, 60_000, old_keys_before=0).claim([note(1, "u1")], lookups=lookups)
    u = lookups.users[("acme", "u1")]
    assert (u.locale, u.opt_outs, u.quiet_hours.tz) == ("pt-BR", ("sms", "email"),
                                                        "Europe/Lisbon")
    assert len(HASH_FIELDS) == 9


def test_a_recheck_of_cancels_is_one_command():
    fake = FakeRedis(strings={cancelled_key("acme", "c2"): b"1"})
    found = cancelled_campaigns(fake, [("acme", "c1"), ("acme", "c2"), ("acme", "c1")])
    assert found == {("acme", "c2")}
    assert fake.round_trips == 1 and fake.commands == {"mget": 1}
