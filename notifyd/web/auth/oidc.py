"""OpenID Connect login: authorization-code flow with PKCE (S256), ID tokens checked via JWKS.

Flow: :meth:`OidcClient.login_redirect` stores ``state -> {nonce, code_verifier}`` in
the credential store (10 min TTL, consumed once) and returns the provider's authorize
URL; the provider sends the browser back with ``code`` and ``state``;
:meth:`OidcClient.callback` consumes the state, exchanges the code (with the PKCE
verifier) at the token endpoint and returns the verified ID-token claims.

ID tokens are accepted only RS256-signed by a key from the provider's JWKS (fetched with
aiohttp, cached, refetched on an unknown ``kid``), for our client id, from the configured
issuer, unexpired and carrying the nonce of this login.

The protocol pieces come from kept libraries: joserfc parses the JWKS and verifies the
ID token's signature, Authlib's OIDC ``CodeIDToken`` checks its claims (iss, aud/azp, exp,
iat, nonce, at_hash) and Authlib builds the authorize URL, the PKCE challenge and the
token request.  What stays here is policy: which keys and algorithm we accept, caching,
the one-time login state, HTTP with bounded responses, and the mapping to our errors.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import aiohttp
import orjson
import structlog
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from authlib.oidc.discovery import get_well_known_url
from joserfc import jws, jwt
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwk import RSAKey
from pydantic import SecretStr

from notifyd.errors import ServiceUnavailable, Unauthorized
from notifyd.web.auth.store import CredentialStore

if TYPE_CHECKING:
    from notifyd.config import Settings

log = structlog.get_logger(__name__)

TokenAuthMethod = Literal["client_secret_basic", "client_secret_post"]

_WELL_KNOWN = "/.well-known/openid-configuration"
_MAX_RESPONSE_BYTES = 1 << 20
_ALGORITHM = "RS256"


#: Claim whose check failed -> (code, detail); other claims: ``oidc_id_token_invalid``.
#: A missing iss/aud stays ``oidc_id_token_invalid`` (a malformed token, not a mix-up).
_CLAIM_ERRORS = {
    "iss": ("oidc_issuer_mismatch", "ID token is from another issuer"),
    "aud": ("oidc_audience_mismatch", "ID token is for another client"),
    "azp": ("oidc_audience_mismatch", "ID token azp is not this client"),
    "nonce": ("oidc_nonce_mismatch", "ID token nonce does not match this login"),
}
_MISSING_CLAIM_ERRORS = {k: v for k, v in _CLAIM_ERRORS.items() if k in ("azp", "nonce")}


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA256(verifier)) without padding (Authlib's)."""
    return str(create_s256_code_challenge(verifier))


def oidc_configured(settings: Settings) -> bool:
    """Whether the settings name a provider (discovery URL or all explicit endpoints)."""
    explicit = all(
        (settings.oidc_issuer, settings.oidc_authorize_url, settings.oidc_token_url,
         settings.oidc_jwks_url)
    )
    return bool(
        settings.oidc_client_id
        and settings.oidc_redirect_url
        and (settings.oidc_discovery_url or explicit)
    )


def _unavailable(detail: str, code: str = "oidc_provider_unavailable") -> ServiceUnavailable:
    return ServiceUnavailable(detail, code=code)


def _invalid(detail: str, code: str = "oidc_id_token_invalid") -> Unauthorized:
    return Unauthorized(detail, code=code)


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    token_endpoint_auth_methods: tuple[str, ...] = ("client_secret_basic",)


