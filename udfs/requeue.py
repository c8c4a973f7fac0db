"""What travels on a retry topic, and what a call-stage payload turns into.

A retry record (Kafka key: the user id) is the notification plus where its delivery stands::

    {"retry": {"channel": "sms", "attempt": 2, "not_before": 1764000001234, "step": 3,
               "history": [{"channel": "push", "provider": "fcm", "attempt": 1, ...}, ...],
               "redrive": null},
     "notification": {...the contract's Notification...}}

``attempt`` is the number of the next try on ``channel`` (throttles and circuit-open deferrals
do not use one up); ``step`` counts the re-queues of this notification, so two copies of the
same re-queue (a replay after a crash) carry the same ``(id, redrive, step)`` and the retry
wait drops the second; ``redrive`` is the ``at`` of the dead letter a redrive came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from herald.errors import ValidationError
from herald.models import Notification, load_object, notification_from_dict

MAX_HISTORY = 32  # attempts kept per notification (the first ones and the latest ones)


@dataclass(slots=True)
class Task:
    """One notification on its way through the call stage."""
    n: Notification
    channel: str
    attempt: int = 1
    history: list[dict] = field(default_factory=list)
    step: int = 0
    redrive: int | None = None
    # set while the call stage works on it
    adapter: Any = None
    request: Any = None
    order: int = 0
    mark: str = ""          # its sent marker's name (udfs.markers.marker)
    # from the batch's lookups (udfs.lookups): never written to the retry topic, read again
    user: Any = None        # herald.users.UserRecord, or None
    no_user: bool = False   # looked up and not in the user store
    contacts: Any = None    # what to send to: inline ``to``, gaps filled from the user record
    message: Any = None     # the Notification the adapters build from (template rendered)

    @classmethod
    def fresh(cls, n: Notification) -> "Task":
        return cls(n, n.channels[0])

    def remember(self, attempt: dict) -> None:
        self.history.append(attempt)
        if len(self.history) > MAX_HISTORY:
            del self.history[MAX_HISTORY // 2]

    @property
    def chain(self) -> tuple[str, str]:
        """Whose calls go out one after another: the tenant's user."""
        return self.n.tenant_id, self.n.user_id

    def dedup_key(self) -> str:
        """One re-queue of one notification: the tenant's id (``\x1f`` never occurs in ids),
        the redrive and the step."""
        return f"{self.n.tenant_id}\x1f{self.n.id}|{self.redrive}|{self.step}"

    def legacy_dedup_key(self) -> str:
        """``dedup_key`` as versions without the tenant scope wrote it (read after a restore)."""
        return f"{self.n.id}|{self.redrive}|{self.step}"


def encode_retry(task: Task, not_before: int) -> bytes:
    return orjson.dumps({"retry": {"channel": task.channel, "attempt": task.attempt,
                                   "not_before": not_before, "step": task.step,
                                   "history": task.history, "redrive": task.redrive},
                         "notification": task.n.to_dict()})


def _int(obj: dict, name: str, default: int | None = None, minimum: int = 0) -> int | None:
    value = obj.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(f"'retry.{name}' must be an integer >= {minimum}, got {value!r}",
                              f"retry.{name}")
    return value


def decode_retry(obj: dict) -> tuple[Task, int]:
    """A retry record → (task, not_before). Raises ValidationError for anything off-format."""
    meta = obj.get("retry")
    if not isinstance(meta, dict):
        raise ValidationError("a retry record needs a 'retry' object", "retry")
    body = obj.get("notification")
    if not isinstance(body, dict):
        raise ValidationError("a retry record needs a 'notification' object", "notification")
    n = notification_from_dict(body)
    channel = meta.get("channel", n.channels[0])
    if channel not in n.channels:
        raise ValidationError(f"'retry.channel' {channel!r} is not one of the notification's "
                              f"channels {list(n.channels)}", "retry.channel")
    history = meta.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ValidationError("'retry.history' must be a list of objects", "retry.history")
    task = Task(n, channel, attempt=_int(meta, "attempt", 1, 1), history=list(history),
                step=_int(meta, "step", 0), redrive=_int(meta, "redrive", None))
    return task, _int(meta, "not_before", 0)


def task_from_payload(text: str | bytes) -> Task:
    """A call-stage payload: a released notification (from the gate) or a retry record."""
    obj = load_object(text)
    if "retry" in obj and "notification" in obj:
        return decode_retry(obj)[0]
    return Task.fresh(notification_from_dict(obj))
