"""The OpenAPI 3.1 document of the API, served at ``GET /openapi.json``.

Written by hand next to the handlers it describes; ``tests/integration/test_api.py`` runs
schemathesis against it, so a drift between this and the implementation fails a test.
"""
from __future__ import annotations

from typing import Any

from herald.campaigns import SEGMENT_NAME
from herald.settings import Settings

ID = {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[^\\s/]+$",
      "description": "printable characters without whitespace or '/' (no control, zero-width "
                     "or bidi characters)"}
TENANT = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
EPOCH_MS = {"type": "integer", "minimum": 100_000_000_000, "maximum": 9_999_999_999_999,
            "description": "epoch milliseconds"}
CHANNELS = {"type": "array", "minItems": 1, "uniqueItems": True,
            "items": {"type": "string", "enum": ["push", "sms", "email"]}}
CLOCK = "^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$"
TEMPLATE_TEXT = {"type": "string", "minLength": 1,
                 "description": "text with {{name}} fields; \\{{ writes a literal {{"}
STATES = ["accepted", "delivered", "retrying", "fallback", "expired", "duplicate", "cancelled",
          "opted_out", "failed", "delivered_to_handset", "bounced", "token_invalid"]
CAMPAIGN_STATES = ["accepted", "expanding", "sending", "completed", "cancelled", "expired",
                   "failed"]
PROGRESS_FIELDS = ["expanded", "total", "delivered", "failed", "expired", "cancelled",
                   "opted_out", "pending", "sent"]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict:
    words = {400: "Malformed JSON or an invalid header", 401: "Missing or unknown API key",
             403: "The body names another tenant", 404: "Not found (or another tenant's)",
             409: "The same idempotency key or id is still being processed",
             413: "Body larger than the limit", 415: "Body is not UTF-8 application/json",
             422: "The record breaks the contract", 503: "Kafka or Redis did not answer in time"}
    return {str(s): _json(_ref("Error"), words[s]) for s in statuses}


def _body(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _path(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema,
            "description": description}


IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
    "description": "A repeat with the same key gets the first answer and enqueues nothing."}

