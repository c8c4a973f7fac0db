"""A call stage's status events leave Python as one row (operators/rows.py) and are split into
(id, payload) records in Java (sql/status_records.sql); `status_records` is that split."""
from __future__ import annotations

import orjson

from herald import states
from herald.models import Status
from operators.rows import KEY_END, STATUS_END, status_batch, status_records


def status(i: int, detail: str | None = None) -> Status:
    return Status(id=f"n-{i}-é😀", tenant_id="t", user_id=f"u{i}", priority=states.CRITICAL,
                  state=states.DELIVERED, at=1_796_587_573_471 + i, detail=detail)


def test_a_batch_splits_into_each_status_with_its_id_as_the_key_in_order():
    sent = [status(i) for i in range(5)] + [
        status(9, detail=f"a detail with both separators {KEY_END} and {STATUS_END} in it")]
    records = status_records(status_batch(sent))
    assert [key for key, _ in records] == [s.id for s in sent]
    assert [orjson.loads(payload) for _, payload in records] == [
        orjson.loads(s.to_json()) for s in sent]


def test_separators_never_occur_raw_in_a_payload():
    """JSON escapes control characters, so a detail holding them cannot split a status."""
    payload = status(1, detail=KEY_END + STATUS_END).to_json().decode()
    assert KEY_END not in payload and STATUS_END not in payload
