"""The emulator's wire contract (``emulator/``), over real sockets on 127.0.0.1: what the gateway
and its tests rely on. Both protocols' request and answer shapes, the key check, the deployment
header, the streaming format, fault injection, structured output (tool arguments and
``response_format`` answers valid against the request's schema), ``n`` and ``logprobs``. The
echo's wording is not part of it: answers are compared with :func:`emulator.reply_text`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler

from emulator import Emulator, Fault, ToolCall, reply_text

pytestmark = pytest.mark.asyncio

KEY = "emulator-test-key-7f3a9c"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"

Client = TestClient[web.Request, web.Application]
Emu = tuple[Emulator, Client]
MakeClient = Callable[..., Awaitable[Emu]]


@pytest_asyncio.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """A factory of (emulator, client) pairs; every server is closed after the test."""
    clients: list[Client] = []

    async def make(**options: Any) -> Emu:
        emulator = Emulator(KEY, **options)
        client = TestClient(TestServer(emulator.app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return emulator, client

    yield make
    for client in clients:
        await client.close()


@pytest_asyncio.fixture
async def emu(make_client: MakeClient) -> Emu:
    return await make_client()


def dedicated_body(*messages: dict[str, Any], **parameters: Any) -> dict[str, Any]:
    input_data: dict[str, Any] = {"input_string": list(messages)}
    if parameters:
        input_data["parameters"] = parameters
    return {"input_data": input_data}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


async def read_events(response: aiohttp.ClientResponse) -> tuple[list[str], Exception | None]:
    """The SSE ``data:`` payloads received, and the error that ended the stream (if any)."""
    raw = b""
    error: Exception | None = None
    try:
        while chunk := await response.content.readany():
            raw += chunk
    except aiohttp.ClientPayloadError as exc:
        error = exc
    events = raw.decode().split("\n\n")
    assert events[-1] == "", f"stream did not end on an event boundary: {raw!r}"
    payloads = []
    for event in events[:-1]:
        assert event.startswith("data: "), event
        payloads.append(event.removeprefix("data: "))
    return payloads, error


async def stream_chunks(client: Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks of a whole streamed serverless answer (which must end with ``[DONE]``)."""
    response = await client.post(CHAT, json={**body, "stream": True}, headers=AUTH)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    payloads, error = await read_events(response)
    assert error is None and payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    return chunks


async def complete(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(CHAT, json=body, headers=AUTH)
    assert response.status == 200, await response.text()
    return await response.json()


def tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """A function tool in the OpenAI ``tools`` format (by default taking one string, ``text``)."""
    if parameters is None:
        parameters = {"type": "object", "properties": {"text": {"type": "string"}}}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def call_id(arguments: str) -> str:
    """The tool call id the emulator promises for ``arguments``."""
    return "call_" + hashlib.sha256(arguments.encode()).hexdigest()[:24]


def assert_valid(instance: Any, schema: Any) -> None:
    jsonschema_rs.validator_for(schema, validate_formats=True).validate(instance)


# A finished tool round trip: the user asked, the assistant called, the tool answered.
TOOL_TURN: list[dict[str, Any]] = [
    user("weather in Paris"),
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"text":"weather in Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 22 C"},
]
# Parameters as pydantic writes them: $defs, $ref, an enum, nested arrays, a closed object.
BOOKING = {
    "type": "object",
    "properties": {
        "guest": {"$ref": "#/$defs/Guest"},
        "nights": {"type": "integer", "minimum": 1, "maximum": 14},
        "rooms": {
            "type": "array",
            "items": {"type": "array", "items": {"$ref": "#/$defs/Bed"}},
            "minItems": 1,
        },
        "arrival": {"type": "string", "format": "date"},
    },
    "required": ["guest", "nights", "rooms", "arrival"],
    "additionalProperties": False,
    "$defs": {
        "Guest": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "email": {"type": "string", "format": "email"}},
            "required": ["name", "email"],
        },
        "Bed": {"type": "string", "enum": ["single", "double"]},
    },
}


