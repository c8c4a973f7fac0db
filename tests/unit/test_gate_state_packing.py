"""The gate keeps users' states as pickled bytes (invisible to the cycle collector) and still
reads states that an earlier version stored as objects."""
import gc

from herald.gate import Gate
from operators.gate import pack, unpack


def a_state():
    gate_state = Gate().new_state()
    gate_state.seen["n-1"] = 1_000
    gate_state.next_seq = 4
    return gate_state


def test_a_packed_state_reads_back_equal_and_is_not_tracked_by_the_collector():
    packed = pack(a_state())
    assert isinstance(packed, bytes) and not gc.is_tracked(packed)
    assert unpack(packed) == a_state()


def test_a_state_stored_as_an_object_by_an_earlier_version_is_read_as_it_is():
    old = a_state()
    assert unpack(old) is old


def test_no_stored_state_reads_as_none():
    assert unpack(None) is None
