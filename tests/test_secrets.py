"""Secretless: keys from Key Vault and tokens from the managed identity, with the real
`azure-identity` and `azure-keyvault-secrets` against local fakes of both protocols."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from types import SimpleNamespace

import pytest

from .azure_fakes import FakeIdentityEndpoint, FakeKeyVault
from .client import CHAT, assert_openai_error, post
from .conftest import emulator_config
from .servers import AiohttpServer, local_tls

HELLO = {"messages": [{"role": "user", "content": "Hello there"}]}
ML_RESOURCE = "https://ml.azure.com"


@pytest.fixture
def azure(servers, monkeypatch, tmp_path, canary_key):
    """A managed-identity endpoint and an HTTPS Key Vault holding the emulator's key."""
    server_context, ca_file = local_tls(tmp_path)

    identity = FakeIdentityEndpoint()
    identity_server = servers.run(AiohttpServer(identity.app).start())
    vault = FakeKeyVault(identity, secrets={"llama-chat-key": canary_key, "mistral-key": canary_key})
    vault_server = servers.run(AiohttpServer(vault.app, server_context).start())
    vault.port = vault_server.port

    env = {"IDENTITY_ENDPOINT": f"{identity_server.url}/msi/token", "IDENTITY_HEADER": identity.header_secret}
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():  # azure-identity reads the process environment
        monkeypatch.setenv(name, value)
    yield SimpleNamespace(
        identity=identity,
        vault=vault,
        ca_file=str(ca_file),
        env={**env, "KEY_VAULT_URL": vault_server.url + "/"},
    )
    servers.run(vault_server.stop())
    servers.run(identity_server.stop())


def key_vault_config(url: str, **credentials: float) -> dict:
    config = emulator_config(url)
    config["endpoints"][0]["auth"] = {"type": "key_vault", "secret_name": "llama-chat-key"}
    config["endpoints"][1]["auth"] = {"type": "key_vault", "secret_name": "mistral-key"}
    config["credentials"] = {"timeout_s": 1.5, **credentials}
    return config


@pytest.fixture
def start(azure, emulator, start_gateway):
    """Start a gateway on the emulator whose keys come from the fake vault."""

    def start_with(config: dict | None = None, **credentials: float) -> str:
        return start_gateway(
            config or key_vault_config(emulator[1], **credentials),
            azure.env,
            secret_client_options={"connection_verify": azure.ca_file},
        )

    return start_with


async def test_a_burst_of_cold_requests_reads_the_vault_once_and_gets_one_token(start, azure):
    base = start()
    answers = await asyncio.gather(*(post(base) for _ in range(50)))
    assert [status for status, _, _ in answers] == [200] * 50
    assert azure.vault.reads == 1
    assert azure.identity.token_requests == [azure.vault.resource]


async def test_warm_requests_do_not_read_the_vault(start, azure):
    base = start()
    await post(base)
    for _ in range(20):
        assert (await post(base)).status == 200
    assert azure.vault.reads == 1 and len(azure.identity.token_requests) == 1


async def test_each_secret_is_read_once_per_ttl(start, azure):
    base = start(secret_ttl_s=0.3)
    await post(base)
    await post(base, {**HELLO, "model": "mistral-large"})
    assert azure.vault.reads == 2  # one per secret
    await asyncio.sleep(0.4)
    await asyncio.gather(*(post(base) for _ in range(10)))
    assert azure.vault.reads == 3


async def test_a_rotated_key_is_read_again_once_and_the_request_succeeds(start, azure, emulator, caplog):
    base = start()
    assert (await post(base)).status == 200
    azure.vault.secrets["llama-chat-key"] = "rotated-key-2"
    emulator[0].rotate_key("rotated-key-2")
    with caplog.at_level(logging.WARNING, logger="gateway"):
        reply = await post(base)
    assert reply.status == 200, reply.body
    assert azure.vault.reads == 2
    assert "refused its credential (HTTP 401); fetching it again" in caplog.text
    assert [r.authorized for r in emulator[0].requests] == [True, False, True]


async def test_a_key_refused_again_after_rereading_is_a_502(start, azure, emulator):
    base = start()
    emulator[0].rotate_key("a-key-the-vault-does-not-have")
    assert "refused the gateway's credentials" in assert_openai_error(await post(base), 502)["message"]
    assert azure.vault.reads == 2  # read once more, not in a loop


