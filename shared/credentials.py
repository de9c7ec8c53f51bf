"""Credentials: how the gateway authenticates to each endpoint, one provider per `auth.type`.

- `key_vault`: the endpoint key is a Key Vault secret, read with the app's identity;
- `entra`: a Microsoft Entra ID token from the app's identity, for keyless endpoints;
- `env`: an environment variable, for local development.

Each type is one provider class: its settings (the `auth` object of an endpoint in the
configuration), a check of the environment at start-up, how to fetch the value, and the headers
that carry it. `AUTH_TYPES` registers them; the configuration accepts exactly those types.

One Azure credential, one Key Vault client and one cache per provider and process, created on
first use and closed on shutdown. Keys and tokens are cached; a value the endpoint refuses is
dropped and fetched again, so a rotated key needs no restart.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from .credential_cache import Expiring, ExpiringCache
from .errors import CredentialUnavailableError
from .observe import NO_OBSERVER, Observer
from .vault_url import vault_url_problem

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.keyvault.secrets.aio import SecretClient

_HEADER_SAFE = re.compile(r"[!-~]+")
#: Entra tokens are renewed this long before they expire.
TOKEN_RENEWAL_MARGIN_S = 300.0
#: The Entra scope of Azure ML online endpoints (Foundry hosts default to another: url_forms.py).
ML_SCOPE = "https://ml.azure.com/.default"
DEFAULT_ENTRA_SCOPE = ML_SCOPE


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class CredentialSettings(_Settings):
    """How keys from Key Vault and Entra ID tokens are cached."""

    #: A secret read from the vault is used this long before it is read again.
    secret_ttl_s: float = Field(default=300.0, gt=0)
    #: While the vault (or the identity endpoint) is down, a cached key keeps serving this long
    #: past its TTL.
    max_stale_s: float = Field(default=3600.0, ge=0)
    #: The most a vault read or a token request may take, retries included.
    timeout_s: float = Field(default=10.0, gt=0, le=120)


class AuthSettings(_Settings):
    """An endpoint's `auth` object; each provider subclasses it with its `type` and fields."""

    type: str

    def cache_key(self) -> str:
        """What identifies the value among those of the same provider."""
        raise NotImplementedError

    def credential(self, value: str) -> Credential:
        """`value` in the headers that carry it to the endpoint."""
        return bearer(value)

    def refusal_hint(self) -> str:
        """What to check, besides the value itself, when the endpoint refuses it (401/403)."""
        return ""


class KeyAuthSettings(AuthSettings):
    """Settings of an endpoint key: sent as `Authorization: Bearer <key>` (Azure ML) or as
    `api-key: <key>` (Azure AI Foundry, Azure OpenAI); the configuration fills in the default
    of the endpoint's host (shared/url_forms.py)."""

    header: Literal["authorization", "api-key"] = "authorization"

    def credential(self, value: str) -> Credential:
        if self.header == "api-key":
            return Credential(value, {"api-key": value})
        return bearer(value)

    def refusal_hint(self) -> str:
        if self.header == "api-key":
            return (
                "; check auth.header: it is 'api-key' (the key went in the api-key header), "
                "which Azure AI Foundry and Azure OpenAI read; Azure ML endpoints read the key "
                "from the Authorization header: set auth.header to 'authorization' for them"
            )
        return (
            "; check auth.header: it is 'authorization' (the key went in the Authorization "
            "header), which Azure ML endpoints read; Azure AI Foundry and Azure OpenAI read "
            "the key from the api-key header: set auth.header to 'api-key' for them"
        )


@dataclass(frozen=True, slots=True)
class Credential:
    """A key or a token, and the headers that carry it to the endpoint."""

    value: str = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)


def bearer(value: str) -> Credential:
    return Credential(value, {"Authorization": f"Bearer {value}"})


@dataclass
class ProviderContext:
    """What providers share in one process: the environment, the settings, and the app's one
    Azure credential (created on first use)."""

    environ: Mapping[str, str]
    settings: CredentialSettings
    observer: Observer = NO_OBSERVER
    #: Passed to azure-keyvault-secrets' `SecretClient` (a proxy, a CA bundle as
    #: `connection_verify`, a transport).
    secret_client_options: Mapping[str, Any] | None = None
    _azure_credential: AsyncTokenCredential | None = None

    def azure_credential(self) -> AsyncTokenCredential:
        if self._azure_credential is None:
            self._azure_credential = azure_credential(self.environ)
        return self._azure_credential

    async def aclose(self) -> None:
        if self._azure_credential is not None:
            await self._azure_credential.close()
            self._azure_credential = None