class JwksCache:
    """Signing keys of the provider by ``kid`` (joserfc keys; a cache policy joserfc lacks).

    Refetched when older than ``ttl_s`` or when a token names an unknown ``kid`` (key
    rotation) -- the latter at most every ``min_refetch_s`` so bogus kids cannot make
    us hammer the provider.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping[str, Any]]],
        *,
        ttl_s: float = 3600.0,
        min_refetch_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._min_refetch_s = min_refetch_s
        self._clock = clock
        self._keys: dict[str, RSAKey] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    @staticmethod
    def _parse(doc: Mapping[str, Any]) -> dict[str, RSAKey]:
        """Usable RS256 signing keys; others (and broken ones) are skipped, not fatal."""
        keys: dict[str, RSAKey] = {}
        raw_keys = doc.get("keys")
        if not isinstance(raw_keys, list):
            raise _unavailable("provider JWKS has no 'keys' list", "oidc_jwks_invalid")
        for i, jwk in enumerate(raw_keys):
            if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
                continue
            if jwk.get("use", "sig") != "sig" or jwk.get("alg", _ALGORITHM) != _ALGORITHM:
                continue
            try:
                key = RSAKey.import_key(jwk)
                key.check_key_op("verify")
            except (JoseError, ValueError, KeyError, TypeError):
                log.warning("oidc_jwks_key_skipped", kid=jwk.get("kid"))
                continue
            keys[str(jwk.get("kid", f"#{i}"))] = key
        return keys

    async def _refresh(self, seen: float | None) -> None:
        async with self._lock:
            if self._fetched_at != seen:
                return  # another task refetched while we waited for the lock
            self._keys = self._parse(await self._fetch())
            self._fetched_at = self._clock()

    async def get(self, kid: str | None) -> RSAKey:
        """The verification key for ``kid``, or Unauthorized if the provider has none."""
        if self._fetched_at is None or self._clock() - self._fetched_at >= self._ttl_s:
            await self._refresh(self._fetched_at)
        key = self._lookup(kid)
        if key is None and self._fetched_at is not None and (
            self._clock() - self._fetched_at >= self._min_refetch_s
        ):
            await self._refresh(self._fetched_at)
            key = self._lookup(kid)
        if key is None:
            raise _invalid(f"ID token signing key {kid!r} is not published by the provider")
        return key

    def _lookup(self, kid: str | None) -> RSAKey | None:
        if kid is None:
            # OIDC allows omitting kid when the provider has exactly one key.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)


class OidcClient:
    """Relying-party side of the OIDC code flow for one provider and client."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str | SecretStr,
        redirect_url: str,
        store: CredentialStore,
        session: aiohttp.ClientSession,
        discovery_url: str = "",
        issuer: str = "",
        authorize_url: str = "",
        token_url: str = "",
        jwks_url: str = "",
        scopes: str = "openid email profile",
        token_auth_method: TokenAuthMethod | None = None,
        http_timeout_s: float = 10.0,
        leeway_s: float = 5.0,
        state_ttl_s: int = 600,
        jwks_cache_ttl_s: float = 3600.0,
        jwks_min_refetch_s: float = 10.0,
    ) -> None:
        if not client_id or not redirect_url:
            raise ValueError("OIDC needs a client id and a redirect URL")
        if not discovery_url and not all((issuer, authorize_url, token_url, jwks_url)):
            raise ValueError(
                "OIDC needs a discovery URL or all of issuer, authorize, token and JWKS URLs"
            )
        self.client_id = client_id
        self._client_secret = (
            client_secret.get_secret_value()
            if isinstance(client_secret, SecretStr)
            else client_secret
        )
        self.redirect_url = redirect_url
        self._store = store
        self._session = session
        self._discovery_url = discovery_url
        self._explicit = {
            "issuer": issuer,
            "authorization_endpoint": authorize_url,
            "token_endpoint": token_url,
            "jwks_uri": jwks_url,
        }
        scope_list = scopes.split()
        self.scopes = " ".join(scope_list if "openid" in scope_list else ["openid", *scope_list])
        self._token_auth_method = token_auth_method
        self._timeout = aiohttp.ClientTimeout(total=http_timeout_s)
        self._leeway_s = leeway_s
        self._state_ttl_s = state_ttl_s
        self._metadata: ProviderMetadata | None = None
        self._metadata_lock = asyncio.Lock()
        self.jwks = JwksCache(
            self._fetch_jwks, ttl_s=jwks_cache_ttl_s, min_refetch_s=jwks_min_refetch_s
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, store: CredentialStore, session: aiohttp.ClientSession
    ) -> OidcClient:
        return cls(
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret,
            redirect_url=settings.oidc_redirect_url,
            store=store,
            session=session,
            discovery_url=settings.oidc_discovery_url,
            issuer=settings.oidc_issuer,
            authorize_url=settings.oidc_authorize_url,
            token_url=settings.oidc_token_url,
            jwks_url=settings.oidc_jwks_url,
            scopes=settings.oidc_scopes,
            http_timeout_s=settings.http_timeout_s,
        )

    # --- HTTP ------------------------------------------------------------------------------

    async def _request_json(
        self, method: str, url: str, *, what: str, **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON object) of a provider call; network trouble -> 503."""
        try:
            async with self._session.request(
                method, url, timeout=self._timeout, allow_redirects=False, **kwargs
            ) as resp:
                status = resp.status
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > _MAX_RESPONSE_BYTES:
                        raise _unavailable(f"OIDC provider {what} response is too large")
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("oidc_provider_unreachable", what=what, url=url, error=repr(exc))
            raise _unavailable(f"OIDC provider unreachable ({what})") from exc
        try:
            data = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            log.warning("oidc_provider_bad_response", what=what, url=url, status=status)
            raise _unavailable(f"OIDC provider sent an invalid {what} response (HTTP {status})")
        return status, data

    async def _get_json(self, url: str, *, what: str) -> dict[str, Any]:
        status, data = await self._request_json("GET", url, what=what)
        if status != 200:
            log.warning("oidc_provider_error", what=what, url=url, status=status)
            raise _unavailable(f"OIDC provider {what} answered HTTP {status}")
        return data

    # --- discovery ---------------------------------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        """Provider endpoints: discovered once (explicit settings win), then cached."""
        if self._metadata is not None:
            return self._metadata
        async with self._metadata_lock:
            if self._metadata is None:
                self._metadata = await self._load_metadata()
        return self._metadata

    async def _load_metadata(self) -> ProviderMetadata:
        values: dict[str, Any] = {}
        if self._discovery_url:
            url = self._discovery_url.rstrip("/")
            if not url.endswith(_WELL_KNOWN):
                url = get_well_known_url(url, external=True)
            doc = await self._get_json(url, what="discovery")
            configured_issuer = self._explicit["issuer"]
            if configured_issuer and doc.get("issuer") != configured_issuer:
                # Mix-up defence: the document must be the configured issuer's own.
                raise _unavailable(
                    f"discovery issuer {doc.get('issuer')!r} is not {configured_issuer!r}",
                    "oidc_discovery_invalid",
                )
            values = {k: doc.get(k) for k in self._explicit}
            methods = doc.get("token_endpoint_auth_methods_supported")
            if isinstance(methods, list):
                values["token_endpoint_auth_methods"] = tuple(str(m) for m in methods)
        values.update({k: v for k, v in self._explicit.items() if v})
        missing = [k for k in self._explicit if not isinstance(values.get(k), str) or not values[k]]
        if missing:
            raise _unavailable(
                f"OIDC provider metadata lacks {', '.join(missing)}", "oidc_discovery_invalid"
            )
        return ProviderMetadata(**values)

    async def _fetch_jwks(self) -> Mapping[str, Any]:
        meta = await self.metadata()
        return await self._get_json(meta.jwks_uri, what="JWKS")

    def _auth_method(self, meta: ProviderMetadata) -> TokenAuthMethod:
        if self._token_auth_method is not None:
            return self._token_auth_method
        # Discovery default is client_secret_basic; use post only if that is all it offers.
        methods = meta.token_endpoint_auth_methods
        if "client_secret_basic" not in methods and "client_secret_post" in methods:
            return "client_secret_post"
        return "client_secret_basic"

    # --- the flow ------------------------------------------------------------------------------

    async def login_redirect(self, *, binding: str | None = None) -> str:
        """The provider URL to send the browser to.

        ``binding`` (optional) ties the login to the browser that started it, e.g. a
        random value the web layer also puts in a cookie; :meth:`callback` then needs
        the same value, which stops login-CSRF (finishing someone else's login).
        """
        meta = await self.metadata()
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 chars, within RFC 7636's 43..128
        record = {
            "nonce": nonce,
            "code_verifier": verifier,
            "redirect_uri": self.redirect_url,
            "binding": hashlib.sha256(binding.encode()).hexdigest() if binding else None,
            "created_at": int(time.time()),
        }
        await self._store.set(f"oidc:state:{state}", orjson.dumps(record), self._state_ttl_s)
        return str(
            prepare_grant_uri(
                meta.authorization_endpoint,
                client_id=self.client_id,
                response_type="code",
                redirect_uri=self.redirect_url,
                scope=self.scopes,
                state=state,
                nonce=nonce,
                code_challenge=pkce_challenge(verifier),
                code_challenge_method="S256",
            )
        )

    async def _consume_state(self, state: str, binding: str | None) -> dict[str, Any]:
        if not isinstance(state, str) or not 0 < len(state) <= 256:
            raise Unauthorized("unknown or expired login state", code="oidc_state_invalid")
        key = f"oidc:state:{state}"
        raw = await self._store.get(key)
        # delete() succeeds for one caller only: a replayed callback finds nothing.
        if raw is None or not await self._store.delete(key):
            raise Unauthorized("unknown or expired login state", code="oidc_state_invalid")
        record: dict[str, Any] = orjson.loads(raw)
        expected = record.get("binding")
        if expected is not None:
            given = hashlib.sha256(binding.encode()).hexdigest() if binding else ""
            if not hmac.compare_digest(given, expected):
                raise Unauthorized(
                    "login was started in another browser", code="oidc_state_invalid"
                )
        return record

    async def callback(
        self, state: str, code: str, *, binding: str | None = None
    ) -> dict[str, Any]:
        """Finish a login: the verified ID-token claims (``sub``, ``iss``, ``email`` ...)."""
        record = await self._consume_state(state, binding)
        if not isinstance(code, str) or not 0 < len(code) <= 4096:
            raise Unauthorized("missing or malformed authorization code", code="oidc_code_invalid")
        meta = await self.metadata()
        tokens = await self._exchange_code(meta, code, record)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise _invalid("provider returned no ID token", "oidc_id_token_missing")
        access_token = tokens.get("access_token")
        return await self.verify_id_token(
            id_token,
            nonce=record["nonce"],
            access_token=access_token if isinstance(access_token, str) else None,
        )

    async def _exchange_code(
        self, meta: ProviderMetadata, code: str, record: Mapping[str, Any]
    ) -> dict[str, Any]:
        body = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=record["redirect_uri"],
            code_verifier=record["code_verifier"],
        )
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        method = self._auth_method(meta)
        auth = ClientAuth(
            self.client_id,
            self._client_secret,
            _client_secret_basic if method == "client_secret_basic" else method,
        )
        _, headers, body = auth.prepare("POST", meta.token_endpoint, headers, body)
        status, reply = await self._request_json(
            "POST", meta.token_endpoint, what="token", data=body.encode(), headers=headers
        )
        if status == 200:
            return reply
        error = str(reply.get("error", "unknown_error"))
        description = str(reply.get("error_description", ""))[:200]
        log.warning("oidc_token_error", status=status, error=error, description=description)
        if status >= 500:
            raise _unavailable(f"OIDC token endpoint failed (HTTP {status})")
        if error in ("invalid_client", "unauthorized_client"):
            # Our credentials are wrong: a server misconfiguration, not the user's fault.
            raise _unavailable("OIDC provider rejected this client", "oidc_client_rejected")
        detail = f"provider rejected the authorization code ({error})"
        raise Unauthorized(f"{detail}: {description}" if description else detail,
                           code="oidc_token_rejected")

    async def verify_id_token(
        self, id_token: str, *, nonce: str, access_token: str | None = None
    ) -> dict[str, Any]:
        """Signature (RS256 via JWKS), iss, aud/azp, exp, iat, nonce and at_hash of an ID token."""
        meta = await self.metadata()
        try:
            header = jws.extract_compact(id_token.encode()).headers()
        except (JoseError, ValueError):
            raise _invalid("ID token is malformed") from None
        if header.get("alg") != _ALGORITHM:
            raise _invalid(f"ID token must be {_ALGORITHM}-signed, not {header.get('alg')!r}")
        kid = header.get("kid")
        key = await self.jwks.get(kid if isinstance(kid, str) else None)
        try:
            token = jwt.decode(id_token, key, algorithms=[_ALGORITHM])
        except (JoseError, ValueError) as exc:
            raise _invalid(f"ID token is invalid: {exc}") from None
        claims = CodeIDToken(
            token.claims,
            token.header,
            options={
                "iss": {"essential": True, "value": meta.issuer},
                "aud": {"essential": True, "value": self.client_id},
                "sub": {"essential": True},
            },
            params={"nonce": nonce, "client_id": self.client_id, "access_token": access_token},
        )
        try:
            claims.validate(leeway=int(self._leeway_s))
        except ExpiredTokenError:
            raise _invalid("ID token has expired", "oidc_id_token_expired") from None
        except ClaimError as exc:
            errors = _MISSING_CLAIM_ERRORS if isinstance(exc, MissingClaimError) else _CLAIM_ERRORS
            code, detail = errors.get(exc.claim, ("oidc_id_token_invalid", "ID token is invalid"))
            raise _invalid(f"{detail}: {exc.description}", code) from None
        return dict(claims)


def _client_secret_basic(
    auth: ClientAuth, method: str, uri: str, headers: dict[str, str], body: str
) -> tuple[str, dict[str, str], str]:
    """client_secret_basic as RFC 6749 2.3.1 has it: id and secret form-encoded first.

    Authlib's own encoder skips that step, which breaks secrets holding ``:``, ``%`` or
    ``+`` at providers that decode them.
    """
    pair = f"{quote(auth.client_id, safe='')}:{quote(auth.client_secret, safe='')}"
    headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return uri, headers, body


__all__ = [
    "JwksCache",
    "OidcClient",
    "ProviderMetadata",
    "TokenAuthMethod",
    "oidc_configured",
    "pkce_challenge",
]
