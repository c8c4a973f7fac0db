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
