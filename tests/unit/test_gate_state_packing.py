"""The gate keeps users' states as bytes (invisible to the cycle collector): JSON while nothing
is held, a pickle while notifications are; and it still reads what earlier versions stored
(pickles, objects)."""
import base64
import gc
import pickle

from hypothesis import given, strategies as st

from herald.gate import Gate, GateState
from herald.models import Contacts, Content, Notification
from operators.gate import pack, unpack


def a_state():
    gate_state = Gate().new_state()
    gate_state.seen["n-1"] = 1_000
    gate_state.next_seq = 4
    return gate_state


def a_note(i: int) -> Notification:
    return Notification(id=f"n-{i}", tenant_id="t", user_id="u", priority="critical",
                        channels=("push",), to=Contacts(push_token="tok", platform="android"),
                        content=Content(body="b"),
                        created_at=1_000, expires_at=9_000, seq=i)


def test_a_packed_state_reads_back_equal_and_is_not_tracked_by_the_collector():
    packed = pack(a_state())
    assert isinstance(packed, bytes) and not gc.is_tracked(packed)
    assert unpack(packed) == a_state()


def test_a_state_holding_nothing_is_packed_as_json():
    assert pack(a_state()).startswith(b"[")


def test_a_state_holding_notifications_round_trips_through_a_pickle():
    held = a_state()
    held.held[5] = (1_000, a_note(5))
    held.held[6] = None
    held.scheduled.append(a_note(9))
    held.timer_ms = 2_000
    packed = pack(held)
    assert not packed.startswith(b"[")
    assert unpack(packed) == held


ids = st.text(min_size=1, max_size=40)
ms = st.integers(min_value=0, max_value=(1 << 63) - 1)


@given(seen=st.dictionaries(ids, ms, max_size=30), prune=ms,
       next_seq=st.none() | st.integers(min_value=0, max_value=1 << 62),
       timer=st.none() | ms)
def test_any_state_holding_nothing_round_trips(seen, prune, next_seq, timer):
    state = GateState(seen=seen, seen_prune_ms=prune, next_seq=next_seq, timer_ms=timer)
    assert unpack(pack(state)) == state


def test_a_state_pickled_by_an_earlier_version_is_still_read():
    assert unpack(pickle.dumps(a_state(), protocol=pickle.HIGHEST_PROTOCOL)) == a_state()


# A state holding one notification, pickled at 3af74a8, when Notification, Contacts and Content
# were frozen dataclasses (pickled as lists of values; plain slotted ones pickle otherwise).
PICKLED_WHILE_FROZEN = base64.b64decode(
    "gAWVRQEAAAAAAACMC2hlcmFsZC5nYXRllIwJR2F0ZVN0YXRllJOUKYGUTn2UKIwEc2VlbpR9lIwBYZSKBp3ZrD2i"
    "AXOMDXNlZW5fcHJ1bmVfbXOUigad2aw9ogGMCG5leHRfc2VxlE6MBGhlbGSUfZRLBYoGvUWoPaIBjA1oZXJhbGQu"
    "bW9kZWxzlIwMTm90aWZpY2F0aW9ulJOUKYGUXZQoaAeMAXSUjAF1lIwIY3JpdGljYWyUjARwdXNolIWUaAyMCENv"
    "bnRhY3RzlJOUKYGUXZQojAF4lIwHYW5kcm9pZJROTmViaAyMB0NvbnRlbnSUk5QpgZRdlChOjAJoaZR9lIwBa5SM"
    "AXaUc059lGViiga9Rag9ogGKBp3ZrD2iAUsFTk5lYoaUc4wJc2NoZWR1bGVklF2UjAh0aW1lcl9tc5SKBqVJqD2iAXWGlGIu")


def test_a_state_holding_notifications_pickled_while_they_were_frozen_is_read_and_rewritten_alike():
    gate_state = unpack(PICKLED_WHILE_FROZEN)
    arrived, n = gate_state.held[5]
    assert (n.id, n.user_id, n.seq, n.channels) == ("a", "u", 5, ("push",))
    assert n.to == Contacts(push_token="x", platform="android")
    assert n.content == Content(body="hi", data={"k": "v"})
    assert n.expires_at - n.created_at == 300_000 and arrived == n.created_at
    assert pickle.dumps(gate_state, protocol=5) == PICKLED_WHILE_FROZEN


def test_a_state_stored_as_an_object_by_an_earlier_version_is_read_as_it_is():
    old = a_state()
    assert unpack(old) is old


def test_no_stored_state_reads_as_none():
    assert unpack(None) is None


class _Users(dict):
    """A MapState stand-in: get answers None when absent."""
    def get(self, key):
        return dict.get(self, key)

    def remove(self, key):
        del self[key]


def test_a_state_kept_under_a_bare_user_id_moves_to_the_first_tenants_user_once():
    """States written before the tenant scope (key: the user id) keep their dedup, order and
    holds after a restore: the first tenant's user of that id to come by takes it over."""
    from herald import states
    from operators.gate import TENANT_USER, GateFunction
    legacy = a_state()  # n-1 seen, next seq 4
    legacy.held[5] = (1_000, a_note(5))
    fn = GateFunction.__new__(GateFunction)
    fn.users, fn.cache, fn.migrate_until = _Users({"u": pack(legacy)}), {}, 10_000
    moved = fn._load(7, f"t{TENANT_USER}u") or fn._migrate(7, "u", 2_000)
    assert (moved.seen, moved.next_seq, set(moved.held)) == ({"n-1": 1_000}, 4, {5})
    assert "u" not in fn.users and fn._migrate(7, "u", 2_000) is None  # moved, not copied
    decision = Gate().process(moved, a_note(4), 900)
    assert [n.seq for n in decision.emit] == [4, 5]  # the held one follows in order
    replay = a_note(1)  # id n-1, seen before the upgrade
    replay.seq = None
    assert Gate().process(moved, replay, 900).reason == states.DUPLICATE
    # Once every such state has expired, nothing is looked up under bare ids any more.
    fn.users["u"] = pack(a_state())
    assert fn._migrate(7, "u", 10_000) is None and "u" in fn.users
