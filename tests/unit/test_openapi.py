"""The OpenAPI document and the models it is generated from: no route without its operation, no
field without a description, no model stricter than the reader that judges after it."""
from __future__ import annotations

import re
import string

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from pydantic import BaseModel, RootModel, TypeAdapter

from herald.campaigns import check_campaign_id, check_segment_name
from herald.errors import ValidationError
from herald.models import check_email, check_id, check_phone, check_tenant_id
from herald.settings import Settings
from herald.users import CLOCK, LOCALE
from herald_api import schemas
from herald_api.app import checked, create_app
from herald_api.errors import ApiError
from herald_api.openapi import build_openapi

DOC = orjson.loads(orjson.dumps(build_openapi(Settings())))


def models_in(model: type[BaseModel], seen: set) -> None:
    """``model`` and every model its fields use."""
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        for inner in re.findall(r"[A-Za-z_]+", repr(field.annotation)):
            found = getattr(schemas, inner, None)
            if isinstance(found, type) and issubclass(found, BaseModel):
                models_in(found, seen)


ALL_MODELS: set = set()
for top in schemas.BODIES + schemas.ANSWERS:
    models_in(top, ALL_MODELS)


def test_the_document_is_valid_openapi_3_1():
    assert DOC["openapi"].startswith("3.1")
    validate(DOC)


def test_every_route_the_app_serves_has_its_operation_and_no_other_is_documented():
    app = create_app(Settings())
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD"}
    documented = {(method, path) for path, ops in DOC["paths"].items() for method in ops}
    assert documented == served
    for path, ops in DOC["paths"].items():
        for op in ops.values():
            named = {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}
            assert named == set(re.findall(r"\{(\w+)\}", path)), path


def test_every_model_and_field_is_described():
    undescribed = [f"{m.__name__}.{name}" for m in ALL_MODELS
                   for name, field in m.model_fields.items()
                   if not field.description and not issubclass(m, RootModel)]
    assert undescribed == []
    assert [m.__name__ for m in ALL_MODELS if not m.__doc__ or m.__doc__ == BaseModel.__doc__
            ] == []


def test_every_model_is_in_the_document_and_every_body_refers_to_one():
    components = DOC["components"]["schemas"]
    assert {m.__name__ for m in ALL_MODELS} <= set(components)
    for path, ops in DOC["paths"].items():
        for op in ops.values():
            for media in op.get("requestBody", {}).get("content", {}).values():
                name = media["schema"]["$ref"].rsplit("/", 1)[1]
                assert getattr(schemas, name) in schemas.BODIES, (path, name)
            for answer in op["responses"].values():
                for media in answer.get("content", {}).values():
                    ref = media["schema"].get("$ref")
                    assert ref is None or ref.rsplit("/", 1)[1] in components


# ---------------------------------------------------------------- the models are no stricter

def accepted(check, value) -> bool:
    try:
        check(value)
        return True
    except ValidationError:
        return False


def passes(annotation, value) -> bool:
    try:
        TypeAdapter(annotation).validate_python(value, strict=True)
        return True
    except ValueError:
        return False


PRINTABLE = st.text(st.characters(codec="utf-8"), min_size=0, max_size=20)
ASCII = st.text(string.printable + "+@.é\u00a0\u2003", min_size=0, max_size=20)
RULES = [  # (the reader's check, the model's type)
    (lambda v: check_id(v, "id"), schemas.Id),
    (lambda v: check_campaign_id(v), schemas.CampaignId),
    (lambda v: check_tenant_id(v), schemas.Tenant),
    (lambda v: check_segment_name(v, "name"), schemas.Name),
    (lambda v: check_phone(v), schemas.Contacts.model_fields["phone"].annotation),
    (lambda v: check_email(v), schemas.Contacts.model_fields["email"].annotation),
]


