"""The Azure Functions adapter: its indexed routes, and the same handlers behind them.

`FunctionApp.get_functions()` may run once per app object, so it runs once per test session,
in the `indexed` fixture.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from emulator import Emulator

from .conftest import emulator_config
from .servers import AiohttpServer, UvicornServer


@pytest.fixture(scope="module")
def functions_host(servers) -> Iterator[dict[str, Any]]:
    """`function_app` imported against an emulator, and its functions indexed (once)."""
    emulator = Emulator("functions-test-key")
    upstream = servers.run(AiohttpServer(emulator.app).start())
    saved = dict(os.environ)
    os.environ.update(
        GATEWAY_CONFIG=json.dumps(emulator_config(upstream.url)), EMULATOR_KEY="functions-test-key"
    )
    try:
        import function_app

        module = importlib.reload(function_app)  # a fresh FunctionApp: get_functions() runs once per app
        functions = {f.get_function_name(): f for f in module.app.get_functions()}
        harness = servers.run(UvicornServer(_worker_like_app(functions.values())).start())
        yield {"functions": functions, "url": harness.url, "emulator": emulator}
        servers.run(harness.stop())
        servers.run(module.api.aclose())
    finally:
        os.environ.clear()
        os.environ.update(saved)
        servers.run(upstream.stop())


def _worker_like_app(functions) -> Starlette:
    """What the Functions worker does with HTTP streams: the host's route, then the user function
    called with the Starlette request."""
    routes = []
    for function in functions:
        trigger, user_function = function.get_trigger(), function.get_user_function()

        async def endpoint(request: Request, _call=user_function):
            return await _call(request)

        routes.append(Route("/api/" + trigger.route, endpoint, methods=[str(m) for m in trigger.methods]))
    return Starlette(routes=routes)


def test_function_app_indexes_exactly_the_routes(functions_host):
    bindings = {
        name: json.loads(function.get_function_json())["bindings"]
        for name, function in functions_host["functions"].items()
    }
    assert bindings == {
        "chat_completions": [
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["POST"],
                "authLevel": "FUNCTION",
                "route": "v1/chat/completions",
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        ],
        "responses": [
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["POST"],
                "authLevel": "FUNCTION",
                "route": "v1/responses",
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        ],
        "models": [
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["GET"],
                "authLevel": "FUNCTION",
                "route": "v1/models",
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        ],
        "retrieve_model": [
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["GET"],
                "authLevel": "FUNCTION",
                "route": "v1/models/{id}",
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        ],
        "openapi": [
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["GET"],
                "authLevel": "FUNCTION",
                "route": "openapi.json",
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        ],
        "health": [
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["GET"],
                "authLevel": "ANONYMOUS",
                "route": "health",
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        ],
    }


def test_every_route_takes_the_http_streams_request_type(functions_host):
    from azurefunctions.extensions.http.fastapi import Request as StreamsRequest

    for function in functions_host["functions"].values():
        annotation = function.get_user_function().__annotations__["req"]
        assert annotation in (StreamsRequest, "Request")


def test_host_json_keeps_the_api_route_prefix():
    with open("host.json") as f:
        assert json.load(f)["extensions"]["http"]["routePrefix"] == "api"


def test_openai_client_through_the_functions_adapter(functions_host):
    client = openai.OpenAI(base_url=functions_host["url"] + "/api/v1", api_key="unused-locally")
    completion = client.chat.completions.create(
        model="llama-chat", messages=[{"role": "user", "content": "Hi from Functions"}]
    )
    assert completion.choices[0].message.content == "You said: Hi from Functions"
    assert [m.id for m in client.models.list()] == ["llama-chat", "mistral-large"]
    assert functions_host["emulator"].requests[-1].deployment == "llama-2-7b-chat-1"
    assert client.models.retrieve("mistral-large").id == "mistral-large"
    response = client.responses.create(model="llama-chat", input="Hi from Functions")
    assert response.output_text == "You said: Hi from Functions"


def test_streaming_through_the_functions_adapter(functions_host):
    client = openai.OpenAI(base_url=functions_host["url"] + "/api/v1", api_key="unused-locally")
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="mistral-large",
            messages=[{"role": "user", "content": "stream from Functions"}],
            stream=True,
        )
        if c.choices
    ]
    assert "".join(pieces) == "You said: stream from Functions" and len(pieces) > 2
