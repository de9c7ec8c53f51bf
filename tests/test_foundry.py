"""Azure AI Foundry and Azure OpenAI URL forms, through the real gateway against the emulator.

The gateway is configured with real Azure URLs; its real transport sends each call to the
emulator on 127.0.0.1 with the URL's path and query unchanged (as `curl --resolve` would), so
the defaults that follow the host (`auth.header`, `entra.scope`) are the ones under test, and
the emulator applies each form's own rule for where the key goes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from urllib.parse import urlsplit

import aiohttp
import pytest

from shared.config import parse_config
from shared.errors import ConfigError
from shared.transport import Transport

from .azure_fakes import FakeIdentityEndpoint
from .servers import AiohttpServer

CHAT = "/api/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello from Foundry"}]
COGNITIVE_RESOURCE = "https://cognitiveservices.azure.com"

#: name -> (endpoint_url, upstream_model, the header the host's default puts the key in)
FORMS = {
    "foundry-v1": ("https://res.services.ai.azure.com/openai/v1/chat/completions", "DeepSeek-R1", "api-key"),
    "aoai-v1": ("https://res.openai.azure.com/openai/v1/chat/completions", "gpt-4o-mini", "api-key"),
    "model-inference": (
        "https://res.services.ai.azure.com/models/chat/completions?api-version=2025-04-01",
        "Mistral-Large-2411",
        "api-key",
    ),
    "aoai-deployment": (
        "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        None,
        "api-key",
    ),
    "azureml-serverless": (
        "https://x.westeurope.models.ai.azure.com/v1/chat/completions",
        None,
        "authorization",
    ),
}


class PinnedTransport:
    """The gateway's own transport, with every host resolved to the emulator; records the
    hosts the gateway meant to reach."""

    def __init__(self, target: str) -> None:
        self._inner = Transport()
        self._target = target
        self.hosts: list[str] = []

    async def send(self, request, *, timeout_s: float, streaming: bool = True):
        parts = urlsplit(request.url)
        self.hosts.append(parts.hostname or "")
        url = self._target + parts.path + (f"?{parts.query}" if parts.query else "")
        return await self._inner.send(
            dataclasses.replace(request, url=url), timeout_s=timeout_s, streaming=streaming
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def endpoint(name: str, auth: dict | None = None, **fields) -> dict:
    url, upstream_model, _ = FORMS[name]
    document = {
        "name": name,
        "endpoint_url": url,
        "endpoint_api_type": "serverless",
        "auth": auth or {"type": "env", "variable": "EMULATOR_KEY"},
        "timeout_s": 5,
        "max_retries": 0,
        **fields,
    }
    if upstream_model:
        document["upstream_model"] = upstream_model
    return document


@pytest.fixture
def start(emulator, start_gateway):
    """Start a gateway whose endpoints are `endpoints`, pinned to the emulator."""

    def start_with(*endpoints: dict, environ: dict | None = None) -> tuple[str, PinnedTransport]:
        transport = PinnedTransport(emulator[1])
        base = start_gateway({"endpoints": list(endpoints)}, environ, transport=transport)
        return base, transport

    return start_with


async def post(base: str, body: dict) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.post(base + CHAT, json=body) as response:
        return response.status, await response.read()


def events(body: bytes) -> list[dict]:
    data = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


@pytest.mark.parametrize("name", FORMS)
async def test_each_url_form_gets_the_key_in_its_hosts_header(name, start, emulator, canary_key):
    base, transport = start(endpoint(name))
    status, body = await post(base, {"model": name, "messages": HELLO})
    assert status == 200, body
    answer = json.loads(body)
    assert answer["model"] == name
    assert answer["choices"][0]["message"]["content"] == "You said: Hello from Foundry"
    [recorded] = emulator[0].requests
    url, upstream_model, header = FORMS[name]
    other = "authorization" if header == "api-key" else "api-key"
    assert recorded.authorized and recorded.headers[header] == "<redacted>" and other not in recorded.headers
    assert recorded.path == urlsplit(url).path
    assert recorded.query == dict(
        p.split("=") for p in urlsplit(url).query.split("&") if p
    )  # api-version kept
    assert recorded.body.get("model") == upstream_model
    assert transport.hosts == [urlsplit(url).hostname]
    assert canary_key not in body.decode()


@pytest.mark.parametrize(
    ("name", "wrong"),
    [
        ("model-inference", "authorization"),
        ("aoai-deployment", "authorization"),
        ("azureml-serverless", "api-key"),
    ],
)
async def test_the_key_in_the_wrong_header_is_refused_and_the_error_names_auth_header(
    name, wrong, start, emulator, canary_key, caplog
):
    auth = {"type": "env", "variable": "EMULATOR_KEY", "header": wrong}
    base, _ = start(endpoint(name, auth))
    with caplog.at_level(logging.DEBUG):
        status, body = await post(base, {"model": name, "messages": HELLO})
    error = json.loads(body)["error"]
    assert status == 502 and error["code"] == "upstream_auth_failed"
    assert f"check auth.header: it is '{wrong}'" in error["message"]
    assert not emulator[0].requests[0].authorized
    assert canary_key not in body.decode() and canary_key not in caplog.text


@pytest.mark.parametrize("name", ["foundry-v1", "aoai-v1"])
async def test_the_v1_api_also_takes_the_key_as_bearer(name, start, emulator):
    base, _ = start(endpoint(name, {"type": "env", "variable": "EMULATOR_KEY", "header": "authorization"}))
    status, body = await post(base, {"model": name, "messages": HELLO})
    assert status == 200, body
    assert "api-key" not in emulator[0].requests[0].headers


@pytest.fixture
def identity(servers, monkeypatch):
    """A managed-identity endpoint, as App Service and Functions serve it."""
    fake = FakeIdentityEndpoint()
    server = servers.run(AiohttpServer(fake.app).start())
    env = {"IDENTITY_ENDPOINT": f"{server.url}/msi/token", "IDENTITY_HEADER": fake.header_secret}
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():  # azure-identity reads the process environment
        monkeypatch.setenv(name, value)
    yield fake, env
    servers.run(server.stop())


async def test_entra_tokens_on_each_foundry_form_are_for_the_cognitive_services_audience(
    identity, start, emulator
):
    fake, env = identity
    emulator[0].allow_token(fake.token_for(COGNITIVE_RESOURCE))
    names = [n for n in FORMS if n != "azureml-serverless"]
    base, _ = start(*(endpoint(n, {"type": "entra"}) for n in names), environ=env)
    for name in names:
        status, body = await post(base, {"model": name, "messages": HELLO})
        assert status == 200, body
    assert fake.token_requests == [COGNITIVE_RESOURCE]  # one token, cached, for every form
    assert all(r.authorized and "api-key" not in r.headers for r in emulator[0].requests)


async def test_a_token_for_the_wrong_audience_is_refused_naming_the_scope(identity, start, emulator):
    fake, env = identity
    emulator[0].allow_token(fake.token_for(COGNITIVE_RESOURCE))
    base, _ = start(
        endpoint("aoai-deployment", {"type": "entra", "scope": "https://ml.azure.com/.default"}), environ=env
    )
    status, body = await post(base, {"model": "aoai-deployment", "messages": HELLO})
    error = json.loads(body)["error"]
    assert status == 502 and "auth.scope 'https://ml.azure.com/.default'" in error["message"]


async def test_reasoning_content_reaches_the_caller_whole_and_streamed(start):
    base, _ = start(endpoint("foundry-v1"))  # upstream_model DeepSeek-R1: a reasoning model
    status, body = await post(base, {"model": "foundry-v1", "messages": HELLO})
    message = json.loads(body)["choices"][0]["message"]
    assert status == 200 and message["content"] == "You said: Hello from Foundry"
    reasoning = message["reasoning_content"]
    assert reasoning.startswith("The user wrote")
    status, body = await post(base, {"model": "foundry-v1", "messages": HELLO, "stream": True})
    deltas = [e["choices"][0]["delta"] for e in events(body) if e["choices"]]
    assert status == 200
    assert "".join(d.get("reasoning_content", "") for d in deltas) == reasoning
    assert "".join(d.get("content") or "" for d in deltas) == "You said: Hello from Foundry"


async def test_the_model_inference_api_gets_pass_through_so_stream_options_work(start, emulator):
    base, _ = start(endpoint("model-inference"))
    request = {
        "model": "model-inference",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, body = await post(base, request)
    assert status == 200, body
    assert events(body)[-1]["usage"]["completion_tokens"] == 5
    recorded = emulator[0].requests[0]
    assert recorded.headers["extra-parameters"] == "pass-through"
    assert recorded.body["stream_options"] == {"include_usage": True}


async def test_extra_parameters_error_refuses_stream_options_as_azure_does(start):
    base, _ = start(endpoint("model-inference", extra_parameters="error"))
    request = {
        "model": "model-inference",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, body = await post(base, request)
    assert status == 400
    assert "Extra parameters ['stream_options'] are not allowed" in json.loads(body)["error"]["message"]


# --- configuration -----------------------------------------------------------------------


def parse(**fields) -> object:
    document = {
        "name": "e",
        "endpoint_api_type": "serverless",
        "auth": {"type": "key_vault", "secret_name": "k"},
    }
    return parse_config(json.dumps({"endpoints": [{**document, **fields}]}))


def refusal(**fields) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(**fields)
    return str(caught.value)


@pytest.mark.parametrize(
    ("url", "header", "scope"),
    [
        ("https://r.services.ai.azure.com/openai/v1/chat/completions", "api-key", COGNITIVE_RESOURCE),
        ("https://r.openai.azure.com/openai/v1/chat/completions", "api-key", COGNITIVE_RESOURCE),
        ("https://r.cognitiveservices.azure.com/openai/v1/chat/completions", "api-key", COGNITIVE_RESOURCE),
        (
            "https://x.westeurope.models.ai.azure.com/v1/chat/completions",
            "authorization",
            "https://ml.azure.com",
        ),
        ("http://127.0.0.1:7072/openai/v1/chat/completions", "authorization", "https://ml.azure.com"),
    ],
)
def test_defaults_follow_the_host(url, header, scope):
    assert parse(endpoint_url=url, upstream_model="m").endpoints[0].auth.header == header
    entra = parse(endpoint_url=url, upstream_model="m", auth={"type": "entra"}).endpoints[0].auth
    assert entra.scope == f"{scope}/.default"


def test_an_explicit_header_or_scope_wins():
    url = "https://r.openai.azure.com/openai/v1/chat/completions"
    auth = {"type": "key_vault", "secret_name": "k", "header": "authorization"}
    assert parse(endpoint_url=url, upstream_model="m", auth=auth).endpoints[0].auth.header == "authorization"
    entra = {"type": "entra", "scope": "https://ai.azure.com/.default"}
    assert parse(endpoint_url=url, upstream_model="m", auth=entra).endpoints[0].auth.scope == entra["scope"]
    assert "auth.header: Input should be 'authorization' or 'api-key'" in refusal(
        endpoint_url=url, upstream_model="m", auth={"type": "env", "variable": "K", "header": "x-api-key"}
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"endpoint_url": "https://r.services.ai.azure.com/openai/v1/chat/completions"},
            "upstream_model is required for this URL: the name of the model's deployment",
        ),
        (
            {
                "endpoint_url": "https://r.services.ai.azure.com/models/chat/completions",
                "upstream_model": "m",
            },
            "needs its api-version: append ?api-version=2025-04-01",
        ),
        (
            {
                "endpoint_url": "https://r.services.ai.azure.com/models/chat/completions?api-version=2024-05-01-preview",
                "upstream_model": "m",
            },
            "api-version 2024-05-01-preview is retired and no longer served: use api-version=2025-04-01",
        ),
        (
            {"endpoint_url": "https://r.openai.azure.com/openai/deployments/gpt-4o/chat/completions"},
            "needs its api-version: append ?api-version=2024-10-21",
        ),
    ],
)
def test_url_forms_missing_what_they_need_are_refused_with_the_fix(fields, expected):
    assert expected in refusal(**fields)


def test_the_model_inference_api_loads_with_a_retirement_warning(caplog):
    url = "https://r.services.ai.azure.com/models/chat/completions?api-version=2025-04-01"
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        endpoint = parse(endpoint_url=url, upstream_model="m").endpoints[0]
    assert endpoint.extra_parameters == "pass-through" and endpoint.endpoint_url == url
    assert "Microsoft is retiring" in caplog.text and "/openai/v1/chat/completions" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        parse(endpoint_url="https://r.services.ai.azure.com/openai/v1/chat/completions", upstream_model="m")
    assert "retiring" not in caplog.text