@pytest.mark.parametrize("check, annotation", RULES)
@settings(max_examples=300, deadline=None)
@given(value=st.one_of(PRINTABLE, ASCII, st.sampled_from(
    ["+15550100", "+0123", "a@b.co", "a@.b", "x/y", "c:1", "tenant.1", "-x", "ok"])))
def test_what_a_reader_takes_the_model_takes_too(check, annotation, value):
    if accepted(check, value):
        assert passes(annotation, value), value


@pytest.mark.parametrize("pattern, values", [
    (LOCALE, ["en", "pt-BR", "zh_Hant_TW", "english please", "e"]),
    (CLOCK, ["22:00", "07:00:30", "7:00", "24:00"]),
])
def test_pattern_types_follow_the_readers_regexes(pattern, values):
    annotation = {LOCALE: schemas.Locale, CLOCK: schemas.Clock}[pattern]
    for value in values:
        assert passes(annotation, value) == bool(pattern.fullmatch(value)), value


# ---------------------------------------------------------------- model first, reader last

def notification(**changes) -> dict:
    doc = {"id": "n-1", "tenant_id": "acme", "user_id": "u-1", "priority": "critical",
           "content": {"body": "b"}, "created_at": 1_796_000_000_000}
    return {k: v for k, v in {**doc, **changes}.items() if v is not None}


def reader(obj):
    from herald.models import notification_from_dict
    return notification_from_dict(obj)


def answer(obj) -> ApiError:
    with pytest.raises(ApiError) as refused:
        checked(schemas.Notification, obj, lambda: reader(obj))
    return refused.value


def test_a_body_both_refuse_gets_the_readers_message():
    error = answer(notification(created_at=1_796_000_000))
    assert (error.status, error.code, error.field) == (422, "invalid", "created_at")
    assert "looks like seconds" in error.message
    error = answer(notification(priority=None))  # the reader's code for it: invalid
    assert (error.code, error.field) == ("invalid", "priority")


def test_a_body_only_the_model_refuses_gets_the_models_message_with_a_dotted_field():
    error = answer(notification(to={"phone": "+15550100", "pager": "1"}))
    assert (error.status, error.code, error.field) == (422, "invalid", "to.pager")
    assert "unknown field" in error.message
    error = answer(notification(content={"body": "b", "html": "<b>b</b>"}))
    assert (error.code, error.field) == ("invalid", "content.html")


def test_a_body_the_model_takes_is_read_by_the_reader_which_decides_last():
    assert checked(schemas.Notification, notification(), lambda: reader(notification())).id \
        == "n-1"
    error = answer(notification(id="nul\x00id"))  # printable: a rule only the reader states
    assert (error.code, error.field) == ("invalid", "id")


@pytest.mark.parametrize("model, body, field, code", [
    (schemas.User, {"contacts": {"phone": 15550100}}, "contacts.phone", "invalid"),
    (schemas.Segment, {"user_ids": ["a", 2]}, "user_ids", "invalid"),  # the list, not its item
    (schemas.Template, {"default_locale": "en", "locales": {"klingon!": {"body": "x"}}},
     "locales.klingon!", "invalid"),  # a dict key: the key is the field
    (schemas.Campaign, {"campaign_id": "c", "tenant_id": "acme", "audience": {},
                        "channels": ["push"], "content": {"body": "b"},
                        "created_at": 1_796_000_000_000, "expires_at": 1_796_000_060_000},
     "audience", "invalid"),  # a rule of the whole object names the object
    (schemas.User, {"quiet_hours": {"start": "22:00", "end": "07:00"}}, "quiet_hours.tz",
     "missing_field"),
    (schemas.Webhook, {"url": "https://example.com/h"}, "secret", "missing_field"),
])
def test_a_models_refusal_names_the_field_as_a_dotted_path(model, body, field, code):
    with pytest.raises(ValidationError) as refused:
        schemas.check(model, body)
    assert (refused.value.field, refused.value.code) == (field, code)
    assert field in refused.value.message
