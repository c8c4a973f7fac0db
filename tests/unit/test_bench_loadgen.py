"""The load generator's records: contract-valid, 300–600 bytes, keyed by user, Zipf-skewed."""
import numpy as np
import orjson

from bench.loadgen import MAX_BYTES, MIN_BYTES, RecordFactory, zipf_cdf
from herald.models import parse_notification


def records(factory: RecordFactory, n: int, created_at: int = 1_764_000_000_000):
    ranks, sizes, draws = factory.chunk(n)
    return [factory.record(i, ranks[i], sizes[i], draws[i], created_at) for i in range(n)]


def test_records_are_valid_notifications_of_300_to_600_bytes_keyed_by_user():
    factory = RecordFactory(run="t", channels="mixed", platforms="mixed")
    out = records(factory, 2_000)
    sizes = [len(v) for _, v in out]
    assert MIN_BYTES <= min(sizes) and max(sizes) <= MAX_BYTES
    assert max(sizes) - min(sizes) > 200  # spread over the range, not one size
    ids = set()
    for key, value in out:
        n = parse_notification(value, expected_priority="critical")
        assert key == n.user_id.encode()
        assert n.content.data["c"] == str(n.created_at)
        ids.add(n.id)
    assert len(ids) == len(out)
    channels = {tuple(orjson.loads(v)["channels"]) for _, v in out}
    assert ("push",) in channels and ("push", "sms") in channels and ("email",) in channels


def test_user_choice_is_zipf_skewed_over_a_million_users():
    factory = RecordFactory(users=1_000_000, zipf_s=0.8, seed=7)
    ranks = factory.user_ranks(200_000)
    assert ranks.min() >= 0 and ranks.max() < 1_000_000
    counts = np.bincount(ranks, minlength=1_000_000)
    cdf = zipf_cdf(1_000_000, 0.8)
    # the hottest user gets its Zipf share (≈1.3% at s=0.8), rank 1 about 2^-0.8 of it
    assert abs(counts[0] / len(ranks) - cdf[0]) < 0.002
    assert 0.45 < counts[1] / counts[0] < 0.9
    # a long tail: many distinct users, the top 1% of users far above 1% of the records
    assert len(np.unique(ranks)) > 50_000
    assert counts[:10_000].sum() / len(ranks) > 0.2


def test_same_seed_same_records_and_seq_counts_per_user():
    a = records(RecordFactory(run="r", seed=3, seq=True), 500)
    b = records(RecordFactory(run="r", seed=3, seq=True), 500)
    assert a == b
    last: dict = {}
    for key, value in a:
        seq = orjson.loads(value)["seq"]
        assert seq == last.get(key, -1) + 1
        last[key] = seq


def test_promotional_records_carry_a_longer_expiry():
    (_, value), = records(RecordFactory(priority="promotional"), 1)
    n = parse_notification(value, expected_priority="promotional")
    assert n.expires_at - n.created_at == 3_600_000
