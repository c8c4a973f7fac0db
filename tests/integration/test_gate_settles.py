"""A `delivered` status leaves the gate only once the provider's acceptance is in Redis.

The gate sends a batch in parts and lets a part's settle (its `sent` markers) ride in the next
part's claim. If the part's `delivered` statuses left first, a crash in between (Redis or the
job killed) left them on herald.status with the markers still saying "in flight": after the
restore, a replay that had expired meanwhile was reported `expired`, a second final state for
one notification (seen in the Redis kill test). Here the real gate runs against the session's
Redis with the null provider, and every `delivered` row it yields is checked against its
marker at the moment it is yielded."""
from __future__ import annotations

import random
import uuid

import orjson
from pyflink.common import Row

from bench.gate_python import _Context, _Row, _RuntimeContext
from operators.gate import GateFunction
from operators.rows import status_records
from tests.integration.records import note
from udfs.markers import DONE, MARKER


def test_every_delivered_row_is_yielded_after_its_marker_is_settled(stack, base_settings,
                                                                     redis_client):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    settings = base_settings.replace(provider_transport="null", send_part_records=7,
                                     send_parts_ahead=2, quota_fcm_rate_per_s=1_000_000.0,
                                     quota_fcm_burst=100_000.0)
    gate = GateFunction(settings, "critical")
    gate.open(_RuntimeContext())
    delivered, unsettled = 0, []
    try:
        for b in range(4):
            records = []
            for i in range(rng.randrange(20, 120)):
                n = note(run, f"{b}-{i}", f"u{rng.randrange(40)}", tenant_id=f"t{run}")
                records.append({"p": 0, "o": len(records), "k": n["user_id"],
                                "v": orjson.dumps(n).decode(), "t": n["created_at"]})
            for row in gate.process_element(_Row(orjson.dumps(records).decode()), _Context()):
                if not isinstance(row, Row):  # side outputs: retries, dead letters
                    continue
                for _, payload in status_records(row):
                    status = orjson.loads(payload)
                    if status["state"] != "delivered":
                        continue
                    delivered += 1
                    key = MARKER.format(f"{status['tenant_id']}:{status['id']}")
                    if redis_client.get(key) != DONE:
                        unsettled.append(status["id"])
    finally:
        gate.close()
    assert delivered > 0, f"seed {seed}: nothing was delivered"
    assert not unsettled, (f"seed {seed}: {len(unsettled)} of {delivered} delivered before "
                           f"their marker was settled, e.g. {unsettled[:5]}")
