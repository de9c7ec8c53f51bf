"""Who may call the gateway (`callers.auth`), in both hosts alike (docs/callers.md).

`function_key`: the Functions host checks the function key before the gateway runs; every caller
is `anonymous`. `entra`: the gateway checks a Microsoft Entra ID access token itself, on every
request: RS256 only, signed by one of the tenant's keys (fetched from its OpenID configuration,
cached, fetched again at most once per `key_refetch_s` for an unknown key id), issued by the
tenant (v1 or v2 issuer), for one of `audience`, within `exp`/`nbf` give or take `leeway_s`.

PyJWT checks the signature and the claims: it is maintained, small, and does one thing; the key
set is fetched here, with aiohttp like every other call the gateway makes, so its size, time and
redirects are bounded the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .codec import loads
from .errors import InsufficientScopeError, InvalidTokenError, SigningKeysUnavailableError
from .logs import get_logger

if TYPE_CHECKING:
    import aiohttp
    import jwt

log = get_logger("gateway.callers")

#: Every caller of a `function_key` gateway, for limits.
ANONYMOUS = "anonymous"
#: Longer `Authorization` headers are refused unread (Entra access tokens are 1-3 KB).
MAX_TOKEN_BYTES = 16 * 1024
#: Verified tokens remembered per process (about 100 bytes each).
MAX_VERIFIED_TOKENS = 10_000
#: The most the OpenID configuration or the key set may hold.
MAX_DOCUMENT_BYTES = 512 * 1024
_GUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FunctionKeyCallers(_Model):
    type: Literal["function_key"] = "function_key"


#: MSAL.js for the chat page's sign-in: its browser build, pinned by version and hash.
MSAL_URL = "https://cdn.jsdelivr.net/npm/@azure/msal-browser@5.30.0/lib/msal-browser.min.js"
MSAL_INTEGRITY = "sha384-jZgMryu+4u6YigBEcQY0MnBDCLVoqAGLm8S8PXoaGI2HJWA5XcxSalRmz/KFODUW"


class PageSignIn(_Model):
    """How the local server's chat page signs users in with MSAL.js (docs/callers.md)."""

    #: The single-page app's client id (its own app registration, redirect URI the page's origin).
    client_id: str = Field(pattern=_GUID)
    #: What the page asks tokens for; default `<first audience>/.default`.
    scopes: list[str] = Field(default_factory=list)
    msal_url: str = MSAL_URL
    #: The Subresource Integrity hash of `msal_url`'s script.
    msal_integrity: str = Field(default=MSAL_INTEGRITY, pattern=r"^sha(256|384|512)-[A-Za-z0-9+/=]+$")

    @model_validator(mode="after")
    def _script_is_safe(self) -> PageSignIn:
        _check_fetch_url(self.msal_url, "msal_url")
        return self


