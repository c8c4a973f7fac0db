"""Segments as Parquet versions, read back in batches; input files for the CLI. No services."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.errors import ValidationError
from herald.segments import (SEPARATOR, SegmentFiles, SegmentReader, check_ids, ids_array,
                             input_ids, join_ids, read_batches, read_input)

T0 = 1_764_000_000_000


@pytest.fixture
def files(tmp_path) -> SegmentFiles:
    return SegmentFiles(tmp_path / "segments", row_group_size=100, versions_kept=1)


def users(n: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_a_written_segment_reads_back_in_order_in_batches(files):
    version = files.write("acme", "spring", users(1_234), T0)
    assert version.count == 1_234 and files.current("acme", "spring") == version.path
    batches = list(read_batches(version.path, 0, 500))
    assert [len(b) for b in batches] == [500, 500, 234]
    assert sum(batches, []) == users(1_234)


@pytest.mark.parametrize("start,size", [(0, 1), (99, 2), (100, 100), (150, 1_000), (1_233, 7),
                                        (1_234, 10), (5_000, 10)])
def test_a_batch_starts_anywhere_and_spans_row_groups(files, start, size):
    path = files.write("acme", "s", users(1_234), T0).path
    assert SegmentReader(path).read(start, size).to_pylist() == users(1_234)[start:start + size]
    resumed = sum(read_batches(path, start, size), [])
    assert resumed == users(1_234)[start:]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 700), group=st.integers(1, 300), batch=st.integers(1, 400),
       start=st.integers(0, 800))
def test_reading_from_any_cursor_gives_exactly_the_rest(tmp_path_factory, n, group, batch,
                                                        start):
    f = SegmentFiles(tmp_path_factory.mktemp("seg"), row_group_size=group)
    path = f.write("acme", "s", users(n), T0).path
    assert sum(read_batches(path, start, batch), []) == users(n)[start:]


def test_the_file_is_plain_parquet_with_its_count_and_longest_id(files):
    path = files.write("acme", "s", ["a", "bbbb", "cc"], T0).path
    table = pq.read_table(path)
    assert table.column_names == ["user_id"] and table.column(0).to_pylist() == ["a", "bbbb", "cc"]
    assert table.schema.metadata[b"herald.count"] == b"3"
    assert SegmentReader(path).max_id_length == 4


def test_a_file_without_herald_metadata_still_reads(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"user_id": ["x", "yyy"]}), path)
    reader = SegmentReader(path)
    assert reader.count == 2 and reader.max_id_length == 3 and reader.read(0, 5).to_pylist() == [
        "x", "yyy"]


def test_a_new_version_leaves_the_one_being_read_intact(files):
    first = files.write("acme", "s", users(300, "old-"), T0)
    reader = SegmentReader(first.path)  # an expansion that started on the first version
    second = files.write("acme", "s", users(10, "new-"), T0 + 1)
    assert files.current("acme", "s") == second.path != first.path
    assert reader.read(250, 50).to_pylist() == users(300, "old-")[250:]
    third = files.write("acme", "s", users(5, "newer-"), T0 + 2)
    # versions_kept=1: the current one and the newest replaced one remain
    assert sorted(p.name for p in third.path.parent.glob("v*.parquet")) == sorted(
        [second.path.name, third.path.name])


def test_an_empty_segment_is_a_valid_version(files):
    version = files.write("acme", "nobody", [], T0)
    assert version.count == 0 and list(read_batches(version.path, 0, 10)) == []


def test_an_unknown_segment_has_no_current_version(files):
    assert files.current("acme", "never-written") is None


@pytest.mark.parametrize("ids,message", [
    (["a", "b", "a"], "lists user 'a' twice"),
    (["a", ""], r"'user_ids\[1\]' must not be empty"),
    (["a", "  "], r"'user_ids\[1\]' must not be empty"),
    (["a", None], r"'user_ids\[1\]' is empty \(null\)"),
    (["ok", "new\nline"], r"'user_ids\[1\]' .* contains whitespace"),
    (["tab\there"], "contains whitespace"),
    (["sp ace"], "contains whitespace"),
    (["zero\u200bwidth"], "non-printable character U\\+200B"),
    (["rtl\u202eoverride"], "non-printable character U\\+202E"),
    (["nul\x00"], "non-printable character U\\+0000"),
    (["../../x"], "contains '/'"),
    (["x" * 257], r"'user_ids\[0\]' is longer than 256 characters"),
    ([1, 2], "user ids must be strings"),
])
def test_bad_ids_are_refused_with_the_first_offender_named(files, ids, message):
    with pytest.raises(ValidationError, match=message) as e:
        files.write("acme", "s", ids, T0)
    assert e.value.field == "user_ids"
    assert files.current("acme", "s") is None  # nothing written


@pytest.mark.parametrize("tenant,name", [("../etc", "s"), ("acme", "../x"), ("a/b", "s"),
                                         ("acme", ".hidden"), ("", "s")])
def test_names_cannot_leave_the_segments_directory(files, tenant, name):
    with pytest.raises(ValidationError):
        files.write(tenant, name, ["a"], T0)


def test_ids_with_any_other_characters_round_trip(files):
    odd = ['quote"d', "back\\slash", "ünïcödé", "emoji-🎉", "comma,semi;pipe|", "colon:ok"]
    path = files.write("acme", "s", odd, T0).path
    assert SegmentReader(path).read(0, 10).to_pylist() == odd
    assert join_ids(ids_array(odd)).split(SEPARATOR) == odd


def test_join_ids_is_the_ids_joined_by_the_separator():
    assert join_ids(ids_array(["a", "b", "c"])) == "a\nb\nc"
    assert join_ids(ids_array(["only"])) == "only"
    assert join_ids(ids_array([])) == ""
    assert check_ids(ids_array(["a"])).to_pylist() == ["a"]


# ---------------------------------------------------------------- input files

def test_csv_ids_stay_text(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("user_id,name\n007,Bond\n0042,x\n")
    assert input_ids(read_input(path)).to_pylist() == ["007", "0042"]


def test_a_one_column_file_needs_no_user_id_header(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("member\na\nb\n")
    assert input_ids(read_input(path)).to_pylist() == ["a", "b"]


def test_parquet_input_with_large_strings(tmp_path):
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"user_id": pa.array(["a", "b"], pa.large_string()),
                             "other": [1, 2]}), path)
    assert input_ids(read_input(path)).to_pylist() == ["a", "b"]


@pytest.mark.parametrize("name,body,message", [
    ("ids.txt", "user_id\na\n", "expected a .csv or .parquet file"),
    ("ids.csv", "", "empty file"),
    ("ids.csv", "a,b\n1,2\n", "no 'user_id' column"),
])
def test_unusable_input_files_are_refused(tmp_path, name, body, message):
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(ValidationError, match=message):
        input_ids(read_input(path))
