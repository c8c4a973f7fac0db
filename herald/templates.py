"""Content templates: named, per tenant, with a variant per locale and ``{{var}}`` fields.

A template (``PUT /v1/templates/{name}``)::

    {"default_locale": "en",
     "locales": {"en": {"title": "Hi {{first_name}}", "body": "{{count}} new offers"},
                 "pt-BR": {"body": "{{count}} novas ofertas"}}}

A notification names one with ``content.template`` and passes ``content.vars``. Rendering
takes each field (title, body) from the user's locale (``pt-BR``), else its language (``pt``),
else the template's default, field by field (``pt-BR`` above gets ``en``'s title); the default
locale must have a body, other locales a title or a body or both. It fills each
``{{name}}`` from ``content.vars``, then from the user record (``user_id``, ``locale``,
``email``, ``phone``). A variable found in neither is a ``TemplateError`` naming it: a message
is never sent with a blank. Values are inserted as they are and never expanded again (a value
holding ``{{x}}`` stays that text); ``\\{{`` writes a literal ``{{``.

Stored in Redis as one JSON string per template, ``herald:template:{tenant}:{name}``, so the
call stage reads a batch's templates with one MGET; a template is compiled once per distinct
stored text (``TemplateCache``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import orjson

from herald.campaigns import check_named_body
from herald.errors import HeraldError, ValidationError
from herald.models import MAX_BODY_LENGTH, MAX_TITLE_LENGTH
from herald.users import LOCALE

PREFIX = "herald"
VAR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*")
TOKEN = re.compile(r"\\\{\{|\{\{(.*?)\}\}|\{\{", re.S)
MAX_LOCALES = 64
LIMITS = {"title": MAX_TITLE_LENGTH, "body": MAX_BODY_LENGTH}
TEMPLATE_FIELDS = frozenset({"name", "tenant_id", "default_locale", "locales"})


class TemplateError(HeraldError):
    """A notification's template cannot be rendered (unknown template, missing variable)."""


# One compiled field: (literal, variable name or None) pairs, joined at render time.
Parts = tuple[tuple[str, str | None], ...]


def compile_text(text: str, where: str) -> Parts:
    """Split ``text`` into literals and ``{{var}}`` fields; ValidationError on bad syntax."""
    parts: list[tuple[str, str | None]] = []
    literal, pos = [], 0
    for m in TOKEN.finditer(text):
        literal.append(text[pos:m.start()])
        pos = m.end()
        token = m.group(0)
        if token == "\\{{":
            literal.append("{{")
            continue
        inner = m.group(1)
        name = VAR.fullmatch(inner) if inner is not None else None
        if name is None:
            shown = token if inner is not None else text[m.start():m.start() + 20]
            raise ValidationError(f"'{where}': {shown!r} at character {m.start()} is not a "
                                  "'{{name}}' field (names: letters, digits, _; write \\{{ for "
                                  "a literal '{{')", where)
        parts.append(("".join(literal), name.group(1)))
        literal = []
    tail = "".join(literal) + text[pos:]
    if tail or not parts:
        parts.append((tail, None))
    return tuple(parts)


def locale_key(locale: str) -> str:
    return locale.replace("_", "-").lower()


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    default_locale: str
    # locale_key → {"title": Parts | None, "body": Parts}
    variants: Mapping[str, Mapping[str, Parts | None]]
    source: Mapping[str, Any]  # the validated document, as stored

    def chain(self, locale: str | None) -> tuple[str, ...]:
        """The locales to look in, in order: exact, then its language, then the default."""
        default = locale_key(self.default_locale)
        keys = []
        if locale:
            key = locale_key(locale)
            keys += [key, key.split("-", 1)[0]]
        keys.append(default)
        return tuple(dict.fromkeys(k for k in keys if k in self.variants))

    def field(self, locale: str | None, name: str) -> tuple[str, Parts | None]:
        """(the locale it comes from, the compiled field): each field falls back on its own, so
        ``pt-BR`` with a body but no title takes the title of ``pt``, else of the default."""
        chain = self.chain(locale)
        for key in chain:
            parts = self.variants[key].get(name)
            if parts is not None:
                return key, parts
        return chain[-1], None

    def render(self, locale: str | None, variables: Mapping[str, Any],
               user_values: Mapping[str, Any]) -> tuple[str | None, str]:
        """(title, body) for ``locale``; TemplateError naming a variable found nowhere."""
        out = []
        for field in ("title", "body"):
            chosen, parts = self.field(locale, field)
            if parts is None:
                out.append(None)
                continue
            text = []
            for literal, name in parts:
                text.append(literal)
                if name is None:
                    continue
                value = variables.get(name, _MISSING)
                if value is _MISSING:
                    value = user_values.get(name)
                    if value is None:
                        raise TemplateError(
                            f"template {self.name!r} (locale {chosen!r}): no value for "
                            f"'{{{{{name}}}}}' in its {field} (not in content.vars, not in the "
                            "user record)")
                text.append(_text(value, name, self.name))
            out.append("".join(text))
        return out[0], out[1]


