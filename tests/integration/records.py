"""Notifications for the integration tests (valid critical push records, promotional ones
without contacts, created now) and user records put straight into the user store."""
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


def promo(tenant: str, i, user: str, **extra) -> dict:
    """A campaign-style promotional push notification with id ``{tenant}:{i}`` and no ``to``:
    its contacts come from the user record."""
    t = now_ms()
    record = {"id": f"{tenant}:{i}", "tenant_id": tenant, "user_id": user,
              "priority": "promotional", "channels": ["push"], "content": {"body": f"offer {i}"},
              "created_at": t, "expires_at": t + 600_000}
    record.update(extra)
    return record


def put_user(client, tenant: str, user_id: str, **doc) -> None:
    """Validate ``doc`` as ``PUT /v1/users/{id}`` does and replace the user's Redis hash."""
    from herald.users import queue_put, user_from_dict
    pipe = client.pipeline(transaction=True)
    queue_put(pipe, tenant, user_from_dict(doc, user_id), now_ms())
    pipe.execute()
