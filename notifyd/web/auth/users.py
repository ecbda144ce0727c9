"""Users, passwords, tokens and sessions, plus the auth and error middlewares of the web view.

Everything persistent lives in the :class:`~notifyd.web.auth.store.CredentialStore`:

* ``user:<username lower-cased>`` -> user JSON (no TTL); ``userid:<user_id>`` -> username
* ``refresh:<sha256(token)>`` / ``session:<sha256(id)>`` -> ``{user_id, created_at}`` (TTL)
* ``revoked:<jti>`` (TTL = remaining token lifetime)
* ``login:fail:user:<sha256>`` / ``login:fail:ip:<ip>`` failure counters (TTL = window)

Secrets handed to clients (refresh tokens, session ids) are stored only as SHA-256 digests,
so a leaked store dump does not hand out live sessions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import jwt
import msgspec
import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import SecretStr

from notifyd.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
    WebError,
)
from notifyd.model.contact import is_e164, is_email
from notifyd.model.limits import (
    E164_PATTERN,
    EMAIL_PATTERN,
    MAX_PASSWORD,
    MIN_PASSWORD,
    USERNAME_PATTERN,
    shaped,
)
from notifyd.model.responses import Error, TokenResponse
from notifyd.model.responses import User as PublicUser
from notifyd.web.auth.store import CredentialStore

if TYPE_CHECKING:
    from notifyd.config import Settings

log = structlog.get_logger(__name__)

ROLES: frozenset[str] = frozenset({"user", "operator"})
SESSION_COOKIE = "notifyd_session"
#: Prefix of usernames generated for OIDC users; local sign-ups may not use it.
EXTERNAL_USERNAME_PREFIX = "oidc-"

_USERNAME_RE = re.compile(USERNAME_PATTERN.removeprefix("^").removesuffix("$"))  # fullmatch
_MIN_PASSWORD, _MAX_PASSWORD = MIN_PASSWORD, MAX_PASSWORD
_MAX_TOKEN_CHARS = 8192
_MIN_SECRET_BYTES = 32


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --- users ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    username: str
    email: str | None
    phone: str | None
    roles: tuple[str, ...]
    #: None for external (OIDC) users: they cannot log in with a password.
    password_hash: str | None
    created_at: str
    disabled: bool = False
    #: OIDC issuer for external users, None for local ones.
    issuer: str | None = None

    @property
    def is_operator(self) -> bool:
        return "operator" in self.roles

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "user_id": self.user_id,
                "username": self.username,
                "email": self.email,
                "phone": self.phone,
                "roles": list(self.roles),
                "password_hash": self.password_hash,
                "created_at": self.created_at,
                "disabled": self.disabled,
                "issuer": self.issuer,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> User:
        d = orjson.loads(raw)
        return cls(
            user_id=d["user_id"],
            username=d["username"],
            email=d.get("email"),
            phone=d.get("phone"),
            roles=tuple(d.get("roles") or ()),
            password_hash=d.get("password_hash"),
            created_at=d["created_at"],
            disabled=bool(d.get("disabled", False)),
            issuer=d.get("issuer"),
        )

    def public(self) -> dict[str, Any]:
        """The user as the API shows it (:class:`notifyd.model.responses.User`): never
        the password hash."""
        out: dict[str, Any] = msgspec.to_builtins(PublicUser(
            user_id=self.user_id,
            username=self.username,
            email=self.email,
            phone=self.phone,
            roles=list(self.roles),  # type: ignore[arg-type]  # "user" / "operator"
            created_at=self.created_at,
            disabled=self.disabled,
        ))
        return out


def _user_key(username: str) -> str:
    # Case-insensitive uniqueness: "Alice" and "alice" must not be two accounts.
    return f"user:{username.lower()}"


def validate_username(username: str) -> None:
    if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
        raise BadRequest(
            "username must be 3-64 characters of letters, digits, '_', '.' or '-'",
            code="invalid_username",
        )


def validate_password(password: str) -> None:
    if not isinstance(password, str) or not _MIN_PASSWORD <= len(password) <= _MAX_PASSWORD:
        raise BadRequest(
            f"password must be {_MIN_PASSWORD}-{_MAX_PASSWORD} characters long",
            code="invalid_password",
        )


def validate_email(email: str) -> None:
    if not is_email(email):
        # Shaped as the schema states but refused by email-validator: 422.
        error = Unprocessable if shaped(EMAIL_PATTERN, email) else BadRequest
        raise error(f"email {email!r} is not a valid address", code="invalid_email")


def validate_phone(phone: str) -> None:
    if not is_e164(phone):
        # E.164-shaped (what the schema states) but impossible for its country: 422.
        error = Unprocessable if shaped(E164_PATTERN, phone) else BadRequest
        raise error(
            "phone must be a possible number in E.164 format, e.g. +14155550123",
            code="invalid_phone",
        )


def validate_roles(roles: Collection[str]) -> tuple[str, ...]:
    if isinstance(roles, str) or not roles or not all(r in ROLES for r in roles):
        raise BadRequest(
            f"roles must be a non-empty list of {sorted(ROLES)}", code="invalid_roles"
        )
    return tuple(dict.fromkeys(roles))  # dedupe, keep order


class LoginThrottled(TooManyRequests):
    """Too many failed logins; ``retry_after`` (seconds) becomes the Retry-After header."""

    def __init__(self, detail: str, *, retry_after: int, code: str = "login_throttled") -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after


class LoginThrottle:
    """Failed-login counters per username and per client IP over a fixed window.

    Once a counter reaches its limit every attempt (even with the right password) is
    refused until the window ends, so guessing cannot continue.  The per-IP limit is
    higher because many users may share one address (NAT).
    """

    def __init__(
        self,
        store: CredentialStore,
        *,
        max_failures: int = 10,
        max_failures_per_ip: int = 50,
        window_s: int = 900,
    ) -> None:
        self._store = store
        self.max_failures = max_failures
        self.max_failures_per_ip = max_failures_per_ip
        self.window_s = window_s

    def _keys(self, username: str, client_ip: str | None) -> list[tuple[str, int]]:
        # Username hashed: attacker-chosen strings of any length never become raw keys.
        keys = [(f"login:fail:user:{_digest(username.lower())}", self.max_failures)]
        if client_ip:
            keys.append((f"login:fail:ip:{client_ip}", self.max_failures_per_ip))
        return keys

    async def check(self, username: str, client_ip: str | None = None) -> None:
        for key, limit in self._keys(username, client_ip):
            raw = await self._store.get(key)
            if raw is not None and int(raw) >= limit:
                retry_after = await self._store.ttl(key) or self.window_s
                raise LoginThrottled(
                    f"too many failed logins; retry in {retry_after} s", retry_after=retry_after
                )

    async def record_failure(self, username: str, client_ip: str | None = None) -> None:
        for key, _ in self._keys(username, client_ip):
            await self._store.incr(key, self.window_s)

    async def reset(self, username: str) -> None:
        # Only the username counter: resetting the IP counter on any success would let
        # an attacker interleave logins to their own account to keep guessing.
        await self._store.delete(self._keys(username, None)[0][0])


_INVALID_CREDENTIALS = "invalid username or password"


class UserService:
    """Local and external (OIDC) users in the credential store."""

    def __init__(
        self,
        store: CredentialStore,
        *,
        hasher: PasswordHasher | None = None,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self._store = store
        self._hasher = hasher or PasswordHasher()
        self.throttle = throttle
        self._dummy_hash: str | None = None

    # argon2 is deliberately slow (~tens of ms): run it off the event loop.
    async def _hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    async def _insert(self, user: User) -> User:
        # Index first (the uuid cannot collide), then claim the username atomically;
        # a lost race removes the index again, so no half-created user remains.
        await self._store.set(f"userid:{user.user_id}", user.username.encode())
        if not await self._store.set_if_absent(_user_key(user.username), user.to_json()):
            await self._store.delete(f"userid:{user.user_id}")
            raise Conflict(
                f"username '{user.username}' is already taken", code="username_taken"
            )
        return user

    async def _save(self, user: User) -> None:
        await self._store.set(_user_key(user.username), user.to_json())

    async def create(
        self,
        username: str,
        password: str,
        email: str,
        phone: str | None = None,
        roles: Collection[str] = ("user",),
    ) -> User:
        validate_username(username)
        if username.lower().startswith(EXTERNAL_USERNAME_PREFIX):
            raise BadRequest(
                f"usernames starting with '{EXTERNAL_USERNAME_PREFIX}' are reserved",
                code="invalid_username",
            )
        validate_password(password)
        validate_email(email)
        if phone is not None:
            validate_phone(phone)
        role_tuple = validate_roles(roles)
        if await self._store.get(_user_key(username)) is not None:
            # Fast path only (saves an argon2 hash); _insert is the atomic check.
            raise Conflict(f"username '{username}' is already taken", code="username_taken")
        user = User(
            user_id=str(uuid.uuid4()),
            username=username,
            email=email,
            phone=phone,
            roles=role_tuple,
            password_hash=await self._hash(password),
            created_at=_now_iso(),
        )
        return await self._insert(user)

    async def get_by_username(self, username: str) -> User | None:
        if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
            return None
        raw = await self._store.get(_user_key(username))
        return None if raw is None else User.from_json(raw)

    async def get_by_id(self, user_id: str) -> User | None:
        if not isinstance(user_id, str) or not 0 < len(user_id) <= 64:
            return None
        username = await self._store.get(f"userid:{user_id}")
        if username is None:
            return None
        user = await self.get_by_username(username.decode())
        # Guard against a stale index pointing at a re-created username.
        return user if user is not None and user.user_id == user_id else None

    async def authenticate(
        self, username: str, password: str, *, client_ip: str | None = None
    ) -> User:
        """The user for these credentials, or Unauthorized(code="invalid_credentials").

        Unknown user and wrong password answer the same and both run an argon2 verify,
        so neither the message nor the timing tells which usernames exist.
        """
        if self.throttle is not None:
            await self.throttle.check(username, client_ip)
        if not isinstance(password, str) or len(password) > _MAX_PASSWORD:
            user, ok = None, False  # no hashing of huge inputs (DoS); length is no secret
        else:
            user = await self.get_by_username(username)
            stored = user.password_hash if user is not None else None
            ok = await asyncio.to_thread(
                self._verify_sync, stored or await self._dummy(), password
            )
        if user is None or user.password_hash is None or not ok:
            if self.throttle is not None:
                await self.throttle.record_failure(username, client_ip)
            raise Unauthorized(_INVALID_CREDENTIALS, code="invalid_credentials")
        if user.disabled:
            # Only revealed to someone who knows the password.
            raise Unauthorized("this account is disabled", code="account_disabled")
        if self.throttle is not None:
            await self.throttle.reset(username)
        if self._hasher.check_needs_rehash(user.password_hash):
            user = replace(user, password_hash=await self._hash(password))
            await self._save(user)
        return user

    async def set_disabled(self, user_id: str, disabled: bool) -> User:
        user = await self.get_by_id(user_id)
        if user is None:
            raise Unauthorized("unknown user", code="user_unknown")
        user = replace(user, disabled=disabled)
        await self._save(user)
        return user

    async def delete(self, user_id: str) -> bool:
        user = await self.get_by_id(user_id)
        if user is None:
            return False
        await self._store.delete(_user_key(user.username))
        await self._store.delete(f"userid:{user_id}")
        return True

    @staticmethod
    def external_user_id(issuer: str, sub: str) -> str:
        """Stable user id for an OIDC subject: the same person always maps to one user."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{issuer}#{sub}"))

    async def upsert_external(self, sub: str, issuer: str, email: str | None) -> User:
        """Find or create the user for an OIDC identity; keeps the e-mail up to date."""
        if not sub or not issuer:
            raise BadRequest("OIDC identity needs sub and issuer", code="oidc_identity_invalid")
        if email is not None and not is_email(email):
            email = None  # a provider's odd address must not block the login
        user_id = self.external_user_id(issuer, sub)
        user = await self.get_by_id(user_id)
        if user is not None:
            if email is not None and email != user.email:
                user = replace(user, email=email)
                await self._save(user)
            return user
        user = User(
            user_id=user_id,
            username=EXTERNAL_USERNAME_PREFIX + uuid.UUID(user_id).hex[:20],
            email=email,
            phone=None,
            roles=("user",),
            password_hash=None,
            created_at=_now_iso(),
            issuer=issuer,
        )
        try:
            return await self._insert(user)
        except Conflict:
            # A concurrent first login of the same identity won the race: use its record.
            existing = await self.get_by_id(user_id)
            if existing is None:
                raise
            return existing


