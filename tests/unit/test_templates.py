"""Templates: locale fallback, ``{{var}}`` fields from vars and the user record, a missing
variable as a precise error (never a blank), escaping, and validation with named fields."""
from __future__ import annotations

import orjson
import pytest

from herald.errors import ValidationError
from herald.templates import TemplateCache, TemplateError, template_from_dict, template_json

DOC = {"default_locale": "en",
       "locales": {"en": {"title": "Hi {{first_name}}", "body": "{{count}} offers for {{email}}"},
                   "pt-BR": {"title": "Olá {{first_name}}", "body": "{{count}} ofertas"},
                   "de": {"body": "{{count}} Angebote"}}}


@pytest.fixture
def template():
    return template_from_dict(DOC, "offers")


@pytest.mark.parametrize("locale, expected", [
    ("pt-BR", ("Olá Ana", "3 ofertas")),
    ("pt_br", ("Olá Ana", "3 ofertas")),        # case and separator do not matter
    ("de-AT", ("Hi Ana", "3 Angebote")),        # no de-AT: de's body, and en's title (de has none)
    ("fr", ("Hi Ana", "3 offers for a@b.c")),    # neither: the default locale
    (None, ("Hi Ana", "3 offers for a@b.c")),    # no locale known: the default
])
def test_the_users_locale_then_its_language_then_the_default(template, locale, expected):
    assert template.render(locale, {"first_name": "Ana", "count": 3}, {"email": "a@b.c"}) == expected


def test_vars_win_over_the_user_record(template):
    title, body = template.render("en", {"first_name": "Ana", "count": 1, "email": "x@y.z"},
                                  {"email": "a@b.c"})
    assert body == "1 offers for x@y.z"


def test_a_missing_variable_is_an_error_naming_it_never_a_blank(template):
    with pytest.raises(TemplateError) as caught:
        template.render("en", {"count": 3}, {"email": "a@b.c"})
    message = str(caught.value)
    assert "'offers'" in message and "'en'" in message and "{{first_name}}" in message
    assert "title" in message


def test_a_variable_missing_only_in_another_locale_is_not_an_error(template):
    assert template.render("pt-BR", {"count": 2, "first_name": "Ana"}, {}) == ("Olá Ana",
                                                                             "2 ofertas")


def test_a_value_that_is_neither_text_nor_number_is_refused(template):
    with pytest.raises(TemplateError, match="list"):
        template.render("de", {"count": [1, 2], "first_name": "Ana"}, {})
    with pytest.raises(TemplateError, match="bool"):
        template.render("de", {"count": True, "first_name": "Ana"}, {})


def test_escaping_a_literal_brace_pair_and_values_never_expanded_again():
    t = template_from_dict({"default_locale": "en", "locales": {"en": {
        "body": "write \\{{name}} to get {{ name }}; {{x}}}} stays"}}}, "esc")
    assert t.render("en", {"name": "{{x}}", "x": "X"}, {}) == (None,
                                                               "write {{name}} to get {{x}}; X}} stays")


@pytest.mark.parametrize("text", ["{{", "oops {{ first name }}", "{{}}", "{{1x}}", "a {{b"])
def test_bad_field_syntax_is_refused_with_the_field_named(text):
    with pytest.raises(ValidationError) as caught:
        template_from_dict({"default_locale": "en", "locales": {"en": {"body": text}}}, "t")
    assert caught.value.field == "locales.en.body"


