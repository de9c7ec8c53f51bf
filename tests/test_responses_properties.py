"""Properties of the Responses API translation, over generated requests and answers:

- any valid Responses request becomes a chat request that the Chat Completions schema accepts;
- any endpoint answer to it becomes a `response` that the `openai` client's own types accept;
- the streamed events of an answer, however the endpoint split it, are valid events and end in
  the same `response` as the whole answer.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from shared.chat import ChatCompletionRequest
from shared.codec import dumps
from shared.errors import InvalidRequestError, UpstreamError
from shared.formatters import ChatChoice, ChatResult
from shared.relay import ChunkIds
from shared.response_events import ResponseEvents
from shared.responses import ResponsesCall, parse_responses_request, response_from_result

EVENT = TypeAdapter(ResponseStreamEvent)

text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
name = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True)
call_id = st.from_regex(r"call_[a-f0-9]{8}", fullmatch=True)

input_text = st.builds(lambda t: {"type": "input_text", "text": t}, text)
input_image = st.builds(
    lambda d: {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": d},
    st.sampled_from(["auto", "low", "high"]),
)
user_message = st.fixed_dictionaries(
    {"role": st.just("user"), "content": text | st.lists(input_text | input_image, min_size=1, max_size=3)},
    optional={"type": st.just("message")},
)
other_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "assistant"]),
        "content": text | st.lists(input_text, min_size=1, max_size=2),
    },
    optional={"type": st.just("message")},
)
function_call = st.builds(
    lambda c, n, a: {"type": "function_call", "call_id": c, "name": n, "arguments": json.dumps(a)},
    call_id,
    name,
    st.dictionaries(name, st.integers() | text, max_size=3),
)
function_call_output = st.builds(
    lambda c, o: {"type": "function_call_output", "call_id": c, "output": o}, call_id, text
)
items = st.lists(user_message | other_message | function_call | function_call_output, min_size=1, max_size=6)

tool = st.builds(
    lambda n, d, strict: {
        "type": "function",
        "name": n,
        "description": d,
        "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        "strict": strict,
    },
    name,
    text,
    st.booleans(),
)
text_format = st.sampled_from(
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "name": "Answer", "schema": {"type": "object"}, "strict": True},
    ]
)

requests = st.fixed_dictionaries(
    {"input": text | items},
    optional={
        "model": name,
        "instructions": text,
        "tools": st.lists(tool, min_size=1, max_size=3, unique_by=lambda t: t["name"]),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
        "parallel_tool_calls": st.booleans(),
        "text": st.builds(lambda f: {"format": f}, text_format),
        "max_output_tokens": st.integers(1, 4096),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "metadata": st.dictionaries(name, text, max_size=3),
        "user": text,
        "store": st.just(False),
        "include": st.just(["reasoning.encrypted_content"]),
        "stream": st.booleans(),
    },
)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
#: Bodies that look like Responses requests, with any values where the fields are.
near_requests = st.fixed_dictionaries(
    {
        "input": json_values
        | st.lists(st.dictionaries(st.sampled_from(["type", "role", "content"]), json_values))
    },
    optional={
        key: json_values
        for key in (
            "tools",
            "tool_choice",
            "text",
            "include",
            "reasoning",
            "store",
            "metadata",
            "instructions",
        )
    },
)


@given(st.binary(max_size=256) | (json_values | near_requests).map(lambda v: json.dumps(v).encode()))
@settings(max_examples=400)
def test_any_body_parses_or_is_a_400_naming_the_problem(body):
    try:
        parse_responses_request(body)
    except InvalidRequestError as exc:
        assert exc.status == 400 and exc.message
        assert exc.param is None or exc.message.startswith(f"{exc.param}: ")


def tool_calls(n: int) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(
        st.builds(
            lambda c, fn, a: {
                "id": c,
                "type": "function",
                "function": {"name": fn, "arguments": json.dumps(a)},
            },
            call_id,
            name,
            st.dictionaries(name, st.integers() | text, max_size=3),
        ),
        min_size=n,
        max_size=n,
    )


@st.composite
def answers(draw: st.DrawFn) -> ChatResult:
    calls = draw(st.integers(0, 3).flatmap(tool_calls))
    content = draw(st.none() | text)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    reason = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter", None]))
    usage = draw(
        st.none()
        | st.builds(
            lambda p, c: {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
            st.integers(0, 10_000),
            st.integers(0, 10_000),
        )
    )
    return ChatResult([ChatChoice(message, reason)], usage)


def pieces(draw: st.DrawFn, value: str) -> list[str]:
    """`value` cut at random places into non-empty pieces."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(value) - 1)), max_size=4))) if len(value) > 1 else []
    bounds = [0, *cuts, len(value)]
    return [value[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if value[a:b]]


@st.composite
def streamed(draw: st.DrawFn, result: ChatResult) -> list[dict[str, Any]]:
    """The chunks a streaming endpoint might send for `result`: text and arguments in pieces."""
    ids = ChunkIds("m", id="chatcmpl-test", created=0)
    message = result.choices[0].message
    chunks = [ids.delta(0, {"role": "assistant", "content": ""})]
    for piece in pieces(draw, message.get("content") or ""):
        chunks.append(ids.delta(0, {"content": piece}))
    for index, call in enumerate(message.get("tool_calls") or ()):
        function = call["function"]
        head = {"index": index, "id": call["id"], "type": "function", "function": {"name": function["name"]}}
        chunks.append(
            ids.delta(0, {"tool_calls": [{**head, "function": {**head["function"], "arguments": ""}}]})
        )
        for piece in pieces(draw, function["arguments"]):
            chunks.append(ids.delta(0, {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    chunks.append(ids.delta(0, {}, result.choices[0].finish_reason))
    if result.usage is not None:
        chunks.append(ids.chunk([], usage=result.usage))
    # The relay hands the writer JSON-decoded chunks: the same values, freshly made.
    return [json.loads(dumps(chunk)) for chunk in chunks]


def events_of(written: bytes) -> list[dict[str, Any]]:
    events = []
    for block in written.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {data['type']}"
        events.append(data)
    return events


def without_ids(response: dict[str, Any]) -> dict[str, Any]:
    output = [{k: v for k, v in item.items() if k != "id"} for item in response["output"]]
    return {**{k: v for k, v in response.items() if k not in ("id", "created_at")}, "output": output}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=requests, answer=answers())
def test_any_valid_request_maps_to_a_chat_request_whose_answer_maps_to_a_valid_response(body, answer):
    call = parse_responses_request(dumps(body))
    chat = call.chat
    # What the endpoint is sent passes the Chat Completions schema.
    ChatCompletionRequest.model_validate({"messages": chat.messages, **chat.parameters})
    assert chat.stream == body.get("stream", False) and chat.include_usage
    expected_messages = (1 if "instructions" in body else 0) + (
        1 if isinstance(body["input"], str) else len(body["input"])
    )
    assert len(chat.messages) <= expected_messages
    response = response_from_result(call, answer, model="m")
    parsed = Response.model_validate(response)
    assert parsed.status in ("completed", "incomplete") and parsed.output
    assert parsed.metadata == body.get("metadata", {}) and parsed.instructions == body.get("instructions")
    message = answer.choices[0].message
    assert [item.call_id for item in parsed.output if item.type == "function_call"] == [
        call["id"] for call in message.get("tool_calls") or ()
    ]
    assert parsed.output_text == (message.get("content") or "")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=requests, data=st.data(), answer=answers())
def test_streamed_and_whole_answers_agree(body, data, answer):
    call = parse_responses_request(dumps(body))
    writer = ResponseEvents(call)
    written = b"".join(writer.chunk(chunk) for chunk in data.draw(streamed(answer))) + writer.done()
    events = events_of(written)
    for event in events:
        EVENT.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[-1]["type"] in (
        "response.completed",
        "response.incomplete",
    )
    final = events[-1]["response"]
    whole = response_from_result(call, answer, model="m")
    assert without_ids(final) == without_ids(whole)
    # The deltas add up to the final text and arguments.
    text_deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text_deltas == (answer.choices[0].message.get("content") or "")


@settings(max_examples=300, deadline=None)
@given(
    message=st.dictionaries(st.sampled_from(["role", "content", "tool_calls", "refusal"]), json_values),
    data=st.data(),
)
def test_any_answer_of_any_shape_becomes_a_valid_response_whole_and_streamed(message, data):
    """A formatter hands over whatever the endpoint said: neither path may fail on its shape."""
    call = parse_responses_request(b'{"input": "x"}')
    answer = ChatResult([ChatChoice(message, data.draw(st.none() | st.text(max_size=8)))])
    Response.model_validate(response_from_result(call, answer, model="m"))
    writer = ResponseEvents(call)
    chunks = [
        json.loads(dumps({"choices": [{"index": 0, "delta": d}]}))
        for d in data.draw(st.lists(json_values, max_size=4))
    ]
    events = events_of(b"".join(writer.chunk(c) for c in chunks) + writer.done())
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    for event in events:
        EVENT.validate_python(event)


def test_a_stream_that_breaks_ends_with_a_failed_response_holding_what_came():
    call = parse_responses_request(b'{"input": "x"}')
    writer = ResponseEvents(call)
    ids = ChunkIds("m")
    written = writer.chunk(ids.delta(0, {"role": "assistant", "content": "par"}))
    written += writer.failed(
        {"error": {"message": "cut", "type": "upstream_error", "param": None, "code": "x"}}
    )
    events = events_of(written)
    for event in events:
        EVENT.validate_python(event)
    failed = events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "cut"}
    assert failed["response"]["output"][0]["content"][0]["text"] == "par"
    assert not any(e["type"] == "response.completed" for e in events)


def test_responses_call_keeps_what_the_response_repeats():
    call = parse_responses_request(b'{"input": "x", "tools": [{"type": "function", "name": "f"}]}')
    assert isinstance(call, ResponsesCall)
    assert call.echo["tools"] == [{"type": "function", "name": "f"}] and call.echo["tool_choice"] == "auto"


def test_a_streamed_answer_longer_than_max_response_bytes_fails_the_stream():
    """The final events repeat the whole text: what is kept for them is bounded like a whole
    answer (max_response_bytes)."""
    call = parse_responses_request(b'{"input": "x", "stream": true}')
    writer = ResponseEvents(call, max_bytes=2048)
    delta = {"choices": [{"index": 0, "delta": {"content": "x" * 1000}, "finish_reason": None}]}
    writer.chunk(delta)
    writer.chunk(delta)
    with pytest.raises(UpstreamError, match="max_response_bytes") as caught:
        writer.chunk(delta)
    assert caught.value.code == "upstream_response_too_large"