async def eventually(condition: Callable[[], bool], *, within_s: float) -> float:
    """Seconds until ``condition()`` held (polled every 5 ms); fails after ``within_s``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within_s, f"still false after {within_s} s"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


# --- dedicated protocol ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/score", "/endpoints/my-endpoint/score"])
@pytest.mark.parametrize("shape", ["output", "list", "choices"])
async def test_dedicated_answer_shapes(make_client: MakeClient, shape: str, path: str) -> None:
    emulator, client = await make_client(dedicated_shape=shape)
    messages = [{"role": "system", "content": "be kind"}, user("hello there")]
    response = await client.post(path, json=dedicated_body(*messages), headers=AUTH)
    assert response.status == 200
    assert response.content_type == "application/json"
    answer = await response.json()
    text = reply_text(messages)
    if shape == "output":
        assert answer == {"output": text}
    elif shape == "list":
        assert answer == [{"0": text}]
    else:
        assert answer["id"].startswith("cmpl-") and abs(answer["created"] - time.time()) < 60
        assert answer == {
            "id": answer["id"],
            "object": "chat.completion",
            "created": answer["created"],
            "model": "emulator-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            # tokens are words: prompt "be kind" + "hello there", completion the reply's words
            "usage": {
                "prompt_tokens": 4,
                "completion_tokens": len(text.split()),
                "total_tokens": 4 + len(text.split()),
            },
        }
    assert emulator.requests[0].path == path


async def test_dedicated_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="dedicated_shape"):
        Emulator(KEY, dedicated_shape="xml")


@pytest.mark.parametrize("limit_name", ["max_new_tokens", "max_tokens"])
async def test_dedicated_limit_cuts_the_answer(make_client: MakeClient, limit_name: str) -> None:
    _, client = await make_client(dedicated_shape="choices")
    messages = [user("one two three four")]
    cut = await (
        await client.post("/score", json=dedicated_body(*messages, **{limit_name: 3}), headers=AUTH)
    ).json()
    assert cut["choices"][0]["message"]["content"] == " ".join(reply_text(messages).split(" ")[:3])
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    whole = await (
        await client.post("/score", json=dedicated_body(*messages, **{limit_name: 99}), headers=AUTH)
    ).json()
    assert whole["choices"][0]["message"]["content"] == reply_text(messages)
    assert whole["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"not json", "request body must be a JSON object"),
        (b'{"input_data": {"input_string": [1e999]}}', "'input_data.input_string'[0] must be an object"),
        (b'{"input_data": {"input_string": NaN}}', "request body must be a JSON object"),
        (b"{}", "'input_data' is required"),
        (b'{"input_data": {"input_string": []}}', "'input_data.input_string' must not be empty"),
        (
            b'{"input_data": {"input_string": [{"role": "user", "content": "hi"}],'
            b' "parameters": {"max_new_tokens": "7"}}}',
            "'input_data.parameters.max_new_tokens' must be a positive integer",
        ),
    ],
)
async def test_dedicated_malformed_body_is_400(emu: Emu, body: bytes, complaint: str) -> None:
    emulator, client = emu
    response = await client.post("/score", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == 400
    answer = await response.json()
    assert answer["error"]["code"] == "BadRequest"
    assert complaint in answer["error"]["message"]
    assert set(answer["error"]) == {"code", "message"}
    assert emulator.requests[0].raw_body == body


async def test_dedicated_accepts_tool_history_and_ignores_tools(emu: Emu) -> None:
    _, client = emu
    tools = [tool("get_weather")]
    body = {**dedicated_body(*TOOL_TURN, tools=tools), "tools": tools}
    response = await client.post("/score", json=body, headers=AUTH)
    assert response.status == 200
    assert await response.json() == {"output": reply_text(TOOL_TURN)}


# --- serverless protocol --------------------------------------------------------------


async def test_serverless_answer(emu: Emu) -> None:
    _, client = emu
    messages = [{"role": "system", "content": "terse"}, user("how are you")]
    response = await client.post(CHAT, json={"messages": messages, "temperature": 0.5}, headers=AUTH)
    assert response.status == 200
    assert response.content_type == "application/json"
    answer = await response.json()
    assert answer["id"].startswith("cmpl-") and isinstance(answer["created"], int)
    text = reply_text(messages)
    assert answer == {
        "id": answer["id"],
        "object": "chat.completion",
        "created": answer["created"],
        "model": "emulator-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 4,
            "completion_tokens": len(text.split()),
            "total_tokens": 4 + len(text.split()),
        },
    }


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/some/prefix/v1/chat/completions", AUTH),
        ("/models/chat/completions", {"api-key": KEY}),
        ("/api/projects/my-project/models/chat/completions", {"api-key": KEY}),
        ("/openai/v1/chat/completions", {"api-key": KEY}),
    ],
)
async def test_serverless_routes_echo_the_model(emu: Emu, path: str, headers: dict[str, str]) -> None:
    emulator, client = emu
    messages = [user("hi foundry")]
    response = await client.post(
        path,
        params={"api-version": "2025-04-01"},
        json={"messages": messages, "model": "Phi-4"},
        headers=headers,
    )
    assert response.status == 200
    answer = await response.json()
    assert answer["model"] == "Phi-4"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": reply_text(messages)}
    assert emulator.requests[0].path == path


@pytest.mark.parametrize(
    ("limits", "kept"),
    [
        ({"max_tokens": 4}, 4),
        ({"max_completion_tokens": 4}, 4),
        ({"max_tokens": 5, "max_completion_tokens": 3}, 3),
    ],
)
async def test_serverless_limit_cuts_the_answer(emu: Emu, limits: dict[str, int], kept: int) -> None:
    _, client = emu
    messages = [user("alpha beta gamma delta")]
    answer = await complete(client, {"messages": messages, **limits})
    assert answer["choices"][0]["message"]["content"] == " ".join(reply_text(messages).split(" ")[:kept])
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 4, "completion_tokens": kept, "total_tokens": 4 + kept}


HI = b'{"messages": [{"role": "user", "content": "hi"}], '


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"{", "request body must be a JSON object"),
        (b"{}", "'messages' is required"),
        (b'{"messages": []}', "'messages' must not be empty"),
        (HI + b'"stream": "yes"}', "'stream' must be a boolean"),
        (HI + b'"max_tokens": 0}', "'max_tokens' must be a positive"),
        (HI + b'"n": 0}', "'n' must be an integer from 1 to 128"),
        (HI + b'"n": true}', "'n' must be an integer from 1 to 128"),
        (HI + b'"logprobs": "yes"}', "'logprobs' must be a boolean"),
        (HI + b'"top_logprobs": 2}', "'top_logprobs' requires 'logprobs' to be true"),
        (HI + b'"logprobs": true, "top_logprobs": 21}', "'top_logprobs' must be an integer from 0 to 20"),
        (HI + b'"response_format": "json"}', "'response_format' must be an object"),
        (HI + b'"response_format": {"type": "xml"}}', "'response_format.type' must be one of"),
        (
            HI + b'"response_format": {"type": "json_schema"}}',
            "'response_format.json_schema' must be an object",
        ),
        (
            HI + b'"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}}',
            "'response_format.json_schema.schema' must be a JSON Schema object",
        ),
        (
            HI + b'"response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/x"}}}}',
            "'response_format.json_schema.schema': '$ref' '#/x' does not resolve",
        ),
    ],
)
async def test_serverless_malformed_body_is_400(emu: Emu, body: bytes, complaint: str) -> None:
    _, client = emu
    response = await client.post(CHAT, data=body, headers=AUTH)
    assert response.status == 400
    answer = await response.json()
    assert answer["error"]["code"] == "Bad Request"
    assert answer["error"]["status"] == 400
    assert complaint in answer["error"]["message"]


# --- streaming ------------------------------------------------------------------------


async def test_stream_event_sequence(emu: Emu) -> None:
    _, client = emu
    messages = [user("stream me  please")]
    chunks = await stream_chunks(client, {"messages": messages, "model": "m1"})
    assert {c["model"] for c in chunks} == {"m1"}
    first, *words, finish = chunks
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
    ]
    pieces = [w["choices"][0]["delta"]["content"] for w in words]
    # One piece per word, each keeping the space after it (a double space survives).
    assert "".join(pieces) == reply_text(messages)
    assert pieces[-3:] == ["me ", " ", "please"]
    assert all(w["choices"][0]["finish_reason"] is None for w in words)
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]
    assert all("usage" not in c for c in chunks)


async def test_stream_with_usage_and_limit(emu: Emu) -> None:
    _, client = emu
    messages = [user("a b c d e")]
    chunks = await stream_chunks(
        client, {"messages": messages, "stream_options": {"include_usage": True}, "max_tokens": 3}
    )
    *deltas, finish, usage = chunks
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in deltas)
    assert text == " ".join(reply_text(messages).split(" ")[:3])


async def test_stream_delay_spaces_events(make_client: MakeClient) -> None:
    _, client = await make_client(stream_delay_s=0.03)
    started = time.monotonic()
    chunks = await stream_chunks(client, {"messages": [user("x")]})
    assert time.monotonic() - started >= len(chunks) * 0.03  # a gap before every later event


async def test_open_streams_counts_streams_until_they_end(emu: Emu) -> None:
    emulator, client = emu
    assert emulator.open_streams == 0
    body = {"messages": [user("x")], "stream": True}
    payloads, _ = await read_events(await client.post(CHAT, json=body, headers=AUTH))
    assert payloads[-1] == "[DONE]"
    await eventually(lambda: emulator.open_streams == 0, within_s=0.5)
    emulator.add_fault(Fault(break_stream_after=2))
    payloads, error = await read_events(await client.post(CHAT, json=body, headers=AUTH))
    assert error is not None and len(payloads) == 2
    await eventually(lambda: emulator.open_streams == 0, within_s=0.5)


# --- tool calls -----------------------------------------------------------------------


async def test_tool_call_arguments_follow_the_parameters_schema(emu: Emu) -> None:
    _, client = emu
    messages = [{"role": "system", "content": "use tools"}, user("a room for Ada")]
    body = {"messages": messages, "tools": [tool("book", BOOKING), tool("lookup")], "model": "m-tools"}
    answer = await complete(client, body)
    [entry] = answer["choices"][0]["message"]["tool_calls"]
    arguments = entry["function"]["arguments"]
    assert_valid(json.loads(arguments), BOOKING)
    assert json.loads(arguments)["guest"]["name"] == "a room for Ada"  # free strings: the user's text
    assert answer == {
        "id": answer["id"],
        "object": "chat.completion",
        "created": answer["created"],
        "model": "m-tools",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id(arguments),
                            "type": "function",
                            "function": {"name": "book", "arguments": arguments},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 6,
            "completion_tokens": len(arguments.split(" ")),
            "total_tokens": 6 + len(arguments.split(" ")),
        },
    }
    assert ToolCall.to("book", messages, BOOKING).to_json() == entry
    again = await complete(client, body)
    assert again["id"] != answer["id"] and again["choices"] == answer["choices"]  # deterministic


async def test_a_tool_without_parameters_is_called_with_an_empty_object(emu: Emu) -> None:
    _, client = emu
    body = {"messages": [user("now")], "tools": [{"type": "function", "function": {"name": "clock"}}]}
    [entry] = (await complete(client, body))["choices"][0]["message"]["tool_calls"]
    assert entry["function"] == {"name": "clock", "arguments": "{}"}


@pytest.mark.parametrize(
    ("tool_choice", "after_tool_result", "called"),
    [
        (None, False, "get_weather"),
        ("auto", False, "get_weather"),
        ("required", False, "get_weather"),
        ({"type": "function", "function": {"name": "lookup"}}, False, "lookup"),
        ("none", False, None),
        (None, True, None),  # auto: a tool result is answered with text
        ("auto", True, None),
        ("required", True, "get_weather"),  # forced: a tool is called whatever came before
        ({"type": "function", "function": {"name": "lookup"}}, True, "lookup"),
    ],
)
async def test_tool_choice(emu: Emu, tool_choice: Any, after_tool_result: bool, called: str | None) -> None:
    _, client = emu
    messages = TOOL_TURN if after_tool_result else [user("find it")]
    body = {"messages": messages, "tools": [tool("get_weather"), tool("lookup")], "tool_choice": tool_choice}
    choice = (await complete(client, body))["choices"][0]
    if called is None:
        assert choice["message"] == {"role": "assistant", "content": reply_text(messages)}
        assert choice["finish_reason"] == "stop"
    else:
        [entry] = choice["message"]["tool_calls"]
        assert entry["function"]["name"] == called
        assert choice["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        (
            {
                "tools": [tool("get_weather")],
                "tool_choice": {"type": "function", "function": {"name": "get_time"}},
            },
            "'tool_choice' names the function 'get_time', which is not among 'tools' (get_weather)",
        ),
        ({"tool_choice": "required"}, "'tool_choice' is \"required\" but there are no 'tools'"),
        ({"tools": [tool("a")], "tool_choice": "sometimes"}, "'tool_choice' must be one of"),
        ({"tools": [tool("a")], "tool_choice": {"function": {"name": "a"}}}, "'tool_choice.type'"),
        ({"tools": "get_weather"}, "'tools' must be a list of tools"),
        ({"tools": [tool("a"), {"type": "function"}]}, "'tools'[1].function must be an object"),
        ({"tools": [{"type": "function", "function": {"name": 7}}]}, "'tools'[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "a", "parameters": []}}]},
            "'tools'[0].function.parameters must be a JSON Schema object",
        ),
        (
            {"tools": [tool("odd", {"type": "object", "required": ["x"], "additionalProperties": False})]},
            "the parameters of function 'odd': 'x' is required but 'additionalProperties' is false",
        ),
    ],
)
async def test_bad_tools_are_400(emu: Emu, extra: dict[str, Any], complaint: str) -> None:
    _, client = emu
    response = await client.post(CHAT, json={"messages": [user("hi")], **extra}, headers=AUTH)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "Bad Request"
    assert complaint in error["message"]


async def test_stream_tool_call_event_sequence(emu: Emu) -> None:
    _, client = emu
    body = {
        "messages": [user("weather in Paris please")],
        "tools": [tool("get_weather")],
        "stream_options": {"include_usage": True},
    }
    role, opening, *pieces, finish, usage = await stream_chunks(client, body)
    arguments = ToolCall.to("get_weather", body["messages"]).arguments
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None, "logprobs": None}
    ]
    assert opening["choices"][0]["delta"] == {
        "tool_calls": [
            {
                "index": 0,
                "id": call_id(arguments),
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    deltas = [c["choices"][0]["delta"] for c in pieces]
    texts = [d["tool_calls"][0]["function"]["arguments"] for d in deltas]
    assert deltas == [{"tool_calls": [{"index": 0, "function": {"arguments": t}}]} for t in texts]
    assert "".join(texts) == arguments
    assert len(texts) == math.ceil(len(arguments) / 8) and all(0 < len(t) <= 8 for t in texts)
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls", "logprobs": None}]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(arguments.split(" "))


# --- structured answers (response_format) ---------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_json_schema_answers_follow_the_schema(emu: Emu, stream: bool) -> None:
    _, client = emu
    messages = [user("a room for Ada")]
    body = {
        "messages": messages,
        "response_format": {"type": "json_schema", "json_schema": {"name": "booking", "schema": BOOKING}},
        "max_tokens": 2,  # JSON is not cut: a cut would not parse
    }
    if stream:
        chunks = await stream_chunks(client, body)
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        finish = chunks[-1]["choices"][0]["finish_reason"]
    else:
        choice = (await complete(client, body))["choices"][0]
        content, finish = choice["message"]["content"], choice["finish_reason"]
    assert_valid(json.loads(content), BOOKING)
    assert finish == "stop"
    assert content == (await complete(client, {**body, "stream": False}))["choices"][0]["message"]["content"]


async def test_json_object_answers(emu: Emu) -> None:
    _, client = emu
    json_object = {"response_format": {"type": "json_object"}}
    plain = [user("hello")]
    answer = await complete(client, {"messages": plain, **json_object})
    assert json.loads(answer["choices"][0]["message"]["content"]) == {"text": reply_text(plain)}
    # A schema in the conversation (format instructions) is followed: the last one written.
    instructed = [
        {"role": "system", "content": f"Answer as JSON. Not {json.dumps(BOOKING['$defs']['Guest'])} but:"},
        user(f"```json\n{json.dumps(BOOKING)}\n```\nbook a room"),
    ]
    answer = await complete(client, {"messages": instructed, **json_object})
    assert_valid(json.loads(answer["choices"][0]["message"]["content"]), BOOKING)


async def test_json_answers_after_a_tool_result(emu: Emu) -> None:
    _, client = emu
    body = {"messages": TOOL_TURN, "tools": [tool("get_weather")], "response_format": {"type": "json_object"}}
    choice = (await complete(client, body))["choices"][0]
    assert json.loads(choice["message"]["content"]) == {"text": reply_text(TOOL_TURN)}


# --- n and logprobs -------------------------------------------------------------------


def assert_logprobs(logprobs: dict[str, Any], content: str, top: int) -> None:
    assert set(logprobs) == {"content", "refusal"} and logprobs["refusal"] is None
    assert "".join(entry["token"] for entry in logprobs["content"]) == content
    for entry in logprobs["content"]:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]) == entry["token"].encode()
        assert len(entry["top_logprobs"]) == top
        if top:
            assert entry["top_logprobs"][0] == {k: entry[k] for k in ("token", "logprob", "bytes")}
        values = [alternative["logprob"] for alternative in entry["top_logprobs"]]
        assert values == sorted(values, reverse=True)


async def test_n_choices_with_logprobs(emu: Emu) -> None:
    _, client = emu
    messages = [user("café au lait")]
    answer = await complete(client, {"messages": messages, "n": 3, "logprobs": True, "top_logprobs": 4})
    assert [choice["index"] for choice in answer["choices"]] == [0, 1, 2]
    text = reply_text(messages)
    for choice in answer["choices"]:
        assert choice["message"] == {"role": "assistant", "content": text}
        assert_logprobs(choice["logprobs"], text, 4)
    words = len(text.split(" "))
    assert answer["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 3 * words,
        "total_tokens": 3 + 3 * words,
    }
    again = await complete(client, {"messages": messages, "n": 3, "logprobs": True, "top_logprobs": 4})
    assert again["choices"] == answer["choices"]
    without_top = await complete(client, {"messages": messages, "logprobs": True})
    assert_logprobs(without_top["choices"][0]["logprobs"], text, 0)


async def test_streamed_n_choices_with_logprobs(emu: Emu) -> None:
    _, client = emu
    messages = [user("one two three")]
    body = {
        "messages": messages,
        "n": 2,
        "logprobs": True,
        "top_logprobs": 1,
        "stream_options": {"include_usage": True},
    }
    *chunks, usage = await stream_chunks(client, body)
    assert all(len(c["choices"]) == 1 for c in chunks)
    indexes = [c["choices"][0]["index"] for c in chunks]
    assert indexes == [0, 1] * (len(chunks) // 2)  # the choices take turns
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        content = "".join(choice["delta"].get("content") or "" for choice in mine)
        assert content == reply_text(messages)
        assert mine[-1]["finish_reason"] == "stop" and mine[-1]["logprobs"] is None
        for choice in mine[:-1]:
            assert_logprobs(choice["logprobs"], choice["delta"].get("content") or "", 1)
    assert usage["usage"]["completion_tokens"] == 2 * len(reply_text(messages).split(" "))


async def test_tool_call_choices_with_logprobs(emu: Emu) -> None:
    _, client = emu
    body = {"messages": [user("x")], "tools": [tool("a")], "n": 2, "logprobs": True}
    answer = await complete(client, body)
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    assert answer["choices"][0]["message"] == answer["choices"][1]["message"]
    assert all(c["logprobs"] == {"content": [], "refusal": None} for c in answer["choices"])


# --- key check and recording ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/score", "/v1/chat/completions"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"api-key": KEY},
        {"Authorization": "Bearer wrong-key-value"},
        {"Authorization": KEY},
        {"Authorization": f"bearer {KEY}"},
    ],
)
async def test_wrong_or_missing_key_is_401(emu: Emu, path: str, headers: dict[str, str]) -> None:
    emulator, client = emu
    body = {"messages": [user("hi")], **dedicated_body(user("hi"))}
    response = await client.post(path, json=body, headers=headers)
    assert response.status == 401
    text = await response.text()
    assert json.loads(text) == {"error": {"code": "Unauthorized", "message": "invalid or missing key"}}
    assert "wrong-key-value" not in text
    assert KEY not in text
    [recorded] = emulator.requests
    assert recorded.authorized is False
    for name in headers:
        assert recorded.headers[name.lower()] == "<redacted>"


async def test_recording_keeps_no_key(emu: Emu) -> None:
    emulator, client = emu
    body = dedicated_body(user("hi"))
    await client.post(
        "/score?api-version=2024-01-01",
        json=body,
        headers={**AUTH, "azureml-model-deployment": "blue", "X-Trace": "t-1", "api-key": KEY},
    )
    await client.post("/score", json=body, headers={"Authorization": "Bearer not-the-key"})
    first, second = emulator.requests
    assert first.authorized is True
    assert second.authorized is False
    assert first.method == "POST"
    assert first.path == "/score"
    assert first.query == {"api-version": "2024-01-01"}
    assert first.deployment == "blue"
    assert second.deployment is None
    assert first.headers["authorization"] == "<redacted>"
    assert first.headers["api-key"] == "<redacted>"
    assert first.headers["x-trace"] == "t-1"  # names are lower-cased
    assert first.body == body
    assert json.loads(first.raw_body) == body
    assert KEY not in repr(emulator.requests)
    assert "not-the-key" not in repr(emulator.requests)
    listing = await (await client.get("/_emulator/requests")).text()
    assert KEY not in listing
    assert "not-the-key" not in listing
    await client.post("/score", data=b"\xff\xfe garbage", headers=AUTH)
    assert emulator.requests[2].body is None  # not JSON
    assert emulator.requests[2].raw_body == b"\xff\xfe garbage"


async def test_a_rotated_key_replaces_the_old_one(emu: Emu) -> None:
    emulator, client = emu
    emulator.rotate_key("the-new-key")
    body = dedicated_body(user("hi"))
    assert (await client.post("/score", json=body, headers=AUTH)).status == 401
    assert (
        await client.post("/score", json=body, headers={"Authorization": "Bearer the-new-key"})
    ).status == 200


# --- faults ---------------------------------------------------------------------------


async def test_fault_status_with_retry_after_then_normal(emu: Emu) -> None:
    emulator, client = emu
    emulator.add_fault(Fault(status=429, retry_after="2"))
    body = dedicated_body(user("hi"))
    faulted = await client.post("/score", json=body, headers=AUTH)
    assert faulted.status == 429
    assert faulted.headers["Retry-After"] == "2"
    error = (await faulted.json())["error"]
    assert error["code"] == "TooManyRequests"
    assert "429" in error["message"]
    normal = await client.post("/score", json=body, headers=AUTH)
    assert normal.status == 200
    assert "Retry-After" not in normal.headers
    assert len(emulator.requests) == 2


async def test_fault_applies_before_key_check(emu: Emu) -> None:
    emulator, client = emu
    emulator.add_fault(Fault(status=503, body="down for maintenance", content_type="text/plain"))
    response = await client.post("/score", json=dedicated_body(user("hi")))  # no key at all
    assert response.status == 503
    assert response.headers["Content-Type"] == "text/plain"
    assert await response.text() == "down for maintenance"
    assert emulator.requests[0].authorized is False


async def test_fault_times_and_path(emu: Emu) -> None:
    emulator, client = emu
    fault = Fault(status=500, times=2, path="/v1/chat/completions")
    emulator.add_fault(fault)
    chat = {"messages": [user("hi")]}
    assert (await client.post("/score", json=dedicated_body(user("hi")), headers=AUTH)).status == 200
    assert (await client.post("/v1/chat/completions", json=chat, headers=AUTH)).status == 500
    assert (await client.post("/x/v1/chat/completions", json=chat, headers=AUTH)).status == 500
    assert (await client.post("/v1/chat/completions", json=chat, headers=AUTH)).status == 200
    assert fault.times == 2  # the emulator consumed its own copy


async def test_faults_are_taken_in_order(emu: Emu) -> None:
    emulator, client = emu
    emulator.add_fault(Fault(status=502))
    emulator.add_fault(Fault(status=504))
    statuses = [
        (await client.post("/score", json=dedicated_body(user("hi")), headers=AUTH)).status for _ in range(3)
    ]
    assert statuses == [502, 504, 200]


async def test_fault_latency_then_normal_answer(emu: Emu) -> None:
    emulator, client = emu
    emulator.add_fault(Fault(latency_s=0.2))
    started = time.monotonic()
    response = await client.post("/score", json=dedicated_body(user("slow")), headers=AUTH)
    assert time.monotonic() - started >= 0.2
    assert await response.json() == {"output": reply_text([user("slow")])}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("<html><body>Bad gateway</body></html>", "text/html"),
        (b'{"output": "You sa', "application/json"),
    ],
)
async def test_fault_malformed_body(emu: Emu, body: str | bytes, content_type: str) -> None:
    emulator, client = emu
    emulator.add_fault(Fault(body=body, content_type=content_type))
    response = await client.post("/score", json=dedicated_body(user("hi")), headers=AUTH)
    assert response.status == 200
    assert response.headers["Content-Type"] == content_type
    assert await response.read() == (body.encode() if isinstance(body, str) else body)


async def test_fault_breaks_stream_without_done(emu: Emu) -> None:
    emulator, client = emu
    emulator.add_fault(Fault(break_stream_after=3))
    body = {"messages": [user("one two three four")], "stream": True}
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status == 200
    payloads, error = await read_events(response)
    assert isinstance(error, aiohttp.ClientPayloadError)
    assert "[DONE]" not in payloads
    chunks = [json.loads(p) for p in payloads]
    first, second = reply_text(body["messages"]).split(" ")[:2]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": first + " "},
        {"content": second + " "},
    ]
    # The server survives and the next stream is whole.
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    payloads, error = await read_events(response)
    assert error is None
    assert payloads[-1] == "[DONE]"


async def test_fault_hang_never_answers() -> None:
    emulator = Emulator(KEY)
    handler_done = asyncio.Event()

    @web.middleware
    async def watch(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            handler_done.set()

    emulator.app.middlewares.append(watch)
    # A plain AppRunner, as run_app uses: unlike TestServer it does not cancel handlers
    # when the client leaves, so this checks that the emulator notices by itself.
    runner = web.AppRunner(emulator.app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/score"
    try:
        emulator.add_fault(Fault(hang=True))
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await session.post(
                    url,
                    json=dedicated_body(user("hi")),
                    headers=AUTH,
                    timeout=aiohttp.ClientTimeout(total=0.3),
                )
            assert time.monotonic() - started < 1.0
            # The handler ends once the client has gone, instead of sitting out 600 s.
            await asyncio.wait_for(handler_done.wait(), timeout=1.0)
            async with session.post(url, json=dedicated_body(user("again")), headers=AUTH) as response:
                assert await response.json() == {"output": reply_text([user("again")])}
    finally:
        await runner.cleanup()


async def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="times"):
        Fault(times=0)
    with pytest.raises(ValueError, match="status"):
        Fault(status=42)
    with pytest.raises(ValueError, match="unknown fault field"):
        Fault.from_json({"staus": 500})
    with pytest.raises(ValueError, match="wrong type"):
        Fault.from_json({"times": True})
    assert Fault.from_json({"status": 429, "retry_after": "1", "latency_s": 0}) == Fault(
        status=429, retry_after="1"
    )


# --- control endpoints ----------------------------------------------------------------


async def test_health(emu: Emu) -> None:
    emulator, client = emu
    response = await client.get("/_emulator/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}
    assert emulator.requests == []  # control calls are not recorded


async def test_control_requests_listing_and_clear(emu: Emu) -> None:
    emulator, client = emu
    body = {"messages": [user("hi")]}
    await client.post(
        "/v1/chat/completions?trace=1",
        json=body,
        headers={**AUTH, "azureml-model-deployment": "green"},
    )
    emulator.add_fault(Fault(status=500))
    listing = await (await client.get("/_emulator/requests")).json()
    assert len(listing) == 1
    entry = listing[0]
    assert set(entry) == {"method", "path", "query", "deployment", "authorized", "headers", "body"}
    assert entry["path"] == "/v1/chat/completions"
    assert entry["query"] == {"trace": "1"}
    assert entry["deployment"] == "green"
    assert entry["authorized"] is True
    assert entry["body"] == body
    assert entry["headers"]["authorization"] == "<redacted>"

    assert (await client.delete("/_emulator/requests")).status == 204
    assert await (await client.get("/_emulator/requests")).json() == []
    # Clearing also dropped the pending fault.
    assert (await client.post("/v1/chat/completions", json=body, headers=AUTH)).status == 200


async def test_control_add_faults(emu: Emu) -> None:
    emulator, client = emu
    faults = [
        {"status": 503, "retry_after": "7", "path": "/score"},
        {"body": "<html>oops</html>", "content_type": "text/html"},
    ]
    response = await client.post("/_emulator/faults", json=faults)
    assert response.status == 200
    assert await response.json() == {"added": 2, "pending": 2}
    chat = {"messages": [user("hi")]}
    first = await client.post("/v1/chat/completions", json=chat, headers=AUTH)  # path does not match fault 1
    assert await first.text() == "<html>oops</html>"
    second = await client.post("/score", json=dedicated_body(user("hi")), headers=AUTH)
    assert second.status == 503
    assert second.headers["Retry-After"] == "7"
    assert len(emulator.requests) == 2


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"nope", "Expecting value"),
        (b'{"status": 500}', "JSON list"),
        (b'[{"status": 500, "colour": "red"}]', "unknown fault field(s): colour"),
    ],
)
async def test_control_add_faults_rejects_bad_input(emu: Emu, body: bytes, complaint: str) -> None:
    _emulator, client = emu
    response = await client.post("/_emulator/faults", data=body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "BadRequest"
    assert complaint in error["message"]
    # Nothing was queued: the next request is answered normally.
    assert (await client.post("/score", json=dedicated_body(user("hi")), headers=AUTH)).status == 200


# --- CLI ------------------------------------------------------------------------------


async def run_cli(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "emulator",
        *args,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def env_without_key(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EMULATOR_KEY"}
    return {**env, **extra}


async def test_cli_without_key_exits_2() -> None:
    cases = [  # (arguments, environment, the variable the message must name)
        ((), env_without_key(), "EMULATOR_KEY"),
        ((), env_without_key(EMULATOR_KEY=""), "EMULATOR_KEY"),
        (
            ("--key-env", "MY_ENDPOINT_KEY"),
            env_without_key(EMULATOR_KEY="set-but-not-used"),
            "MY_ENDPOINT_KEY",
        ),
    ]

    async def run(args: tuple[str, ...], env: dict[str, str]) -> tuple[int | None, bytes, bytes]:
        env.pop("MY_ENDPOINT_KEY", None)
        process = await run_cli(*args, env=env)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=5)
        return process.returncode, stdout, stderr

    # Concurrently: each interpreter spends most of its time importing aiohttp.
    results = await asyncio.gather(*(run(args, env) for args, env, _ in cases))
    for (_, _, variable), (returncode, stdout, stderr) in zip(cases, results, strict=True):
        assert returncode == 2
        assert stdout == b""
        lines = stderr.decode().strip().splitlines()
        assert len(lines) == 1
        assert variable in lines[0]


async def test_cli_serves_and_never_prints_the_key() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await run_cli("--port", str(port), env=env_without_key(EMULATOR_KEY=KEY))
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=5)).decode()
        assert f"127.0.0.1:{port}" in line
        assert KEY not in line
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/_emulator/health") as response:
                assert await response.json() == {"status": "ok"}
            async with session.post(
                f"http://127.0.0.1:{port}/score", json=dedicated_body(user("cli")), headers=AUTH
            ) as response:
                assert await response.json() == {"output": reply_text([user("cli")])}
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=5)
