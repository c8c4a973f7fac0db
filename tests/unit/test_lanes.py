"""Lanes put each gate lane on its own subtask: the hashing must be Flink's own."""
import pytest

from operators.lanes import key_group, lane_keys, murmur_hash, subtask_of

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
    assert [subtask_of(k, 128, lanes) for k in keys] == list(range(lanes))
    assert len(set(keys)) == lanes


def test_lanes_spread_over_fewer_subtasks_evenly_when_they_divide():
    keys = lane_keys(8, 128)
    per_subtask = [subtask_of(k, 128, 4) for k in keys]
    assert sorted(per_subtask) == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("lanes", [0, 129])
def test_lanes_out_of_range_are_refused(lanes):
    with pytest.raises(ValueError, match="lanes must be within 1..128"):
        lane_keys(lanes, 128)
