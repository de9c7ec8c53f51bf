"""`function_app.py` on Microsoft's Functions runtime for Python 3.13+ (`azure-functions-runtime`).

The worker runs in its own Python 3.13 environment (tests/functions_runtime/venv.py builds
`.venv313/`), driven the way the Functions host drives it (tests/functions_runtime/host.py):
worker init, indexing, function loads, and per request an invocation plus the HTTP request
forwarded to the runtime's own HTTP server with `x-ms-invocation-id`. The runtime is handed
stand-ins for its protobuf message classes (see tests/functions_runtime/worker.py).

Skipped where no Python 3.13 can be found; under `CI=true` that is a failure instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from emulator import Emulator, Fault
from shared.asgi import build_app
from shared.config import load_config
from shared.errors import ConfigError
from shared.http import GatewayApi

from .conftest import emulator_config
from .functions_runtime import venv
from .functions_runtime.host import FunctionsHost, WorkerInitFailed
from .servers import AiohttpServer, BackgroundLoop, UvicornServer

ROOT = Path(__file__).resolve().parent.parent
KEY = "functions-runtime-canary-key-3f9a1c"
CHAT = "/api/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello from the Functions runtime"}]
REPLY = "You said: Hello from the Functions runtime"
# The slow endpoint's pause between two SSE events.
SLOW_EVENT_S = 0.25


@pytest.fixture(scope="module")
def runtime_python() -> Path:
    try:
        return venv.runtime_python()
    except venv.Unavailable as exc:
        if venv.in_ci():
            pytest.fail(f"CI needs the Functions runtime harness: {exc}")
        pytest.skip(str(exc))


def _settings(fast_url: str, slow_url: str) -> dict[str, str]:
    """The app settings both hosts get: the emulator's two endpoints, and `slow-mistral`, a
    serverless endpoint on an emulator that pauses between events."""
    config = emulator_config(fast_url)
    config["endpoints"].append(
        {**config["endpoints"][1], "name": "slow-mistral", "endpoint_url": f"{slow_url}/v1/chat/completions"}
    )
    return {"GATEWAY_CONFIG": json.dumps(config), "EMULATOR_KEY": KEY}


@pytest.fixture(scope="module")
def hosts(servers: BackgroundLoop, runtime_python: Path) -> Iterator[dict[str, Any]]:
    """One worker on the runtime and, for comparison, the local server, before the same endpoints."""
    fast, slow = Emulator(KEY), Emulator(KEY, stream_delay_s=SLOW_EVENT_S)
    upstreams = [servers.run(AiohttpServer(e.app).start()) for e in (fast, slow)]
    settings = _settings(upstreams[0].url, upstreams[1].url)
    started: list[Any] = []
    try:
        functions = servers.run(FunctionsHost(runtime_python, ROOT, settings).start(), timeout=120)
        started.append(functions)
        local = servers.run(UvicornServer(build_app(GatewayApi.from_environ(settings))).start())
        started.append(local)
        yield {"functions": functions, "local": local.url, "emulator": fast, "slow": slow}
    finally:
        for server in (*started, *upstreams):
            servers.run(server.stop())


@pytest.fixture
def functions(hosts: dict[str, Any]) -> FunctionsHost:
    hosts["emulator"].clear()
    return hosts["functions"]


# --- indexing -----------------------------------------------------------------------------


def test_indexing_finds_exactly_the_routes_with_methods_and_auth_levels(functions):
    found = {
        name: (f.trigger["route"], f.trigger["methods"], f.trigger["authLevel"])
        for name, f in functions.functions.items()
    }
    assert found == {
        "chat_completions": ("v1/chat/completions", ["POST"], "FUNCTION"),
        "responses": ("v1/responses", ["POST"], "FUNCTION"),
        "models": ("v1/models", ["GET"], "FUNCTION"),
        "retrieve_model": ("v1/models/{id}", ["GET"], "FUNCTION"),
        "openapi": ("openapi.json", ["GET"], "FUNCTION"),
        "health": ("health", ["GET"], "ANONYMOUS"),
    }
    for function in functions.functions.values():
        assert {"direction": "OUT", "type": "http", "name": "$return"} in function.bindings


def test_the_app_runs_with_http_streams_on(functions):
    """The runtime starts its HTTP server only for an app whose functions take the streams
    extension's request type, and asks the host for route parameters."""
    assert functions.worker_capabilities["HttpUri"].startswith("http://127.0.0.1:")
    assert functions.worker_capabilities["RequiresRouteParameters"] == "true"


# --- the official client through the runtime ----------------------------------------------


