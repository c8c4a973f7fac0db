"""Lanes put each gate lane on its own subtask: the hashing must be Flink's own."""
import pytest

from herald.errors import TooFewLanes
from operators.lanes import job_lanes, key_group, lane_keys, murmur_hash, spread_order, subtask_of

# Read from Flink 2.2.1 (jshell over flink-dist): MathUtils.murmurHash(i), and
# KeyGroupRangeAssignment.assignToKeyGroup(Row.of(i), 128) for the Row a PyFlink INT key becomes.
FLINK_MURMUR = {100: 616682048, 1000: 3506311, -1: 1982413648, 123456789: 1088346449,
                2147483647: 1653689534}
FLINK_KEY_GROUP_128 = {0: 33, 1: 44, 2: 97, 3: 104, 4: 17, 5: 17, 6: 125, 7: 17, 8: 80,
                       9: 119, 10: 45, 100: 66, 1000: 5, -1: 62, 123456789: 69, 2147483647: 59}
FLINK_SUBTASK_OF_4 = {0: 1, 1: 1, 2: 3, 3: 3, 4: 0, 5: 0, 6: 3, 7: 0, 8: 2, 9: 3}


@pytest.mark.parametrize("code", sorted(FLINK_MURMUR))
def test_murmur_is_flinks(code):
    assert murmur_hash(code) == FLINK_MURMUR[code]


@pytest.mark.parametrize("key", sorted(FLINK_KEY_GROUP_128))
def test_key_groups_are_flinks(key):
    assert key_group(key, 128) == FLINK_KEY_GROUP_128[key]


def test_plain_indexes_would_share_subtasks_which_is_why_lanes_exist():
    assert {k: subtask_of(k, 128, 4) for k in FLINK_SUBTASK_OF_4} == FLINK_SUBTASK_OF_4
    assert len({subtask_of(k, 128, 4) for k in range(4)}) == 2


@pytest.mark.parametrize("lanes", [1, 2, 3, 4, 6, 8, 16, 64, 128])
def test_each_lane_has_its_own_subtask(lanes):
    keys = lane_keys(lanes, 128)
    assert [subtask_of(k, 128, lanes) for k in keys] == spread_order(lanes)
    assert len(set(keys)) == lanes
    in_order = lane_keys(lanes, 128, spread=False)
    assert [subtask_of(k, 128, lanes) for k in in_order] == list(range(lanes))


@pytest.mark.parametrize("spread", [True, False])
def test_lanes_spread_over_fewer_subtasks_evenly_when_they_divide(spread):
    keys = lane_keys(8, 128, spread)
    per_subtask = [subtask_of(k, 128, 4) for k in keys]
    assert sorted(per_subtask) == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("lanes", [2, 4, 8, 16, 32])
def test_spread_lanes_put_a_partition_where_lanes_equal_to_the_parallelism_would(lanes):
    """The subtask depends on lane mod P only, so partitions (lane = partition mod lanes) fill
    every subtask even when there are fewer of them than lanes: 4 partitions, 8 lanes, P 2."""
    keys = lane_keys(lanes, 128)
    for parallelism in (p for p in (1, 2, 4, 8, 16, 32) if lanes % p == 0):
        placed = [subtask_of(k, 128, parallelism) for k in keys]
        for lane, subtask in enumerate(placed):
            assert subtask == placed[lane % parallelism], (parallelism, placed)
        assert sorted(placed[:parallelism]) == list(range(parallelism))
    in_order = [subtask_of(k, 128, 2) for k in lane_keys(8, 128, spread=False)]
    assert in_order[:4] == [0, 0, 0, 0]  # why: partitions 0-3 would all be on one subtask


def test_spread_and_in_order_keys_agree_where_savepoints_before_the_spread_need_it():
    for lanes in (1, 2, 3, 5, 7):  # a prime or one lane: nothing to reorder
        assert lane_keys(lanes, 128) == lane_keys(lanes, 128, spread=False)
    assert spread_order(8) == [0, 4, 2, 6, 1, 5, 3, 7]
    assert sorted(spread_order(12)) == list(range(12))


def test_a_parallelism_above_the_lanes_is_refused_at_start():
    assert job_lanes(8, 1) == 8 and job_lanes(8, 8) == 8
    assert job_lanes(0, 2) == 2  # 0: the parallelism, as before decision 021
    with pytest.raises(TooFewLanes, match="parallelism 16 is above gate_lanes=8"):
        job_lanes(8, 16)


@pytest.mark.parametrize("lanes", [0, 129])
def test_lanes_out_of_range_are_refused(lanes):
    with pytest.raises(ValueError, match="lanes must be within 1..128"):
        lane_keys(lanes, 128)
