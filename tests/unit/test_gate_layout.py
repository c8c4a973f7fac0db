"""The gate stops a job restored with another number of lanes than its state was written with
(operators/gate.py, _check_layout): users would otherwise move to lanes without their dedup,
order and holds, and a replay would be sent again."""
import pytest

from herald.errors import LanesChanged
from herald.settings import Settings
from operators.gate import GateFunction


class _Value:
    """A stand-in for one lane key's ValueState, kept per key as Flink does."""

    def __init__(self, store: dict, key_of):
        self.store, self.key_of = store, key_of

    def value(self):
        return self.store.get(self.key_of())

    def update(self, v):
        self.store[self.key_of()] = v


def _gate(lanes: int, store: dict, current: list, spread: bool = True) -> GateFunction:
    fn = GateFunction.__new__(GateFunction)
    fn.priority, fn.lanes, fn.checked = "critical", lanes, set()
    fn.settings = Settings(gate_lanes_spread=spread)
    fn.layout = _Value(store, lambda: current[0])
    check = fn._check_layout

    def keyed(key, lane):  # as Flink does, the state read is the current key's
        current[0] = key
        check(key, lane)
    fn._check_layout = keyed
    return fn


def test_the_same_lanes_restore_and_other_lanes_stop_the_job():
    store, current = {}, [0]
    one = _gate(1, store, current)
    one._check_layout(0, 0)                      # a fresh job writes its layout
    assert store == {0: "1:0"}
    _gate(1, store, current)._check_layout(0, 0)  # restored with the same lanes: fine
    two = _gate(2, store, current)               # restored at parallelism 2, default lanes
    two._check_layout(2, 1)                      # a new lane key: nothing written before
    with pytest.raises(LanesChanged, match="HERALD_GATE_LANES=1"):
        two._check_layout(0, 0)                  # lane key 0 holds every user of 1 lane


def test_the_same_lanes_placed_otherwise_stop_the_job_naming_the_placement():
    store, current = {7: "4:2"}, [0]             # lane 2 of 4, in order (before decision 021)
    with pytest.raises(LanesChanged, match="HERALD_GATE_LANES_SPREAD=false"):
        _gate(4, store, current)._check_layout(7, 1)  # spread, lane 1 has that key
    store = {7: "4:1"}
    with pytest.raises(LanesChanged, match="HERALD_GATE_LANES_SPREAD=true"):
        _gate(4, store, current, spread=False)._check_layout(7, 2)


def test_a_timer_compares_the_number_of_lanes_only_and_never_writes():
    store, current = {}, [0]
    _gate(2, store, current)._check_layout(0, None)
    assert store == {}                           # the lane's first batch writes it
    store[0] = "1:0"
    with pytest.raises(LanesChanged):
        _gate(2, store, current)._check_layout(0, None)


def test_a_key_is_checked_once_per_instance_and_unchecked_without_lanes():
    store, current = {0: "4:3"}, [0]
    fn = _gate(4, store, current)
    fn._check_layout(0, 3)
    store[0] = "9:9"                             # not read again by this instance
    fn._check_layout(0, 3)
    unchecked = _gate(None, store, current)
    unchecked._check_layout(0, 0)
    assert store[0] == "9:9"
