"""The peers' gate (bench/peers/core.py): the same verdicts as Herald's for parse errors,
duplicates and expiry, on any get/set store (a dict for the confluent worker, Quix state)."""
import orjson

from bench.loadgen import RecordFactory
from bench.peers.core import Gate, now_ms, statuses_for
from herald.settings import Settings


def record(created_at: int) -> bytes:
    factory = RecordFactory(run="g", users=1000)
    ranks, sizes, draws = factory.chunk(1)
    return factory.record(0, ranks[0], sizes[0], draws[0], created_at)[1]


def test_admits_once_then_duplicate():
    gate, seen = Gate(Settings()), {}
    raw = record(now_ms())
    kind, note, _ = gate.admit(raw, seen.get, seen.__setitem__)
    assert kind == "send" and note.id == "g-0" and seen[note.id] >= note.expires_at
    kind, note, payload = gate.admit(raw, seen.get, seen.__setitem__)
    assert kind == "status" and orjson.loads(payload)["state"] == "duplicate"
    assert list(statuses_for(kind, note, payload, b"k")) == [("status", b"g-0", payload)]


def test_expired_is_reported_and_not_remembered():
    gate, seen = Gate(Settings()), {}
    kind, note, payload = gate.admit(record(now_ms() - 400_000), seen.get, seen.__setitem__)
    assert kind == "status" and orjson.loads(payload)["state"] == "expired" and not seen


def test_invalid_record_goes_to_the_dead_letters_under_its_raw_key():
    gate, seen = Gate(Settings()), {}
    kind, note, payload = gate.admit(b'{"id": "x"}', seen.get, seen.__setitem__)
    assert kind == "dlq" and note is None and orjson.loads(payload)["stage"] == "parse"
    assert list(statuses_for(kind, note, payload, b"raw-key")) == [("dlq", b"raw-key", payload)]
