"""`callers.auth.type: entra`: Entra ID access tokens checked by the gateway, against a local
tenant (its OpenID configuration and key set on 127.0.0.1, with the test's own RSA keys)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from .client import assert_openai_error, get, post
from .conftest import emulator_config
from .entra_issuer import AUDIENCE, TENANT, V1_ISSUER, SigningKey, unsigned_token


@pytest.fixture
def entra_gateway(emulator, start_gateway, tenant) -> str:
    return start_gateway(
        emulator_config(emulator[1], callers=tenant.callers_config(required_roles=["Chat.User"]))
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_invalid_token(reply, *fragments: str) -> None:
    error = assert_openai_error(reply, 401, *fragments)
    assert error["code"] == "invalid_token"
    assert reply.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_a_valid_token_is_served_v1_and_v2_issuers_alike(entra_gateway, tenant):
    assert (await post(entra_gateway, headers=bearer(tenant.token()))).status == 200
    reply = await post(
        entra_gateway, headers=bearer(tenant.token(iss=V1_ISSUER, aud="11111111-2222-3333-4444-555555555555"))
    )
    assert reply.status == 200, reply.body
    assert (await get(entra_gateway, "/api/v1/models", headers=bearer(tenant.token()))).status == 200


async def test_health_needs_no_token(entra_gateway):
    assert (await get(entra_gateway, "/api/health")).status == 200


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "Authorization: Bearer"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Bearer <access token>"),
        ({"Authorization": "Bearer not-a-jwt"}, "not a JWT"),
    ],
)
async def test_no_token_or_not_a_bearer_token_is_401(entra_gateway, headers, fragment):
    assert_invalid_token(await post(entra_gateway, headers=headers), fragment)
    assert_invalid_token(await get(entra_gateway, "/api/v1/models", headers=headers))


async def test_bad_tokens_are_401_naming_the_problem_never_the_token(entra_gateway, tenant, caplog):
    caplog.set_level(logging.DEBUG)
    stranger = SigningKey()
    stranger.kid = tenant.signing.kid  # the tenant's key id, another key: the signature fails
    now = int(time.time())
    cases = {
        "signature does not verify": tenant.token(stranger),
        "not issued by this gateway's tenant": tenant.token(
            iss="https://login.microsoftonline.com/other/v2.0"
        ),
        "another audience": tenant.token(aud="api://someone-else"),
        "expired": tenant.token(exp=now - 120, nbf=now - 600, iat=now - 600),
        "not valid yet": tenant.token(nbf=now + 600),
    }
    tokens = list(cases.values())
    for fragment, token in cases.items():
        reply = await post(entra_gateway, headers=bearer(token))
        assert_invalid_token(reply, fragment)
    claims = {
        "iss": f"https://login.microsoftonline.com/{TENANT}/v2.0",
        "aud": AUDIENCE,
        "exp": now + 600,
        "oid": "x",
    }
    none_token = unsigned_token({"alg": "none", "typ": "JWT"}, claims)
    hs_token = unsigned_token(
        {"alg": "HS256", "kid": tenant.signing.kid}, claims, tenant.signing.public_pem()
    )
    for token in (none_token, hs_token):
        assert_invalid_token(await post(entra_gateway, headers=bearer(token)), "RS256")
    tokens += [none_token, hs_token]
    for token in tokens:
        signature = token.rsplit(".", 1)[1]
        assert all(signature[:16] not in r.getMessage() for r in caplog.records if len(signature) >= 16)
        assert all(token[:40] not in r.getMessage() for r in caplog.records)


async def test_a_token_within_the_leeway_is_still_served(entra_gateway, tenant):
    now = int(time.time())
    reply = await post(entra_gateway, headers=bearer(tenant.token(exp=now - 20, nbf=now - 600)))
    assert reply.status == 200, reply.body


async def test_a_missing_role_is_403_insufficient_scope(entra_gateway, tenant):
    reply = await post(entra_gateway, headers=bearer(tenant.token(roles=["Other.Role"])))
    error = assert_openai_error(reply, 403, "Chat.User")
    assert error["code"] == "insufficient_scope"
    assert reply.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'


async def test_required_scopes_read_scp(emulator, start_gateway, tenant):
    url = start_gateway(emulator_config(emulator[1], callers=tenant.callers_config(required_scopes=["chat"])))
    assert (await post(url, headers=bearer(tenant.token(scp="openid chat")))).status == 200
    assert_openai_error(await post(url, headers=bearer(tenant.token(scp="openid"))), 403, "chat")


async def test_an_unknown_key_id_is_fetched_again_so_a_rotated_key_works_without_a_restart(
    entra_gateway, tenant
):
    assert (await post(entra_gateway, headers=bearer(tenant.token()))).status == 200
    rotated = SigningKey()
    token = tenant.token(rotated)
    assert_invalid_token(await post(entra_gateway, headers=bearer(token)), "does not publish")
    tenant.published.append(rotated)
    reply = await post(entra_gateway, headers=bearer(token))
    assert reply.status == 200, reply.body


async def test_unknown_key_ids_fetch_the_key_set_at_most_once_per_interval(emulator, start_gateway, tenant):
    url = start_gateway(emulator_config(emulator[1], callers=tenant.callers_config(key_refetch_s=600)))
    assert (await post(url, headers=bearer(tenant.token()))).status == 200
    fetched = tenant.fetches
    for _ in range(5):
        assert_invalid_token(await post(url, headers=bearer(tenant.token(SigningKey()))))
    assert tenant.fetches == fetched


async def test_key_endpoint_down_is_503_not_401(entra_gateway, tenant):
    tenant.down = True
    reply = await post(entra_gateway, headers=bearer(tenant.token()))
    error = assert_openai_error(reply, 503, "Signing keys", "cannot be fetched")
    assert error["code"] == "signing_keys_unavailable"
    tenant.down = False
    assert (await post(entra_gateway, headers=bearer(tenant.token()))).status == 200
    # Cached keys keep serving while the endpoint is down; an unknown key id cannot be checked.
    tenant.down = True
    assert (await post(entra_gateway, headers=bearer(tenant.token()))).status == 200
    assert_openai_error(await post(entra_gateway, headers=bearer(tenant.token(SigningKey()))), 503)


async def test_the_caller_is_the_token_oid_on_the_exchange(emulator, tenant, start_gateway):
    """Observers see who called (telemetry puts it on spans)."""
    from shared.callers import EntraAuth, EntraCallers

    auth = EntraAuth(EntraCallers(**tenant.callers_config()["auth"]))
    try:
        caller = await auth.authenticate({"authorization": f"Bearer {tenant.token(oid='abc', roles=['R'])}"})
        assert (caller.id, caller.roles) == ("abc", frozenset({"R"}))
        app_only = tenant.token(oid=None, azp="client-app", roles=None)
        assert (await auth.authenticate({"authorization": f"Bearer {app_only}"})).id == "client-app"
    finally:
        await auth.aclose()


async def test_a_token_remembered_as_valid_still_expires(emulator, start_gateway, tenant):
    """Checked tokens are remembered (a front-end resends one for an hour), never past `exp`."""
    url = start_gateway(emulator_config(emulator[1], callers=tenant.callers_config(leeway_s=0)))
    token = tenant.token(exp=int(time.time()) + 2)
    assert (await post(url, headers=bearer(token))).status == 200
    assert (await post(url, headers=bearer(token))).status == 200
    await asyncio.sleep(3.1)
    assert_invalid_token(await post(url, headers=bearer(token)), "expired")