async def test_vault_down_with_a_warm_key_keeps_serving(start, azure, caplog):
    base = start(secret_ttl_s=0.2)
    assert (await post(base)).status == 200
    azure.vault.mode = "down"
    await asyncio.sleep(0.3)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        answers = [await post(base) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert "serving the cached value" in caplog.text and "'llama-chat-key'" in caplog.text


async def test_a_stale_key_serves_no_longer_than_max_stale(start, azure):
    base = start(secret_ttl_s=0.1, max_stale_s=0.2)
    assert (await post(base)).status == 200
    azure.vault.mode = "down"
    await asyncio.sleep(0.4)
    assert "'llama-chat-key'" in assert_openai_error(await post(base), 503)["message"]


async def test_vault_down_cold_is_a_503_naming_the_vault_and_the_secret(start, azure, canary_key):
    azure.vault.mode = "down"
    base = start()
    started = time.monotonic()
    reply = await post(base)
    error = assert_openai_error(reply, 503)
    assert time.monotonic() - started < 5  # bounded by credentials.timeout_s, not the SDK's retries
    assert "secret 'llama-chat-key' in Key Vault https://127.0.0.1:" in error["message"]
    assert canary_key not in reply.text
    assert error["code"] == "credential_unavailable"


async def test_a_missing_secret_is_a_503_naming_it(start, azure):
    del azure.vault.secrets["llama-chat-key"]
    message = assert_openai_error(await post(start()), 503)["message"]
    assert "secret 'llama-chat-key'" in message and "does not exist" in message
    assert "az keyvault secret set" in message


async def test_access_denied_is_a_503_naming_the_role_to_grant(start, azure):
    azure.vault.mode = "forbidden"
    message = assert_openai_error(await post(start()), 503)["message"]
    assert "secret 'llama-chat-key'" in message and "'Key Vault Secrets User'" in message


async def test_identity_down_is_a_503(start, azure):
    azure.identity.down = True
    message = assert_openai_error(await post(start()), 503)["message"]
    assert "secret 'llama-chat-key'" in message and "identity" in message
    assert azure.vault.reads == 0


async def test_challenge_resource_verification_stays_on(start, azure):
    azure.vault.challenge_resource = "https://vault.azure.net"  # not a suffix of 127.0.0.1
    assert "challenge" in assert_openai_error(await post(start()), 503)["message"]
    assert azure.vault.reads == 0 and azure.identity.token_requests == []


def entra_config(url: str) -> dict:
    config = emulator_config(url)
    for endpoint in config["endpoints"]:
        endpoint["auth"] = {"type": "entra"}
    config["credentials"] = {"timeout_s": 1.5}
    return config


async def test_keyless_endpoints_get_one_cached_entra_token(azure, emulator, start_gateway):
    emulator[0].rotate_key(azure.identity.token_for(ML_RESOURCE))
    base = start_gateway(entra_config(emulator[1]), azure.env)
    answers = await asyncio.gather(
        *(post(base, {**HELLO, "model": m}) for m in ["llama-chat", "mistral-large"] * 25)
    )
    assert [status for status, _, _ in answers] == [200] * 50
    assert azure.identity.token_requests == [ML_RESOURCE]  # scope https://ml.azure.com/.default
    assert all(r.authorized for r in emulator[0].requests)


async def test_keyless_endpoint_with_identity_down_is_a_503(azure, emulator, start_gateway):
    azure.identity.down = True
    base = start_gateway(entra_config(emulator[1]), azure.env)
    message = assert_openai_error(await post(base), 503)["message"]
    assert "could not get a token for https://ml.azure.com/.default" in message


async def test_no_key_or_token_reaches_a_log_line_or_an_answer(start, azure, emulator, canary_key, caplog):
    vault_token = azure.identity.token_for(azure.vault.resource)
    base = start(secret_ttl_s=0.1)
    with caplog.at_level(logging.DEBUG):  # every logger, the Azure SDKs' HTTP logging included
        answers = [await post(base)]
        emulator[0].rotate_key("rotated-canary-" + canary_key)
        azure.vault.secrets["llama-chat-key"] = "rotated-canary-" + canary_key
        answers.append(await post(base))
        azure.vault.mode = "down"
        await asyncio.sleep(0.15)
        answers.append(await post(base))
        del azure.vault.secrets["mistral-key"]
        azure.vault.mode = "up"
        answers.append(await post(base, {**HELLO, "model": "mistral-large"}))
    assert [status for status, _, _ in answers] == [200, 200, 200, 503]
    assert any(r.name.startswith("azure") for r in caplog.records)  # the SDKs did log
    for text in [caplog.text, *(a.text + json.dumps(dict(a.headers)) for a in answers)]:
        assert canary_key not in text and vault_token not in text
        assert azure.identity.header_secret not in text


def test_the_production_path_trusts_the_vault_through_ssl_cert_file(azure, emulator, canary_key):
    """`uvicorn --factory shared.asgi:create_app` with nothing but app settings, as in Azure:
    no test hook, the CA trusted the way a container would (SSL_CERT_FILE)."""
    from .test_local_server import free_port, start_uvicorn, wait_until_serving

    port = free_port()
    env = {
        **azure.env,
        "GATEWAY_CONFIG": json.dumps(key_vault_config(emulator[1])),
        "SSL_CERT_FILE": azure.ca_file,
    }
    process = start_uvicorn(env, port)
    try:
        wait_until_serving(process, port)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{CHAT}",
            data=json.dumps(HELLO).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["choices"][0]["message"]["content"] == "You said: Hello there"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert azure.vault.reads == 1 and azure.identity.token_requests == [azure.vault.resource]
    assert canary_key not in output
