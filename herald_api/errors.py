"""API errors: one exception carrying the HTTP status and the contract's error shape."""
from __future__ import annotations

from herald.errors import HeraldError, ValidationError


class ApiError(HeraldError):
    """An answer other than success: ``{"error": {"code", "message", "field"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}

    @classmethod
    def from_validation(cls, exc: ValidationError) -> "ApiError":
        """Malformed JSON is a 400; every other contract violation a 422."""
        status = 400 if exc.code == "malformed_json" else 422
        return cls(status, exc.code, exc.message, exc.field)


class Unavailable(ApiError):
    """Kafka or Redis did not answer: 503, and nothing was promised."""

    def __init__(self, message: str):
        super().__init__(503, "unavailable", message, None, {"Retry-After": "1"})
