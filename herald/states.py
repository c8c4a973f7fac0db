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
# After `delivered`, from the provider's own receipt (Twilio status callback, SendGrid event
# webhook): it reached the handset or the mail server, or it bounced. And `token_invalid`: the
# recipient's token, number or address is dead and was removed from the user record.
DELIVERED_TO_HANDSET = "delivered_to_handset"
BOUNCED = "bounced"
TOKEN_INVALID = "token_invalid"
RECEIPT_STATES = frozenset({DELIVERED_TO_HANDSET, BOUNCED})
STATES = frozenset({ACCEPTED, DELIVERED, RETRYING, FALLBACK, EXPIRED, DUPLICATE, CANCELLED,
                    OPTED_OUT, FAILED, DELIVERED_TO_HANDSET, BOUNCED, TOKEN_INVALID})

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