class CredentialProvider:
    """Fetches and caches the credentials of one auth type. Subclass it, set `settings` to
    your `AuthSettings` subclass, and add the class to `AUTH_TYPES`."""

    settings: ClassVar[type[AuthSettings]]
    #: Whether fetching again after the endpoint refused the value can give a different one.
    refreshable: ClassVar[bool] = True
    #: Modules its first fetch imports, warmed in the background after start-up.
    modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, context: ProviderContext) -> None:
        self._context = context
        self._cache = ExpiringCache(self._fetch_and_tell, on_stale=self._stale)

    @classmethod
    def auth_type(cls) -> str:
        return cls.settings.model_fields["type"].default

    @classmethod
    def check(cls, auth: Any, environ: Mapping[str, str]) -> str | None:
        """What keeps `auth` from working in this environment (checked at start-up), or None."""
        return None

    async def get(self, auth: Any) -> Credential:
        return auth.credential(await self._cache.get(auth.cache_key()))

    def cached(self, auth: Any) -> Credential | None:
        """The credential if a fresh one is cached (no I/O), else None: `get` fetches it."""
        value = self._cache.fresh(auth.cache_key())
        return None if value is None else auth.credential(value)

    def invalidate(self, auth: Any, refused: Credential) -> None:
        """Forget `refused`, the value an endpoint just turned down."""
        self._cache.invalidate(auth.cache_key(), refused.value)

    async def fetch(self, name: str) -> Expiring:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass

    async def _fetch_and_tell(self, name: str) -> Expiring:
        entry = await self.fetch(name)
        # Keys and tokens are visible ASCII; a secret stored with its file's line end, say,
        # would fail in the header at every request.
        value = entry.value.strip()
        if not _HEADER_SAFE.fullmatch(value):
            raise CredentialUnavailableError(
                f"the {self.auth_type()} credential {name!r} holds characters that cannot be sent "
                "in an HTTP header (control characters, spaces or non-ASCII); store it without them",
                outage=False,
            )
        self._context.observer.credential_fetched(self.auth_type(), name)
        return entry if value == entry.value else replace(entry, value=value)

    def _stale(self, name: str, error: CredentialUnavailableError) -> None:
        self._context.observer.credential_served_stale(self.auth_type(), name, error)


class EnvAuth(KeyAuthSettings):
    """The key is the value of an environment variable (local development only)."""

    type: Literal["env"] = "env"
    variable: str = Field(min_length=1)

    def cache_key(self) -> str:
        return self.variable


class EnvKeys(CredentialProvider):
    """Keys from environment variables: for local development only."""

    settings = EnvAuth
    refreshable = False

    @classmethod
    def check(cls, auth: EnvAuth, environ: Mapping[str, str]) -> str | None:
        if not environ.get(auth.variable):
            return f"the environment variable {auth.variable} is not set"
        return None

    async def fetch(self, name: str) -> Expiring:
        value = self._context.environ.get(name)
        if not value:
            raise CredentialUnavailableError(
                f"the key variable {name} is not set in the gateway's environment", outage=False
            )
        return Expiring(value, float("inf"), float("inf"))


class KeyVaultAuth(KeyAuthSettings):
    """The key is the secret `secret_name` in the vault at `KEY_VAULT_URL`."""

    type: Literal["key_vault"] = "key_vault"
    secret_name: str = Field(pattern=r"^[0-9A-Za-z-]{1,127}$")

    def cache_key(self) -> str:
        return self.secret_name


class KeyVaultKeys(CredentialProvider):
    """Endpoint keys kept as Key Vault secrets, read with `SecretClient` and cached."""

    settings = KeyVaultAuth
    modules = ("azure.keyvault.secrets.aio", "azure.identity.aio")

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        from azure.keyvault.secrets.aio import SecretClient

        self._vault = context.environ["KEY_VAULT_URL"]
        self._client: SecretClient = SecretClient(
            self._vault, context.azure_credential(), **(context.secret_client_options or {})
        )

    @classmethod
    def check(cls, auth: KeyVaultAuth, environ: Mapping[str, str]) -> str | None:
        if not environ.get("KEY_VAULT_URL"):
            return (
                "type 'key_vault' needs the app setting KEY_VAULT_URL "
                "(the vault's URI, e.g. https://<vault>.vault.azure.net/)"
            )
        return vault_url_problem(environ["KEY_VAULT_URL"])

    async def aclose(self) -> None:
        await self._client.close()

    async def fetch(self, name: str) -> Expiring:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
        )

        settings = self._context.settings
        where = f"secret {name!r} in Key Vault {self._vault}"
        try:
            async with asyncio.timeout(settings.timeout_s):
                secret = await self._client.get_secret(name)
        except ResourceNotFoundError:
            vault_name = self._vault.split("//")[-1].split(".")[0]
            raise CredentialUnavailableError(
                f"the {where} does not exist; create it with `az keyvault secret set "
                f"--vault-name {vault_name} --name {name} --value <endpoint key>`",
                outage=False,
            ) from None
        except ClientAuthenticationError as exc:
            raise _outage(where, "the app's identity could not get a token for the vault", exc) from exc
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise CredentialUnavailableError(
                    f"reading the {where} was denied (HTTP 403); give the app's managed identity "
                    "the role 'Key Vault Secrets User' on the vault (RBAC authorization)",
                    outage=False,
                ) from None
            raise _outage(where, f"the vault answered HTTP {exc.status_code}", exc) from exc
        except TimeoutError as exc:
            why = f"neither the vault nor the app's identity answered within {settings.timeout_s:g} s"
            raise _outage(where, why, exc) from exc
        except ValueError:  # azure-keyvault-secrets' challenge-resource verification
            raise CredentialUnavailableError(
                f"cannot read the {where}: the vault's authentication challenge names a domain "
                "that is not the vault's own; check KEY_VAULT_URL",
                outage=False,
            ) from None
        except Exception as exc:  # connection refused, DNS, TLS: azure-core's ServiceRequestError
            raise _outage(where, "the vault cannot be reached", exc) from exc
        if not secret.value:
            raise CredentialUnavailableError(f"the {where} is empty", outage=False)
        now = self._cache.now()
        ttl = settings.secret_ttl_s
        return Expiring(secret.value, now + ttl, now + ttl + settings.max_stale_s)