def test_openai_client_gets_a_completion_and_a_stream(functions, hosts):
    client = openai.OpenAI(base_url=functions.url + "/api/v1", api_key="unused-locally", max_retries=0)
    completion = client.chat.completions.create(model="llama-chat", messages=HELLO)
    assert completion.choices[0].message.content == REPLY
    assert hosts["emulator"].requests[-1].deployment == "llama-2-7b-chat-1"
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="mistral-large", messages=HELLO, stream=True)
        if c.choices
    ]
    assert "".join(pieces) == REPLY and len(pieces) > 2
    assert [m.id for m in client.models.list()] == ["llama-chat", "mistral-large", "slow-mistral"]
    # Each request was one invocation the runtime answered with success.
    assert [(i["function"], i["result"]["status"]) for i in functions.invocations[-3:]] == [
        ("chat_completions", 1),
        ("chat_completions", 1),
        ("models", 1),
    ]


async def test_a_stream_arrives_while_the_endpoint_is_still_streaming(functions, hosts):
    slow: Emulator = hosts["slow"]
    body = {"model": "slow-mistral", "messages": HELLO, "stream": True}
    async with aiohttp.ClientSession() as session:
        async with session.post(functions.url + CHAT, json=body) as response:
            first = await response.content.readline()
            # The endpoint has not sent its last event yet: nothing waited for the whole answer.
            assert slow.open_streams == 1
            rest = await response.read()
    assert response.status == 200 and first.startswith(b"data: {")
    assert rest.rstrip().endswith(b"data: [DONE]")


async def test_a_client_that_leaves_mid_stream_ends_the_endpoints_stream(functions, hosts):
    slow: Emulator = hosts["slow"]
    words = [{"role": "user", "content": " ".join(["word"] * 40)}]  # about 10 s to stream
    async with aiohttp.ClientSession() as session:
        async with session.post(
            functions.url + CHAT, json={"model": "slow-mistral", "messages": words, "stream": True}
        ) as response:
            await response.content.readline()
            assert slow.open_streams == 1
    deadline = time.monotonic() + 3
    while slow.open_streams and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert slow.open_streams == 0


# --- errors, request ids, and the same wire output as the local server ----------------------


def test_the_responses_api_and_one_model_through_the_runtime(functions):
    client = openai.OpenAI(base_url=functions.url + "/api/v1", api_key="unused-locally", max_retries=0)
    response = client.responses.create(model="llama-chat", input="Hi from Functions")
    assert response.status == "completed" and response.output_text.endswith("Hi from Functions")
    assert client.models.retrieve("mistral-large").id == "mistral-large"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-none")
    assert caught.value.body["code"] == "model_not_found"


def test_an_error_keeps_its_status_and_openai_body(functions, hosts):
    hosts["emulator"].add_fault(Fault(status=429, retry_after="7"))
    client = openai.OpenAI(base_url=functions.url + "/api/v1", api_key="unused-locally", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="mistral-large", messages=HELLO)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["Retry-After"] == "7"
    assert set(caught.value.body) == {"message", "type", "param", "code"}
    assert KEY not in caught.value.response.text


async def test_a_post_not_declared_json_is_a_415_on_the_functions_host_too(functions):
    async with aiohttp.ClientSession() as session:
        async with session.post(
            functions.url + "/api/v1/chat/completions",
            data=json.dumps({"messages": HELLO}).encode(),
            headers={"Content-Type": "text/plain"},
        ) as response:
            status, body = response.status, await response.json()
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in body["error"]["message"]


async def test_x_request_id_is_set_and_a_callers_own_is_kept(functions):
    async with aiohttp.ClientSession() as session:
        async with session.get(functions.url + "/api/health") as response:
            assert response.status == 200 and len(response.headers["x-request-id"]) >= 16
        async with session.get(
            functions.url + "/api/v1/models", headers={"x-request-id": "trace-me-42"}
        ) as response:
            assert response.headers["x-request-id"] == "trace-me-42"