# --- tokens and sessions --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CurrentUser:
    """The authenticated caller of one request.

    ``roles`` come from the stored user, not the token, so a demotion takes effect
    at once instead of when the token expires.
    """

    user_id: str
    username: str
    roles: tuple[str, ...]
    jti: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    via: Literal["bearer", "session"] = "bearer"

    @property
    def is_operator(self) -> bool:
        return "operator" in self.roles


def _looks_like_public_key(secret: bytes) -> bool:
    head = secret.lstrip()[:32]
    return head.startswith((b"-----BEGIN", b"ssh-", b"ecdsa-sha2-")) or b'"kty"' in secret


class TokenService:
    """HS256 access tokens (JWT) plus opaque, rotating refresh tokens."""

    ALGORITHM = "HS256"

    def __init__(
        self,
        secret: str | bytes | SecretStr,
        *,
        store: CredentialStore,
        users: UserService,
        issuer: str = "notifyd",
        audience: str = "notifyd-api",
        ttl_s: int = 3600,
        refresh_ttl_s: int = 3600,
        leeway_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(secret, SecretStr):
            secret = secret.get_secret_value()
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(key) < _MIN_SECRET_BYTES:
            raise ValueError(
                f"jwt secret must be at least {_MIN_SECRET_BYTES} bytes (got {len(key)}); "
                "set NOTIFYD_JWT_SECRET to e.g. `openssl rand -hex 32`"
            )
        if _looks_like_public_key(key):
            # A public key as HMAC secret is the classic RS->HS confusion setup.
            raise ValueError("jwt secret must be a random secret, not a (public) key")
        if not 0 <= leeway_s <= 5:
            raise ValueError("leeway_s must be between 0 and 5 seconds")
        if ttl_s <= 0 or refresh_ttl_s <= 0:
            raise ValueError("token lifetimes must be positive")
        self._key = key
        self._store = store
        self._users = users
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self.leeway_s = leeway_s
        self._clock = clock

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        store: CredentialStore,
        users: UserService,
        secret: str | None = None,
    ) -> TokenService:
        """``secret``: the resolved one (:func:`notifyd.web.auth.store.resolve_jwt_secret`);
        default the setting."""
        return cls(
            secret if secret is not None else settings.jwt_secret,
            store=store,
            users=users,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_s=settings.jwt_ttl_s,
            refresh_ttl_s=settings.session_ttl_s,
        )

    def encode(self, user: User) -> str:
        """A signed access token for ``user`` (no store access)."""
        now = int(self._clock())
        claims = {
            "sub": user.user_id,
            "username": user.username,
            "roles": list(user.roles),
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl_s,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self._key, algorithm=self.ALGORITHM)

    async def issue(self, user: User, *, refresh: bool = False) -> dict[str, Any]:
        """``{access_token, token_type: "bearer", expires_in[, refresh_token]}``."""
        if user.disabled:
            raise Unauthorized("this account is disabled", code="account_disabled")
        out = TokenResponse(
            access_token=self.encode(user), token_type="bearer", expires_in=self.ttl_s
        )
        if refresh:
            token = secrets.token_urlsafe(32)
            record = orjson.dumps({"user_id": user.user_id, "created_at": _now_iso()})
            await self._store.set(f"refresh:{_digest(token)}", record, self.refresh_ttl_s)
            out.refresh_token = token
        answer: dict[str, Any] = msgspec.to_builtins(out)
        return answer

    def decode(self, token: str) -> dict[str, Any]:
        """Signature and claim checks only (no store); raises Unauthorized."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise Unauthorized("malformed token", code="token_invalid")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                # Pinned: never trust the token's own "alg" (alg=none, RS/HS confusion).
                algorithms=[self.ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={
                    "require": ["exp", "iat", "iss", "aud", "sub", "jti"],
                    "verify_signature": True,
                },
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token has expired", code="token_expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}", code="token_invalid") from None
        if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("jti"), str):
            raise Unauthorized("invalid token: bad sub/jti", code="token_invalid")
        return claims

    async def verify(self, token: str) -> CurrentUser:
        claims = self.decode(token)
        if await self._store.get(f"revoked:{claims['jti']}") is not None:
            raise Unauthorized("token has been revoked", code="token_revoked")
        user = await self._users.get_by_id(claims["sub"])
        if user is None or user.disabled:
            raise Unauthorized("token's user no longer exists or is disabled", code="user_unknown")
        return CurrentUser(
            user_id=user.user_id,
            username=user.username,
            roles=user.roles,
            jti=claims["jti"],
            claims=claims,
            via="bearer",
        )

    async def revoke(self, claims: Mapping[str, Any] | CurrentUser) -> None:
        """Deny this access token until it would have expired anyway."""
        if isinstance(claims, CurrentUser):
            claims = claims.claims
        jti, exp = claims.get("jti"), claims.get("exp")
        if not isinstance(jti, str) or not isinstance(exp, int | float):
            raise BadRequest("claims need jti and exp to be revoked", code="token_invalid")
        remaining = int(exp - self._clock() + self.leeway_s) + 1
        if remaining > 0:
            await self._store.set(f"revoked:{jti}", b"1", remaining)

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        """Trade a refresh token for a new access + refresh token (the old one dies)."""
        if not isinstance(refresh_token, str) or not 0 < len(refresh_token) <= 256:
            raise Unauthorized("invalid refresh token", code="refresh_token_invalid")
        key = f"refresh:{_digest(refresh_token)}"
        raw = await self._store.get(key)
        # delete() is True for exactly one caller: concurrent reuse gets nothing.
        if raw is None or not await self._store.delete(key):
            raise Unauthorized("invalid or expired refresh token", code="refresh_token_invalid")
        user = await self._users.get_by_id(orjson.loads(raw)["user_id"])
        if user is None or user.disabled:
            raise Unauthorized("refresh token's user no longer exists", code="user_unknown")
        return await self.issue(user, refresh=True)

    async def revoke_refresh(self, refresh_token: str) -> bool:
        if not isinstance(refresh_token, str) or not 0 < len(refresh_token) <= 256:
            return False
        return await self._store.delete(f"refresh:{_digest(refresh_token)}")


class SessionService:
    """Browser sessions: an opaque id in the ``notifyd_session`` cookie -> a user."""

    def __init__(self, store: CredentialStore, users: UserService, *, ttl_s: int = 3600) -> None:
        self._store = store
        self._users = users
        self.ttl_s = ttl_s

    @classmethod
    def from_settings(
        cls, settings: Settings, *, store: CredentialStore, users: UserService
    ) -> SessionService:
        return cls(store, users, ttl_s=settings.session_ttl_s)

    async def create(self, user: User) -> str:
        session_id = secrets.token_urlsafe(32)
        record = orjson.dumps({"user_id": user.user_id, "created_at": _now_iso()})
        await self._store.set(f"session:{_digest(session_id)}", record, self.ttl_s)
        return session_id

    async def resolve(self, session_id: str) -> CurrentUser:
        """The user of a session, or Unauthorized(code="session_invalid"/"user_unknown")."""
        if not 0 < len(session_id) <= 256:
            raise Unauthorized("invalid session", code="session_invalid")
        raw = await self._store.get(f"session:{_digest(session_id)}")
        if raw is None:
            raise Unauthorized("session expired or unknown", code="session_invalid")
        user = await self._users.get_by_id(orjson.loads(raw)["user_id"])
        if user is None or user.disabled:
            raise Unauthorized("session's user no longer exists or is disabled",
                               code="user_unknown")
        return CurrentUser(user.user_id, user.username, user.roles, via="session")

    async def delete(self, session_id: str) -> bool:
        if not 0 < len(session_id) <= 256:
            return False
        return await self._store.delete(f"session:{_digest(session_id)}")


def set_session_cookie(
    response: web.StreamResponse, session_id: str, *, max_age: int, secure: bool = True
) -> None:
    # HttpOnly: no script access; SameSite=Lax: no cross-site POSTs carry it.
    response.set_cookie(
        SESSION_COOKIE, session_id, max_age=max_age, path="/",
        httponly=True, secure=secure, samesite="Lax",
    )


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")


# --- middlewares ----------------------------------------------------------------------

if TYPE_CHECKING or hasattr(web, "RequestKey"):
    CURRENT_USER: web.RequestKey[CurrentUser | None] = web.RequestKey("notifyd_current_user")
else:  # aiohttp < 3.14 has no typed request keys; a unique str key works the same
    CURRENT_USER = "notifyd_current_user"

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _same_origin(request: web.Request) -> bool:
    # Compare hosts only: behind a TLS-terminating proxy the scheme we see may differ.
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if source is None:
        return True  # not a browser navigation/fetch that could carry a forged request
    # "null" (sandboxed frames, file://) and garbage never match.
    return bool(source) and urlsplit(source).netloc.lower() == request.host.lower()


def auth_middleware(
    tokens: TokenService,
    users: UserService,
    public_paths: Collection[str] | Callable[[web.Request], bool],
    *,
    sessions: SessionService | None = None,
) -> Middleware:
    """Resolve the caller once per request into ``request[CURRENT_USER]``.

    ``public_paths`` is a set of exact paths or a predicate on the request.  On public
    paths a missing or bad credential just means "anonymous" (None); elsewhere it is
    401.  A bearer token wins over the session cookie; cookie-authenticated unsafe
    requests must come from the same origin (CSRF).  ``users`` is the directory the
    token and session services already consult (deleted/disabled users are refused);
    it is taken here so the wiring names every dependency in one place.
    """
    if callable(public_paths):
        is_public: Callable[[web.Request], bool] = public_paths
    else:
        paths = frozenset(public_paths)

        def is_public(request: web.Request) -> bool:
            return request.path in paths

    async def resolve(request: web.Request) -> CurrentUser | None:
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized(
                    "expected 'Authorization: Bearer <token>'", code="token_invalid"
                )
            return await tokens.verify(token.strip())
        session_id = request.cookies.get(SESSION_COOKIE) if sessions is not None else None
        if sessions is not None and session_id:
            current = await sessions.resolve(session_id)
            if request.method not in _SAFE_METHODS and not _same_origin(request):
                raise Forbidden("cross-site request refused", code="csrf_rejected")
            return current
        return None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        public = is_public(request)
        try:
            current = await resolve(request)
        except WebError:
            if not public:
                raise
            current = None  # e.g. a stale token on /login must not block logging in
        if current is None and not public:
            raise Unauthorized("authentication required", code="not_authenticated")
        request[CURRENT_USER] = current
        return await handler(request)

    return middleware


def current_user(request: web.Request) -> CurrentUser | None:
    """The caller, or None on a public path without credentials."""
    return request.get(CURRENT_USER)


def require_user(request: web.Request) -> CurrentUser:
    user = request.get(CURRENT_USER)
    if user is None:
        raise Unauthorized("authentication required", code="not_authenticated")
    return user


def require_operator(request: web.Request) -> CurrentUser:
    user = require_user(request)
    if not user.is_operator:
        raise Forbidden("operator role required", code="operator_required")
    return user


_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}

_DROP_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})


def error_response(
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    retry_after: float | None = None,
) -> web.Response:
    """The one JSON error shape of the API: ``{"code": ..., "detail": ...}``."""
    out = dict(headers or {})
    if retry_after is not None:
        out["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    return web.Response(
        body=orjson.dumps(msgspec.to_builtins(Error(code=code, detail=detail))),
        status=status,
        content_type="application/json",
        headers=out,
    )


def _http_exception_detail(exc: web.HTTPException) -> str:
    text = exc.text or ""
    default = f"{exc.status}: {exc.reason}"
    return exc.reason if not text or text == default else text


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes ``{code, detail}`` JSON; internals are logged, never sent."""
    try:
        return await handler(request)
    except WebError as exc:
        return error_response(
            exc.status, exc.code, exc.detail, retry_after=getattr(exc, "retry_after", None)
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are not errors
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in _DROP_HEADERS}
        return error_response(
            exc.status,
            _HTTP_CODES.get(exc.status, f"http_{exc.status}"),
            _http_exception_detail(exc),
            headers=headers,
        )
    except (json.JSONDecodeError, UnicodeDecodeError):
        # orjson.JSONDecodeError subclasses json.JSONDecodeError; both come from bodies.
        return error_response(400, "invalid_json", "request body is not valid JSON")
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        return error_response(500, "internal_error", "internal server error")


__all__ = [
    "CURRENT_USER",
    "ROLES",
    "SESSION_COOKIE",
    "CurrentUser",
    "LoginThrottle",
    "LoginThrottled",
    "SessionService",
    "TokenService",
    "User",
    "UserService",
    "auth_middleware",
    "clear_session_cookie",
    "current_user",
    "error_middleware",
    "error_response",
    "require_operator",
    "require_user",
    "set_session_cookie",
]