class EntraAuth(AuthSettings):
    """A Microsoft Entra ID token for `scope`, from the app's identity (keyless endpoints)."""

    type: Literal["entra"] = "entra"
    #: The configuration fills in the default of the endpoint's host (shared/url_forms.py).
    scope: str = DEFAULT_ENTRA_SCOPE

    def cache_key(self) -> str:
        return self.scope

    def refusal_hint(self) -> str:
        return (
            f"; the token (in the Authorization header) is for auth.scope {self.scope!r}: check that "
            "the endpoint takes that audience and that the app's identity has a role on it "
            "(docs/foundry.md)"
        )


class EntraTokens(CredentialProvider):
    """Microsoft Entra ID tokens for keyless endpoints, from the app's identity, cached."""

    settings = EntraAuth
    modules = ("azure.identity.aio",)

    async def fetch(self, name: str) -> Expiring:
        timeout_s = self._context.settings.timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                token = await self._context.azure_credential().get_token(name)
        except Exception as exc:  # azure-identity's ClientAuthenticationError, a timeout
            raise CredentialUnavailableError(
                f"the app's identity could not get a token for {name} ({type(exc).__name__})",
                outage=True,
            ) from exc
        remaining = token.expires_on - time.time()
        now = self._cache.now()
        renew_in = max(remaining - TOKEN_RENEWAL_MARGIN_S, remaining / 2)
        return Expiring(token.token, now + renew_in, now + remaining - 30)


def _outage(where: str, why: str, exc: BaseException) -> CredentialUnavailableError:
    return CredentialUnavailableError(f"cannot read the {where}: {why} ({type(exc).__name__})", outage=True)


#: The auth types the configuration accepts, each with its provider: the one registration.
AUTH_TYPES: tuple[type[CredentialProvider], ...] = (KeyVaultKeys, EntraTokens, EnvKeys)
PROVIDERS: dict[str, type[CredentialProvider]] = {p.auth_type(): p for p in AUTH_TYPES}

if TYPE_CHECKING:
    Auth = AuthSettings
else:
    #: The `auth` object of an endpoint: one of the registered types, told apart by `type`.
    Auth = Annotated[Union[tuple(p.settings for p in AUTH_TYPES)], Field(discriminator="type")]  # noqa: UP007


def azure_credential(environ: Mapping[str, str]) -> AsyncTokenCredential:
    """The app's identity: its managed identity in Azure (the user-assigned one named by
    `AZURE_CLIENT_ID`, if set), else the developer's own login (`az login`, environment
    variables, workload identity: azure-identity's DefaultAzureCredential chain)."""
    client_id = environ.get("AZURE_CLIENT_ID") or None
    if environ.get("IDENTITY_ENDPOINT") or environ.get("MSI_ENDPOINT"):
        from azure.identity.aio import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=client_id)
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=client_id)


class Credentials:
    """Each endpoint's credential from the provider of its auth type; providers are created on
    first use and share the process's one Azure credential."""

    def __init__(
        self,
        environ: Mapping[str, str] = os.environ,
        settings: CredentialSettings | None = None,
        *,
        secret_client_options: Mapping[str, Any] | None = None,
        observer: Observer = NO_OBSERVER,
    ) -> None:
        self._context = ProviderContext(
            environ, settings or CredentialSettings(), observer, secret_client_options
        )
        self._providers: dict[str, CredentialProvider] = {}

    def observe(self, observer: Observer) -> None:
        self._context.observer = observer

    def provider(self, auth: AuthSettings) -> CredentialProvider:
        provider = self._providers.get(auth.type)
        if provider is None:
            provider = self._providers[auth.type] = PROVIDERS[auth.type](self._context)
        return provider

    async def get(self, auth: AuthSettings) -> Credential:
        return await self.provider(auth).get(auth)

    def cached(self, auth: AuthSettings) -> Credential | None:
        """`auth`'s credential if a fresh one is cached, else None; nearly every request's
        case, answered without the coroutines of `get`."""
        return self.provider(auth).cached(auth)

    def refreshable(self, auth: AuthSettings) -> bool:
        return self.provider(auth).refreshable

    def invalidate(self, auth: AuthSettings, refused: Credential) -> None:
        """Drop `refused`, the value the endpoint just turned down."""
        self.provider(auth).invalidate(auth, refused)

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        self._providers.clear()
        await self._context.aclose()
