"""A quota below its minimum is refused with the minimum and the reason in the message."""
from __future__ import annotations

import pytest

from herald.errors import ValidationError
from udfs.quotas import MIN_BURST, MIN_RATE, quota_from_dict


def quota(**changes):
    return quota_from_dict({"kind": "quota", "provider": "fcm", "rate_per_s": 5, "burst": 2,
                            **changes})


def test_the_minimums_are_accepted():
    change = quota(rate_per_s=MIN_RATE, burst=MIN_BURST)
    assert (change.rate_per_s, change.burst) == (0.001, 2.0)


def test_a_burst_of_one_is_refused_naming_the_minimum_and_why():
    with pytest.raises(ValidationError) as refused:
        quota(burst=1)
    assert refused.value.field == "burst"
    assert "'burst' must be between 2 and 10,000,000, got 1" in refused.value.message
    assert "promotional take" in refused.value.message


def test_a_rate_of_zero_is_refused_naming_the_minimum():
    with pytest.raises(ValidationError, match=r"'rate_per_s' must be between 0.001 and"):
        quota(rate_per_s=0)