class EntraCallers(_Model):
    type: Literal["entra"]
    tenant_id: str = Field(pattern=_GUID)
    #: Accepted `aud` values: e.g. `api://<app-id>` and the app id itself.
    audience: list[str] = Field(min_length=1, max_length=16)
    leeway_s: float = Field(default=60.0, ge=0, le=600)
    #: The token must hold at least one of these app roles (`roles`), if any are listed.
    required_roles: list[str] = Field(default_factory=list)
    #: The token must hold at least one of these delegated scopes (`scp`), if any are listed.
    required_scopes: list[str] = Field(default_factory=list)
    openid_config_url: str | None = None
    #: A fetched key set is used this long before it is fetched again.
    keys_cache_s: float = Field(default=3600.0, gt=0)
    #: A token with an unknown key id fetches the key set again at most this often.
    key_refetch_s: float = Field(default=60.0, ge=0)
    #: One fetch of the OpenID configuration or the key set, at most.
    fetch_timeout_s: float = Field(default=5.0, gt=0, le=60)
    #: The chat page signs users in with MSAL.js when this is set.
    page: PageSignIn | None = None

    @model_validator(mode="before")
    @classmethod
    def _audience_may_be_one(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("audience"), str):
            return {**data, "audience": [data["audience"]]}
        return data

    @model_validator(mode="after")
    def _config_url_is_safe(self) -> EntraCallers:
        if self.openid_config_url is not None:
            _check_fetch_url(self.openid_config_url, "openid_config_url")
        return self

    @property
    def config_url(self) -> str:
        return self.openid_config_url or (
            f"https://login.microsoftonline.com/{self.tenant_id}/v2.0/.well-known/openid-configuration"
        )

    def page_settings(self) -> dict[str, Any] | None:
        """What the chat page's MSAL.js needs (no secret: a public client), or None."""
        if self.page is None:
            return None
        return {
            "clientId": self.page.client_id,
            "authority": f"https://login.microsoftonline.com/{self.tenant_id}",
            "scopes": self.page.scopes or [f"{self.audience[0]}/.default"],
            "msalUrl": self.page.msal_url,
            "msalIntegrity": self.page.msal_integrity,
        }

    @property
    def issuers(self) -> list[str]:
        return [
            f"https://login.microsoftonline.com/{self.tenant_id}/v2.0",
            f"https://sts.windows.net/{self.tenant_id}/",
        ]


CallerAuthSettings = Annotated[FunctionKeyCallers | EntraCallers, Field(discriminator="type")]


def _check_fetch_url(url: str, name: str) -> None:
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"{name} must be an https URL (http only on 127.0.0.1 for tests); got {url!r}")


@dataclass(slots=True)
class Caller:
    """Who sent a request: the token's `oid` (an app-only token's `azp`/`appid`), or
    `anonymous` under `function_key`."""

    id: str
    roles: frozenset[str] = frozenset()
    #: This request's admission by `callers.limits` (shared.limits), when limits are on.
    admission: Any = field(default=None)


class CallerAuth:
    """Recognizes the caller of each request, as `callers.auth` says."""

    async def authenticate(self, headers: Mapping[str, str]) -> Caller:
        return Caller(ANONYMOUS)

    async def aclose(self) -> None:
        pass


