"""Responses API clients nobody here wrote, unchanged, against the gateway's serverless endpoint
on the emulator: LangChain's `ChatOpenAI(use_responses_api=True)` and the OpenAI Agents SDK."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel, Field

SERVERLESS = "mistral-large"


class Person(BaseModel):
    """Someone mentioned in the text."""

    name: str = Field(min_length=1, max_length=40)
    age: int = Field(ge=18, le=130)


def chat_openai(base: str):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=f"{base}/api/v1", api_key="x", model=SERVERLESS, max_retries=0, use_responses_api=True
    )


def test_langchain_invoke(gateway, emulator):
    answer = chat_openai(gateway).invoke([("system", "Be brief."), ("human", "Hello there")])
    assert answer.text == "You said: Be brief.\n\nHello there"
    assert answer.response_metadata["id"].startswith("resp_")
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    assert emulator[0].requests[-1].path.endswith("/v1/chat/completions")


def test_langchain_stream(gateway):
    pieces = list(chat_openai(gateway).stream("one two three"))
    text = "".join(piece.text for piece in pieces)
    assert text == "You said: one two three" and len([p for p in pieces if p.text]) == 5
    total = pieces[0]
    for piece in pieces[1:]:
        total += piece
    assert total.usage_metadata is not None and total.usage_metadata["output_tokens"] == 5


def test_langchain_bind_tools_round_trip(gateway, emulator):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    model = chat_openai(gateway).bind_tools([get_weather])
    messages = [HumanMessage("Paris")]
    call_message = model.invoke(messages)
    [call] = call_message.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    messages += [call_message, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = model.invoke(messages)
    assert final.text == "Tool said: sunny in Paris" and not final.tool_calls
    sent = emulator[0].requests[-1].body["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": call["id"], "content": "sunny in Paris"}
    assert sent[-2]["tool_calls"][0]["id"] == call["id"]


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_langchain_with_structured_output(gateway, emulator, method):
    structured = chat_openai(gateway).with_structured_output(Person, method=method)
    person = structured.invoke("Ada Lovelace, born in 1815.")
    assert isinstance(person, Person)
    body = emulator[0].requests[-1].body
    if method == "json_schema":
        assert body["response_format"]["json_schema"]["schema"]["required"] == ["name", "age"]
    else:
        assert body["tools"][0]["function"]["name"] == "Person"


def test_openai_agents_sdk_runs_an_agent_with_a_function_tool(gateway, emulator):
    import agents

    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    client = openai.AsyncOpenAI(base_url=f"{gateway}/api/v1", api_key="x", max_retries=0)
    agent = agents.Agent(
        name="weather",
        tools=[get_weather],
        model=agents.OpenAIResponsesModel(model=SERVERLESS, openai_client=client),
    )
    result = agents.Runner.run_sync(agent, "Paris", run_config=agents.RunConfig(tracing_disabled=True))
    # The emulator calls the first tool with the user's text, then answers the tool's result.
    assert calls == ["Paris"]
    assert result.final_output == "Tool said: sunny in Paris"
    messages = emulator[0].requests[-1].body["messages"]
    assert messages[0] == {"role": "user", "content": "Paris"}
    assert json.loads(messages[-2]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
