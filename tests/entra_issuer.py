"""A stand-in for a Microsoft Entra tenant: its OpenID configuration and key set on 127.0.0.1,
with the test's own RSA keys, and tokens signed by them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
AUDIENCE = "api://gateway-test"
V2_ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
V1_ISSUER = f"https://sts.windows.net/{TENANT}/"


class SigningKey:
    def __init__(self) -> None:
        self.kid = uuid.uuid4().hex
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**entry, "kid": self.kid, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class Tenant:
    """`published` keys are served; `down` answers 503 to every fetch; `fetches` counts them."""

    def __init__(self) -> None:
        self.signing = SigningKey()
        self.published = [self.signing]
        self.down = False
        self.fetches = 0
        self.app = web.Application()
        self.app.router.add_get("/tenant/v2.0/.well-known/openid-configuration", self._config)
        self.app.router.add_get("/tenant/discovery/v2.0/keys", self._keys)
        self.app.router.add_get("/msal-browser.min.js", self._msal)
        self.url = ""
        #: What the stand-in MSAL.js serves (`fake_msal`).
        self.msal_script = b""

    async def _config(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503)
        return web.json_response({"issuer": V2_ISSUER, "jwks_uri": f"{self.url}/tenant/discovery/v2.0/keys"})

    async def _keys(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.down:
            return web.Response(status=503)
        return web.json_response({"keys": [key.jwk() for key in self.published]})

    async def _msal(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.msal_script,
            content_type="text/javascript",
            headers={"Access-Control-Allow-Origin": "*"},
        )

    def callers_config(self, **auth: Any) -> dict[str, Any]:
        return {
            "auth": {
                "type": "entra",
                "tenant_id": TENANT,
                "audience": [AUDIENCE, "11111111-2222-3333-4444-555555555555"],
                "openid_config_url": f"{self.url}/tenant/v2.0/.well-known/openid-configuration",
                "key_refetch_s": 0,
                **auth,
            }
        }

    def token(self, key: SigningKey | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": V2_ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "oid": "00000000-0000-0000-0000-0000000000aa",
            "tid": TENANT,
            "roles": ["Chat.User"],
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        key = key or self.signing
        return jwt.encode(body, key.private, algorithm="RS256", headers={"kid": key.kid})


def unsigned_token(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None = None) -> str:
    """A token PyJWT would refuse to make: `alg: none`, or HS256 keyed with a public key."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{part(json.dumps(header).encode())}.{part(json.dumps(claims).encode())}"
    signature = (
        b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{part(signature)}"


def fake_msal(token: str) -> bytes:
    """A stand-in for MSAL.js's browser build (the global `msal`): signing in always succeeds,
    and every token is `token`. What the page asked for is kept in `window.msalCalls`."""
    return """
window.msalCalls = [];
window.msal = { PublicClientApplication: { createPublicClientApplication: async (config) => {
  window.msalCalls.push(["create", config.auth.clientId, config.auth.authority]);
  const accounts = [];
  const result = () => ({ accessToken: TOKEN, account: accounts[0] });
  return {
    handleRedirectPromise: async () => null,
    getAllAccounts: () => accounts,
    loginPopup: async (request) => { window.msalCalls.push(["login", request.scopes]); accounts.push({ username: "ada@example.com" }); return result(); },
    acquireTokenSilent: async (request) => { window.msalCalls.push(["silent", request.scopes]); return result(); },
    acquireTokenPopup: async (request) => result(),
  };
} } };
""".replace("TOKEN", json.dumps(token)).encode()


def integrity(script: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(script).digest()).decode()
