"""Credentials: the bearer value each endpoint is called with, by its `auth.type`.

Each auth type has a provider, created once per process on first use and closed on shutdown.
A provider gives the current value for an endpoint's auth settings and forgets it when the
endpoint refuses it, so a rotated key is fetched again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

from .config import Auth, EndpointConfig, EnvAuth
from .errors import ServiceUnavailableError


class CredentialProvider(Protocol):
    async def get(self, auth: Auth) -> str: ...

    def invalidate(self, auth: Auth) -> None: ...

    async def aclose(self) -> None: ...


class EnvKeys:
    """Keys from environment variables: for local development only."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    async def get(self, auth: EnvAuth) -> str:
        value = self._environ.get(auth.variable)
        if not value:
            raise ServiceUnavailableError(
                f"the key variable {auth.variable} is not set in the gateway's environment",
                code="credential_unavailable",
            )
        return value

    def invalidate(self, auth: EnvAuth) -> None:
        pass  # the environment is re-read on every call

    async def aclose(self) -> None:
        pass


class Credentials:
    """Dispatches each endpoint to the provider of its auth type."""

    def __init__(
        self,
        environ: Mapping[str, str] = os.environ,
        providers: Mapping[str, CredentialProvider] | None = None,
    ) -> None:
        self._environ = environ
        self._providers: dict[str, CredentialProvider] = dict(providers or {})

    def _provider(self, auth_type: str) -> CredentialProvider:
        provider = self._providers.get(auth_type)
        if provider is None:
            provider = self._providers[auth_type] = self._create(auth_type)
        return provider

    def _create(self, auth_type: str) -> CredentialProvider:
        if auth_type == "env":
            return EnvKeys(self._environ)
        raise ServiceUnavailableError(
            f"auth type {auth_type!r} is not available in this build of the gateway",
            code="credential_unavailable",
        )

    async def get(self, endpoint: EndpointConfig) -> str:
        return await self._provider(endpoint.auth.type).get(endpoint.auth)

    def invalidate(self, endpoint: EndpointConfig) -> None:
        self._provider(endpoint.auth.type).invalidate(endpoint.auth)

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        self._providers.clear()
