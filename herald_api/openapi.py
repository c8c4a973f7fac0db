"""The OpenAPI 3.1 document of the API, served at ``GET /openapi.json``.

Paths, parameters and answers are written here; every schema is generated from the models that
validate the requests (``herald_api.schemas``), so the document cannot drift from the checks.
``tests/unit/test_openapi.py`` checks that each route the app serves has its operation and each
model field a description; ``tests/integration/test_api.py`` runs schemathesis against it.
"""
from __future__ import annotations

import copy
from functools import cache
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from herald.settings import Settings
from herald_api import schemas

REF = "#/components/schemas/{model}"


class _Generator(GenerateJsonSchema):
    """pydantic's JSON Schema, less its noise: no per-field titles, no ``"default": null``; a
    dict whose keys have a pattern says so in ``propertyNames`` (pydantic's
    ``patternProperties`` would leave other keys undescribed, which the model refuses)."""

    def field_title_should_be_set(self, schema) -> bool:
        return False

    def default_schema(self, schema):
        out = super().default_schema(schema)
        if "default" in out and out["default"] is None:
            del out["default"]
        return out

    def dict_schema(self, schema):
        out = super().dict_schema(schema)
        patterns = out.pop("patternProperties", None)
        if patterns:
            [(pattern, values)] = patterns.items()
            out["propertyNames"] = {**out.get("propertyNames", {}), "pattern": pattern}
            out["additionalProperties"] = values
        return out


@cache
def _component_schemas() -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in schemas.BODIES + schemas.ANSWERS],
                                ref_template=REF, schema_generator=_Generator)
    return top["$defs"]


def component_schemas() -> dict[str, Any]:
    """Every model's schema (and those they use), by name; a copy the caller may change."""
    return copy.deepcopy(_component_schemas())


def type_schema(annotation: Any) -> dict:
    return TypeAdapter(annotation).json_schema(ref_template=REF, schema_generator=_Generator)


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": _ref(model)}}}


ERRORS = {400: "Malformed JSON or an invalid header", 401: "Missing or unknown API key",
          403: "The body names another tenant, or a bad signature",
          404: "Not found (or another tenant's)",
          409: "The same idempotency key or id is still being processed",
          413: "Body larger than the limit", 415: "Body is not UTF-8 application/json",
          422: "The record breaks the contract", 503: "Kafka or Redis did not answer in time"}


def _errors(*statuses: int) -> dict:
    return {str(s): _json(schemas.Error, ERRORS[s]) for s in statuses}


def _body(model: type[BaseModel], media: str = "application/json") -> dict:
    return {"required": True, "content": {media: {"schema": _ref(model)}}}


def _path(name: str, annotation: Any, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": type_schema(annotation),
            "description": description}


def _accepted(model: type[BaseModel], description: str) -> dict:
    replayed = {"Idempotent-Replayed": {"description": "present on a repeated request's answer",
                                        "schema": {"type": "string", "enum": ["true"]}}}
    return _json(model, description) | {"headers": replayed}