class EntraAuth(CallerAuth):
    def __init__(self, settings: EntraCallers, *, clock: Any = time.monotonic) -> None:
        # PyJWT and cryptography (80 ms of a cold start): imported only when callers sign in,
        # and aiohttp, which fetches their signing keys.
        global aiohttp, jwt
        import aiohttp
        import jwt

        self._settings = settings
        self._clock = clock
        self._audience = list(settings.audience)
        self._issuers = settings.issuers
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._roles = frozenset(settings.required_roles)
        self._scopes = frozenset(settings.required_scopes)
        #: Tokens that passed every check, by their SHA-256: (caller id, roles, nbf, exp). A
        #: front-end sends the same token for up to an hour; checking it again costs ~100 µs.
        self._verified: dict[bytes, tuple[str, frozenset[str], float, float]] = {}

    async def authenticate(self, headers: Mapping[str, str]) -> Caller:
        token = _bearer_token(headers.get("authorization"))
        digest = hashlib.sha256(token.encode()).digest()
        verified = self._verified.get(digest)
        if verified is not None:
            caller_id, roles, not_before, expires = verified
            if not_before - self._settings.leeway_s <= time.time() <= expires + self._settings.leeway_s:
                return Caller(caller_id, roles)
            del self._verified[digest]  # checked again below, to say what is wrong with it
        claims = await self._verify(token)
        caller = self._caller(claims)
        if len(self._verified) >= MAX_VERIFIED_TOKENS:
            self._verified.clear()
        nbf = claims.get("nbf")
        not_before = float(nbf) if isinstance(nbf, (int, float)) else 0.0
        self._verified[digest] = (caller.id, caller.roles, not_before, float(claims["exp"]))
        return caller

    async def _verify(self, token: str) -> dict[str, Any]:
        """The token's claims, once its signature and claims pass every check."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidTokenError("The bearer token is not a JWT.") from None
        if header.get("alg") != "RS256":
            raise InvalidTokenError("The bearer token must be signed with RS256.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise InvalidTokenError("The bearer token names no signing key (kid).")
        key = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self._audience,
                issuer=self._issuers,
                leeway=self._settings.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError("The access token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise InvalidTokenError("The access token is not valid yet (nbf).") from None
        except jwt.InvalidAudienceError:
            raise InvalidTokenError(
                "The access token is for another audience (aud): request it for this gateway's app."
            ) from None
        except jwt.InvalidIssuerError:
            raise InvalidTokenError("The access token was not issued by this gateway's tenant.") from None
        except jwt.InvalidSignatureError:
            raise InvalidTokenError("The access token's signature does not verify.") from None
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"The access token is invalid ({type(exc).__name__}).") from None
        return claims

    def _caller(self, claims: dict[str, Any]) -> Caller:
        caller_id = next(
            (claims[name] for name in ("oid", "azp", "appid") if isinstance(claims.get(name), str)), None
        )
        if not caller_id or len(caller_id) > 128:
            raise InvalidTokenError("The access token names no caller (oid, azp or appid).")
        roles = claims.get("roles")
        held = frozenset(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else frozenset()
        scp = claims.get("scp")
        scopes = frozenset(scp.split()) if isinstance(scp, str) else frozenset()
        if self._roles and not (held & self._roles):
            raise InsufficientScopeError(
                f"The access token has none of the app roles this gateway requires: {', '.join(sorted(self._roles))}."
            )
        if self._scopes and not (scopes & self._scopes):
            raise InsufficientScopeError(
                f"The access token has none of the scopes this gateway requires: {', '.join(sorted(self._scopes))}."
            )
        return Caller(caller_id, held)

    async def _key(self, kid: str) -> jwt.PyJWK:
        """The tenant's key `kid`: from the cached set while it is fresh; an unknown `kid` or
        an old set fetches it again (one fetch at a time; an unknown `kid` at most once per
        `key_refetch_s`)."""
        fetched_at = self._fetched_at
        age = None if fetched_at is None else self._clock() - fetched_at
        key = self._keys.get(kid)
        if key is not None and age is not None and age < self._settings.keys_cache_s:
            return key
        if age is None or age >= self._settings.keys_cache_s or age >= self._settings.key_refetch_s:
            async with self._lock:
                if self._fetched_at == fetched_at:  # nobody fetched them while this waited
                    await self._refresh(stale_key=key)
            key = self._keys.get(kid)
        if key is None:
            raise InvalidTokenError("The access token is signed with a key this tenant does not publish.")
        return key

    async def _refresh(self, stale_key: jwt.PyJWK | None) -> None:
        try:
            keys = await self._fetch_keys()
        except SigningKeysUnavailableError as exc:
            if stale_key is not None:
                log.warning("%s; the cached key set serves meanwhile", exc.message)
                return
            log.error("%s", exc.message)
            raise
        self._keys = keys
        self._fetched_at = self._clock()

    async def _fetch_keys(self) -> dict[str, jwt.PyJWK]:
        config = await self._fetch_json(self._settings.config_url, "the OpenID configuration")
        jwks_uri = config.get("jwks_uri") if isinstance(config, dict) else None
        if not isinstance(jwks_uri, str):
            raise SigningKeysUnavailableError(
                "The tenant's OpenID configuration has no jwks_uri: callers cannot be checked."
            )
        try:
            _check_fetch_url(jwks_uri, "jwks_uri")
        except ValueError as exc:
            raise SigningKeysUnavailableError(f"The tenant's OpenID configuration: {exc}") from None
        document = await self._fetch_json(jwks_uri, "the signing key set")
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise SigningKeysUnavailableError("The tenant's signing key set has no keys list.")
        keys: dict[str, jwt.PyJWK] = {}
        for entry in entries[:256]:
            if (
                not isinstance(entry, dict)
                or entry.get("kty") != "RSA"
                or not isinstance(entry.get("kid"), str)
            ):
                continue
            if entry.get("use", "sig") != "sig":
                continue
            try:
                keys[entry["kid"]] = jwt.PyJWK(entry, algorithm="RS256")
            except jwt.PyJWTError:
                log.warning("a key of the tenant's key set cannot be read; it is skipped")
        return keys

    async def _fetch_json(self, url: str, what: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._settings.fetch_timeout_s)
            )
        said = f"Signing keys for callers' tokens cannot be fetched ({what}"
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise SigningKeysUnavailableError(f"{said}: HTTP {response.status}); retry shortly.")
                body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SigningKeysUnavailableError(f"{said}: {type(exc).__name__}); retry shortly.") from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise SigningKeysUnavailableError(f"{said}: larger than {MAX_DOCUMENT_BYTES} bytes).")
        try:
            return loads(body)
        except ValueError:
            raise SigningKeysUnavailableError(f"{said}: not JSON).") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _bearer_token(value: str | None) -> str:
    if not value:
        raise InvalidTokenError("This gateway needs an Entra ID access token: Authorization: Bearer <token>.")
    if len(value) > MAX_TOKEN_BYTES:
        raise InvalidTokenError(f"The Authorization header is longer than {MAX_TOKEN_BYTES} bytes.")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidTokenError("The Authorization header must be: Bearer <access token>.")
    return token


def caller_auth(settings: FunctionKeyCallers | EntraCallers) -> CallerAuth:
    if isinstance(settings, EntraCallers):
        return EntraAuth(settings)
    return CallerAuth()


class LimitValues(_Model):
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1)


class RedisAuthSettings(_Model):
    #: `entra`: the app's managed identity (Azure Managed Redis); `env`: a password in the
    #: environment variable `variable`; `none`: no password.
    type: Literal["none", "env", "entra"] = "none"
    variable: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _env_names_a_variable(self) -> RedisAuthSettings:
        if (self.type == "env") != (self.variable is not None):
            raise ValueError(
                "variable: give it with type 'env' (the variable holding the password), only then"
            )
        return self


class StoreSettings(_Model):
    type: Literal["memory", "redis"] = "memory"
    #: `redis://` or `rediss://host:port` (Azure Managed Redis: `rediss://<name>.<region>.redis.azure.net:10000`).
    url: str | None = None
    auth: RedisAuthSettings = Field(default_factory=RedisAuthSettings)
    #: One admission's round trip, at most; past it the store counts as down.
    timeout_s: float = Field(default=0.25, gt=0, le=10)
    #: After a failure the store is left alone this long (`on_store_error` applies meanwhile):
    #: a dead Redis costs one timeout per interval, not one per request.
    retry_s: float = Field(default=5.0, ge=0, le=600)

    @model_validator(mode="after")
    def _redis_has_a_url(self) -> StoreSettings:
        if self.type == "redis":
            scheme = urlsplit(self.url or "").scheme
            if scheme not in ("redis", "rediss"):
                raise ValueError("url: a redis store needs url: rediss://<host>:<port> (or redis:// locally)")
            if "@" in (self.url or ""):
                raise ValueError("url: put no password in the URL; use auth {type: env, variable: ...}")
        elif self.url is not None:
            raise ValueError("url: only a redis store has one")
        return self


class LimitsSettings(LimitValues):
    #: Limits for callers holding a role (the token's `roles`), field by field; a caller with
    #: several listed roles gets the largest value of each.
    by_role: dict[str, LimitValues] = Field(default_factory=dict)
    store: StoreSettings = Field(default_factory=StoreSettings)
    on_store_error: Literal["allow", "deny"] = "allow"


class CallersSettings(_Model):
    auth: CallerAuthSettings = Field(default_factory=FunctionKeyCallers)
    limits: LimitsSettings | None = None
