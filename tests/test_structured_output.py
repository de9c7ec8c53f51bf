"""Structured output end to end: clients nobody here wrote (LangChain's `with_structured_output`,
the `openai` client) get tool arguments and JSON answers valid against the schema they sent,
through the gateway's serverless endpoint to the emulator; `n` and `logprobs` come back whole
and streamed. Every answer is checked with a JSON Schema validator against the request's schema
as the emulator received it."""

from __future__ import annotations

import datetime
import enum
import json
from typing import Any

import jsonschema_rs
import openai
import pytest
from pydantic import BaseModel, Field

SERVERLESS = "mistral-large"


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/api/v1", api_key="x", max_retries=0)


def assert_valid(instance: Any, schema: Any) -> None:
    jsonschema_rs.validator_for(schema, validate_formats=True).validate(instance)


class Colour(enum.StrEnum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    city: str
    postcode: str = Field(pattern=r"^\d{5}$")


class Person(BaseModel):
    """Someone mentioned in the text."""

    name: str = Field(min_length=1, max_length=40)
    age: int = Field(ge=18, le=130)
    favourite: Colour
    born: datetime.date
    addresses: list[Address] = Field(min_length=1)
    nickname: str | None = None


def chat_openai(base: str):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=f"{base}/api/v1", api_key="x", model=SERVERLESS, max_retries=0)


def sent_schema(body: dict[str, Any], method: str) -> Any:
    """The schema LangChain put in the request the emulator received."""
    if method == "function_calling":
        [tool] = body["tools"]
        return tool["function"]["parameters"]
    if method == "json_schema":
        return body["response_format"]["json_schema"]["schema"]
    return Person.model_json_schema()  # json_mode: the schema is only in the prompt


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_langchain_with_structured_output(gateway, emulator, method):
    from langchain_core.output_parsers import PydanticOutputParser

    structured = chat_openai(gateway).with_structured_output(Person, method=method, include_raw=True)
    messages = [("human", "Ada Lovelace, born in London in 1815.")]
    if method == "json_mode":  # JSON mode sends no schema: the prompt has to say what to write
        instructions = PydanticOutputParser(pydantic_object=Person).get_format_instructions()
        messages.insert(0, ("system", instructions))
    result = structured.invoke(messages)
    assert result["parsing_error"] is None
    person = result["parsed"]
    assert isinstance(person, Person) and person.addresses
    body = emulator[0].requests[-1].body
    raw = result["raw"]
    answer = raw.tool_calls[0]["args"] if method == "function_calling" else json.loads(raw.content)
    assert_valid(answer, sent_schema(body, method))
    if method == "function_calling":
        assert body["tool_choice"]["function"]["name"] == "Person"
    else:
        assert body["response_format"]["type"] == method.replace("mode", "object")


# A zod-to-json-schema style tool: definitions, $refs, enums, nested arrays, strict objects.
ORDER = {
    "type": "function",
    "function": {
        "name": "place_order",
        "description": "Place an order for a customer",
        "parameters": {
            "type": "object",
            "properties": {
                "customer": {"$ref": "#/definitions/Customer"},
                "lines": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string", "pattern": "^[A-Z]{3}-\\d{4}$"},
                            "quantity": {"type": "integer", "exclusiveMinimum": 0, "maximum": 99},
                            "options": {
                                "type": "array",
                                "items": {"type": "array", "items": {"enum": ["gift", "express", "fragile"]}},
                                "minItems": 2,
                            },
                        },
                        "required": ["sku", "quantity", "options"],
                        "additionalProperties": False,
                    },
                    "minItems": 1,
                    "maxItems": 5,
                },
                "delivery": {
                    "anyOf": [
                        {"type": "object", "properties": {"date": {"type": "string", "format": "date"}}},
                        {"type": "null"},
                    ]
                },
                "priority": {"$ref": "#/definitions/Priority"},
                "total": {"type": "number", "minimum": 0.5, "multipleOf": 0.25},
                "notes": {"type": ["string", "null"], "maxLength": 12},
                "confirmed": {"type": "boolean"},
            },
            "required": ["customer", "lines", "priority", "total", "confirmed"],
            "additionalProperties": False,
            "definitions": {
                "Customer": {
                    "type": "object",
                    "properties": {
                        "email": {"type": "string", "format": "email"},
                        "since": {"type": "string", "format": "date-time"},
                        "website": {"type": "string", "format": "uri"},
                    },
                    "required": ["email", "since"],
                    "additionalProperties": False,
                },
                "Priority": {"type": "string", "enum": ["normal", "urgent"]},
            },
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}
ASK = [{"role": "user", "content": "Two boxes of tea for ada@example.com, please."}]