def build_openapi(settings: Settings) -> dict:
    idempotency = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": type_schema(schemas.IdempotencyKey),
                   "description": "A repeat with the same key gets the first answer and "
                                  "enqueues nothing."}
    notification_id = _path("id", schemas.Id, "the notification id")
    campaign_id = _path("campaign_id", schemas.CampaignId, "the campaign id")
    user_id = _path("user_id", schemas.Id, "the user id")
    segment = _path("name", schemas.Name, "the segment name")
    template = _path("name", schemas.Name, "the template name")
    write_errors = _errors(400, 401, 403, 409, 413, 415, 422, 503)
    put_errors = _errors(400, 401, 403, 413, 415, 422, 503)
    read_errors = _errors(401, 404, 422, 503)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Herald", "version": "1.0.0",
                 "description": "Notification delivery: enqueue notifications and campaigns, "
                                "follow their delivery. Errors are "
                                "{\"error\": {\"code\", \"message\", \"field\"}}. Bodies are "
                                f"limited to {settings.api_max_body_bytes} bytes (segments: "
                                f"{settings.api_max_segment_bytes})."},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/notifications": {"post": {
                "operationId": "enqueueNotification",
                "summary": "Validate and enqueue one notification",
                "parameters": [idempotency], "requestBody": _body(schemas.Notification),
                "responses": {"202": _accepted(schemas.NotificationAccepted, "Enqueued (or the "
                                               "first answer to a repeat)"), **write_errors}}},
            "/v1/notifications/{id}": {"get": {
                "operationId": "getNotification",
                "summary": "Latest state and every delivery attempt",
                "parameters": [notification_id],
                "responses": {"200": _json(schemas.NotificationStatus, "Known notification"),
                              **read_errors}}},
            "/v1/campaigns": {"post": {
                "operationId": "enqueueCampaign", "summary": "Validate and enqueue a campaign",
                "parameters": [idempotency], "requestBody": _body(schemas.Campaign),
                "responses": {"202": _accepted(schemas.CampaignAccepted, "Enqueued (or the "
                                               "first answer to a repeat)"), **write_errors}}},
            "/v1/campaigns/{campaign_id}": {
                "get": {"operationId": "getCampaign", "summary": "Progress counts",
                        "parameters": [campaign_id],
                        "responses": {"200": _json(schemas.CampaignProgress, "Known campaign"),
                                      **read_errors}},
                "delete": {"operationId": "cancelCampaign",
                           "summary": "Cancel: nothing more of it is sent",
                           "parameters": [campaign_id, idempotency],
                           "responses": {"202": _accepted(schemas.CancelAccepted,
                                                          "Cancel enqueued"),
                                         **_errors(400, 401, 404, 409, 422, 503)}}},
            "/v1/users/{user_id}": {
                "put": {"operationId": "putUser", "summary": "Upsert (replace) a user record",
                        "parameters": [user_id], "requestBody": _body(schemas.User),
                        "responses": {"200": _json(schemas.UserStored, "Stored"), **put_errors}},
                "get": {"operationId": "getUser", "summary": "A stored user record",
                        "parameters": [user_id],
                        "responses": {"200": _json(schemas.UserStored, "Stored user"),
                                      **read_errors}}},
            "/v1/segments/{name}": {
                "put": {"operationId": "putSegment", "summary": "Upsert (replace) a segment",
                        "parameters": [segment], "requestBody": _body(schemas.Segment),
                        "responses": {"200": _json(schemas.SegmentStored, "Stored"),
                                      **put_errors}},
                "get": {"operationId": "getSegment", "summary": "A segment's size",
                        "parameters": [segment],
                        "responses": {"200": _json(schemas.SegmentStored, "Stored segment"),
                                      **read_errors}}},
            "/v1/templates/{name}": {
                "put": {"operationId": "putTemplate",
                        "summary": "Upsert (replace) a content template",
                        "parameters": [template], "requestBody": _body(schemas.Template),
                        "responses": {"200": _json(schemas.TemplateStored, "Stored"),
                                      **put_errors}},
                "get": {"operationId": "getTemplate", "summary": "A stored template",
                        "parameters": [template],
                        "responses": {"200": _json(schemas.TemplateStored, "Stored template"),
                                      **read_errors}}},
            "/v1/webhook": {
                "put": {"operationId": "putWebhook",
                        "summary": "Register (replace) the tenant's webhook: each final status "
                                   "is POSTed there, signed",
                        "requestBody": _body(schemas.Webhook),
                        "responses": {"200": _json(schemas.WebhookStored, "Stored"),
                                      **put_errors}},
                "get": {"operationId": "getWebhook", "summary": "The tenant's webhook (no secret)",
                        "responses": {"200": _json(schemas.WebhookStored, "Registered"),
                                      **_errors(401, 404, 503)}},
                "delete": {"operationId": "deleteWebhook", "summary": "Stop calling it",
                           "responses": {"204": {"description": "Removed (or there was none)"},
                                         **_errors(401, 503)}}},
            "/v1/receipts/twilio": {"post": {
                "operationId": "twilioReceipt", "security": [],
                "summary": "Twilio's status callback (checked by X-Twilio-Signature)",
                "requestBody": _body(schemas.TwilioStatusCallback,
                                     "application/x-www-form-urlencoded"),
                "responses": {"200": _json(schemas.ReceiptsRecorded, "Recorded"),
                              **_errors(403, 409, 413, 422, 503)}}},
            "/v1/receipts/sendgrid": {"post": {
                "operationId": "sendgridReceipt", "security": [],
                "summary": "SendGrid's Event Webhook (checked by ?token= when configured)",
                "requestBody": _body(schemas.SendGridEvents),
                "responses": {"200": _json(schemas.ReceiptsRecorded, "Recorded"),
                              **_errors(400, 403, 409, 413, 422, 503)}}},
            "/healthz": {"get": {
                "operationId": "healthz", "summary": "Liveness", "security": [],
                "responses": {"200": _json(schemas.Health, "Alive")}}},
            "/metrics": {"get": {
                "operationId": "metrics", "summary": "Prometheus text format", "security": [],
                "responses": {"200": {"description": "Metrics",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document", "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {
                    "application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a per-tenant API key"}}},
    }
