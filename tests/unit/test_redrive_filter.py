"""redrive's filters (herald_cli.dlq_filter) and where a run leaves a partition's progress."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from herald.errors import ValidationError
from herald_cli.__main__ import COMMAND_MODULES  # noqa: F401 (the CLI imports cleanly)
from herald_cli.dlq_filter import DeadLetterFilter, compile_reason, parse_since
from herald_cli.redrive import filter_from_args, next_mark

NOW = 1_765_000_000_000  # 2025-12-06T05:46:40Z


def letter(**fields):
    base = {"id": "n-1", "tenant_id": "acme", "user_id": "u-1", "stage": "delivery",
            "reason": "every channel failed; email: sendgrid 400 invalid_email", "at": NOW - 60_000}
    return {**base, **fields}


def test_no_filter_matches_every_letter_even_unreadable_ones():
    f = DeadLetterFilter()
    assert not f.active
    assert f.matches(letter()) and f.matches(None, "k") and f.matches({"raw": "x"})


def test_ids_are_exact_and_a_record_without_id_is_matched_by_its_key():
    f = DeadLetterFilter(ids=frozenset({"n-1", "n-3"}))
    assert f.matches(letter(id="n-1")) and f.matches(letter(id="n-3"))
    assert not f.matches(letter(id="n-10")) and not f.matches(letter(id="n"))
    assert f.matches({"raw": "not json", "stage": "parse"}, key="n-3")
    assert not f.matches({"raw": "not json"}, key="n-2")
    assert not f.matches(letter(id="n-2"), key="n-1")  # the id wins over the key


def test_tenant_is_exact():
    f = DeadLetterFilter(tenant="acme")
    assert f.matches(letter()) and not f.matches(letter(tenant_id="acme2"))
    assert not f.matches(letter(tenant_id=None)) and not f.matches(None)


def test_reason_is_a_regex_searched_anywhere_case_sensitive():
    assert DeadLetterFilter(reason=compile_reason("invalid_email")).matches(letter())
    assert DeadLetterFilter(reason=compile_reason(r"sendgrid \d{3}")).matches(letter())
    assert not DeadLetterFilter(reason=compile_reason("INVALID")).matches(letter())
    assert not DeadLetterFilter(reason=compile_reason("^email")).matches(letter())
    assert not DeadLetterFilter(reason=compile_reason("x")).matches(letter(reason=None))
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        compile_reason("missing (paren")


def test_since_compares_the_letters_at():
    f = DeadLetterFilter(since_ms=NOW - 120_000)
    assert f.matches(letter(at=NOW - 120_000)) and f.matches(letter(at=NOW))
    assert not f.matches(letter(at=NOW - 120_001))
    assert not f.matches(letter(at=None)) and not f.matches(letter(at=True))
    assert not f.matches(letter(at="2025-12-06"))


def test_every_filter_must_pass():
    f = DeadLetterFilter(ids=frozenset({"n-1"}), tenant="acme",
                         reason=compile_reason("invalid"), since_ms=NOW - 120_000)
    assert f.active and f.matches(letter())
    for miss in (dict(id="n-2"), dict(tenant_id="globex"), dict(reason="timeout"),
                 dict(at=NOW - 200_000)):
        assert not f.matches(letter(**miss)), miss


@pytest.mark.parametrize("text, back_ms", [("90s", 90_000), ("30m", 1_800_000),
                                           ("2h", 7_200_000), ("1d", 86_400_000),
                                           ("1w", 604_800_000), ("1h30m", 5_400_000),
                                           ("1.5h", 5_400_000), ("250ms", 250)])
def test_since_durations_count_back_from_now(text, back_ms):
    assert parse_since(text, NOW) == NOW - back_ms


@pytest.mark.parametrize("text, iso", [
    ("2026-12-05T22:00:00Z", "2026-12-05T22:00:00+00:00"),
    ("2026-12-05T22:00:00", "2026-12-05T22:00:00+00:00"),     # no zone: UTC
    ("2026-12-05T23:00:00+01:00", "2026-12-05T22:00:00+00:00"),
    ("2026-12-05", "2026-12-05T00:00:00+00:00")])
def test_since_iso_times(text, iso):
    assert parse_since(text, NOW) == int(datetime.fromisoformat(iso).timestamp() * 1000)


@pytest.mark.parametrize("text", ["", "yesterday", "5", "2x", "2h ago", "-2h"])
def test_since_refuses_what_it_cannot_read(text):
    with pytest.raises(ValidationError, match="since"):
        parse_since(text, NOW)


def test_describe_names_each_filter():
    f = DeadLetterFilter(ids=frozenset({"b", "a"}), tenant="acme",
                         reason=compile_reason("timeout"),
                         since_ms=int(datetime(2026, 12, 5, 22, tzinfo=timezone.utc)
                                      .timestamp() * 1000))
    assert f.describe() == ("id a|b, tenant acme, reason ~ /timeout/, "
                            "at >= 2026-12-05T22:00:00Z")
    assert DeadLetterFilter().describe() == "every dead letter"


def test_the_cli_builds_the_filter_from_its_flags():
    import argparse
    from herald_cli import redrive
    parser = argparse.ArgumentParser()
    redrive.register(parser.add_subparsers())
    args = parser.parse_args(["redrive", "--from-dlq", "--id", "a", "--id", "b", "--tenant",
                              "acme", "--reason", "invalid_(email|token)", "--since", "2h",
                              "--dry-run"])
    f = filter_from_args(args, now_ms=NOW)
    assert f == DeadLetterFilter(frozenset({"a", "b"}), "acme", f.reason, NOW - 7_200_000)
    assert f.reason.pattern == "invalid_(email|token)" and args.dry_run
    assert not filter_from_args(parser.parse_args(["redrive", "--from-dlq"]), NOW).active


def test_a_partitions_progress_stops_at_the_first_letter_that_stays():
    # nothing stays: everything up to where the run read is done
    assert next_mark(10, 20, []) == 20
    # a letter left by the filters holds the committed offset there
    assert next_mark(10, 20, [13, 17]) == 13
    # the run stopped early (--limit): what it did not read is not done
    assert next_mark(10, 15, []) == 15
    # nothing read at all
    assert next_mark(10, 10, []) == 10
