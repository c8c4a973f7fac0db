"""``herald_cli segments load`` and ``herald_cli users load``: segments and users from CSV or
Parquet, into the stores the API and the expansion use.

    python -m herald_cli segments load NAME FILE.csv|FILE.parquet --tenant T
    python -m herald_cli users load FILE.csv|FILE.parquet --tenant T [--skip-invalid]

A segment file has a ``user_id`` column (or one column only); it is checked whole (no empty or
repeated id, no control character) and written exactly as ``PUT /v1/segments/{name}`` writes
it: a new Parquet version (what the expansion reads) and the Redis list and meta the API shows.

A users file has a ``user_id`` column and any of ``push_token``, ``platform``, ``phone``,
``email``, ``locale``, ``opt_outs`` (channels separated by ``,`` ``;`` or ``|``),
``quiet_start``, ``quiet_end``, ``quiet_tz``; empty cells are absent values. Each row is
validated by the API's own rules, and each user replaces the Redis hash
``herald:user:{tenant}:{user_id}`` as ``PUT /v1/users/{id}`` does. Any invalid row stops the
load before anything is written, unless ``--skip-invalid``.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from herald.errors import ValidationError
from herald.redis_conn import async_redis_client, is_cluster
from herald.redis_conn import redis_client as make_client
from herald.segments import SegmentFiles, check_ids, check_tenant, input_ids, read_input
from herald.settings import Settings

USER_COLUMNS = ("user_id", "push_token", "platform", "phone", "email", "locale", "opt_outs",
                "quiet_start", "quiet_end", "quiet_tz")
CONTACT_COLUMNS = ("push_token", "platform", "phone", "email")
OPT_OUT_SPLIT = re.compile(r"[,;|]")
USER_WRITE_BATCH = 1_000
ERRORS_SHOWN = 10


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------- segments

def load_segment(settings: Settings, tenant: str, name: str, path: str | Path, *,
                 redis_client=None, now: int | None = None) -> str:
    """Write the file's ids as segment ``name`` of ``tenant``; return a one-line report."""
    from herald_api.store import SegmentStore
    check_tenant(tenant)
    ids = check_ids(input_ids(read_input(path), str(path)), max_len=settings.max_id_length)
    files = SegmentFiles.from_settings(settings)
    now = now_ms() if now is None else now

    async def put() -> int:
        client = redis_client or async_redis_client(settings)  # one server or Redis Cluster
        try:
            return await SegmentStore(client, files).put(tenant, name, ids.to_pylist(), now)
        finally:
            if redis_client is None:
                await client.aclose()

    count = asyncio.run(put())
    return (f"segment {name!r} of tenant {tenant!r}: {count} users "
            f"({files.current(tenant, name)})")


# ---------------------------------------------------------------- users

@dataclass
class UserLoad:
    """What a users file held: valid records and the rows refused, with their reasons."""
    users: list = field(default_factory=list)           # herald.users.UserRecord
    errors: list[str] = field(default_factory=list)
    rows: int = 0


def user_document(row: dict) -> dict:
    """One file row → the JSON body ``PUT /v1/users/{id}`` takes (empty cells left out)."""
    cells = {k: v for k, v in row.items() if v not in (None, "")}
    doc: dict = {"contacts": {k: cells[k] for k in CONTACT_COLUMNS if k in cells}}
    if "locale" in cells:
        doc["locale"] = cells["locale"]
    if "opt_outs" in cells:
        doc["opt_outs"] = [c.strip() for c in OPT_OUT_SPLIT.split(cells["opt_outs"]) if c.strip()]
    quiet = {k: cells[f"quiet_{k}"] for k in ("start", "end", "tz") if f"quiet_{k}" in cells}
    if quiet:
        doc["quiet_hours"] = quiet
    return doc


