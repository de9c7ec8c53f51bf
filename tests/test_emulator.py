"""Tests of the Azure ML endpoint emulator (``emulator/``), over real sockets on 127.0.0.1."""

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


def tool(name: str) -> dict[str, Any]:
    """A function tool in the OpenAI ``tools`` format."""
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def call_id(arguments: str) -> str:
    """The tool call id the emulator promises for ``arguments``."""
    return "call_" + hashlib.sha256(arguments.encode()).hexdigest()[:24]


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


async def eventually(condition: Callable[[], bool], *, within_s: float) -> float:
    """Seconds until ``condition()`` held (polled every 5 ms); fails after ``within_s``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within_s, f"still false after {within_s} s"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


# --- reply_text -----------------------------------------------------------------------


async def test_reply_echoes_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        user("first question"),
        {"role": "assistant", "content": "an answer"},
        user("second question"),
        {"role": "assistant", "content": "trailing assistant turn"},
    ]
    assert reply_text(messages) == "You said: second question"


async def test_reply_joins_text_parts_and_marks_other_parts() -> None:
    content = [
        {"type": "text", "text": "look at"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "please"},
    ]
    assert reply_text([user(content)]) == "You said: look at [image] please"


async def test_reply_answers_a_tool_result() -> None:
    assert reply_text(TOOL_TURN) == "Tool said: sunny, 22 C"
    # Only a tool result that ends the conversation is answered; earlier ones are history.
    later = [*TOOL_TURN, {"role": "assistant", "content": "It is sunny."}, user("thanks")]
    assert reply_text(later) == "You said: thanks"


async def test_reply_without_user_message() -> None:
    assert reply_text([{"role": "system", "content": "hi"}]) == "You said nothing."
    assert reply_text([]) == "You said nothing."


# --- dedicated protocol ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ("output", {"output": "You said: hello there"}),
        ("list", [{"0": "You said: hello there"}]),
    ],
)
async def test_dedicated_simple_shapes(make_client: MakeClient, shape: str, expected: Any) -> None:
    _, client = await make_client(dedicated_shape=shape)
    response = await client.post("/score", json=dedicated_body(user("hello there")), headers=AUTH)
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == expected


async def test_dedicated_choices_shape(make_client: MakeClient) -> None:
    _, client = await make_client(dedicated_shape="choices")
    body = dedicated_body({"role": "system", "content": "be kind"}, user("hello there"))
    response = await client.post("/score", json=body, headers=AUTH)
    assert response.status == 200
    answer = await response.json()
    assert answer["id"].startswith("cmpl-")
    assert len(answer["id"]) > len("cmpl-")
    assert isinstance(answer["created"], int)
    assert abs(answer["created"] - time.time()) < 60
    assert answer == {
        "id": answer["id"],
        "object": "chat.completion",
        "created": answer["created"],
        "model": "emulator-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "You said: hello there"},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        # prompt: "be kind" + "hello there"; completion: "You said: hello there"
        "usage": {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8},
    }


async def test_dedicated_route_with_prefix(emu: Emu) -> None:
    emulator, client = emu
    response = await client.post(
        "/endpoints/my-endpoint/score", json=dedicated_body(user("hi")), headers=AUTH
    )
    assert response.status == 200
    assert await response.json() == {"output": "You said: hi"}
    assert emulator.requests[0].path == "/endpoints/my-endpoint/score"


async def test_dedicated_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="dedicated_shape"):
        Emulator(KEY, dedicated_shape="xml")


@pytest.mark.parametrize("limit_name", ["max_new_tokens", "max_tokens"])
async def test_dedicated_max_tokens_truncates(make_client: MakeClient, limit_name: str) -> None:
    _, client = await make_client(dedicated_shape="choices")
    body = dedicated_body(user("one two three four"), **{limit_name: 3, "temperature": 0.2})
    answer = await (await client.post("/score", json=body, headers=AUTH)).json()
    choice = answer["choices"][0]
    assert choice["message"]["content"] == "You said: one"
    assert choice["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


async def test_dedicated_limit_not_reached_finishes_with_stop(make_client: MakeClient) -> None:
    _, client = await make_client(dedicated_shape="choices")
    body = dedicated_body(user("one two"), max_new_tokens=4)
    answer = await (await client.post("/score", json=body, headers=AUTH)).json()
    assert answer["choices"][0]["message"]["content"] == "You said: one two"
    assert answer["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"not json", "request body must be a JSON object"),
        (b"[1, 2]", "request body must be a JSON object"),
        (b"{}", "'input_data' is required"),
        (b'{"input_data": []}', "'input_data' must be a JSON object"),
        (b'{"input_data": {}}', "'input_data.input_string' is required"),
        (
            b'{"input_data": {"input_string": "hi"}}',
            "'input_data.input_string' must be a list of messages",
        ),
        (b'{"input_data": {"input_string": []}}', "'input_data.input_string' must not be empty"),
        (
            b'{"input_data": {"input_string": ["hi"]}}',
            "'input_data.input_string'[0] must be an object",
        ),
        (
            b'{"input_data": {"input_string": [{"content": "hi"}]}}',
            "'input_data.input_string'[0].role",
        ),
        (
            b'{"input_data": {"input_string": [{"role": "user", "content": "hi"}], "parameters": 5}}',
            "'input_data.parameters' must be a JSON object",
        ),
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


# --- serverless protocol --------------------------------------------------------------


async def test_serverless_happy_path(emu: Emu) -> None:
    _, client = emu
    body = {
        "messages": [{"role": "system", "content": "terse"}, user("how are you")],
        "temperature": 0.5,
    }
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status == 200
    assert response.content_type == "application/json"
    answer = await response.json()
    assert answer["id"].startswith("cmpl-")
    assert isinstance(answer["created"], int)
    assert answer == {
        "id": answer["id"],
        "object": "chat.completion",
        "created": answer["created"],
        "model": "emulator-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "You said: how are you"},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9},
    }


async def test_serverless_echoes_model_and_serves_prefixed_route(
    emu: Emu,
) -> None:
    _, client = emu
    body = {"messages": [user("x")], "model": "Llama-3.3-70B"}
    response = await client.post("/some/prefix/v1/chat/completions", json=body, headers=AUTH)
    assert response.status == 200
    assert (await response.json())["model"] == "Llama-3.3-70B"


@pytest.mark.parametrize(
    "path", ["/models/chat/completions", "/api/projects/my-project/models/chat/completions"]
)
async def test_serverless_foundry_route(emu: Emu, path: str) -> None:
    emulator, client = emu
    body = {"messages": [user("hi foundry")], "model": "Phi-4"}
    response = await client.post(path, json=body, headers=AUTH)
    assert response.status == 200
    answer = await response.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "Phi-4"
    assert answer["choices"][0]["message"] == {
        "role": "assistant",
        "content": "You said: hi foundry",
    }
    assert emulator.requests[0].path == path


@pytest.mark.parametrize("limit_name", ["max_tokens", "max_completion_tokens"])
async def test_serverless_max_tokens_truncates(emu: Emu, limit_name: str) -> None:
    _, client = emu
    body = {"messages": [user("alpha beta gamma delta")], limit_name: 4}
    answer = await (await client.post("/v1/chat/completions", json=body, headers=AUTH)).json()
    assert answer["choices"][0]["message"]["content"] == "You said: alpha beta"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}


async def test_serverless_both_limits_take_the_smaller(emu: Emu) -> None:
    _, client = emu
    body = {
        "messages": [user("alpha beta gamma delta")],
        "max_tokens": 5,
        "max_completion_tokens": 3,
    }
    answer = await (await client.post("/v1/chat/completions", json=body, headers=AUTH)).json()
    assert answer["choices"][0]["message"]["content"] == "You said: alpha"


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"{", "request body must be a JSON object"),
        (b"{}", "'messages' is required"),
        (b'{"messages": []}', "'messages' must not be empty"),
        (b'{"messages": {"role": "user"}}', "'messages' must be a list of messages"),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
            "'stream' must be a boolean",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
            "'max_tokens' must be a positive",
        ),
    ],
)
async def test_serverless_malformed_body_is_400(emu: Emu, body: bytes, complaint: str) -> None:
    _, client = emu
    response = await client.post("/v1/chat/completions", data=body, headers=AUTH)
    assert response.status == 400
    answer = await response.json()
    assert answer["error"]["code"] == "Bad Request"
    assert answer["error"]["status"] == 400
    assert complaint in answer["error"]["message"]


# --- streaming ------------------------------------------------------------------------


async def test_stream_event_sequence(emu: Emu) -> None:
    _, client = emu
    body = {"messages": [user("stream me  please")], "stream": True, "model": "m1"}
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    payloads, error = await read_events(response)
    assert error is None
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("cmpl-")
    assert {c["model"] for c in chunks} == {"m1"}

    first, *words, finish = chunks
    assert first["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "finish_reason": None,
            "logprobs": None,
        }
    ]
    pieces = [w["choices"][0]["delta"]["content"] for w in words]
    # The double space in the prompt survives: splitting on single spaces keeps an empty word.
    assert pieces == ["You ", "said: ", "stream ", "me ", " ", "please"]
    assert "".join(pieces) == "You said: stream me  please"
    assert all(w["choices"][0]["finish_reason"] is None for w in words)
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]
    assert all("usage" not in c for c in chunks)


async def test_stream_with_usage_and_limit(emu: Emu) -> None:
    _, client = emu
    body = {
        "messages": [user("a b c d e")],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 3,
    }
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    payloads, error = await read_events(response)
    assert error is None
    assert payloads[-1] == "[DONE]"
    *_, finish, usage = [json.loads(p) for p in payloads[:-1]]
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    text = "".join(json.loads(p)["choices"][0]["delta"].get("content", "") for p in payloads[1:-2])
    assert text == "You said: a"


async def test_stream_delay_spaces_events(make_client: MakeClient) -> None:
    _, client = await make_client(stream_delay_s=0.03)
    body = {"messages": [user("x")], "stream": True}  # role, 3 words, finish, [DONE]: 5 gaps
    started = time.monotonic()
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    payloads, _ = await read_events(response)
    elapsed = time.monotonic() - started
    assert len(payloads) == 6
    assert elapsed >= 5 * 0.03


async def test_open_streams_counts_streams_until_they_end(emu: Emu) -> None:
    emulator, client = emu
    assert emulator.open_streams == 0
    body = {"messages": [user("x")], "stream": True}
    payloads, _ = await read_events(await client.post("/v1/chat/completions", json=body, headers=AUTH))
    assert payloads[-1] == "[DONE]"
    await eventually(lambda: emulator.open_streams == 0, within_s=0.5)
    emulator.add_fault(Fault(break_stream_after=2))
    payloads, error = await read_events(await client.post("/v1/chat/completions", json=body, headers=AUTH))
    assert error is not None and len(payloads) == 2
    await eventually(lambda: emulator.open_streams == 0, within_s=0.5)


async def test_open_streams_drops_promptly_when_the_client_disconnects() -> None:
    delay = 0.05
    emulator = Emulator(KEY, stream_delay_s=delay)
    # A plain AppRunner, as run_app uses: it does not cancel the handler when the client
    # leaves, so the emulator has to notice by itself.
    runner = web.AppRunner(emulator.app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/v1/chat/completions"
    # role, 62 words, finish, [DONE]: 64 gaps of 50 ms, over 3 s in full.
    body = {"messages": [user(" ".join(["word"] * 60))], "stream": True}
    try:
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            response = await session.post(url, json=body, headers=AUTH)
            for _ in range(3):  # three events, each "data: ..." then a blank line
                assert (await response.content.readline()).startswith(b"data: {")
                assert await response.content.readline() == b"\n"
                assert emulator.open_streams == 1
            response.close()  # the client goes away mid-stream
            await eventually(lambda: emulator.open_streams == 0, within_s=0.5)
            assert time.monotonic() - started < 1.5  # well before the stream would have ended
            # The server is fine: the next stream is whole.
            async with session.post(
                url, json={"messages": [user("x")], "stream": True}, headers=AUTH
            ) as again:
                payloads, error = await read_events(again)
                assert error is None and payloads[-1] == "[DONE]"
        await eventually(lambda: emulator.open_streams == 0, within_s=0.5)
    finally:
        await runner.cleanup()


# --- tool calls -----------------------------------------------------------------------


async def test_serverless_tool_call(emu: Emu) -> None:
    _, client = emu
    body = {
        "messages": [{"role": "system", "content": "use tools"}, user("weather in Paris")],
        "tools": [tool("get_weather"), tool("lookup")],
        "model": "m-tools",
    }
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status == 200
    answer = await response.json()
    arguments = '{"text":"weather in Paris"}'
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
                            "function": {"name": "get_weather", "arguments": arguments},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
                "logprobs": None,
            }
        ],
        # prompt: "use tools" + "weather in Paris"; completion: the arguments' 3 words
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    assert len(call_id(arguments)) == len("call_") + 24
    again = await (await client.post("/v1/chat/completions", json=body, headers=AUTH)).json()
    assert again["id"] != answer["id"]
    assert again["choices"] == answer["choices"]  # same messages, same call id
    [entry] = answer["choices"][0]["message"]["tool_calls"]
    assert ToolCall.to("get_weather", body["messages"]).to_json() == entry


@pytest.mark.parametrize(
    ("tool_choice", "called"),
    [
        (None, "get_weather"),
        ("auto", "get_weather"),
        ("required", "get_weather"),
        ({"type": "function", "function": {"name": "lookup"}}, "lookup"),
    ],
)
async def test_serverless_tool_choice(emu: Emu, tool_choice: Any, called: str) -> None:
    _, client = emu
    body = {
        "messages": [user("find it")],
        "tools": [tool("get_weather"), tool("lookup")],
        "tool_choice": tool_choice,
    }
    answer = await (await client.post("/v1/chat/completions", json=body, headers=AUTH)).json()
    [entry] = answer["choices"][0]["message"]["tool_calls"]
    assert entry["function"] == {"name": called, "arguments": '{"text":"find it"}'}


@pytest.mark.parametrize("extra", [{"tools": [tool("get_weather")], "tool_choice": "none"}, {"tools": []}])
async def test_serverless_no_tool_call_answers_text(emu: Emu, extra: dict[str, Any]) -> None:
    _, client = emu
    body = {"messages": [user("just talk")], **extra}
    answer = await (await client.post("/v1/chat/completions", json=body, headers=AUTH)).json()
    assert answer["choices"][0]["message"] == {
        "role": "assistant",
        "content": "You said: just talk",
    }
    assert answer["choices"][0]["finish_reason"] == "stop"


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
        (
            {"tool_choice": {"type": "function", "function": {"name": "get_time"}}},
            "'get_time', which is not among 'tools'",
        ),
        ({"tools": [tool("a")], "tool_choice": "sometimes"}, "'tool_choice' must be one of"),
        (
            {"tools": [tool("a")], "tool_choice": {"type": "function"}},
            "'tool_choice.function.name'",
        ),
        ({"tools": [tool("a")], "tool_choice": {"function": {"name": "a"}}}, "'tool_choice.type'"),
        ({"tools": "get_weather"}, "'tools' must be a list of tools"),
        ({"tools": ["get_weather"]}, "'tools'[0] must be an object"),
        ({"tools": [tool("a"), {"type": "function"}]}, "'tools'[1].function must be an object"),
        ({"tools": [{"type": "function", "function": {"name": 7}}]}, "'tools'[0].function.name"),
    ],
)
async def test_serverless_bad_tools_are_400(emu: Emu, extra: dict[str, Any], complaint: str) -> None:
    _, client = emu
    body = {"messages": [user("hi")], **extra}
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "Bad Request"
    assert complaint in error["message"]


async def test_stream_tool_call_event_sequence(make_client: MakeClient) -> None:
    _, client = await make_client(stream_delay_s=0.01)
    body = {
        "messages": [user("weather in Paris please")],
        "tools": [tool("get_weather")],
        "stream": True,
        "stream_options": {"include_usage": True},
        "model": "m1",
    }
    started = time.monotonic()
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.headers["Content-Type"] == "text/event-stream"
    payloads, error = await read_events(response)
    elapsed = time.monotonic() - started
    assert error is None
    assert payloads[-1] == "[DONE]"
    assert payloads.count("[DONE]") == 1
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert {c["model"] for c in chunks} == {"m1"}

    arguments = '{"text":"weather in Paris please"}'  # 34 characters: 5 pieces
    role, opening, *pieces, finish, usage = chunks
    assert role["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": None},
            "finish_reason": None,
            "logprobs": None,
        }
    ]
    assert opening["choices"] == [
        {
            "index": 0,
            "delta": {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call_id(arguments),
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            },
            "finish_reason": None,
            "logprobs": None,
        }
    ]
    deltas = [c["choices"][0]["delta"] for c in pieces]
    texts = [d["tool_calls"][0]["function"]["arguments"] for d in deltas]
    assert deltas == [{"tool_calls": [{"index": 0, "function": {"arguments": t}}]} for t in texts]
    assert "".join(texts) == arguments
    assert len(texts) == math.ceil(len(arguments) / 8) == 5
    assert all(0 < len(t) <= 8 for t in texts)
    assert all(c["choices"][0]["finish_reason"] is None for c in pieces)
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls", "logprobs": None}]
    assert usage["choices"] == []
    # '{"text":"weather' 'in' 'Paris' 'please"}'
    assert usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    assert elapsed >= (len(payloads) - 1) * 0.01  # paced like a text stream


async def test_stream_tool_call_broken_by_fault(emu: Emu) -> None:
    emulator, client = emu
    emulator.add_fault(Fault(break_stream_after=3))
    body = {"messages": [user("weather")], "tools": [tool("get_weather")], "stream": True}
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    payloads, error = await read_events(response)
    assert isinstance(error, aiohttp.ClientPayloadError)
    deltas = [json.loads(p)["choices"][0]["delta"] for p in payloads]
    assert len(deltas) == 3
    assert deltas[1]["tool_calls"][0]["id"] == call_id('{"text":"weather"}')
    assert deltas[2] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"text":'}}]}


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_result_turn_is_answered_with_text(emu: Emu, stream: bool) -> None:
    _, client = emu
    body = {"messages": TOOL_TURN, "tools": [tool("get_weather")], "stream": stream}
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status == 200
    if stream:
        payloads, error = await read_events(response)
        assert error is None and payloads[-1] == "[DONE]"
        chunks = [json.loads(p) for p in payloads[:-1]]
        deltas = [c["choices"][0]["delta"] for c in chunks]
        assert all("tool_calls" not in d for d in deltas)
        assert "".join(d.get("content", "") for d in deltas) == "Tool said: sunny, 22 C"
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        return
    answer = await response.json()
    assert answer["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Tool said: sunny, 22 C",
    }
    assert answer["choices"][0]["finish_reason"] == "stop"


async def test_dedicated_accepts_tool_history_and_ignores_tools(emu: Emu) -> None:
    _, client = emu
    tools = [tool("get_weather")]
    body = {**dedicated_body(*TOOL_TURN, tools=tools), "tools": tools}
    response = await client.post("/score", json=body, headers=AUTH)
    assert response.status == 200
    assert await response.json() == {"output": "Tool said: sunny, 22 C"}
    body = {**dedicated_body(user("weather"), tools=tools), "tools": tools}
    assert await (await client.post("/score", json=body, headers=AUTH)).json() == {
        "output": "You said: weather"
    }


# --- key check and recording ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/score", "/v1/chat/completions", "/models/chat/completions"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
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
    if headers:
        assert recorded.headers["authorization"] == "<redacted>"


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


async def test_non_json_body_is_recorded_as_none(emu: Emu) -> None:
    emulator, client = emu
    await client.post("/score", data=b"\xff\xfe garbage", headers=AUTH)
    assert emulator.requests[0].body is None
    assert emulator.requests[0].raw_body == b"\xff\xfe garbage"


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
    assert await response.json() == {"output": "You said: slow"}
    started = time.monotonic()
    await client.post("/score", json=dedicated_body(user("fast")), headers=AUTH)
    assert time.monotonic() - started < 0.2


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
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "You "},
        {"content": "said: "},
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
                assert await response.json() == {"output": "You said: again"}
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
        (b'[{"latency_s": "slow"}]', "wrong type"),
        (b'[{"times": 0}]', "times must be at least 1"),
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
                assert await response.json() == {"output": "You said: cli"}
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=5)
