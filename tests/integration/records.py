"""Notifications for the integration tests: valid critical push records, created now."""
from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)


def note(unique: str, i, user: str, **extra) -> dict:
    """A valid critical push notification with id ``{unique}-{i}``; ``extra`` overrides fields."""
    t = now_ms()
    record = {"id": f"{unique}-{i}", "tenant_id": "acme", "user_id": user, "priority": "critical",
              "channels": ["push"], "to": {"push_token": f"tok-{user}", "platform": "android"},
              "content": {"body": f"message {i}"}, "created_at": t, "expires_at": t + 600_000}
    record.update(extra)
    return record