def read_users(path: str | Path) -> UserLoad:
    from herald.users import user_from_dict
    table = read_input(path)
    if "user_id" not in table.column_names:
        raise ValidationError(f"{path}: no 'user_id' column (columns: "
                              f"{', '.join(table.column_names)})", "user_id", "missing_field")
    unknown = sorted(set(table.column_names) - set(USER_COLUMNS))
    if unknown:
        raise ValidationError(f"{path}: unknown column(s) {', '.join(unknown)} (known: "
                              f"{', '.join(USER_COLUMNS)})", unknown[0])
    out = UserLoad()
    seen: set[str] = set()
    for i, row in enumerate(table.to_pylist(), start=1):
        out.rows += 1
        user_id = row.get("user_id")
        try:
            if user_id in seen:
                raise ValidationError(f"user {user_id!r} appears twice in the file", "user_id",
                                      "duplicate")
            out.users.append(user_from_dict(user_document(row), user_id))
            seen.add(user_id)
        except ValidationError as exc:
            out.errors.append(f"row {i} (user_id {user_id!r}): {exc.message}")
    return out


def write_users(client, tenant: str, users: Iterable, now: int) -> int:
    """Replace each user's hash (never merge), ``USER_WRITE_BATCH`` users per round trip."""
    from herald.users import queue_put
    batch, written = [], 0

    def flush() -> None:
        nonlocal written
        # a transaction on one server; a cluster has none across slots (as PUT /v1/users)
        with client.pipeline(transaction=not is_cluster(client)) as pipe:
            for user in batch:
                queue_put(pipe, tenant, user, now)
            pipe.execute()
        written += len(batch)
        batch.clear()

    for user in users:
        batch.append(user)
        if len(batch) >= USER_WRITE_BATCH:
            flush()
    if batch:
        flush()
    return written


def load_users(settings: Settings, tenant: str, path: str | Path, *, skip_invalid: bool = False,
               redis_client=None, now: int | None = None) -> str:
    """Load a users file into Redis; raise ValidationError (nothing written) on a bad row unless
    ``skip_invalid``. Returns a one-line report."""
    check_tenant(tenant)
    loaded = read_users(path)
    if loaded.errors and not skip_invalid:
        shown = "\n  ".join(loaded.errors[:ERRORS_SHOWN])
        more = len(loaded.errors) - ERRORS_SHOWN
        raise ValidationError(f"{len(loaded.errors)} of {loaded.rows} rows are invalid; nothing "
                              f"was written (--skip-invalid loads the rest):\n  {shown}"
                              + (f"\n  … and {more} more" if more > 0 else ""), "file")
    client = redis_client or make_client(settings)
    try:
        written = write_users(client, tenant, loaded.users, now_ms() if now is None else now)
    finally:
        if redis_client is None:
            client.close()
    report = f"users of tenant {tenant!r}: {written} written"
    if loaded.errors:
        report += f", {len(loaded.errors)} invalid rows skipped"
    return report


# ---------------------------------------------------------------- commands

def register(commands: argparse._SubParsersAction) -> None:
    """Add ``segments`` and ``users`` to the CLI; each parser's ``run(args, settings)``."""
    segments = commands.add_parser("segments", help="load segments (named lists of user ids)")
    seg_commands = segments.add_subparsers(dest="segments_command", required=True)
    seg_load = seg_commands.add_parser(
        "load", help="write a segment from a CSV or Parquet file (a user_id column)")
    seg_load.add_argument("name", help="the segment's name")
    seg_load.add_argument("file", help="a .csv (with a header row) or .parquet file")
    seg_load.add_argument("--tenant", required=True)
    seg_load.set_defaults(run=lambda args, settings: load_segment(
        settings, args.tenant, args.name, args.file))

    users = commands.add_parser("users", help="load user records")
    user_commands = users.add_subparsers(dest="users_command", required=True)
    user_load = user_commands.add_parser(
        "load", help="write users from a CSV or Parquet file into the Redis user store")
    user_load.add_argument("file", help="a .csv (with a header row) or .parquet file")
    user_load.add_argument("--tenant", required=True)
    user_load.add_argument("--skip-invalid", action="store_true",
                           help="load the valid rows even if some are invalid")
    user_load.set_defaults(run=lambda args, settings: load_users(
        settings, args.tenant, args.file, skip_invalid=args.skip_invalid))