REPLAYED = {"Idempotent-Replayed": {"description": "present on a repeated request's answer",
                                    "schema": {"type": "string", "enum": ["true"]}}}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message", "field"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "field": {"type": ["string", "null"]}}}}},
    "Contacts": {
        "type": "object",
        "properties": {"push_token": {"type": "string", "minLength": 1, "maxLength": 4096},
                       "platform": {"type": "string", "enum": ["ios", "android"]},
                       "phone": {"type": "string", "pattern": "^\\+[1-9][0-9]{1,14}$",
                                 "description": "E.164"},
                       "email": {"type": "string", "minLength": 3, "maxLength": 320,
                                 "pattern": "^[^@\\s]+@[^@\\s.][^@\\s]*\\.[^@\\s]*[^@\\s.]$",
                                 "description": "one '@', a local part, a domain with a dot"}},
        "additionalProperties": False},
    "Content": {
        "type": "object",
        "description": "needs a 'body' or a 'template'",
        "properties": {"title": {"type": "string", "minLength": 1, "maxLength": 1024},
                       "body": {"type": "string", "minLength": 1, "maxLength": 65536},
                       "data": {"type": "object", "additionalProperties": {"type": "string"}},
                       "template": {"type": "string", "minLength": 1, "maxLength": 256},
                       "vars": {"type": "object"}},
        "additionalProperties": False},
    "Notification": {
        "type": "object",
        "required": ["id", "tenant_id", "user_id", "priority", "content", "created_at"],
        "additionalProperties": False,
        "description": "fields the contract does not list are refused (422 naming the field)",
        "properties": {
            "id": ID, "tenant_id": TENANT, "user_id": ID,
            "priority": {"type": "string", "enum": ["critical", "promotional"]},
            "channels": CHANNELS, "to": _ref("Contacts"), "content": _ref("Content"),
            "created_at": EPOCH_MS,
            "expires_at": {**EPOCH_MS, "description": "required for promotional; in the future"},
            "seq": {"type": "integer", "minimum": 0},
            "campaign_id": ID, "send_at": EPOCH_MS}},
    "Audience": {
        "description": "exactly one of 'segment' or 'user_ids'",
        "oneOf": [
            {"type": "object", "required": ["segment"], "additionalProperties": False,
             "properties": {"segment": {"type": "string", "pattern": f"^{SEGMENT_NAME.pattern}$"}}},
            {"type": "object", "required": ["user_ids"], "additionalProperties": False,
             "properties": {"user_ids": {"type": "array", "minItems": 1, "uniqueItems": True,
                                         "items": ID}}}]},
    "Campaign": {
        "type": "object",
        "required": ["campaign_id", "tenant_id", "audience", "channels", "content", "created_at",
                     "expires_at"],
        "additionalProperties": False,
        "description": "fields the contract does not list are refused (422 naming the field)",
        "properties": {
            "campaign_id": {**ID, "pattern": "^[^\\s/:]+$"},
            "tenant_id": TENANT, "audience": _ref("Audience"), "channels": CHANNELS,
            "content": _ref("Content"), "created_at": EPOCH_MS,
            "expires_at": {**EPOCH_MS, "description": "in the future; an expired campaign is 422"},
            "send_at": {**EPOCH_MS, "description": "earlier than expires_at"}}},
    "NotificationAccepted": {"type": "object", "required": ["id"],
                             "properties": {"id": {"type": "string"}}},
    "CampaignAccepted": {"type": "object", "required": ["campaign_id"],
                         "properties": {"campaign_id": {"type": "string"}}},
    "CancelAccepted": {"type": "object", "required": ["campaign_id", "cancel_requested_at"],
                       "properties": {"campaign_id": {"type": "string"},
                                      "cancel_requested_at": {"type": "integer"}}},
    "StatusEvent": {
        "type": "object", "required": ["id", "tenant_id", "state", "at"],
        "properties": {"id": {"type": "string"}, "tenant_id": {"type": "string"},
                       "user_id": {"type": "string"}, "priority": {"type": "string"},
                       "channel": {"type": "string"}, "provider": {"type": "string"},
                       "state": {"type": "string", "enum": STATES},
                       "attempt": {"type": "integer"}, "at": {"type": "integer"},
                       "latency_ms": {"type": "integer"}, "detail": {"type": "string"},
                       "campaign_id": {"type": "string"}}},
    "NotificationStatus": {
        "type": "object",
        "required": ["id", "tenant_id", "user_id", "priority", "state", "updated_at",
                     "enqueued_at", "attempts"],
        "properties": {
            "id": {"type": "string"}, "tenant_id": {"type": "string"},
            "user_id": {"type": ["string", "null"]}, "priority": {"type": ["string", "null"]},
            "campaign_id": {"type": "string"},
            "state": {"type": "string", "enum": ["enqueued", *STATES],
                      "description": "the latest state; 'enqueued' before the first event"},
            "updated_at": {"type": ["integer", "null"]},
            "enqueued_at": {"type": ["integer", "null"]},
            "attempts": {"type": "array", "items": _ref("StatusEvent"),
                         "description": "every Status event, oldest first"}}},
    "CampaignProgress": {
        "type": "object", "required": ["campaign_id", "tenant_id", "state", "progress", "states"],
        "properties": {
            "campaign_id": {"type": "string"}, "tenant_id": {"type": "string"},
            "state": {"type": "string", "enum": CAMPAIGN_STATES,
                      "description": "accepted -> expanding -> sending -> completed (every "
                                     "expanded recipient has a final state), or cancelled, "
                                     "expired (before the audience was expanded to its end), "
                                     "failed (the expansion could not go on)"},
            "progress": {
                "type": "object", "required": PROGRESS_FIELDS,
                "description": "expanded: recipients the expansion handed on; total: the "
                               "audience's size once known; delivered .. opted_out: recipients "
                               "by their final state, each counted once; pending: expanded "
                               "without a final state; sent: delivered (an older name)",
                "properties": {k: {"type": "integer", "minimum": 0} for k in PROGRESS_FIELDS}},
            "states": {"type": "object", "additionalProperties": {"type": "integer"},
                       "description": "distinct recipients that reached each state"},
            "accepted_at": {"type": "integer"}, "created_at": {"type": "integer"},
            "expires_at": {"type": "integer"}, "send_at": {"type": "integer"},
            "cancel_requested_at": {"type": "integer"}, "audience": {"type": "object"}}},
    "QuietHours": {
        "type": "object", "required": ["start", "end", "tz"],
        "properties": {"start": {"type": "string", "pattern": CLOCK},
                       "end": {"type": "string", "pattern": CLOCK},
                       "tz": {"type": "string", "description": "IANA time zone",
                              "examples": ["Europe/Berlin"]}}},
    "User": {
        "type": "object", "additionalProperties": False,
        "properties": {"tenant_id": TENANT, "user_id": ID, "contacts": _ref("Contacts"),
                       "locale": {"type": "string", "examples": ["en", "pt-BR"]},
                       "opt_outs": CHANNELS | {"minItems": 0},
                       "quiet_hours": _ref("QuietHours")}},
    "UserStored": {
        "type": "object",
        "required": ["user_id", "tenant_id", "contacts", "opt_outs", "updated_at"],
        "properties": {"user_id": {"type": "string"}, "tenant_id": {"type": "string"},
                       "contacts": _ref("Contacts"), "locale": {"type": "string"},
                       "opt_outs": {"type": "array", "items": {"type": "string"}},
                       "quiet_hours": _ref("QuietHours"), "updated_at": {"type": "integer"}}},
    "Template": {
        "type": "object", "required": ["default_locale", "locales"], "additionalProperties": False,
        "properties": {
            "tenant_id": TENANT, "name": {"type": "string"},
            "default_locale": {"type": "string", "description": "one of the keys of 'locales'"},
            "locales": {"type": "object", "minProperties": 1, "maxProperties": 64,
                        "description": "locale ('en', 'pt-BR') → its variant",
                        "additionalProperties": {
                            "type": "object", "minProperties": 1, "additionalProperties": False,
                            "description": "each field falls back on its own: locale, its "
                                           "language, default_locale (which needs a body)",
                            "properties": {"title": TEMPLATE_TEXT | {"maxLength": 1024},
                                           "body": TEMPLATE_TEXT | {"maxLength": 65536}}}}}},
    "TemplateStored": {
        "type": "object", "required": ["name", "tenant_id", "default_locale", "locales",
                                       "updated_at"],
        "properties": {"name": {"type": "string"}, "tenant_id": {"type": "string"},
                       "default_locale": {"type": "string"}, "locales": {"type": "object"},
                       "updated_at": {"type": "integer"}}},
    "Segment": {
        "type": "object", "required": ["user_ids"], "additionalProperties": False,
        "properties": {"tenant_id": TENANT, "name": {"type": "string"},
                       "user_ids": {"type": "array", "uniqueItems": True, "items": ID}}},
    "SegmentStored": {
        "type": "object", "required": ["name", "tenant_id", "count", "updated_at"],
        "properties": {"name": {"type": "string"}, "tenant_id": {"type": "string"},
                       "count": {"type": "integer", "minimum": 0},
                       "updated_at": {"type": "integer"}}},
    "Webhook": {
        "type": "object", "required": ["url", "secret"], "additionalProperties": False,
        "properties": {"url": {"type": "string", "format": "uri", "maxLength": 2048,
                               "description": "http(s) URL each final status is POSTed to"},
                       "secret": {"type": "string", "minLength": 16, "maxLength": 256,
                                  "description": "HMAC-SHA256 key of X-Herald-Signature"},
                       "tenant_id": TENANT}},
    "WebhookStored": {
        "type": "object", "required": ["tenant_id", "url", "updated_at"],
        "properties": {"tenant_id": {"type": "string"}, "url": {"type": "string"},
                       "updated_at": {"type": "integer"}}},
    "ReceiptsRecorded": {
        "type": "object", "required": ["receipts"],
        "properties": {"receipts": {"type": "integer", "minimum": 0}}},
    "TwilioStatusCallback": {
        "type": "object", "additionalProperties": {"type": "string"},
        "properties": {k: {"type": "string"} for k in (
            "MessageSid", "MessageStatus", "ErrorCode", "To", "From", "AccountSid")}},
    "SendGridEvents": {
        "type": "array", "items": {
            "type": "object",
            "properties": {"event": {"type": "string"}, "sg_message_id": {"type": "string"},
                           "email": {"type": "string"}, "timestamp": {"type": "integer"},
                           "reason": {"type": "string"}, "type": {"type": "string"}}}},
}

