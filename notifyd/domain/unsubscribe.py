"""Signed unsubscribe links for e-mail (``List-Unsubscribe``: RFC 2369, one-click: RFC 8058).

A link's token names one user, one category and one channel (``email``) and is an HS256
JWT (PyJWT) over exactly those claims.  Whoever holds the e-mail can opt that user out
of that category on e-mail — and nothing else: the signature covers the user id (a
token cannot be replayed into another user's preferences) and 256 bits of HMAC are not
guessable.  No login is needed, as RFC 8058 requires.

**No expiry**, on purpose: a mailbox provider POSTs the one-click link whenever the user
presses "unsubscribe", possibly months after the mail arrived, and RFC 8058 wants that
to keep working.  A token only ever *adds* the same opt-out, so replaying it is
harmless.  Tokens are deterministic (the same user and category give the same link), so
a re-sent message carries the same headers.  Changing the key
(``NOTIFYD_UNSUBSCRIBE_SECRET``, or the JWT secret it is derived from when unset) voids
every link already sent.

The key: ``NOTIFYD_UNSUBSCRIBE_SECRET`` if set, else HKDF-SHA256 of the JWT secret (the
configured one, or the one the workers share through the credential store), so links
and access tokens are signed with different keys.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any
from urllib.parse import quote, urlencode

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from notifyd.config import CHANNELS, Settings
from notifyd.errors import BadRequest, Forbidden, ServiceUnavailable

#: Reads the JWT secret the workers share (kept in the credential store).
SharedSecret = Callable[[Settings], Awaitable[str]]
#: Set by the composition root (:func:`notifyd.service.create_app`): the domain never
#: imports the credential store, which lives with the web view's auth.
_shared_secret: list[SharedSecret] = []

#: Path of the public unsubscribe endpoint (``notifyd.web.unsubscribe``).
PATH = "/api/v1/unsubscribe"
#: The body mailbox providers POST, and the value of ``List-Unsubscribe-Post``.
ONE_CLICK = "List-Unsubscribe=One-Click"
AUDIENCE = "notifyd-unsubscribe"
ALGORITHM = "HS256"
MIN_KEY_BYTES = 32
#: Longest token accepted (user ids ≤ 200 and categories ≤ 100 characters fit).
MAX_TOKEN_CHARS = 4096
#: RFC 5322: a header line may not exceed 998 characters (CRLF excluded).
MAX_HEADER_LINE = 998
_HKDF_INFO = b"notifyd unsubscribe link v1"
_CATEGORY_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
_CLAIMS = ("aud", "sub", "cat", "ch")


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """What a verified token allows: opting ``user_id`` out of ``category`` on ``channel``."""

    user_id: str
    category: str
    channel: str = "email"


class UnsubscribeSigner:
    """Signs and verifies unsubscribe tokens with one HMAC key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the unsubscribe key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key

    def sign(self, user_id: str, category: str, channel: str = "email") -> str:
        claims = {"aud": AUDIENCE, "sub": user_id, "cat": category, "ch": channel}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str) -> Unsubscribe:
        """The token's claims; 400 ``invalid_token`` if it is not a token at all, 403
        ``token_rejected`` if its signature or claims do not check out."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise BadRequest("the unsubscribe token is empty or too long", code="invalid_token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                options={"require": list(_CLAIMS)},
            )
        except jwt.InvalidSignatureError:
            raise Forbidden(
                "the unsubscribe link's signature does not match", code="token_rejected"
            ) from None
        except jwt.DecodeError:
            raise BadRequest("the unsubscribe token is malformed", code="invalid_token") from None
        except jwt.InvalidTokenError as exc:  # wrong audience, missing claim
            raise Forbidden(
                f"the unsubscribe token is not valid: {exc}", code="token_rejected"
            ) from None
        user_id, category, channel = claims["sub"], claims["cat"], claims["ch"]
        if not (
            isinstance(user_id, str)
            and user_id
            and isinstance(category, str)
            and _CATEGORY_RE.match(category)
            and channel in CHANNELS
        ):
            # Signed by us, so this is a key shared with something else: refuse it.
            raise Forbidden("the unsubscribe token's claims are not valid", code="token_rejected")
        return Unsubscribe(user_id=user_id, category=category, channel=channel)


def derive_key(secret: str) -> bytes:
    """The link key derived from the JWT secret (HKDF-SHA256, its own ``info``)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(secret.encode())


def configured_key(settings: Settings) -> bytes | None:
    """The key if the settings alone determine it, else None (JWT secret in the store)."""
    own = settings.unsubscribe_secret.get_secret_value()
    if own:
        return own.encode()
    jwt_secret = settings.jwt_secret.get_secret_value()
    return derive_key(jwt_secret) if jwt_secret else None


def share_secret_from(read: SharedSecret) -> None:
    """Where :func:`resolve_key` reads the shared JWT secret when it is handed no reader."""
    _shared_secret[:] = [read]


async def resolve_key(
    settings: Settings, read_secret: Callable[[], Awaitable[str]] | None = None
) -> bytes:
    """The link key, the same on every worker: configured, or derived from the JWT secret
    the workers share through the credential store (``read_secret``, else the reader set
    with :func:`share_secret_from`, which opens the configured store).

    Raises :class:`~notifyd.errors.ServiceUnavailable` (a 503) if the store is down."""
    key = configured_key(settings)
    if key is not None:
        return key
    if read_secret is not None:
        return derive_key(await read_secret())
    if not _shared_secret:
        raise ServiceUnavailable(
            "no unsubscribe key: none configured and no credential store set up",
            code="not_ready",
        )
    return derive_key(await _shared_secret[0](settings))


def mailto_address(settings: Settings) -> str | None:
    """``NOTIFYD_UNSUBSCRIBE_MAILTO``, else the address of ``smtp_from`` (None if unusable)."""
    address = settings.unsubscribe_mailto or parseaddr(settings.smtp_from)[1]
    if not address or "@" not in address or any(c in address for c in " \t\r\n<>,?"):
        return None
    return address


@dataclass(frozen=True, slots=True)
class UnsubscribeLinks:
    """The two ways out an e-mail offers: the signed web link and a mailto:."""

    url: str
    mailto: str | None

    def header_value(self) -> str | None:
        """``List-Unsubscribe`` pre-folded, one URI per line, or None if the link is too
        long for a header line (RFC 5322's 998 characters).

        Pre-folded because Python's header folder turns a URI longer than 78 characters
        into RFC 2047 encoded words, which mailbox providers do not decode in this
        header: the message must be written with ``refold_source="none"``."""
        room = MAX_HEADER_LINE - len("List-Unsubscribe: ")
        uris = [f"<{self.url}>"]
        if self.mailto is not None:
            uris.append(f"<{self.mailto}>")
        if len(uris[0]) + 1 > room:
            return None
        uris = [u for u in uris if len(u) + 1 <= room]
        return ",\n ".join(uris)


def links_for(
    settings: Settings, signer: UnsubscribeSigner, user_id: str, category: str
) -> UnsubscribeLinks:
    """The unsubscribe links of one user and category (channel ``email``)."""
    token = signer.sign(user_id, category, "email")
    url = f"{settings.resolved_public_url}{PATH}?{urlencode({'t': token})}"
    address = mailto_address(settings)
    mailto = (
        None
        if address is None
        else f"mailto:{address}?subject={quote('unsubscribe ' + token, safe='')}"
    )
    return UnsubscribeLinks(url=url, mailto=mailto)