_MISSING = object()


def _text(value: Any, name: str, template: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TemplateError(f"template {template!r}: '{{{{{name}}}}}' is a {type(value).__name__}; "
                        "only strings and numbers fill a template field")


def template_from_dict(obj: Mapping, name: str) -> Template:
    """Validate a template document for ``name`` (from the path); every error names its field."""
    name = check_named_body(obj, name, TEMPLATE_FIELDS, "a template")  # segments' naming rule
    locales = obj.get("locales")
    if not isinstance(locales, Mapping) or not locales:
        raise ValidationError("'locales' must be a non-empty object of locale → "
                              "{\"title\", \"body\"}", "locales",
                              "missing_field" if locales is None else "invalid")
    if len(locales) > MAX_LOCALES:
        raise ValidationError(f"'locales' has more than {MAX_LOCALES} entries", "locales")
    variants: dict[str, dict[str, Parts | None]] = {}
    source: dict[str, dict[str, str]] = {}
    for locale, variant in locales.items():
        where = f"locales.{locale}"
        if not LOCALE.fullmatch(locale):
            raise ValidationError(f"locale {locale!r} must look like 'en' or 'pt-BR'", where)
        if locale_key(locale) in variants:
            raise ValidationError(f"locale {locale!r} is given twice", where)
        if not isinstance(variant, Mapping):
            raise ValidationError(f"'{where}' must be an object with 'body' (and 'title')", where)
        extra = sorted(set(variant) - set(LIMITS))
        if extra:
            raise ValidationError(f"unknown field {extra[0]!r} in '{where}' (known: title, body)",
                                  f"{where}.{extra[0]}")
        compiled: dict[str, Parts | None] = {}
        if all(variant.get(field) is None for field in LIMITS):
            raise ValidationError(f"'{where}' needs a 'body' or a 'title' (a field it leaves "
                                  "out comes from its language, then the default locale)",
                                  f"{where}.body", "missing_field")
        for field, limit in LIMITS.items():
            text = variant.get(field)
            label = f"{where}.{field}"
            if text is None:
                compiled[field] = None
                continue
            if not isinstance(text, str) or not text.strip():
                raise ValidationError(f"'{label}' must be a non-empty string", label)
            if len(text) > limit:
                raise ValidationError(f"'{label}' is longer than {limit} characters", label)
            compiled[field] = compile_text(text, label)
        variants[locale_key(locale)] = compiled
        source[locale] = {k: v for k, v in variant.items() if v is not None}
    default = obj.get("default_locale")
    if not isinstance(default, str):
        raise ValidationError("'default_locale' must name one of 'locales'", "default_locale",
                              "missing_field" if default is None else "invalid")
    if locale_key(default) not in variants:
        raise ValidationError(f"'default_locale' {default!r} is not one of 'locales' "
                              f"({', '.join(sorted(locales))})", "default_locale")
    if variants[locale_key(default)]["body"] is None:  # the end of every fallback
        label = f"locales.{next(k for k in locales if locale_key(k) == locale_key(default))}.body"
        raise ValidationError(f"missing required field '{label}': the default locale needs a "
                              "body", label, "missing_field")
    return Template(name=name, default_locale=default, variants=variants,
                    source={"name": name, "default_locale": default, "locales": source})


# ---------------------------------------------------------------- Redis layout

def template_key(tenant: str, name: str) -> str:
    return f"{PREFIX}:template:{tenant}:{name}"


def template_json(t: Template, now_ms: int) -> bytes:
    return orjson.dumps({**t.source, "updated_at": now_ms})


class TemplateCache:
    """Stored template text → compiled Template, so a template read every batch is compiled
    once per version. Bounded: cleared when it holds ``max_entries``."""

    def __init__(self, max_entries: int = 1024):
        self.max_entries = max_entries
        self._compiled: dict[bytes, Template] = {}

    def get(self, raw: bytes, name: str) -> Template:
        found = self._compiled.get(raw)
        if found is None:
            try:
                doc = orjson.loads(raw)
                doc.pop("updated_at", None)
                found = template_from_dict(doc, name)
            except (orjson.JSONDecodeError, ValidationError, AttributeError) as exc:
                raise TemplateError(f"template {name!r} as stored is unusable: {exc}") from None
            if len(self._compiled) >= self.max_entries:
                self._compiled.clear()
            self._compiled[raw] = found
        return found