NOTIFICATION_ID = _path("id", ID, "the notification id")
CAMPAIGN_ID = _path("campaign_id", {**ID, "pattern": "^[^\\s/:]+$"}, "the campaign id")
USER_ID = _path("user_id", ID, "the user id")
SEGMENT = _path("name", {"type": "string", "pattern": f"^{SEGMENT_NAME.pattern}$"},
                "the segment name")

TEMPLATE = _path("name", {"type": "string", "pattern": f"^{SEGMENT_NAME.pattern}$"},
                 "the template name")


def build_openapi(settings: Settings) -> dict:
    body_limit = settings.api_max_body_bytes
    write_errors = _errors(400, 401, 403, 409, 413, 415, 422, 503)
    read_errors = _errors(401, 404, 422, 503)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Herald", "version": "1.0.0",
                 "description": "Notification delivery: enqueue notifications and campaigns, "
                                "follow their delivery. Errors are "
                                "{\"error\": {\"code\", \"message\", \"field\"}}. Bodies are "
                                f"limited to {body_limit} bytes (segments: "
                                f"{settings.api_max_segment_bytes})."},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/notifications": {"post": {
                "operationId": "enqueueNotification",
                "summary": "Validate and enqueue one notification",
                "parameters": [IDEMPOTENCY_HEADER],
                "requestBody": _body(_ref("Notification")),
                "responses": {"202": _json(_ref("NotificationAccepted"), "Enqueued (or the "
                                           "first answer to a repeat)") | {"headers": REPLAYED},
                              **write_errors}}},
            "/v1/notifications/{id}": {"get": {
                "operationId": "getNotification",
                "summary": "Latest state and every delivery attempt",
                "parameters": [NOTIFICATION_ID],
                "responses": {"200": _json(_ref("NotificationStatus"), "Known notification"),
                              **read_errors}}},
            "/v1/campaigns": {"post": {
                "operationId": "enqueueCampaign",
                "summary": "Validate and enqueue a campaign",
                "parameters": [IDEMPOTENCY_HEADER],
                "requestBody": _body(_ref("Campaign")),
                "responses": {"202": _json(_ref("CampaignAccepted"), "Enqueued (or the first "
                                           "answer to a repeat)") | {"headers": REPLAYED},
                              **write_errors}}},
            "/v1/campaigns/{campaign_id}": {
                "get": {"operationId": "getCampaign", "summary": "Progress counts",
                        "parameters": [CAMPAIGN_ID],
                        "responses": {"200": _json(_ref("CampaignProgress"), "Known campaign"),
                                      **read_errors}},
                "delete": {"operationId": "cancelCampaign",
                           "summary": "Cancel: nothing more of it is sent",
                           "parameters": [CAMPAIGN_ID, IDEMPOTENCY_HEADER],
                           "responses": {"202": _json(_ref("CancelAccepted"), "Cancel enqueued")
                                         | {"headers": REPLAYED},
                                         **_errors(400, 401, 404, 409, 422, 503)}}},
            "/v1/users/{user_id}": {
                "put": {"operationId": "putUser", "summary": "Upsert (replace) a user record",
                        "parameters": [USER_ID], "requestBody": _body(_ref("User")),
                        "responses": {"200": _json(_ref("UserStored"), "Stored"),
                                      **_errors(400, 401, 403, 413, 415, 422, 503)}},
                "get": {"operationId": "getUser", "summary": "A stored user record",
                        "parameters": [USER_ID],
                        "responses": {"200": _json(_ref("UserStored"), "Stored user"),
                                      **read_errors}}},
            "/v1/segments/{name}": {
                "put": {"operationId": "putSegment", "summary": "Upsert (replace) a segment",
                        "parameters": [SEGMENT], "requestBody": _body(_ref("Segment")),
                        "responses": {"200": _json(_ref("SegmentStored"), "Stored"),
                                      **_errors(400, 401, 403, 413, 415, 422, 503)}},
                "get": {"operationId": "getSegment", "summary": "A segment's size",
                        "parameters": [SEGMENT],
                        "responses": {"200": _json(_ref("SegmentStored"), "Stored segment"),
                                      **read_errors}}},
            "/v1/templates/{name}": {
                "put": {"operationId": "putTemplate",
                        "summary": "Upsert (replace) a content template",
                        "parameters": [TEMPLATE], "requestBody": _body(_ref("Template")),
                        "responses": {"200": _json(_ref("TemplateStored"), "Stored"),
                                      **_errors(400, 401, 403, 413, 415, 422, 503)}},
                "get": {"operationId": "getTemplate", "summary": "A stored template",
                        "parameters": [TEMPLATE],
                        "responses": {"200": _json(_ref("TemplateStored"), "Stored template"),
                                      **read_errors}}},
            "/v1/webhook": {
                "put": {"operationId": "putWebhook",
                        "summary": "Register (replace) the tenant's webhook: each final status "
                                   "is POSTed there, signed",
                        "requestBody": _body(_ref("Webhook")),
                        "responses": {"200": _json(_ref("WebhookStored"), "Stored"),
                                      **_errors(400, 401, 403, 413, 415, 422, 503)}},
                "get": {"operationId": "getWebhook", "summary": "The tenant's webhook (no secret)",
                        "responses": {"200": _json(_ref("WebhookStored"), "Registered"),
                                      **_errors(401, 404, 503)}},
                "delete": {"operationId": "deleteWebhook", "summary": "Stop calling it",
                           "responses": {"204": {"description": "Removed (or there was none)"},
                                         **_errors(401, 503)}}},
            "/v1/receipts/twilio": {"post": {
                "operationId": "twilioReceipt", "security": [],
                "summary": "Twilio's status callback (checked by X-Twilio-Signature)",
                "requestBody": {"required": True, "content": {
                    "application/x-www-form-urlencoded": {"schema": _ref("TwilioStatusCallback")}}},
                "responses": {"200": _json(_ref("ReceiptsRecorded"), "Recorded"),
                              **_errors(403, 409, 413, 422, 503)}}},
            "/v1/receipts/sendgrid": {"post": {
                "operationId": "sendgridReceipt", "security": [],
                "summary": "SendGrid's Event Webhook (checked by ?token= when configured)",
                "requestBody": _body(_ref("SendGridEvents")),
                "responses": {"200": _json(_ref("ReceiptsRecorded"), "Recorded"),
                              **_errors(400, 403, 409, 413, 422, 503)}}},
            "/healthz": {"get": {
                "operationId": "healthz", "summary": "Liveness", "security": [],
                "responses": {"200": _json({"type": "object", "required": ["status"],
                                            "properties": {"status": {"const": "ok"}}},
                                           "Alive")}}},
            "/metrics": {"get": {
                "operationId": "metrics", "summary": "Prometheus text format", "security": [],
                "responses": {"200": {"description": "Metrics",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document", "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}},
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a per-tenant API key"}}},
    }
