"""Credentials: the bearer value each endpoint is called with, by its `auth.type`.

- `key_vault`: the endpoint key is a Key Vault secret, read with the app's identity;
- `entra`: a Microsoft Entra ID token from the app's identity, for keyless endpoints;
- `env`: an environment variable, for local development.

One Azure credential, one Key Vault client and one cache per process, created on first use and
closed on shutdown. Keys and tokens are cached; a value the endpoint refuses is dropped and
fetched again, so a rotated key needs no restart.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from .config import CredentialSettings, EndpointConfig, EntraAuth, EnvAuth, KeyVaultAuth
from .credential_cache import Expiring, ExpiringCache
from .errors import CredentialUnavailableError

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.keyvault.secrets.aio import SecretClient

#: Entra tokens are renewed this long before they expire.
TOKEN_RENEWAL_MARGIN_S = 300.0


class CredentialProvider(Protocol):
    #: Whether fetching again after the endpoint refused the value can give a different one.
    refreshable: bool

    async def get(self, auth: Any) -> str: ...

    def invalidate(self, auth: Any, refused: str) -> None: ...

    async def aclose(self) -> None: ...


class EnvKeys:
    """Keys from environment variables: for local development only."""

    refreshable = False

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    async def get(self, auth: EnvAuth) -> str:
        value = self._environ.get(auth.variable)
        if not value:
            raise CredentialUnavailableError(
                f"the key variable {auth.variable} is not set in the gateway's environment",
                outage=False,
            )
        return value

    def invalidate(self, auth: EnvAuth, refused: str) -> None:
        pass

    async def aclose(self) -> None:
        pass


class KeyVaultKeys:
    """Endpoint keys kept as Key Vault secrets, read with `SecretClient` and cached."""

    refreshable = True

    def __init__(
        self,
        vault_url: str,
        credential: AsyncTokenCredential,
        settings: CredentialSettings,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        from azure.keyvault.secrets.aio import SecretClient

        self._vault = vault_url
        self._vault_name = (urlsplit(vault_url).hostname or vault_url).split(".")[0]
        self._settings = settings
        self._client: SecretClient = SecretClient(vault_url, credential, **(client_options or {}))
        self._cache = ExpiringCache(self._read)

    async def get(self, auth: KeyVaultAuth) -> str:
        return await self._cache.get(auth.secret_name)

    def invalidate(self, auth: KeyVaultAuth, refused: str) -> None:
        self._cache.invalidate(auth.secret_name, refused)

    async def aclose(self) -> None:
        await self._client.close()

    async def _read(self, name: str) -> Expiring:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
        )

        where = f"secret {name!r} in Key Vault {self._vault}"
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                secret = await self._client.get_secret(name)
        except ResourceNotFoundError:
            raise CredentialUnavailableError(
                f"the {where} does not exist; create it with `az keyvault secret set "
                f"--vault-name {self._vault_name} --name {name} --value <endpoint key>`",
                outage=False,
            ) from None
        except ClientAuthenticationError as exc:
            raise self._unavailable(
                where, "the app's identity could not get a token for the vault", exc
            ) from None
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise CredentialUnavailableError(
                    f"reading the {where} was denied (HTTP 403); give the app's managed identity "
                    "the role 'Key Vault Secrets User' on the vault (RBAC authorization)",
                    outage=False,
                ) from None
            raise self._unavailable(where, f"the vault answered HTTP {exc.status_code}", exc) from None
        except TimeoutError as exc:
            raise self._unavailable(
                where,
                f"neither the vault nor the app's identity answered within {self._settings.timeout_s:g} s",
                exc,
            ) from None
        except ValueError:  # azure-keyvault-secrets' challenge-resource verification
            raise CredentialUnavailableError(
                f"cannot read the {where}: the vault's authentication challenge names a domain "
                "that is not the vault's own; check KEY_VAULT_URL",
                outage=False,
            ) from None
        except Exception as exc:  # connection refused, DNS, TLS: azure-core's ServiceRequestError
            raise self._unavailable(where, "the vault cannot be reached", exc) from None
        if not secret.value:
            raise CredentialUnavailableError(f"the {where} is empty", outage=False)
        now = self._cache.now()
        ttl = self._settings.secret_ttl_s
        return Expiring(secret.value, now + ttl, now + ttl + self._settings.max_stale_s)

    @staticmethod
    def _unavailable(where: str, why: str, exc: BaseException) -> CredentialUnavailableError:
        return CredentialUnavailableError(
            f"cannot read the {where}: {why} ({type(exc).__name__})", outage=True
        )


class EntraTokens:
    """Microsoft Entra ID tokens for keyless endpoints, from the app's identity, cached."""

    refreshable = True

    def __init__(self, credential: AsyncTokenCredential, settings: CredentialSettings) -> None:
        self._credential = credential
        self._settings = settings
        self._cache = ExpiringCache(self._token)

    async def get(self, auth: EntraAuth) -> str:
        return await self._cache.get(auth.scope)

    def invalidate(self, auth: EntraAuth, refused: str) -> None:
        self._cache.invalidate(auth.scope, refused)

    async def aclose(self) -> None:
        pass  # the credential belongs to `Credentials`

    async def _token(self, scope: str) -> Expiring:
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                token = await self._credential.get_token(scope)
        except Exception as exc:  # azure-identity's ClientAuthenticationError, a timeout
            raise CredentialUnavailableError(
                f"the app's identity could not get a token for {scope} ({type(exc).__name__})",
                outage=True,
            ) from None
        remaining = token.expires_on - time.time()
        now = self._cache.now()
        renew_in = max(remaining - TOKEN_RENEWAL_MARGIN_S, remaining / 2)
        return Expiring(token.token, now + renew_in, now + remaining - 30)


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
    """Dispatches each endpoint to the provider of its auth type; owns the process's one Azure
    credential, shared by Key Vault and Entra ID."""

    def __init__(
        self,
        environ: Mapping[str, str] = os.environ,
        settings: CredentialSettings | None = None,
        *,
        secret_client_options: Mapping[str, Any] | None = None,
    ) -> None:
        """`secret_client_options` are passed to azure-keyvault-secrets' `SecretClient` (a
        proxy, a custom CA bundle as `connection_verify`, a transport)."""
        self._environ = environ
        self._settings = settings or CredentialSettings()
        self._secret_client_options = secret_client_options
        self._providers: dict[str, CredentialProvider] = {}
        self._azure_credential: AsyncTokenCredential | None = None

    def _provider(self, auth_type: str) -> CredentialProvider:
        provider = self._providers.get(auth_type)
        if provider is None:
            provider = self._providers[auth_type] = self._create(auth_type)
        return provider

    def _create(self, auth_type: str) -> CredentialProvider:
        if auth_type == "env":
            return EnvKeys(self._environ)
        if self._azure_credential is None:
            self._azure_credential = azure_credential(self._environ)
        if auth_type == "key_vault":
            return KeyVaultKeys(
                self._environ["KEY_VAULT_URL"],
                self._azure_credential,
                self._settings,
                self._secret_client_options,
            )
        return EntraTokens(self._azure_credential, self._settings)

    async def get(self, endpoint: EndpointConfig) -> str:
        return await self._provider(endpoint.auth.type).get(endpoint.auth)

    def refreshable(self, endpoint: EndpointConfig) -> bool:
        return self._provider(endpoint.auth.type).refreshable

    def invalidate(self, endpoint: EndpointConfig, refused: str) -> None:
        """Drop `refused`, the value the endpoint just turned down."""
        self._provider(endpoint.auth.type).invalidate(endpoint.auth, refused)

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        self._providers.clear()
        if self._azure_credential is not None:
            await self._azure_credential.close()
            self._azure_credential = None
