"""The Responses API (`POST /api/v1/responses`) and `GET /api/v1/models/{id}`, with the official
`openai` client, unchanged, against the local server and the emulator's two endpoints."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest
from pydantic import BaseModel

from emulator import Fault

from .client import assert_openai_error, post
from .conftest import emulator_config

DEDICATED, SERVERLESS = "llama-chat", "mistral-large"

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/api/v1", api_key="x", max_retries=0)


async def post_stream(base: str, body: dict[str, Any]) -> tuple[int, list[tuple[str | None, dict[str, Any]]]]:
    """The status and the (event name, data) pairs of a streamed Responses request."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/api/v1/responses", json={**body, "stream": True}) as response:
            text = await response.text()
    events = []
    for block in text.split("\n\n"):
        name, data = None, None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if data is not None:
            events.append((name, data))
    return response.status, events


def test_a_dedicated_endpoint_answers_a_string_input_with_instructions(gateway, emulator):
    response = client(gateway).responses.create(model=DEDICATED, input="Hello", instructions="Be brief.")
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.model == DEDICATED
    assert response.output_text == "You said: Hello" and response.instructions == "Be brief."
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    # The instructions are the first system message; the endpoint's model_kwargs still apply.
    assert emulator[0].requests[-1].body["input_data"] == {
        "input_string": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        "parameters": {"temperature": 0.8, "max_new_tokens": 512},
    }


def test_settings_map_onto_the_endpoints_parameters_and_are_echoed(gateway, emulator):
    response = client(gateway).responses.create(
        model=SERVERLESS,
        input=[{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Bonjour"}],
        max_output_tokens=64,
        temperature=0.2,
        top_p=0.9,
        user="ada",
        metadata={"ticket": "42"},
        extra_body={"seed": 7},
    )
    sent = emulator[0].requests[-1].body
    # developer is system, which MistralChatContentFormatter merges into the first user message
    assert sent["messages"] == [{"role": "user", "content": "Be terse.\n\nBonjour"}]
    assert {k: sent[k] for k in ("max_tokens", "temperature", "top_p", "user", "seed")} == {
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "ada",
        "seed": 7,
    }
    assert "metadata" not in sent and "max_output_tokens" not in sent
    assert response.metadata == {"ticket": "42"} and response.max_output_tokens == 64
    assert response.temperature == 0.2 and response.top_p == 0.9
    assert response.usage is not None
    # The emulator counts words: its usage, renamed.
    assert (
        response.usage.output_tokens == len(response.output_text.split(" "))
        and response.usage.input_tokens > 0
    )
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_an_image_part_reaches_a_serverless_endpoint_as_a_chat_image(gateway, emulator):
    image = "data:image/png;base64,iVBORw0KGgo="
    response = client(gateway).responses.create(
        model=SERVERLESS,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": image, "detail": "low"},
                ],
            }
        ],
    )
    assert response.status == "completed" and response.output_text
    assert emulator[0].requests[-1].body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
            ],
        }
    ]


def test_a_function_call_round_trip(gateway, emulator):
    api = client(gateway)
    question = [{"role": "user", "content": "Paris"}]
    first = api.responses.create(model=SERVERLESS, input=question, tools=[WEATHER])
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.id.startswith("fc_")
    assert emulator[0].requests[-1].body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        }
    ]
    # The caller runs the function and sends the whole conversation back: no stored state.
    second = api.responses.create(
        model=SERVERLESS,
        input=[
            *question,
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 24 C"},
        ],
        tools=[WEATHER],
    )
    assert second.output_text == "Tool said: sunny, 24 C"
    assert emulator[0].requests[-1].body["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 24 C"},
    ]


def test_tool_choice_names_the_function_to_call(gateway, emulator):
    other = {**WEATHER, "name": "get_time"}
    response = client(gateway).responses.create(
        model=SERVERLESS,
        input="Paris",
        tools=[WEATHER, other],
        tool_choice={"type": "function", "name": "get_time"},
        parallel_tool_calls=False,
    )
    assert [item.name for item in response.output] == ["get_time"]
    sent = emulator[0].requests[-1].body
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert sent["parallel_tool_calls"] is False
    assert response.tool_choice.name == "get_time" and response.parallel_tool_calls is False


class Person(BaseModel):
    name: str
    age: int


def test_parse_with_a_pydantic_model_uses_a_json_schema_format(gateway, emulator):
    response = client(gateway).responses.parse(model=SERVERLESS, input="Ada Lovelace", text_format=Person)
    assert isinstance(response.output_parsed, Person)
    response_format = emulator[0].requests[-1].body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "Person" and response_format["json_schema"]["strict"]
    assert response_format["json_schema"]["schema"]["required"] == ["name", "age"]


def test_json_object_format(gateway, emulator):
    response = client(gateway).responses.create(
        model=SERVERLESS, input="hi", text={"format": {"type": "json_object"}}
    )
    assert json.loads(response.output_text) == {"text": "You said: hi"}
    assert emulator[0].requests[-1].body["response_format"] == {"type": "json_object"}


def test_a_length_stop_is_an_incomplete_response(gateway):
    response = client(gateway).responses.create(
        model=SERVERLESS, input="one two three four", max_output_tokens=2
    )
    assert response.status == "incomplete" and response.output_text == "You said:"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("model", [DEDICATED, SERVERLESS])
