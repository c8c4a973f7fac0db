"""Delivery states, priorities and channels: the contract's words, defined once."""
from __future__ import annotations

ACCEPTED = "accepted"
DELIVERED = "delivered"
RETRYING = "retrying"
FALLBACK = "fallback"
EXPIRED = "expired"
DUPLICATE = "duplicate"
CANCELLED = "cancelled"
OPTED_OUT = "opted_out"
FAILED = "failed"
STATES = frozenset({ACCEPTED, DELIVERED, RETRYING, FALLBACK, EXPIRED, DUPLICATE, CANCELLED,
                    OPTED_OUT, FAILED})

CRITICAL = "critical"
PROMOTIONAL = "promotional"
PRIORITIES = frozenset({CRITICAL, PROMOTIONAL})

PUSH = "push"
SMS = "sms"
EMAIL = "email"
CHANNELS = frozenset({PUSH, SMS, EMAIL})
PLATFORMS = frozenset({"ios", "android"})

# DLQ stages: where in the pipeline a record was dead-lettered.
STAGE_PARSE = "parse"
STAGE_DELIVERY = "delivery"
STAGE_EXPANSION = "expansion"
