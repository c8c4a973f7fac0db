"""Read what a provider mock accepted, from its own log (``GET /_mock/log``)."""
from __future__ import annotations

import requests

from herald.settings import Settings


def mock_records(provider: str, settings: Settings, what: str = "accepted") -> list[dict]:
    port = getattr(settings, f"mock_{provider}_port")
    answer = requests.get(f"http://127.0.0.1:{port}/_mock/log", params={"what": what}, timeout=10)
    answer.raise_for_status()
    return answer.json()["records"]


def accepted_ids(provider: str, settings: Settings) -> list[str]:
    return [r["herald_id"] for r in mock_records(provider, settings)]


def in_flight_bound(settings: Settings, call_stages: int = 1) -> int:
    """The most calls a crash can leave claimed without a `sent` marker (so re-sent after the
    restore), when no user has two records in one batch (a part then holds at most
    ``send_part_records``): per call stage, the parts under way (``send_parts_ahead`` and the
    one being begun) and the completed part whose settle rides in the next claim."""
    return call_stages * (settings.send_parts_ahead + 2) * settings.send_part_records


def repeats_after_a_kill(accepted: list[dict], killed_at: int, bound: int) -> dict:
    """Check a mock's accepted log (``mock_records``, any order) across one kill -9 after
    ``killed_at`` acceptances: what may repeat is only what was in flight at the kill, i.e.
    ids first accepted among the last ``bound`` acceptances before it, each at most once more.
    Returns {id: times accepted} of the repeated ids; raises AssertionError otherwise."""
    first: dict[str, int] = {}
    times: dict[str, int] = {}
    for position, record in enumerate(sorted(accepted, key=lambda r: r["seq"])):
        first.setdefault(record["herald_id"], position)
        times[record["herald_id"]] = times.get(record["herald_id"], 0) + 1
    repeated = {i: n for i, n in times.items() if n > 1}
    early = sorted((first[i], i) for i in repeated if first[i] < killed_at - bound)
    assert not early, (f"{len(early)} ids accepted well before the kill (more than {bound} "
                       f"acceptances before it, of {killed_at}) were sent again, e.g. {early[:5]}")
    after = sorted((first[i], i) for i in repeated if first[i] >= killed_at)
    assert not after, f"ids first sent after the kill were sent twice: {after[:5]}"
    assert max(repeated.values(), default=2) == 2, "an id was sent three times or more"
    assert len(repeated) <= bound, (len(repeated), bound)
    return repeated