@pytest.mark.parametrize("doc, field", [
    ({"locales": {"en": {"body": "x"}}}, "default_locale"),
    ({"default_locale": "fr", "locales": {"en": {"body": "x"}}}, "default_locale"),
    ({"default_locale": "en"}, "locales"),
    ({"default_locale": "en", "locales": {}}, "locales"),
    ({"default_locale": "en", "locales": {"en": {"title": "x"}}}, "locales.en.body"),
    ({"default_locale": "en", "locales": {"en": {"body": ""}}}, "locales.en.body"),
    ({"default_locale": "en", "locales": {"en": {"body": "x", "html": "y"}}}, "locales.en.html"),
    ({"default_locale": "en", "locales": {"english!": {"body": "x"}}}, "locales.english!"),
    ({"default_locale": "en", "locales": {"en": {"body": "x"}}, "colour": 1}, "colour"),
    ({"default_locale": "en", "locales": {"en": "x"}}, "locales.en"),
    ({"default_locale": "en", "locales": {"en": {"body": "x"}, "de": {}}}, "locales.de.body"),
    ({"default_locale": "pt-BR", "locales": {"en": {"body": "x"}, "pt-BR": {"title": "t"}}},
     "locales.pt-BR.body"),
])
def test_invalid_documents_name_the_field(doc, field):
    with pytest.raises(ValidationError) as caught:
        template_from_dict(doc, "t")
    assert caught.value.field == field


def test_a_bad_name_is_refused():
    with pytest.raises(ValidationError) as caught:
        template_from_dict(DOC, "no spaces")
    assert caught.value.field == "name"


def test_the_cache_compiles_each_stored_version_once(template, monkeypatch):
    import herald.templates as module
    calls = []
    real = module.template_from_dict
    monkeypatch.setattr(module, "template_from_dict",
                        lambda obj, name: calls.append(name) or real(obj, name))
    cache = TemplateCache(max_entries=2)
    raw = template_json(template, 1)
    assert cache.get(raw, "offers") is cache.get(raw, "offers")
    assert calls == ["offers"]
    changed = orjson.dumps({**orjson.loads(raw), "updated_at": 2})
    cache.get(changed, "offers")
    assert calls == ["offers", "offers"]  # an update is a new text: compiled again


def test_an_unusable_stored_template_is_a_template_error():
    with pytest.raises(TemplateError, match="unusable"):
        TemplateCache().get(b'{"locales": 1}', "t")


# ---------------------------------------------------------------- fallback per field

CONTRACT_EXAMPLE = {"default_locale": "en",
                    "locales": {"en": {"title": "Hi {{name}}", "body": "{{count}} offers"},
                                "pt-BR": {"body": "{{count}} ofertas"}}}


def test_the_contracts_example_takes_the_title_from_the_default_and_the_body_from_pt_br():
    t = template_from_dict(CONTRACT_EXAMPLE, "offers")
    assert t.render("pt-BR", {"name": "Ana", "count": 3}, {}) == ("Hi Ana", "3 ofertas")


def test_each_field_falls_back_locale_then_language_then_default_on_its_own():
    t = template_from_dict({"default_locale": "en", "locales": {
        "en": {"title": "T-en", "body": "B-en"},
        "pt": {"title": "T-pt"},
        "pt-BR": {"body": "B-pt-BR"},
        "es": {"title": "T-es"}}}, "chain")
    assert t.render("pt-BR", {}, {}) == ("T-pt", "B-pt-BR")   # title from pt, body its own
    assert t.render("pt-PT", {}, {}) == ("T-pt", "B-en")      # pt has no body: the default's
    assert t.render("es-MX", {}, {}) == ("T-es", "B-en")
    assert t.render("fr", {}, {}) == ("T-en", "B-en")
    assert t.chain("pt-BR") == ("pt-br", "pt", "en") and t.chain(None) == ("en",)


def test_a_missing_variable_names_the_locale_its_field_came_from():
    t = template_from_dict(CONTRACT_EXAMPLE, "offers")
    with pytest.raises(TemplateError, match="locale 'en'.*title"):
        t.render("pt-BR", {"count": 3}, {})


def test_no_title_anywhere_stays_no_title():
    t = template_from_dict({"default_locale": "en", "locales": {"en": {"body": "b"},
                                                                "pt-BR": {"body": "c"}}}, "n")
    assert t.render("pt-BR", {}, {}) == (None, "c")