def test_stream_sends_text_deltas_and_the_final_response(gateway, model):
    with client(gateway).responses.stream(model=model, input="one two three") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "You said: one two three" == final.output_text
    assert final.status == "completed" and final.model == model
    if model == SERVERLESS:  # one delta per word, as the endpoint sent them
        assert len(deltas) == 5 and final.usage is not None and final.usage.output_tokens == 5


async def test_stream_events_are_numbered_and_named(gateway):
    status, events = await post_stream(gateway, {"model": SERVERLESS, "input": "a b"})
    assert status == 200
    types = [data["type"] for _, data in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [name for name, _ in events] == types
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    created, completed = events[0][1]["response"], events[-1][1]["response"]
    assert created["status"] == "in_progress" and created["id"] == completed["id"]
    assert completed["output"][0]["content"][0]["text"] == "You said: a b"


async def test_streamed_function_call_arguments_arrive_as_deltas(gateway):
    status, events = await post_stream(
        gateway, {"model": SERVERLESS, "input": "Paris is lovely in spring", "tools": [WEATHER]}
    )
    assert status == 200
    deltas = [data["delta"] for _, data in events if data["type"] == "response.function_call_arguments.delta"]
    assert len(deltas) > 1  # the emulator streams arguments 8 characters at a time
    [done] = [data for _, data in events if data["type"] == "response.function_call_arguments.done"]
    assert "".join(deltas) == done["arguments"] and json.loads(done["arguments"]) == {
        "city": "Paris is lovely in spring"
    }
    [item] = events[-1][1]["response"]["output"]
    assert item["type"] == "function_call" and item["arguments"] == done["arguments"]


async def test_a_stream_broken_midway_ends_with_response_failed(gateway, emulator):
    emulator[0].add_fault(Fault(break_stream_after=3))
    status, events = await post_stream(gateway, {"model": SERVERLESS, "input": "one two three four"})
    assert status == 200
    types = [data["type"] for _, data in events]
    assert types[-1] == "response.failed" and "response.completed" not in types
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert "'mistral-large' broke the stream" in failed["error"]["message"]


async def test_a_failure_before_the_stream_starts_keeps_its_status(gateway, emulator):
    emulator[0].add_fault(Fault(status=429, retry_after="2"))
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{gateway}/api/v1/responses", json={"model": SERVERLESS, "input": "x", "stream": True}
        ) as response:
            body = await response.json()
    assert response.status == 429 and response.headers["Retry-After"] == "2"
    assert body["error"]["type"] == "rate_limit_error" and response.headers["x-request-id"]


def test_an_unknown_model_is_a_not_found_error(gateway):
    with pytest.raises(openai.NotFoundError) as error:
        client(gateway).responses.create(model="gpt-x", input="x")
    assert error.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "stateless"),
        ({"store": True}, "store", "stores no responses"),
        ({"background": True}, "background", "background"),
        ({"conversation": "conv_1"}, "conversation", "stateless"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "built-in tool"),
        ({"include": ["file_search_call.results"]}, "include[0]", "cannot be included"),
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary", "no reasoning summaries"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "store = false"),
        ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input[0].type", "'reasoning'"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input[0].content[0].type",
            "input_file",
        ),
        ({"input": []}, "input", "at least one item"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
    ],
)
def test_what_a_stateless_gateway_cannot_do_is_a_bad_request_naming_the_field(gateway, extra, param, words):
    body: dict[str, Any] = {"model": DEDICATED, "input": "x", **extra}
    with pytest.raises(openai.BadRequestError) as error:
        client(gateway).post("/responses", body=body, cast_to=object)
    message = error.value.body["message"]
    assert error.value.param == param and words in message and message.startswith(f"{param}: ")


def test_tools_on_a_dedicated_endpoint_are_a_bad_request(gateway):
    with pytest.raises(openai.BadRequestError) as error:
        client(gateway).responses.create(model=DEDICATED, input="x", tools=[WEATHER])
    assert error.value.param == "tools" and "/score" in error.value.message


def test_a_model_is_retrieved_by_its_id(gateway):
    api = client(gateway)
    model = api.models.retrieve(SERVERLESS)
    assert model.id == SERVERLESS and model.object == "model"
    assert model.model_dump() in [m.model_dump() for m in api.models.list().data]
    with pytest.raises(openai.NotFoundError) as error:
        api.models.retrieve("gpt-x")
    assert error.value.code == "model_not_found" and error.value.body["type"] == "invalid_request_error"
    assert "llama-chat, mistral-large" in error.value.message


async def test_a_post_not_declared_json_is_a_415(gateway):
    reply = await post(
        gateway,
        {"model": "llama-chat", "input": "hi"},
        path="/api/v1/responses",
        headers={"Content-Type": "text/plain"},
    )
    error = assert_openai_error(reply, 415, "Content-Type: application/json")
    assert error["code"] == "unsupported_media_type"


async def test_too_many_input_items_or_parts_are_refused_before_validation(emulator, start_gateway):
    base = start_gateway(emulator_config(emulator[1], max_messages=3, max_content_parts=4))
    items = [{"role": "user", "content": "hi"}] * 4
    error = assert_openai_error(
        await post(base, {"input": items}, path="/api/v1/responses"), 400, "max_messages"
    )
    assert error["param"] == "input"
    parts = [{"role": "user", "content": [{"type": "input_text", "text": "x"}] * 5}]
    error = assert_openai_error(
        await post(base, {"input": parts}, path="/api/v1/responses"), 400, "max_content_parts"
    )
    assert not emulator[0].requests
