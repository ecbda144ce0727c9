"""Operator commands: ``notifyd prefs get|set``, ``notifyd user create``, ``notifyd token``.

* ``prefs`` talks to a running worker's HTTP API (any worker: the API routes to the
  owner of the user's partition), so preferences are validated exactly as the API
  validates them and a rejected value is shown with the API's reason.
* ``user create`` and ``token`` work directly on the credential store
  (``NOTIFYD_CREDENTIAL_STORE_URL``, default SQLite in the data dir): they bootstrap
  the first operator before anyone can log in through the API.  ``token`` signs an
  access token the way the worker does: with ``NOTIFYD_JWT_SECRET``, else the secret
  the workers share through the store (``config:jwt_secret``, created if missing, so
  workers started later use the same one).

Exit codes: 0 ok; 1 the request was refused (validation, conflict, not found);
2 usage error; 69 the worker or credential store could not be reached; 77 not
authorised (missing/invalid token, wrong password, not an operator).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

import click

from notifyd.model.contact import is_hhmm

if TYPE_CHECKING:
    from notifyd.web.auth.store import CredentialStore

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE
EXIT_NOPERM = 77  # EX_NOPERM

_QUIET_RE = re.compile(r"^(\d{1,2}:\d{2})-(\d{1,2}:\d{2})@(\S+)$")


class CliError(click.ClickException):
    """A failure with its own exit code and an ``error:`` message on stderr."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _settings() -> Any:
    from pydantic import ValidationError

    from notifyd.config import get_settings

    try:
        return get_settings()
    except ValidationError as exc:  # a bad NOTIFYD_* variable: name it (not its value,
        # which may be a secret) and say what is wrong
        problems = "; ".join(
            f"NOTIFYD_{'_'.join(str(part) for part in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise CliError(f"invalid settings: {problems}", EXIT_USAGE) from exc
    except Exception as exc:
        raise CliError(f"invalid settings: {exc}", EXIT_USAGE) from exc


def _default_url() -> str:
    s = _settings()
    host = s.web_host if s.web_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{s.web_port}"


# --------------------------------------------------------------------------------------
# HTTP API client (stdlib: no event loop needed)
# --------------------------------------------------------------------------------------


def api_call(
    method: str, url: str, token: str | None, body: Any = None, timeout: float = 15.0
) -> Any:
    """Call the API; return the JSON answer or raise :class:`CliError` with a clear message."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            err = json.loads(raw)
            code, detail = err.get("code", "error"), err.get("detail", "")
        except (ValueError, AttributeError):
            code, detail = "error", raw.decode(errors="replace")[:300]
        exit_code = EXIT_NOPERM if exc.code in (401, 403) else EXIT_REFUSED
        if exc.code >= 500:
            exit_code = EXIT_UNAVAILABLE
        raise CliError(f"{exc.code} {code}: {detail}", exit_code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(
            f"cannot reach notifyd at {url}: {reason} (is a worker running? see --url)",
            EXIT_UNAVAILABLE,
        ) from None
    return json.loads(raw) if raw else None


def _require_token(token: str | None) -> str:
    if not token:
        raise CliError(
            "an operator access token is required: --token or NOTIFYD_TOKEN "
            "(get one with `notifyd token USERNAME`)",
            EXIT_NOPERM,
        )
    return token


def _prefs_url(base: str, user_id: str) -> str:
    return f"{base.rstrip('/')}/api/v1/users/{urllib.parse.quote(user_id, safe='')}/preferences"


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False))


_url_option = click.option(
    "--url",
    envvar="NOTIFYD_URL",
    help="Base URL of a running worker [env NOTIFYD_URL; default from "
    "NOTIFYD_WEB_HOST/NOTIFYD_WEB_PORT, e.g. http://127.0.0.1:6066]",
)
_token_option = click.option(
    "--token",
    envvar="NOTIFYD_TOKEN",
    help="Operator access token [env NOTIFYD_TOKEN]",
)


# --------------------------------------------------------------------------------------
# prefs
# --------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def prefs() -> None:
    """Read and change a user's preferences through a running worker's API (operator)."""


@prefs.command("get")
@click.argument("user_id")
@_url_option
@_token_option
def prefs_get(user_id: str, url: str | None, token: str | None) -> None:
    """Print USER_ID's preferences as JSON (defaults if never set)."""
    doc = api_call("GET", _prefs_url(url or _default_url(), user_id), _require_token(token))
    _echo_json(doc)


def parse_quiet_hours(value: str) -> dict[str, str] | None:
    """``22:00-07:00@Europe/Paris`` → quiet_hours object; ``off`` → None."""
    if value.strip().lower() in ("off", "none", ""):
        return None
    m = _QUIET_RE.match(value.strip())
    if not m:
        raise click.BadParameter(
            "expected START-END@TIMEZONE like 22:00-07:00@Europe/Paris, or off"
        )
    start, end, tz = m.groups()
    start, end = start.zfill(5), end.zfill(5)
    for t in (start, end):
        if not is_hhmm(t):
            raise click.BadParameter(f"{t!r} is not a 24 h time HH:MM")
    if start == end:
        raise click.BadParameter("start and end must differ")
    return {"start": start, "end": end, "timezone": tz}


def parse_opt(value: str) -> tuple[str, str]:
    """``category:channel`` (channel ``*`` or omitted: every channel)."""
    from notifyd.config import CHANNELS

    cat, _, channel = value.partition(":")
    cat, channel = cat.strip(), (channel.strip() or "*")
    if not cat:
        raise click.BadParameter(f"{value!r}: expected CATEGORY[:CHANNEL]")
    if channel != "*" and channel not in CHANNELS:
        raise click.BadParameter(
            f"{value!r}: unknown channel {channel!r} (one of {', '.join(CHANNELS)} or *)"
        )
    return cat, channel


def _quiet_cb(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    return value if value is None else ("set", parse_quiet_hours(value))


def _opts_cb(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    return [parse_opt(v) for v in value]


def _channels_cb(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    from notifyd.config import CHANNELS

    for v in value:
        if v not in CHANNELS:
            raise click.BadParameter(f"unknown channel {v!r} (one of {', '.join(CHANNELS)})")
    return list(value)


def apply_changes(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The full preferences document after the CLI's changes (for PUT)."""
    doc = {k: v for k, v in current.items() if k not in ("updated_at",)}
    for name in ("email", "phone", "webhook_url", "locale"):
        if name in changes:
            doc[name] = changes[name] or None
    for name in ("push_tokens", "apprise_urls"):
        if name in changes:
            doc[name] = list(changes[name])
    if "quiet_hours" in changes:
        doc["quiet_hours"] = changes["quiet_hours"]
    channels = dict(doc.get("channels") or {})
    for ch in changes.get("enable", ()):
        channels[ch] = True
    for ch in changes.get("disable", ()):
        channels[ch] = False
    doc["channels"] = channels
    opt_out: dict[str, list[str]] = {k: list(v) for k, v in (doc.get("opt_out") or {}).items()}
    for cat, ch in changes.get("opt_out", ()):
        chans = opt_out.setdefault(cat, [])
        if ch not in chans:
            chans.append(ch)
    for cat, ch in changes.get("opt_in", ()):
        if cat in opt_out:
            opt_out[cat] = [] if ch == "*" else [c for c in opt_out[cat] if c != ch]
            if not opt_out[cat]:
                del opt_out[cat]
    doc["opt_out"] = opt_out
    return doc


@prefs.command("set")
@click.argument("user_id")
@click.option("--email", help="Email address ('' clears it)")
@click.option("--phone", help="E.164 phone number like +14155550123 ('' clears it)")
@click.option("--webhook-url", help="http(s) URL for the webhook channel ('' clears it)")
@click.option("--locale", help="BCP 47 locale, e.g. fr-FR ('' clears it)")
@click.option(
    "--push-token", "push_tokens", multiple=True,
    help="Push device token (repeatable; replaces the list)",
)
@click.option(
    "--apprise-url", "apprise_urls", multiple=True,
    help="Apprise URL delivered with push, e.g. json://host/path (repeatable; replaces the list)",
)
@click.option("--clear-push-tokens", is_flag=True, help="Remove every push token")
@click.option("--clear-apprise-urls", is_flag=True, help="Remove every Apprise URL")
@click.option(
    "--quiet-hours", callback=_quiet_cb, metavar="START-END@TZ",
    help="Quiet hours in the user's IANA time zone, e.g. 22:00-07:00@Europe/Paris; off clears",
)
@click.option(
    "--opt-out", "opt_out", multiple=True, callback=_opts_cb, metavar="CATEGORY[:CHANNEL]",
    help="Opt out of a category on a channel (* or no channel: all; category * : all "
    "categories); repeatable",
)
@click.option(
    "--opt-in", "opt_in", multiple=True, callback=_opts_cb, metavar="CATEGORY[:CHANNEL]",
    help="Undo an opt-out (no channel: every channel of the category); repeatable",
)
@click.option("--enable", multiple=True, callback=_channels_cb, metavar="CHANNEL",
              help="Turn a channel on (repeatable)")
@click.option("--disable", multiple=True, callback=_channels_cb, metavar="CHANNEL",
              help="Turn a channel off (repeatable)")
@_url_option
@_token_option
def prefs_set(
    user_id: str,
    url: str | None,
    token: str | None,
    push_tokens: tuple[str, ...],
    apprise_urls: tuple[str, ...],
    clear_push_tokens: bool,
    clear_apprise_urls: bool,
    quiet_hours: Any,
    opt_out: list[tuple[str, str]],
    opt_in: list[tuple[str, str]],
    enable: list[str],
    disable: list[str],
    **fields: str | None,
) -> None:
    """Change some of USER_ID's preferences; print the stored document.

    Reads the current preferences, applies the options given and writes the whole
    document back (PUT): the worker validates it and answers with what it stored.
    Options not given keep their value.
    """
    changes: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if push_tokens and clear_push_tokens:
        raise click.UsageError("--push-token and --clear-push-tokens exclude each other")
    if apprise_urls and clear_apprise_urls:
        raise click.UsageError("--apprise-url and --clear-apprise-urls exclude each other")
    if push_tokens or clear_push_tokens:
        changes["push_tokens"] = list(push_tokens)
    if apprise_urls or clear_apprise_urls:
        changes["apprise_urls"] = list(apprise_urls)
    if quiet_hours is not None:
        changes["quiet_hours"] = quiet_hours[1]
    if set(enable) & set(disable):
        raise click.UsageError("a channel cannot be both --enable'd and --disable'd")
    for key, value in (("opt_out", opt_out), ("opt_in", opt_in),
                       ("enable", enable), ("disable", disable)):
        if value:
            changes[key] = value
    if not changes:
        raise click.UsageError("nothing to change: give at least one option (see --help)")
    target = _prefs_url(url or _default_url(), user_id)
    tok = _require_token(token)
    current = api_call("GET", target, tok) or {}
    doc = apply_changes(current, changes)
    _echo_json(api_call("PUT", target, tok, body=doc))


# --------------------------------------------------------------------------------------
# user create / token: straight on the credential store
# --------------------------------------------------------------------------------------


async def _open_store() -> CredentialStore:
    from notifyd.web.auth.store import StoreUnavailable, open_store

    s = _settings()
    url = s.resolved_credential_store_url
    if url.startswith("sqlite:///"):
        s.datadir.mkdir(parents=True, exist_ok=True)
    try:
        store = await open_store(url)
        await store.ping()
    except (StoreUnavailable, OSError, ValueError) as exc:
        raise CliError(f"cannot open the credential store: {exc}", EXIT_UNAVAILABLE) from exc
    return store


def _web_error(exc: Exception) -> CliError:
    from notifyd.errors import (
        Conflict,
        Forbidden,
        NotFound,
        ServiceUnavailable,
        Unauthorized,
        WebError,
    )

    if isinstance(exc, ServiceUnavailable):
        return CliError(f"{exc.code}: {exc.detail}", EXIT_UNAVAILABLE)
    if isinstance(exc, Unauthorized | Forbidden):
        return CliError(f"{exc.code}: {exc.detail}", EXIT_NOPERM)
    if isinstance(exc, Conflict | NotFound | WebError):
        return CliError(f"{exc.code}: {exc.detail}", EXIT_REFUSED)
    return CliError(str(exc))


def _read_password(password: str | None, from_stdin: bool, confirm: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise click.UsageError("--password-stdin: nothing on standard input")
        return line.rstrip("\r\n")
    if password is not None:
        return password
    value: str = click.prompt(
        "Password", hide_input=True, confirmation_prompt=confirm, err=True
    )
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def user() -> None:
    """Manage local users in the credential store (NOTIFYD_CREDENTIAL_STORE_URL)."""


@user.command("create")
@click.argument("username")
@click.option("--email", required=True, help="The user's email address")
@click.option("--phone", help="E.164 phone number like +14155550123")
@click.option("--operator", is_flag=True, help="Give the operator role (admin API)")
@click.option(
    "--password", envvar="NOTIFYD_PASSWORD",
    help="Password (asked for, hidden, when not given) [env NOTIFYD_PASSWORD]",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input")
def user_create(
    username: str,
    email: str,
    phone: str | None,
    operator: bool,
    password: str | None,
    password_stdin: bool,
) -> None:
    """Create local user USERNAME and print it as JSON (never the password)."""
    secret = _read_password(password, password_stdin, confirm=True)
    roles = ("user", "operator") if operator else ("user",)

    async def create() -> dict[str, Any]:
        from notifyd.errors import WebError
        from notifyd.web.auth.users import UserService

        store = await _open_store()
        try:
            created = await UserService(store).create(username, secret, email, phone, roles=roles)
        except WebError as exc:
            raise _web_error(exc) from exc
        finally:
            await store.close()
        out: dict[str, Any] = created.public()
        return out

    _echo_json(asyncio.run(create()))


@click.command("token")
@click.argument("username")
@click.option(
    "--password", envvar="NOTIFYD_PASSWORD",
    help="Password (asked for, hidden, when not given) [env NOTIFYD_PASSWORD]",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input")
@click.option(
    "--json", "as_json", is_flag=True, help="Print {access_token, token_type, expires_in}"
)
def token_cmd(username: str, password: str | None, password_stdin: bool, as_json: bool) -> None:
    """Check USERNAME's password and print an access token for the API.

    The token is signed like the worker signs its own (NOTIFYD_JWT_SECRET or the
    secret shared through the credential store), so every worker of the deployment
    accepts it.  Use it as NOTIFYD_TOKEN for `notifyd prefs`.
    """
    secret = _read_password(password, password_stdin, confirm=False)

    async def issue() -> dict[str, Any]:
        from notifyd.errors import WebError
        from notifyd.web.auth.store import resolve_jwt_secret
        from notifyd.web.auth.users import LoginThrottle, TokenService, UserService

        s = _settings()
        store = await _open_store()
        try:
            users = UserService(store, throttle=LoginThrottle(store))
            try:
                found = await users.authenticate(username, secret, client_ip="cli")
                tokens = TokenService.from_settings(
                    s, store=store, users=users, secret=await resolve_jwt_secret(s, store)
                )
                answer: dict[str, Any] = await tokens.issue(found)
            except WebError as exc:
                raise _web_error(exc) from exc
            except ValueError as exc:  # a configured secret too short to sign with
                raise CliError(str(exc), EXIT_USAGE) from exc
            return answer
        finally:
            await store.close()

    answer = asyncio.run(issue())
    if as_json:
        _echo_json(answer)
    else:
        click.echo(answer["access_token"])


def register(main: click.Group) -> None:
    """Add ``prefs``, ``user`` and ``token`` to the ``notifyd`` command group."""
    main.add_command(prefs)
    main.add_command(user)
    main.add_command(token_cmd)

