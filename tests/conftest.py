"""Shared fixtures: the emulator and the gateway, both real servers on 127.0.0.1."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from emulator import Emulator
from shared.asgi import build_app
from shared.config import load_config
from shared.credentials import Credentials
from shared.http import GatewayApi
from shared.service import Gateway

from .entra_issuer import Tenant
from .servers import AiohttpServer, BackgroundLoop, UvicornServer


@pytest.fixture(scope="session")
def servers() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture
def canary_key() -> str:
    """The emulator's key; tests assert it never shows up where a caller or a log could see it."""
    return f"canary-{secrets.token_hex(16)}"


@pytest.fixture
def emulator(servers: BackgroundLoop, canary_key: str) -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(canary_key)
    server = servers.run(AiohttpServer(emulator.app).start())
    yield emulator, server.url
    servers.run(server.stop())


def emulator_config(url: str, **top: Any) -> dict[str, Any]:
    """A dedicated and a serverless endpoint on the emulator at `url`, keys from EMULATOR_KEY.

    No retries, so one injected fault shows its own answer (the resilience tests turn them on).
    """
    auth = {"type": "env", "variable": "EMULATOR_KEY"}
    return {
        "default_model": "llama-chat",
        "endpoints": [
            {
                "name": "llama-chat",
                "endpoint_url": f"{url}/score",
                "endpoint_api_type": "dedicated",
                "deployment_name": "llama-2-7b-chat-1",
                "auth": auth,
                "model_kwargs": {"temperature": 0.8, "max_new_tokens": 512},
                "timeout_s": 5,
                "max_retries": 0,
            },
            {
                "name": "mistral-large",
                "endpoint_url": f"{url}/v1/chat/completions",
                "endpoint_api_type": "serverless",
                "content_formatter": "MistralChatContentFormatter",
                "auth": auth,
                "model_kwargs": {"temperature": 0.7},
                "timeout_s": 5,
                "max_retries": 0,
            },
        ],
        **top,
    }


GatewayFactory = Callable[..., str]


@pytest.fixture
def start_gateway(servers: BackgroundLoop, canary_key: str) -> Iterator[GatewayFactory]:
    """Start a gateway (local server) for a configuration; returns its base URL."""
    started: list[UvicornServer] = []

    def start(
        config: dict[str, Any],
        environ: dict[str, str] | None = None,
        *,
        transport: Any = None,
        **options: Any,
    ) -> str:
        env = {"GATEWAY_CONFIG": json.dumps(config), "EMULATOR_KEY": canary_key, **(environ or {})}
        loaded = load_config(env)
        gateway = Gateway(
            loaded, credentials=Credentials(env, loaded.credentials, **options), transport=transport
        )
        server = servers.run(UvicornServer(build_app(GatewayApi(gateway))).start())
        started.append(server)
        return server.url

    yield start
    for server in started:
        servers.run(server.stop())


@pytest.fixture
def gateway(emulator: tuple[Emulator, str], start_gateway: GatewayFactory) -> str:
    """The gateway's base URL, configured with the emulator's two endpoints."""
    return start_gateway(emulator_config(emulator[1]))


@pytest.fixture
def tenant(servers: BackgroundLoop) -> Iterator[Tenant]:
    """A stand-in Entra tenant on 127.0.0.1: its OpenID configuration, key set and tokens."""
    tenant = Tenant()
    server = servers.run(AiohttpServer(tenant.app).start())
    tenant.url = server.url
    yield tenant
    servers.run(server.stop())
