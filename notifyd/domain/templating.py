"""Templates: JSON files of Jinja2 snippets rendered in a sandbox with locale fallback.

A template file ``<name>.json`` holds ``locales: {<locale>: {title, body, html?}}`` and
optional per-channel overrides ``channels: {<channel>: {<locale>: {title?, body?, html?}}}``.
Locales fall back from ``fr-CA`` to ``fr`` to the default locale.  Rendering uses
Jinja2's ``SandboxedEnvironment`` (event data is untrusted) with ``StrictUndefined``
so a missing variable is an error with a reason, not a blank in a customer's SMS.

``html`` is the HTML part of an e-mail (sent as ``multipart/alternative`` next to the
text ``body``).  It is rendered in a second sandbox with **autoescaping**, so a value
such as ``<script>`` in the event data arrives as text, never as markup; the template
itself may write ``{{ value | safe }}`` only for data it trusts.  It comes from the
chosen locale (or the e-mail override of that locale) like the text, and is left out
when that locale has none: a message never mixes two languages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import orjson
from jinja2.sandbox import ImmutableSandboxedEnvironment

from notifyd.errors import InvalidEvent, failure_detail

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "templates"
MAX_RENDERED = 20_000
#: HTML e-mail bodies are markup-heavy: a larger limit than for text.
MAX_RENDERED_HTML = 100_000


@dataclass(slots=True)
class Rendered:
    title: str
    body: str
    locale: str
    #: channel -> (title, body) where a channel override exists.
    per_channel: dict[str, tuple[str, str]]
    #: The HTML part of the e-mail (autoescaped), if the chosen locale has one.
    html: str | None = None


def locale_chain(locale: str | None, default: str) -> list[str]:
    chain: list[str] = []
    if locale:
        parts = locale.replace("_", "-").split("-")
        for i in range(len(parts), 0, -1):
            chain.append("-".join(parts[:i]))
    for loc in (default, "en"):
        if loc not in chain:
            chain.append(loc)
    return chain


class TemplateStore:
    def __init__(self, directory: Path | None = None, default_locale: str = "en") -> None:
        self.directory = directory or DEFAULT_DIR
        self.default_locale = default_locale
        self.env = ImmutableSandboxedEnvironment(
            undefined=jinja2.StrictUndefined, autoescape=False, auto_reload=False
        )
        #: For ``html`` parts: the same sandbox, but every ``{{ }}`` is HTML-escaped.
        self.html_env = ImmutableSandboxedEnvironment(
            undefined=jinja2.StrictUndefined, autoescape=True, auto_reload=False
        )
        self._docs: dict[str, dict[str, Any]] = {}
        self._compiled: dict[str, jinja2.Template] = {}
        self._compiled_html: dict[str, jinja2.Template] = {}
        self.reload()

    def reload(self) -> None:
        docs: dict[str, dict[str, Any]] = {}
        if self.directory.is_dir():
            for path in sorted(self.directory.glob("*.json")):
                doc = orjson.loads(path.read_bytes())
                if not isinstance(doc, dict) or not isinstance(doc.get("locales"), dict):
                    raise ValueError(f"{path}: a template needs a 'locales' object")
                for loc, entry in doc["locales"].items():
                    if not isinstance(entry, dict) or not isinstance(entry.get("html", ""), str):
                        raise ValueError(f"{path}: locales.{loc}: html must be a string")
                docs[path.stem] = doc
        self._docs = docs
        self._compiled.clear()
        self._compiled_html.clear()

    def names(self) -> list[str]:
        return sorted(self._docs)

    def _render(self, source: str, data: dict[str, Any]) -> str:
        return _render_cached(self.env, self._compiled, source, data, MAX_RENDERED, "text")

    def _render_html(self, source: str, data: dict[str, Any]) -> str:
        return _render_cached(
            self.html_env, self._compiled_html, source, data, MAX_RENDERED_HTML, "HTML"
        )

    def render(self, name: str, data: dict[str, Any], locale: str | None) -> Rendered:
        doc = self._docs.get(name)
        if doc is None:
            raise InvalidEvent(f"unknown_template: no template named {name[:100]!r}")
        chain = locale_chain(locale, self.default_locale)
        locales: dict[str, Any] = doc["locales"]
        chosen = next((loc for loc in chain if loc in locales), None)
        if chosen is None:
            chosen = next(iter(locales))
        try:
            base = locales[chosen]
            title = self._render(base.get("title", ""), data)
            body = self._render(base.get("body", ""), data)
            per_channel: dict[str, tuple[str, str]] = {}
            # A channel variant may not switch language: only locales up to the chosen one.
            allowed = chain[: chain.index(chosen) + 1] if chosen in chain else [chosen]
            for channel, variants in (doc.get("channels") or {}).items():
                loc = next((x for x in allowed if x in variants), None)
                if loc is None:
                    continue
                v = variants[loc]
                per_channel[channel] = (
                    self._render(v["title"], data) if "title" in v else title,
                    self._render(v["body"], data) if "body" in v else body,
                )
            # HTML is e-mail only: the e-mail override's, else the chosen locale's.
            email_variants = (doc.get("channels") or {}).get("email") or {}
            email_loc = next((x for x in allowed if x in email_variants), None)
            html_source = (
                email_variants[email_loc].get("html") if email_loc is not None else None
            )
            if html_source is None:
                html_source = base.get("html")
            html = self._render_html(html_source, data) if html_source is not None else None
        except jinja2.UndefinedError as exc:
            raise InvalidEvent(f"template_error: {name}: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise InvalidEvent(f"template_error: {name}: {exc}") from None
        except jinja2.sandbox.SecurityError as exc:
            raise InvalidEvent(f"template_error: {name}: unsafe template ({exc})") from None
        except InvalidEvent:
            raise
        except Exception as exc:
            # Operators' templates run on untrusted data: ``{{ n + 1 }}`` with n = "x" is
            # a TypeError, ``{{ a / b }}`` a ZeroDivisionError.  Whatever Jinja raises, the
            # event cannot be rendered: a dead letter with the reason, never a lost event.
            raise InvalidEvent(f"template_error: {name}: {failure_detail(exc)}") from None
        return Rendered(
            title=title, body=body, locale=chosen, per_channel=per_channel, html=html
        )


def _render_cached(
    env: jinja2.Environment,
    cache: dict[str, jinja2.Template],
    source: str,
    data: dict[str, Any],
    limit: int,
    what: str,
) -> str:
    """``source`` rendered in ``env`` (compiled once into ``cache``), at most ``limit``
    characters long (``what`` names the kind of text in the error)."""
    tpl = cache.get(source)
    if tpl is None:
        tpl = cache[source] = env.from_string(source)
    out = tpl.render(data)
    if len(out) > limit:
        raise InvalidEvent(f"template_error: rendered {what} exceeds {limit} chars")
    return out
