"""The Azure protocols the gateway speaks, served on 127.0.0.1 for the real Azure SDKs.

- `FakeIdentityEndpoint`: the App Service / Functions managed-identity protocol
  (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`), as `azure-identity` calls it.
- `FakeKeyVault`: the Key Vault secrets REST API over HTTPS with its 401 bearer challenge, as
  `azure-keyvault-secrets` calls it.

Each counts what it serves, so tests can prove how often the gateway asks.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class FakeIdentityEndpoint:
    header_secret: str = field(default_factory=lambda: secrets.token_hex(8))
    token_lifetime_s: int = 3600
    down: bool = False
    #: the `resource` of every token request answered
    token_requests: list[str] = field(default_factory=list)
    _salt: str = field(default_factory=lambda: secrets.token_hex(8))

    def token_for(self, resource: str) -> str:
        """The token this identity is given for `resource`."""
        return "tok-" + hashlib.sha256(f"{self._salt}{resource}".encode()).hexdigest()[:32]

    @property
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/msi/token", self._token)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        if self.down:
            return web.json_response({"error": "unavailable"}, status=500)
        if request.headers.get("X-IDENTITY-HEADER") != self.header_secret:
            return web.json_response({"error": "bad identity header"}, status=401)
        resource = request.query["resource"]
        self.token_requests.append(resource)
        return web.json_response(
            {
                "access_token": self.token_for(resource),
                "expires_on": str(int(time.time()) + self.token_lifetime_s),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": request.query.get("client_id", "system-assigned"),
            }
        )


@dataclass
class FakeKeyVault:
    identity: FakeIdentityEndpoint
    port: int = 0
    #: "up", "down" (503 to everything) or "forbidden" (the identity lacks the role)
    mode: str = "up"
    secrets: dict[str, str] = field(default_factory=dict)
    #: secret reads answered with the secret (authorized, found)
    reads: int = 0
    challenges: int = 0
    #: the challenge's resource; by default a suffix of the vault's host, as vault.azure.net is
    #: of <name>.vault.azure.net, so the SDK's challenge-resource verification stays on and passes
    challenge_resource: str | None = None

    @property
    def resource(self) -> str:
        return self.challenge_resource or f"https://0.1:{self.port}"

    @property
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/secrets/{name}", self._secret)
        app.router.add_get("/secrets/{name}/", self._secret)
        app.router.add_get("/secrets/{name}/{version}", self._secret)
        return app

    async def _secret(self, request: web.Request) -> web.Response:
        if self.mode == "down":
            return _error(503, "ServiceUnavailable", "The service is unavailable.")
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token != self.identity.token_for(self.resource):
            self.challenges += 1
            return web.Response(
                status=401,
                headers={
                    "WWW-Authenticate": (
                        'Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", '
                        f'resource="{self.resource}"'
                    )
                },
            )
        if self.mode == "forbidden":
            return _error(403, "Forbidden", "Caller is not authorized to perform action on resource.")
        name = request.match_info["name"]
        if name not in self.secrets:
            return _error(
                404, "SecretNotFound", f"A secret with (name/id) {name} was not found in this key vault."
            )
        self.reads += 1
        return web.json_response(
            {
                "value": self.secrets[name],
                "id": f"https://127.0.0.1:{self.port}/secrets/{name}/{secrets.token_hex(16)}",
                "attributes": {"enabled": True},
            }
        )


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        content_type="application/json",
        text=json.dumps({"error": {"code": code, "message": message}}),
    )