@pytest.mark.parametrize(
    "tool_choice", ["auto", "required", {"type": "function", "function": {"name": "place_order"}}]
)
def test_tool_arguments_follow_the_tools_schema(gateway, emulator, tool_choice):
    completion = client(gateway).chat.completions.create(
        model=SERVERLESS, messages=ASK, tools=[ORDER, WEATHER], tool_choice=tool_choice
    )
    [call] = completion.choices[0].message.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls" and call.function.name == "place_order"
    arguments = json.loads(call.function.arguments)
    assert_valid(arguments, emulator[0].requests[-1].body["tools"][0]["function"]["parameters"])
    assert arguments["lines"][0]["sku"] == "AAA-0000" and arguments["priority"] == "normal"


def test_a_named_function_is_called_even_when_it_is_not_first(gateway, emulator):
    completion = client(gateway).chat.completions.create(
        model=SERVERLESS,
        messages=[{"role": "user", "content": "Paris"}],
        tools=[ORDER, WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    [call] = completion.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Paris", "unit": "C"},
    )


def test_streamed_tool_arguments_follow_the_tools_schema(gateway, emulator):
    arguments = ""
    for chunk in client(gateway).chat.completions.create(
        model=SERVERLESS, messages=ASK, tools=[ORDER], stream=True
    ):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                arguments += delta.function.arguments or ""
    assert_valid(json.loads(arguments), ORDER["function"]["parameters"])


def test_tool_choice_none_answers_text(gateway):
    completion = client(gateway).chat.completions.create(
        model=SERVERLESS, messages=ASK, tools=[ORDER], tool_choice="none"
    )
    message = completion.choices[0].message
    assert message.tool_calls is None and message.content == "You said: " + ASK[0]["content"]


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_follow_the_schema(gateway, emulator, stream):
    schema = ORDER["function"]["parameters"]
    response_format = {"type": "json_schema", "json_schema": {"name": "order", "schema": schema}}
    created = client(gateway).chat.completions.create(
        model=SERVERLESS, messages=ASK, response_format=response_format, stream=stream
    )
    if stream:
        content = "".join(c.choices[0].delta.content or "" for c in created if c.choices)
    else:
        content = created.choices[0].message.content
    assert_valid(
        json.loads(content), emulator[0].requests[-1].body["response_format"]["json_schema"]["schema"]
    )


def test_json_object_answers_are_json_objects(gateway):
    completion = client(gateway).chat.completions.create(
        model=SERVERLESS, messages=ASK, response_format={"type": "json_object"}
    )
    assert json.loads(completion.choices[0].message.content) == {"text": "You said: " + ASK[0]["content"]}


def test_the_same_request_gets_the_same_structured_answer(gateway):
    def ask() -> tuple[str, str, str]:
        order = client(gateway).chat.completions.create(
            model=SERVERLESS, messages=ASK, tools=[ORDER], tool_choice="required"
        )
        [call] = order.choices[0].message.tool_calls
        answer = client(gateway).chat.completions.create(
            model=SERVERLESS,
            messages=ASK,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "p", "schema": Person.model_json_schema()},
            },
        )
        return call.id, call.function.arguments, answer.choices[0].message.content

    first, second = ask(), ask()
    assert first == second
    assert_valid(json.loads(first[2]), Person.model_json_schema())


def test_a_schema_without_an_instance_is_a_400_naming_it(gateway):
    broken = {"type": "function", "function": {"name": "broken", "parameters": {"$ref": "#/$defs/Missing"}}}
    with pytest.raises(openai.BadRequestError) as raised:
        client(gateway).chat.completions.create(model=SERVERLESS, messages=ASK, tools=[broken])
    assert "broken" in raised.value.message and "#/$defs/Missing" in raised.value.message


# --- n and logprobs ----------------------------------------------------------------------------


def test_n_choices_with_logprobs(gateway):
    completion = client(gateway).chat.completions.create(
        model=SERVERLESS, messages=ASK, n=3, logprobs=True, top_logprobs=2
    )
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    for choice in completion.choices:
        tokens = choice.logprobs.content
        assert "".join(token.token for token in tokens) == choice.message.content
        for token in tokens:
            assert token.logprob <= 0 and bytes(token.bytes) == token.token.encode()
            assert [alternative.token for alternative in token.top_logprobs][0] == token.token
            assert len(token.top_logprobs) == 2
    single = client(gateway).chat.completions.create(model=SERVERLESS, messages=ASK)
    assert completion.usage.completion_tokens == 3 * single.usage.completion_tokens
    assert single.choices[0].logprobs is None


def test_streamed_n_choices_with_logprobs(gateway):
    contents: dict[int, str] = {}
    tokens: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in client(gateway).chat.completions.create(
        model=SERVERLESS, messages=ASK, n=2, logprobs=True, stream=True
    ):
        for choice in chunk.choices:
            contents[choice.index] = contents.get(choice.index, "") + (choice.delta.content or "")
            if choice.logprobs is not None:
                pieces = "".join(token.token for token in choice.logprobs.content or [])
                assert pieces == (choice.delta.content or "")
                tokens[choice.index] = tokens.get(choice.index, "") + pieces
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    expected = "You said: " + ASK[0]["content"]
    assert contents == tokens == {0: expected, 1: expected}
    assert finishes == {0: "stop", 1: "stop"}
