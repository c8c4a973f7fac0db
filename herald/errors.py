"""Herald's error tree: one root, so callers can catch everything Herald raises on purpose."""
from __future__ import annotations


class HeraldError(Exception):
    """Root of every error Herald raises deliberately."""


class ValidationError(HeraldError):
    """A record or request breaks the contract; ``field`` names the offending field, if any."""

    def __init__(self, message: str, field: str | None = None, code: str = "invalid"):
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code

    def to_dict(self) -> dict:
        out = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


class LanesChanged(HeraldError):
    """A job restored with another ``gate_lanes`` than its state was written with: users would
    move to lanes without their dedup, order and holds, so the job stops instead."""


class TooFewLanes(HeraldError):
    """A job started at a parallelism above its ``gate_lanes`` (or lanes above the max
    parallelism): a lane is worked by one gate subtask, so the extra subtasks would idle."""
