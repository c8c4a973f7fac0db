"""Segments as immutable Parquet files, read back in batches with pyarrow.

Layout: ``<root>/<tenant>/<name>/v<updated_at>-<rand>.parquet``, one file per upload and never
changed afterwards; ``<root>/<tenant>/<name>/CURRENT`` names the live one and is replaced
atomically. An expansion resolves ``CURRENT`` once and reads that file to the end, so a row
offset (the expansion's cursor) always means the same user, even if the segment is replaced
mid-campaign. A few replaced versions are kept for expansions still reading them.

Engine-free: pyarrow only. Ids are checked as a whole column (Arrow compute), not one by one.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from herald.campaigns import check_segment_name
from herald.errors import ValidationError
from herald.models import ID_RULE, MAX_ID_LENGTH, check_tenant_id, id_problem

COLUMN = "user_id"
CURRENT = "CURRENT"
# What joins a batch of ids into one string for the hand-over to Flink SQL, which splits it
# again; ids in a segment may not contain it (ids are printable: herald.models.ID_RULE).
SEPARATOR = "\n"
# Printable characters an id may still not hold (utf8_is_printable lets the space through).
FORBIDDEN_PRINTABLE = r"[ /]"
META_COUNT = b"herald.count"
META_MAX_LEN = b"herald.max_id_length"
META_UPDATED_AT = b"herald.updated_at"


# ---------------------------------------------------------------- ids

def ids_array(values: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Any sequence or Arrow column of ids → one ``pa.string()`` array (no copy when it is one)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if not isinstance(values, pa.Array):
        try:
            values = pa.array(values, type=pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValidationError(f"user ids must be strings: {exc}", "user_ids") from None
    if values.type in (pa.large_string(), pa.string_view()):
        values = values.cast(pa.string())
    if values.type != pa.string():
        raise ValidationError(f"user ids must be strings, got a column of {values.type}",
                              "user_ids")
    return values


def _first(mask: pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def check_ids(ids: pa.Array, *, max_len: int = MAX_ID_LENGTH) -> pa.Array:
    """Every id valid by ``herald.models.ID_RULE`` (at most ``max_len`` characters; printable,
    so ``SEPARATOR`` never occurs in one), and none listed twice; column-wise, in Arrow."""
    if ids.null_count:
        i = _first(pc.is_null(ids))
        raise ValidationError(f"'user_ids[{i}]' is empty (null)", "user_ids")
    if not len(ids):
        return ids
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(ids)), 0)
    if pc.any(blank).as_py():
        raise ValidationError(f"'user_ids[{_first(blank)}]' must not be empty", "user_ids")
    too_long = pc.greater(pc.utf8_length(ids), max_len)
    if pc.any(too_long).as_py():
        raise ValidationError(f"'user_ids[{_first(too_long)}]' is longer than {max_len} "
                              "characters", "user_ids")
    # utf8_is_printable is Python's str.isprintable (checked over every code point)
    bad = pc.or_(pc.invert(pc.utf8_is_printable(ids)),
                 pc.match_substring_regex(ids, FORBIDDEN_PRINTABLE))
    if pc.any(bad).as_py():
        i = _first(bad)
        value = ids[i].as_py()
        raise ValidationError(f"'user_ids[{i}]' ({value!r}) {id_problem(value, max_len)}; a "
                              f"user id is {ID_RULE}", "user_ids")
    if len(pc.unique(ids)) != len(ids):  # unique: half the time of count_distinct
        counts = pc.value_counts(ids)
        twice = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise ValidationError(f"'user_ids' lists user {twice!r} twice", "user_ids", "duplicate")
    return ids


def join_ids(ids: pa.Array) -> str:
    """One string of the ids joined by ``SEPARATOR`` (Arrow's C++ join: no Python per id)."""
    if not len(ids):
        return ""
    offsets = pa.array([0, len(ids)], pa.int32())
    return pc.binary_join(pa.ListArray.from_arrays(offsets, ids), SEPARATOR)[0].as_py()


# ---------------------------------------------------------------- files

def check_tenant(tenant: str) -> str:
    """A tenant id (``herald.models.TENANT_RULE``): it names a directory, and ``.`` or ``..``
    never pass."""
    return check_tenant_id(tenant)


@dataclass(frozen=True, slots=True)
class SegmentVersion:
    path: Path
    count: int
    updated_at: int


class SegmentFiles:
    """Write segments as new Parquet versions and find the current one."""

    def __init__(self, root: str | Path, *, row_group_size: int = 65_536, versions_kept: int = 3):
        if row_group_size <= 0:
            raise ValueError("row_group_size must be positive")
        self.root = Path(root)
        self.row_group_size = row_group_size
        self.versions_kept = max(0, versions_kept)

    @classmethod
    def from_settings(cls, settings) -> "SegmentFiles":
        return cls(settings.segments_path, row_group_size=settings.segment_row_group_size,
                   versions_kept=settings.segment_versions_kept)

    def directory(self, tenant: str, name: str) -> Path:
        return self.root / check_tenant(tenant) / check_segment_name(name, "name")

    def write(self, tenant: str, name: str, user_ids: Sequence[str] | pa.Array, now_ms: int, *,
              max_len: int = MAX_ID_LENGTH, checked: bool = False) -> SegmentVersion:
        """Check the ids (unless ``checked``: ``check_ids`` passed them already), write them as
        a new version, make it current; return it."""
        directory = self.directory(tenant, name)
        ids = ids_array(user_ids)
        if not checked:
            ids = check_ids(ids, max_len=max_len)
        longest = pc.max(pc.utf8_length(ids)).as_py() if len(ids) else 0
        table = pa.table({COLUMN: ids}).replace_schema_metadata({
            META_COUNT: str(len(ids)), META_MAX_LEN: str(longest),
            META_UPDATED_AT: str(now_ms)})
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"v{now_ms:013d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = directory / f".{final.name}.tmp"
        try:
            pq.write_table(table, tmp, row_group_size=self.row_group_size, compression="zstd")
            os.replace(tmp, final)
            pointer = directory / f".{CURRENT}.{uuid.uuid4().hex[:8]}.tmp"
            pointer.write_text(final.name)
            os.replace(pointer, directory / CURRENT)
        finally:
            tmp.unlink(missing_ok=True)
        self._prune(directory, final.name)
        return SegmentVersion(final, len(ids), now_ms)

    def current(self, tenant: str, name: str) -> Path | None:
        """The live version's file, or None if the segment was never written."""
        try:
            pointer = (self.directory(tenant, name) / CURRENT).read_text().strip()
        except FileNotFoundError:
            return None
        return self.directory(tenant, name) / pointer

    def _prune(self, directory: Path, current: str) -> None:
        """Keep the current version and the newest ``versions_kept`` replaced ones."""
        old = sorted((p for p in directory.glob("v*.parquet") if p.name != current),
                     key=lambda p: p.name, reverse=True)
        for path in old[self.versions_kept:]:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------- reading

class SegmentReader:
    """Rows ``[start, start + count)`` of one segment file, one row group read at a time."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._file = pq.ParquetFile(self.path)
        meta = self._file.metadata
        self.count = meta.num_rows
        self._starts = [0]
        for i in range(meta.num_row_groups):
            self._starts.append(self._starts[-1] + meta.row_group(i).num_rows)
        kv = meta.metadata or {}
        self._max_len = int(kv[META_MAX_LEN]) if META_MAX_LEN in kv else None
        self._cached: tuple[int, pa.Array] | None = None

    @property
    def max_id_length(self) -> int:
        """The longest id (from the file's metadata; computed once if a file lacks it)."""
        if self._max_len is None:
            column = self._file.read(columns=[COLUMN]).column(COLUMN)
            self._max_len = (pc.max(pc.utf8_length(column)).as_py() or 0) if len(column) else 0
        return self._max_len

    def _group(self, index: int) -> pa.Array:
        if self._cached is None or self._cached[0] != index:
            column = self._file.read_row_group(index, columns=[COLUMN]).column(COLUMN)
            self._cached = (index, ids_array(column))
        return self._cached[1]

    def read(self, start: int, count: int) -> pa.Array:
        if start < 0 or count < 0:
            raise ValueError("start and count must not be negative")
        end = min(start + count, self.count)
        parts = []
        position = start
        while position < end:
            index = self._group_of(position)
            group_start = self._starts[index]
            group = self._group(index)
            take = min(end, self._starts[index + 1]) - position
            parts.append(group.slice(position - group_start, take))
            position += take
        if not parts:
            return pa.array([], pa.string())
        return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)

    def _group_of(self, row: int) -> int:
        lo, hi = 0, len(self._starts) - 2
        while lo < hi:  # the last group whose start is <= row
            mid = (lo + hi + 1) // 2
            if self._starts[mid] <= row:
                lo = mid
            else:
                hi = mid - 1
        return lo


def read_batches(path: str | Path, start_row: int = 0,
                 batch_size: int = 10_000) -> Iterator[list[str]]:
    """The segment's ids from ``start_row`` on, as lists of at most ``batch_size``."""
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    reader = SegmentReader(path)
    for start in range(start_row, reader.count, batch_size):
        yield reader.read(start, batch_size).to_pylist()


# ---------------------------------------------------------------- input files (CLI)

def read_input(path: str | Path) -> pa.Table:
    """A CSV (with a header row) or Parquet file as an Arrow table of strings."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        table = pq.read_table(path)
    elif suffix == ".csv":
        import csv
        import pyarrow.csv as pacsv
        with open(path, newline="", encoding="utf-8") as fh:
            names = next(csv.reader(fh), [])
        if not names:
            raise ValidationError(f"{path.name}: empty file (a header row is needed)", "file")
        # every column as text: "007" stays "007"; empty cells are empty strings, not nulls
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=False,
            quoted_strings_can_be_null=False))
    else:
        raise ValidationError(f"{path.name}: expected a .csv or .parquet file", "file")
    return table


def input_ids(table: pa.Table, source: str = "input") -> pa.Array:
    """The ``user_id`` column, or the only column of a one-column file."""
    if COLUMN in table.column_names:
        return ids_array(table.column(COLUMN))
    if table.num_columns == 1:
        return ids_array(table.column(0))
    raise ValidationError(f"{source}: no '{COLUMN}' column (columns: "
                          f"{', '.join(table.column_names) or 'none'})", COLUMN,
                          "missing_field")
