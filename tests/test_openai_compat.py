"""What front-ends send passes through: tools, content parts, response formats; CORS for
browsers; and clients nobody here wrote (LangChain's ChatOpenAI)."""

from __future__ import annotations

import json

import openai
import pytest

from emulator import ToolCall

from .client import CHAT, post, request
from .conftest import emulator_config

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
}
QUESTION = [{"role": "user", "content": "weather in Paris"}]


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/api/v1", api_key="x", max_retries=0)


def test_tool_calls_come_back_from_a_serverless_endpoint(gateway, emulator):
    completion = client(gateway).chat.completions.create(
        model="mistral-large", messages=QUESTION, tools=[WEATHER], tool_choice="auto"
    )
    choice = completion.choices[0]
    expected = ToolCall.to("get_weather", QUESTION)
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        expected.id,
        "get_weather",
        expected.arguments,
    )
    sent = emulator[0].requests[-1].body
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "auto"


def test_streamed_tool_call_deltas_reassemble_in_the_openai_client(gateway):
    arguments, names, finish = "", [], None
    for chunk in client(gateway).chat.completions.create(
        model="mistral-large", messages=QUESTION, tools=[WEATHER], stream=True
    ):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                arguments += delta.function.arguments or ""
                names += [delta.function.name] if delta.function.name else []
            finish = choice.finish_reason or finish
    assert names == ["get_weather"] and json.loads(arguments) == {"text": "weather in Paris"}
    assert finish == "tool_calls"


def test_a_tool_result_turn_is_forwarded_as_sent(gateway, emulator):
    call = ToolCall.to("get_weather", QUESTION)
    messages = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.to_json()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18°C and sunny"},
    ]
    completion = client(gateway).chat.completions.create(
        model="mistral-large", messages=messages, tools=[WEATHER]
    )
    assert completion.choices[0].message.content == "Tool said: 18°C and sunny"
    assert emulator[0].requests[-1].body["messages"] == messages


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [WEATHER]}, "tools"),
        ({"tool_choice": "none"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_what_a_score_endpoint_cannot_take_is_a_400_not_lost(gateway, emulator, extra, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client(gateway).chat.completions.create(model="llama-chat", messages=QUESTION, **extra)
    assert raised.value.param == param and "dedicated endpoint (/score) cannot take" in raised.value.message
    assert emulator[0].requests == []


def test_sampling_and_format_parameters_reach_a_serverless_endpoint(gateway, emulator):
    client(gateway).chat.completions.create(
        model="mistral-large",
        messages=QUESTION,
        response_format={"type": "json_object"},
        seed=42,
        stop=["\n\n"],
        n=1,
        user="front-end-user-7",
        temperature=0,
        top_p=0.9,
        max_tokens=20,
        presence_penalty=0.5,
        frequency_penalty=0.1,
    )
    sent = emulator[0].requests[-1].body
    assert {
        k: sent[k]
        for k in (
            "response_format",
            "seed",
            "stop",
            "n",
            "user",
            "temperature",
            "top_p",
            "max_tokens",
            "presence_penalty",
            "frequency_penalty",
        )
    } == {
        "response_format": {"type": "json_object"},
        "seed": 42,
        "stop": ["\n\n"],
        "n": 1,
        "user": "front-end-user-7",
        "temperature": 0,
        "top_p": 0.9,
        "max_tokens": 20,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.1,
    }


@pytest.mark.parametrize("model", ["mistral-large", "llama-chat"])
def test_content_parts_are_forwarded_unflattened(gateway, emulator, model):
    parts = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
    ]
    completion = client(gateway).chat.completions.create(
        model=model, messages=[{"role": "user", "content": parts}]
    )
    assert completion.choices[0].message.content == "You said: What is in this picture? [image]"
    body = emulator[0].requests[-1].body
    sent = body["messages"] if model == "mistral-large" else body["input_data"]["input_string"]
    assert sent == [{"role": "user", "content": parts}]


# --- CORS (local server) ----------------------------------------------------------------------

ORIGIN = "https://chat.example.com"


@pytest.fixture
def cors_gateway(emulator, start_gateway):
    return start_gateway(emulator_config(emulator[1], cors={"allowed_origins": [ORIGIN]}))


async def test_cors_preflight_from_an_allowed_origin(cors_gateway):
    headers = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-request-id",
    }
    reply = await request("OPTIONS", cors_gateway, CHAT, headers=headers)
    assert reply.status == 200
    assert reply.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in reply.headers["Access-Control-Allow-Methods"]
    assert "x-request-id" in reply.headers["Access-Control-Allow-Headers"].lower()
    reply = await request(
        "OPTIONS", cors_gateway, CHAT, headers={**headers, "Origin": "https://evil.example"}
    )
    assert reply.status == 400 and "Access-Control-Allow-Origin" not in reply.headers


@pytest.mark.parametrize("stream", [False, True])
async def test_cors_answers_expose_request_id_and_retry_after(cors_gateway, stream):
    reply = await post(cors_gateway, {"messages": QUESTION, "stream": stream}, headers={"Origin": ORIGIN})
    assert reply.status == 200
    assert reply.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = reply.headers["Access-Control-Expose-Headers"].lower()
    assert "x-request-id" in exposed and "retry-after" in exposed


async def test_without_an_allowlist_no_origin_is_allowed(gateway):
    reply = await post(gateway, {"messages": QUESTION}, headers={"Origin": ORIGIN})
    assert reply.status == 200 and "Access-Control-Allow-Origin" not in reply.headers


def test_cors_allowlist_refuses_a_wildcard():
    from shared.config import parse_config
    from shared.errors import ConfigError

    config = emulator_config("http://127.0.0.1:1", cors={"allowed_origins": ["*"]})
    with pytest.raises(ConfigError, match="cors.allowed_origins: '\\*' is not allowed"):
        parse_config(json.dumps(config))


# --- LangChain's ChatOpenAI ---------------------------------------------------------------------


def chat_openai(base: str, model: str):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=f"{base}/api/v1", api_key="x", model=model, max_retries=0)


@pytest.mark.parametrize("model", ["llama-chat", "mistral-large"])
def test_langchain_chat_openai_invokes(gateway, model):
    answer = chat_openai(gateway, model).invoke([("system", "Be brief."), ("human", "Bonjour")])
    assert answer.content.endswith("Bonjour")


@pytest.mark.parametrize("model", ["llama-chat", "mistral-large"])
def test_langchain_chat_openai_streams(gateway, model):
    pieces = [chunk.content for chunk in chat_openai(gateway, model).stream("Hello there, streaming world")]
    assert "".join(pieces) == "You said: Hello there, streaming world"
