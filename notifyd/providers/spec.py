"""The provider list of a channel, as configured (``NOTIFYD_<CHANNEL>_PROVIDERS``).

Pure parsing, no I/O and no Apprise import, so :mod:`notifyd.config` can check the
settings when they are read.  Syntax: entries separated by whitespace (spaces or new
lines: an Apprise URL may contain commas, ``;`` and ``|``, never a raw space), tried
in that order; each entry is ``[name=]target`` where ``target`` is

* a built-in provider of the channel (:data:`BUILTINS`): ``smtp`` (e-mail),
  ``http`` (SMS and push in notifyd's HTTP format, ``NOTIFYD_SMS_API_URL`` /
  ``NOTIFYD_PUSH_API_URL``; push also delivers users' own Apprise URLs), ``webhook``
  (the signed POST to the user's URL); or
* an Apprise service URL (``scheme://...``) whose path or query may hold placeholders
  for the recipient (:data:`PLACEHOLDERS`), e.g.
  ``twilio://SID:TOKEN@+15550001111/{phone}``.

``name`` (default: the built-in name, or the URL's scheme, ``-2``, ``-3``... when
repeated) is what status documents, metrics and the console show: never the URL, which
carries credentials.  An empty setting means the channel's built-in provider alone,
as before this setting existed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Built-in provider names per channel.
BUILTINS: dict[str, tuple[str, ...]] = {
    "email": ("smtp",),
    "sms": ("http",),
    "push": ("http",),
    "webhook": ("webhook",),
}
#: The default (and, before per-channel lists existed, only) provider of each channel.
DEFAULTS: dict[str, str] = {"email": "smtp", "sms": "http", "push": "http", "webhook": "webhook"}
#: Placeholders an Apprise URL may use, per channel: ``{user_id}`` everywhere, the
#: channel's address under its own name (and as ``{address}``), each push device token.
PLACEHOLDERS: dict[str, frozenset[str]] = {
    "email": frozenset({"user_id", "address", "email"}),
    "sms": frozenset({"user_id", "address", "phone"}),
    "push": frozenset({"user_id", "token"}),
    "webhook": frozenset({"user_id", "address"}),
}
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]{0,31}$")


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One configured provider: a built-in (``url`` None) or an Apprise URL template."""

    name: str
    builtin: str | None = None
    url: str | None = None

    @property
    def masked(self) -> str:
        """Safe to print: the name and, for a URL, its scheme only."""
        if self.url is None:
            return self.name if self.name == self.builtin else f"{self.name}={self.builtin}"
        scheme = scheme_of(self.url)
        return f"{scheme}://****" if self.name == scheme else f"{self.name}={scheme}://****"


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].strip().lower()


def placeholders(url: str) -> list[str]:
    return PLACEHOLDER_RE.findall(url)


def _check_url(channel: str, url: str, where: str) -> None:
    scheme = scheme_of(url)
    if not _SCHEME_RE.match(scheme):
        raise ValueError(
            f"{where}: {scheme[:20]!r} is not a URL scheme (separate entries with spaces)"
        )
    rest = url.split("://", 1)[1]
    # The recipient goes into the path or the query only: never into the host or the
    # credentials, whose structure a substituted value must not be able to change.
    authority_end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=-1)
    authority = rest if authority_end < 0 else rest[:authority_end]
    if "{" in authority or "}" in authority:
        raise ValueError(
            f"{where}: a placeholder may only appear in the path or query of "
            f"{scheme}://..., not in its host or credentials"
        )
    allowed = PLACEHOLDERS[channel]
    for ph in placeholders(url):
        if ph not in allowed:
            raise ValueError(
                f"{where}: unknown placeholder {{{ph}}} for {channel} "
                f"(allowed: {', '.join('{' + p + '}' for p in sorted(allowed))})"
            )
    if any(c.isspace() for c in url):
        raise ValueError(f"{where}: a URL may not contain whitespace")


def parse_providers(channel: str, text: str) -> list[ProviderSpec]:
    """The ordered providers of ``channel`` from its setting's text.

    Raises ValueError naming the entry by position, never quoting a URL (it may carry
    credentials).  Empty text gives the channel's built-in provider.
    """
    if channel not in BUILTINS:
        raise ValueError(f"channel {channel!r} has no configurable providers")
    entries = text.split()
    if not entries:
        return [ProviderSpec(name=DEFAULTS[channel], builtin=DEFAULTS[channel])]
    specs: list[ProviderSpec] = []
    used: set[str] = set()
    for i, entry in enumerate(entries, 1):
        where = f"{channel} provider #{i}"
        name: str | None = None
        head = entry.split("://", 1)[0]
        if "=" in head:  # "name=target": "=" before any "://" is the name separator
            name, entry = entry.split("=", 1)
            name = name.strip().lower()
            if not _NAME_RE.match(name):
                raise ValueError(f"{where}: name {name[:40]!r} must match {_NAME_RE.pattern}")
        if "://" in entry:
            _check_url(channel, entry, where)
            base = name or scheme_of(entry)
            spec = ProviderSpec(name=base, url=entry)
        else:
            builtin = entry.strip().lower()
            if builtin not in BUILTINS[channel]:
                raise ValueError(
                    f"{where}: {builtin[:40]!r} is neither an Apprise URL (scheme://...) nor "
                    f"a built-in {channel} provider ({', '.join(BUILTINS[channel])}); "
                    "separate entries with spaces"
                )
            spec = ProviderSpec(name=name or builtin, builtin=builtin)
        if spec.name in used:
            if name is not None:
                raise ValueError(f"{where}: the name {name!r} is used twice")
            n = 2
            while f"{spec.name}-{n}" in used:
                n += 1
            spec = ProviderSpec(name=f"{spec.name}-{n}", builtin=spec.builtin, url=spec.url)
        used.add(spec.name)
        specs.append(spec)
    return specs


def masked(channel: str, text: str) -> str:
    """The setting as ``notifyd config`` shows it: names and schemes, no credentials."""
    try:
        return " ".join(s.masked for s in parse_providers(channel, text)) if text else ""
    except ValueError:
        return "**********"
