"""Templates: locale fallback, channel overrides, strictness and the sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from notifyd.domain.templating import MAX_RENDERED, TemplateStore, locale_chain
from notifyd.errors import InvalidEvent


@pytest.fixture(scope="module")
def store() -> TemplateStore:
    return TemplateStore()


def write(directory: Path, name: str, doc: dict[str, Any]) -> None:
    (directory / f"{name}.json").write_text(json.dumps(doc), encoding="utf-8")


def reason(store: TemplateStore, name: str, data: dict[str, Any], locale: str | None = None) -> str:
    with pytest.raises(InvalidEvent) as exc:
        store.render(name, data, locale)
    return exc.value.reason


# --------------------------------------------------------------------------------------
# locale_chain
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "default", "chain"),
    [
        ("fr-CA", "en", ["fr-CA", "fr", "en"]),
        ("fr_CA", "en", ["fr-CA", "fr", "en"]),
        ("zh-Hant-TW", "de", ["zh-Hant-TW", "zh-Hant", "zh", "de", "en"]),
        (None, "en", ["en"]),
        ("", "fr", ["fr", "en"]),
        ("en-GB", "en", ["en-GB", "en"]),
        ("de", "de", ["de", "en"]),
    ],
)
def test_locale_chain(locale: str | None, default: str, chain: list[str]) -> None:
    assert locale_chain(locale, default) == chain


# --------------------------------------------------------------------------------------
# Shipped templates
# --------------------------------------------------------------------------------------


def test_shipped_template_names(store: TemplateStore) -> None:
    assert {"welcome", "order_shipped"} <= set(store.names())


def test_welcome_en(store: TemplateStore) -> None:
    r = store.render("welcome", {"name": "Ann"}, "en")
    assert r.locale == "en"
    assert r.title == "Welcome, Ann!"
    assert r.body == "Hi Ann, your notifyd account is ready."


def test_welcome_default_filter(store: TemplateStore) -> None:
    r = store.render("welcome", {"name": "Ann", "product": "Acme"}, "en")
    assert r.body == "Hi Ann, your Acme account is ready."


def test_welcome_fr(store: TemplateStore) -> None:
    r = store.render("welcome", {"name": "Ann"}, "fr")
    assert r.locale == "fr"
    assert r.title == "Bienvenue, Ann !"
    assert r.body == "Bonjour Ann, votre compte notifyd est prêt."


@pytest.mark.parametrize("locale", ["fr-CA", "fr_CA", "fr-BE"])
def test_regional_locale_falls_back_to_language(store: TemplateStore, locale: str) -> None:
    r = store.render("welcome", {"name": "Ann"}, locale)
    assert r.locale == "fr"
    assert r.title == "Bienvenue, Ann !"


@pytest.mark.parametrize("locale", ["ja", "pt-BR", None, ""])
def test_unknown_locale_uses_default(store: TemplateStore, locale: str | None) -> None:
    r = store.render("welcome", {"name": "Ann"}, locale)
    assert r.locale == "en"
    assert r.title == "Welcome, Ann!"


def test_store_default_locale_respected() -> None:
    s = TemplateStore(default_locale="de")
    r = s.render("welcome", {"name": "Ann"}, "ja")
    assert r.locale == "de"
    assert r.title == "Willkommen, Ann!"


def test_sms_channel_override(store: TemplateStore) -> None:
    r = store.render("welcome", {"name": "Ann"}, "en")
    assert r.per_channel == {"sms": ("Welcome, Ann!", "Welcome Ann! Your account is ready.")}


def test_channel_override_never_downgrades_locale(store: TemplateStore) -> None:
    r = store.render("welcome", {"name": "Ann"}, "fr")
    t, b = r.per_channel.get("sms", (r.title, r.body))
    assert (t, b) == ("Bienvenue, Ann !", "Bonjour Ann, votre compte notifyd est prêt.")


def test_order_shipped_with_eta(store: TemplateStore) -> None:
    r = store.render("order_shipped", {"order_id": "A1", "eta": "Monday"}, "en")
    assert r.title == "Order A1 shipped"
    assert r.body == "Your order A1 is on its way, expected Monday."
    assert r.per_channel == {}
    r = store.render("order_shipped", {"order_id": "A1", "eta": ""}, "fr")
    assert r.body == "Votre commande A1 est en route."


@pytest.mark.parametrize("locale", ["en", "fr"])
def test_order_shipped_eta_is_optional(store: TemplateStore, locale: str) -> None:
    r = store.render("order_shipped", {"order_id": "A1"}, locale)
    assert r.body in ("Your order A1 is on its way.", "Votre commande A1 est en route.")


def test_missing_variable_is_template_error(store: TemplateStore) -> None:
    why = reason(store, "welcome", {}, "en")
    assert why.startswith("template_error: welcome:")
    assert "name" in why


def test_unknown_template(store: TemplateStore) -> None:
    why = reason(store, "nope", {"name": "x"})
    assert why.startswith("unknown_template: ")
    assert "'nope'" in why


def test_unknown_template_name_truncated_in_reason(store: TemplateStore) -> None:
    why = reason(store, "x" * 5000, {})
    assert why.startswith("unknown_template: ") and len(why) < 300


def test_data_is_not_evaluated_as_template(store: TemplateStore) -> None:
    r = store.render("welcome", {"name": "{{ 7 * 7 }} <b>"}, "en")
    assert r.title == "Welcome, {{ 7 * 7 }} <b>!"  # not rendered again, not escaped


def test_oversized_render_rejected(store: TemplateStore) -> None:
    why = reason(store, "welcome", {"name": "x" * MAX_RENDERED}, "en")
    assert why.startswith("template_error: ")
    assert str(MAX_RENDERED) in why
    # just under the limit is fine
    ok = store.render("welcome", {"name": "x" * (MAX_RENDERED - 100)}, "en")
    assert len(ok.title) <= MAX_RENDERED


# --------------------------------------------------------------------------------------
# Custom directories and the sandbox
# --------------------------------------------------------------------------------------


@pytest.fixture
def custom(tmp_path: Path) -> TemplateStore:
    write(
        tmp_path,
        "reset",
        {
            "locales": {
                "es": {"title": "Hola {{ user.name }}", "body": "Código {{ code }}"},
                "en": {"title": "Hi {{ user.name }}", "body": "Code {{ code }}"},
            },
            "channels": {
                "push": {"es": {"title": "Código"}},
                "sms": {"es": {"body": "{{ code }}"}, "en": {"body": "Code: {{ code }}"}},
            },
        },
    )
    write(tmp_path, "only_de", {"locales": {"de": {"title": "Hallo", "body": "Welt"}}})
    write(tmp_path, "empty_body", {"locales": {"en": {"title": "T only"}}})
    (tmp_path / "README.txt").write_text("not a template")
    return TemplateStore(tmp_path)


def test_custom_dir(custom: TemplateStore) -> None:
    assert custom.names() == ["empty_body", "only_de", "reset"]
    r = custom.render("reset", {"user": {"name": "Eva"}, "code": 123456}, "es-MX")
    assert r.locale == "es"
    assert (r.title, r.body) == ("Hola Eva", "Código 123456")
    # overrides replace only what they define
    assert r.per_channel == {
        "push": ("Código", "Código 123456"),
        "sms": ("Hola Eva", "123456"),
    }


def test_custom_dir_no_chain_match_takes_first_locale(custom: TemplateStore) -> None:
    r = custom.render("only_de", {}, "fr")
    assert (r.locale, r.title, r.body) == ("de", "Hallo", "Welt")


def test_missing_body_renders_empty(custom: TemplateStore) -> None:
    r = custom.render("empty_body", {}, None)
    assert (r.title, r.body) == ("T only", "")


def test_missing_nested_attribute(custom: TemplateStore) -> None:
    with pytest.raises(InvalidEvent, match=r"^template_error: reset:"):
        custom.render("reset", {"user": {}, "code": 1}, "en")


def test_reload_picks_up_new_files(tmp_path: Path) -> None:
    s = TemplateStore(tmp_path)
    assert s.names() == []
    write(tmp_path, "late", {"locales": {"en": {"title": "v1", "body": "b"}}})
    s.reload()
    assert s.render("late", {}, None).title == "v1"
    write(tmp_path, "late", {"locales": {"en": {"title": "v2", "body": "b"}}})
    s.reload()
    assert s.render("late", {}, None).title == "v2"


def test_missing_dir_is_empty(tmp_path: Path) -> None:
    assert TemplateStore(tmp_path / "nope").names() == []


@pytest.mark.parametrize("doc", [{"title": "x"}, {"locales": ["en"]}, ["x"]])
def test_malformed_template_file_rejected(tmp_path: Path, doc: Any) -> None:
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="locales"):
        TemplateStore(tmp_path)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ data.__class__.__base__.__subclasses__() }}",
        "{{ (1).__class__.__subclasses__() }}",
        "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
        "{{ data.update({'x': 1}) }}",  # immutable sandbox: no mutation of data
    ],
)
def test_sandbox_blocks_unsafe_templates(tmp_path: Path, source: str) -> None:
    write(tmp_path, "evil", {"locales": {"en": {"title": source, "body": "b"}}})
    s = TemplateStore(tmp_path)
    data = {"data": {"a": 1}}
    with pytest.raises(InvalidEvent) as exc:
        s.render("evil", data, None)
    assert exc.value.reason.startswith("template_error: evil:")
    assert data == {"data": {"a": 1}}


def test_syntax_error_is_template_error(tmp_path: Path) -> None:
    write(tmp_path, "broken", {"locales": {"en": {"title": "{{ x ", "body": "b"}}})
    with pytest.raises(InvalidEvent, match=r"^template_error: broken:"):
        TemplateStore(tmp_path).render("broken", {"x": 1}, None)


def test_oversized_output_from_template_rejected(tmp_path: Path) -> None:
    write(tmp_path, "big", {"locales": {"en": {"title": "t", "body": "{{ 'x' * 30000 }}"}}})
    with pytest.raises(InvalidEvent, match=r"^template_error: .*exceeds"):
        TemplateStore(tmp_path).render("big", {}, None)


@pytest.mark.parametrize(
    ("source", "data", "kind"),
    [
        ("{{ n + 1 }}", {"n": "x"}, "TypeError: "),
        ("{{ a / b }}", {"a": 1, "b": 0}, "ZeroDivisionError: "),
        ("{{ '%d' % s }}", {"s": "x"}, "TypeError: "),
        ("{{ s.index('z') }}", {"s": "abc"}, "ValueError: "),
        ("{{ items[5] }}", {"items": [1]}, "list object has no element 5"),  # UndefinedError
    ],
)
def test_any_rendering_error_is_template_error(
    tmp_path: Path, source: str, data: dict[str, Any], kind: str
) -> None:
    # Operators' templates on untrusted data: whatever Jinja raises is a reason, never
    # an exception that escapes to the agent (where the event used to be lost).
    write(tmp_path, "calc", {"locales": {"en": {"title": source, "body": "b"}}})
    with pytest.raises(InvalidEvent) as exc:
        TemplateStore(tmp_path).render("calc", data, None)
    assert exc.value.reason.startswith(f"template_error: calc: {kind}")


def test_template_error_reason_is_one_short_line(tmp_path: Path) -> None:
    write(tmp_path, "long", {"locales": {"en": {"title": "{{ n + 1 }}", "body": "b"}}})
    with pytest.raises(InvalidEvent) as exc:
        TemplateStore(tmp_path).render("long", {"n": "x\n" * 5000}, None)
    reason = exc.value.reason
    assert reason.startswith("template_error: long: TypeError: ")
    assert "\n" not in reason and len(reason) < 400


# --------------------------------------------------------------------------------------
# HTML parts (e-mail): autoescaped, same locale as the text
# --------------------------------------------------------------------------------------


def test_order_shipped_html_is_autoescaped(store: TemplateStore) -> None:
    r = store.render("order_shipped", {"order_id": "<script>x()</script>", "eta": "Mo & Di"}, "en")
    assert r.html is not None
    assert "<strong>&lt;script&gt;x()&lt;/script&gt;</strong>" in r.html
    assert "<em>Mo &amp; Di</em>" in r.html
    assert "<script>" not in r.html
    # The text part is text: not escaped.
    assert r.body == "Your order <script>x()</script> is on its way, expected Mo & Di."


@pytest.mark.parametrize(("locale", "lang"), [("fr-CA", "fr"), ("en-GB", "en"), ("ja", "en")])
def test_html_follows_the_locale_fallback(store: TemplateStore, locale: str, lang: str) -> None:
    r = store.render("order_shipped", {"order_id": "A1"}, locale)
    assert r.locale == lang
    assert r.html is not None and f'<html lang="{lang}">' in r.html


def test_no_html_part_without_one_in_the_chosen_locale(tmp_path: Path) -> None:
    write(tmp_path, "mixed", {"locales": {
        "en": {"title": "Hi", "body": "text", "html": "<p>{{ name }}</p>"},
        "de": {"title": "Hallo", "body": "Text"},
    }})
    s = TemplateStore(tmp_path)
    assert s.render("mixed", {"name": "<b>"}, "en").html == "<p>&lt;b&gt;</p>"
    # German has no HTML: plain text only, never the English HTML.
    assert s.render("mixed", {"name": "x"}, "de").html is None
    assert TemplateStore().render("welcome", {"name": "Ann"}, "en").html is None


def test_email_override_may_carry_the_html(tmp_path: Path) -> None:
    write(tmp_path, "t", {
        "locales": {"en": {"title": "T", "body": "B", "html": "<p>base {{ v }}</p>"},
                    "fr": {"title": "T", "body": "B"}},
        "channels": {"email": {"en": {"html": "<p>mail {{ v }}</p>"},
                               "fr": {"html": "<p>courriel {{ v | safe }}</p>"}}},
    })
    s = TemplateStore(tmp_path)
    r = s.render("t", {"v": "<i>"}, "en")
    assert r.html == "<p>mail &lt;i&gt;</p>"
    assert r.per_channel == {"email": ("T", "B")}
    # ``| safe`` is the template author's explicit choice for trusted data.
    assert s.render("t", {"v": "<i>"}, "fr").html == "<p>courriel <i></p>"


def test_html_errors_are_template_errors(tmp_path: Path) -> None:
    write(tmp_path, "h", {"locales": {"en": {"title": "T", "body": "B",
                                             "html": "{{ ''.__class__.__mro__ }}{{ x }}"}}})
    with pytest.raises(InvalidEvent, match=r"^template_error: h:"):
        TemplateStore(tmp_path).render("h", {"x": 1}, None)
    write(tmp_path, "h", {"locales": {"en": {"title": "T", "body": "B", "html": "<p>{{ y }}"}}})
    with pytest.raises(InvalidEvent, match=r"^template_error: h:.*'y'"):
        TemplateStore(tmp_path).render("h", {}, None)
    write(tmp_path, "h", {"locales": {"en": {"title": "T", "body": "B", "html": 5}}})
    with pytest.raises(ValueError, match="html must be a string"):
        TemplateStore(tmp_path)


def test_readme_shows_the_shipped_html_template() -> None:
    """The README's HTML e-mail example is the shipped template (its en locale)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## E-mail: HTML and one-click unsubscribe", 1)[1]
    shown = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    shipped = json.loads((Path(__file__).resolve().parents[2] / "notifyd" / "templates"
                          / "order_shipped.json").read_text(encoding="utf-8"))
    assert shown["locales"]["en"] == shipped["locales"]["en"]
    assert shown["description"] == shipped["description"]