# Requests sent to both hosts, each with the fault the emulator applies to it first (if any).
SAME_ANSWERS: list[tuple[str, str, str, Any, Fault | None]] = [
    ("completion", "POST", CHAT, {"model": "llama-chat", "messages": HELLO}, None),
    ("serverless", "POST", CHAT, {"model": "mistral-large", "messages": HELLO, "temperature": 0.1}, None),
    ("stream", "POST", CHAT, {"model": "mistral-large", "messages": HELLO, "stream": True}, None),
    ("dedicated stream", "POST", CHAT, {"model": "llama-chat", "messages": HELLO, "stream": True}, None),
    ("models", "GET", "/api/v1/models", None, None),
    ("openapi", "GET", "/api/openapi.json", None, None),
    ("health", "GET", "/api/health", None, None),
    ("not json", "POST", CHAT, b"{not json", None),
    ("no messages", "POST", CHAT, {"model": "llama-chat"}, None),
    ("unknown model", "POST", CHAT, {"model": "gpt-nope", "messages": HELLO}, None),
    (
        "throttled",
        "POST",
        CHAT,
        {"model": "mistral-large", "messages": HELLO},
        Fault(status=429, retry_after="3"),
    ),
    ("endpoint 500", "POST", CHAT, {"model": "llama-chat", "messages": HELLO}, Fault(status=500)),
    ("garbage answer", "POST", CHAT, {"model": "mistral-large", "messages": HELLO}, Fault(body="<html>")),
    (
        "broken stream",
        "POST",
        CHAT,
        {"model": "mistral-large", "messages": HELLO, "stream": True},
        Fault(break_stream_after=2),
    ),
]


def _normalized(body: bytes) -> Any:
    """A JSON body, or each SSE event of a stream, with what is generated per answer (completion
    ids, timestamps) masked."""

    def mask(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: f"<{k}>" if k == "created" or str(v).startswith("chatcmpl-") else mask(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [mask(v) for v in value]
        return value

    text = body.decode()
    if text.startswith("data: ") or text.startswith(":"):
        return [
            mask(json.loads(line[6:])) if line.startswith("data: {") else line
            for line in text.split("\n")
            if line and not line.startswith(":")  # keep-alive comments depend on timing
        ]
    return mask(json.loads(text))


async def _answer(base: str, method: str, path: str, body: Any) -> tuple[int, str, str | None, Any]:
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session:
        headers = {"content-type": "application/json"} if data is not None else {}
        async with session.request(method, base + path, data=data, headers=headers) as response:
            raw = await response.read()
            headers = response.headers
            return response.status, headers["content-type"], headers.get("retry-after"), _normalized(raw)


@pytest.mark.parametrize(
    ("method", "path", "body", "fault"), [c[1:] for c in SAME_ANSWERS], ids=[c[0] for c in SAME_ANSWERS]
)
async def test_same_status_and_body_as_the_local_server(functions, hosts, method, path, body, fault):
    answers = []
    for base in (functions.url, hosts["local"]):
        if fault is not None:
            hosts["emulator"].add_fault(fault)
        answers.append(await _answer(base, method, path, body))
    assert answers[0] == answers[1]
    assert KEY not in json.dumps(answers[0])


# --- configuration errors and the example settings -------------------------------------------


def test_a_bad_gateway_config_fails_indexing_with_the_clean_message(servers, runtime_python):
    secret = "sk-must-not-be-echoed-7c1e"
    settings = {
        "GATEWAY_CONFIG": json.dumps(
            {"endpoints": [{"name": "x", "endpoint_api_type": "dedicated", "api_key": secret}]}
        ),
        "EMULATOR_KEY": KEY,
    }
    with pytest.raises(ConfigError) as expected:
        load_config(settings)
    with pytest.raises(WorkerInitFailed) as failed:
        servers.run(FunctionsHost(runtime_python, ROOT, settings).start(), timeout=120)
    # The runtime reports the exception as "<type>: <message>": the gateway's message, whole.
    assert failed.value.message == f"ConfigError: {expected.value}"
    assert "endpoint_url" in failed.value.message
    assert secret not in failed.value.message and secret not in failed.value.worker_output


def test_the_example_local_settings_work_on_the_runtime(servers, runtime_python):
    """local.settings.example.json as `func start` reads it; its emulator address (the one
    `make dev` uses) becomes this test's emulator."""
    values = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    emulator = Emulator(values["EMULATOR_KEY"])
    upstream = servers.run(AiohttpServer(emulator.app).start())
    settings = {k: v.replace("http://127.0.0.1:7072", upstream.url) for k, v in values.items()}
    assert settings["GATEWAY_CONFIG"] != values["GATEWAY_CONFIG"]
    host = None
    try:
        host = servers.run(FunctionsHost(runtime_python, ROOT, settings).start(), timeout=120)
        client = openai.OpenAI(base_url=host.url + "/api/v1", api_key="unused-locally", max_retries=0)
        completion = client.chat.completions.create(model="llama-chat", messages=HELLO)
        assert completion.choices[0].message.content == REPLY
        assert [m.id for m in client.models.list()] == ["llama-chat", "mistral-large"]
    finally:
        if host is not None:
            servers.run(host.stop())
        servers.run(upstream.stop())
