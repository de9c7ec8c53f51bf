"""The two Azure ML online-endpoint wire protocols: request parsing and answer shapes.

*Dedicated* (managed online endpoint, ``POST .../score``)::

    {"input_data": {"input_string": [<message>, ...], "parameters": {...}}}

*Serverless* (pay-as-you-go, OpenAI-compatible, ``POST .../v1/chat/completions``, or Azure
AI Foundry's ``POST .../models/chat/completions``)::

    {"messages": [<message>, ...], "max_tokens": 50, "stream": true, "tools": [...], ...}

Both are parsed into one :class:`ChatCall`; the answer is rendered back from a
:class:`~emulator.replies.Reply`. Parsing raises :class:`BadRequest` with a message that
names the offending field; the server turns it into the protocol's 400 body.

Only serverless knows ``tools``, ``tool_choice``, ``response_format``, ``n``, ``logprobs``
and ``top_logprobs``. With tools (and ``tool_choice`` not ``"none"``) the answer calls the
first one, or the one ``tool_choice`` names, with arguments valid against its parameters
(see :meth:`~emulator.replies.Reply.to`); ``response_format`` makes text answers JSON;
``n`` repeats the choice ``n`` times (index 0 to n-1); ``logprobs`` adds a
:mod:`~emulator.logprobs` object to each choice (and each streamed content chunk).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .instances import SchemaError
from .logprobs import choice_logprobs
from .replies import JsonFormat, Reply, Tool, ToolCall, pieces

DedicatedShape = Literal["output", "list", "choices"]
DEDICATED_SHAPES: tuple[str, ...] = ("output", "list", "choices")
DEFAULT_MODEL = "emulator-model"
DONE_EVENT = b"data: [DONE]\n\n"
TOOL_CHOICE_MODES = ("none", "auto", "required")
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
MAX_CHOICES = 128  # OpenAI's limit on n
MAX_TOP_LOGPROBS = 20
#: Model names (lower case) that answer with `reasoning_content`, as reasoning models do.
REASONING_MODEL_MARKERS = ("-r1", "reasoning")
# Streamed tool-call arguments arrive in pieces of at most this many characters.
ARGUMENTS_PIECE_CHARS = 8


class BadRequest(Exception):
    """The request body does not have the protocol's shape; ``str(exc)`` says why."""


@dataclass(frozen=True)
class ChatCall:
    """What a scoring request asks for, independent of its protocol."""

    messages: list[dict[str, Any]]
    max_words: int | None = None
    stream: bool = False
    include_usage: bool = False
    model: str = DEFAULT_MODEL
    tool: Tool | None = None  # the function a tool-call answer calls; None: answer text
    tool_forced: bool = False  # tool_choice "required" or a named function
    json_format: JsonFormat | None = None
    choices: int = 1
    top_logprobs: int | None = None  # None: no logprobs

    def reply(self) -> Reply:
        """The answer; :class:`BadRequest` when a schema it must follow has no instance."""
        try:
            return Reply.to(
                self.messages,
                max_words=self.max_words,
                tool=self.tool,
                tool_forced=self.tool_forced,
                json_format=self.json_format,
            )
        except SchemaError as exc:
            raise BadRequest(str(exc)) from exc


# --- parsing -------------------------------------------------------------------------


def parse_dedicated(body: Any) -> ChatCall:
    """Parse a dedicated ``/score`` body (already JSON-decoded; ``None`` if it was not JSON)."""
    _require_object(body, "request body")
    input_data = body.get("input_data")
    if input_data is None:
        raise BadRequest("'input_data' is required")
    _require_object(input_data, "'input_data'")
    messages = _parse_messages(input_data.get("input_string"), "'input_data.input_string'")
    parameters = input_data.get("parameters")
    if parameters is None:
        parameters = {}
    _require_object(parameters, "'input_data.parameters'")
    max_words = _smallest_limit(parameters, ("max_new_tokens", "max_tokens"), "input_data.parameters")
    return ChatCall(messages=messages, max_words=max_words)


def parse_serverless(body: Any) -> ChatCall:
    """Parse a serverless ``/v1/chat/completions`` body (JSON-decoded; ``None`` if not JSON)."""
    _require_object(body, "request body")
    messages = _parse_messages(body.get("messages"), "'messages'")
    stream = _optional(body, "stream", bool, "a boolean", default=False)
    stream_options = _optional(body, "stream_options", Mapping, "an object", default={})
    include_usage = _optional(
        stream_options, "include_usage", bool, "a boolean", default=False, where="stream_options."
    )
    model = _optional(body, "model", str, "a string", default=DEFAULT_MODEL)
    max_words = _smallest_limit(body, ("max_tokens", "max_completion_tokens"), "")
    tool, tool_forced = _chosen_tool(_tools(body.get("tools")), body.get("tool_choice"))
    choices = _integer(body, "n", 1, MAX_CHOICES, default=1)
    logprobs = _optional(body, "logprobs", bool, "a boolean", default=False)
    top_logprobs = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, default=None)
    if top_logprobs is not None and not logprobs:
        raise BadRequest("'top_logprobs' requires 'logprobs' to be true")
    return ChatCall(
        messages=messages,
        max_words=max_words,
        stream=stream,
        include_usage=include_usage,
        model=model,
        tool=tool,
        tool_forced=tool_forced,
        json_format=_json_format(body.get("response_format")),
        choices=choices,
        top_logprobs=(top_logprobs or 0) if logprobs else None,
    )


def _require_object(value: Any, what: str) -> None:
    if not isinstance(value, Mapping):
        raise BadRequest(f"{what} must be a JSON object")


def _parse_messages(value: Any, what: str) -> list[dict[str, Any]]:
    if value is None:
        raise BadRequest(f"{what} is required")
    if not isinstance(value, list):
        raise BadRequest(f"{what} must be a list of messages")
    if not value:
        raise BadRequest(f"{what} must not be empty")
    for index, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise BadRequest(f"{what}[{index}] must be an object")
        if not isinstance(message.get("role"), str):
            raise BadRequest(f"{what}[{index}].role must be a string")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"{what}[{index}].content must be a string or a list of parts")
    return value


def _tools(value: Any) -> list[Tool]:
    """The function tools of a ``tools`` list, in order (none when ``tools`` is absent)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest("'tools' must be a list of tools")
    tools = []
    for index, tool in enumerate(value):
        if not isinstance(tool, Mapping):
            raise BadRequest(f"'tools'[{index}] must be an object")
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise BadRequest(f"'tools'[{index}].function must be an object")
        name = function.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"'tools'[{index}].function.name must be a string")
        parameters = function.get("parameters")
        if parameters is None:
            tools.append(Tool(name))
            continue
        if not isinstance(parameters, Mapping):
            raise BadRequest(f"'tools'[{index}].function.parameters must be a JSON Schema object")
        tools.append(Tool(name, parameters))
    return tools


def _chosen_tool(tools: list[Tool], choice: Any) -> tuple[Tool | None, bool]:
    """The function an answer calls, and whether it must be called (even after a tool
    result): the one ``choice`` names, else the first of ``tools``; None (a text answer)
    when there are no tools or ``choice`` is ``"none"``.

    ``choice`` is null, one of ``"none"``, ``"auto"``, ``"required"``, or
    ``{"type": "function", "function": {"name": <one of the tools>}}``.
    """
    names = [tool.name for tool in tools]
    if choice is None or choice in TOOL_CHOICE_MODES:
        if choice == "required" and not tools:
            raise BadRequest("'tool_choice' is \"required\" but there are no 'tools' to call")
        first = tools[0] if tools and choice != "none" else None
        return first, choice == "required"
    if not isinstance(choice, Mapping):
        modes = ", ".join(f'"{mode}"' for mode in TOOL_CHOICE_MODES)
        raise BadRequest(f"'tool_choice' must be one of {modes} or a function object")
    if choice.get("type") != "function":
        raise BadRequest("'tool_choice.type' must be \"function\"")
    function = choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str):
        raise BadRequest("'tool_choice.function.name' must be a string")
    if name not in names:
        raise BadRequest(
            f"'tool_choice' names the function {name!r}, which is not among 'tools'"
            f" ({', '.join(names) or 'none given'})"
        )
    return tools[names.index(name)], True


def _json_format(value: Any) -> JsonFormat | None:
    """What ``response_format`` asks for: JSON (an object, or an instance of a schema) or,
    None, text."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise BadRequest("'response_format' must be an object")
    kind = value.get("type")
    if kind not in RESPONSE_FORMAT_TYPES:
        kinds = ", ".join(f'"{kind}"' for kind in RESPONSE_FORMAT_TYPES)
        raise BadRequest(f"'response_format.type' must be one of {kinds}")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonFormat()
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise BadRequest("'response_format.json_schema' must be an object")
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, (Mapping, bool)):
        raise BadRequest("'response_format.json_schema.schema' must be a JSON Schema object")
    return JsonFormat(schema)


def _integer(container: Mapping[str, Any], name: str, least: int, most: int, *, default: int | None) -> Any:
    """``container[name]``, an integer from ``least`` to ``most``; ``default`` when absent or null."""
    value = container.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise BadRequest(f"'{name}' must be an integer from {least} to {most}")
    return value


def _optional(
    container: Mapping[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    kind_text: str,
    *,
    default: Any,
    where: str = "",
) -> Any:
    """``container[name]``, or ``default`` when absent or null; a wrong type is a BadRequest."""
    value = container.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise BadRequest(f"'{where}{name}' must be {kind_text}")
    return value


def _smallest_limit(container: Mapping[str, Any], names: tuple[str, ...], where: str) -> int | None:
    """The smallest of the length limits present under ``names`` (each a positive integer)."""
    prefix = f"{where}." if where else ""
    limits = []
    for name in names:
        value = container.get(name)
        if value is None:
            continue
        # bool is an int subclass, but "max_tokens": true is a client bug worth a 400.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"'{prefix}{name}' must be a positive integer")
        limits.append(value)
    return min(limits) if limits else None


# --- answers -------------------------------------------------------------------------


def reasoning_for(model: str, reply: Reply) -> str | None:
    """The `reasoning_content` a reasoning model (its name ends in ``-R1`` or has
    ``reasoning`` in it) sends before a text answer; None for other models and tool calls."""
    name = model.lower()
    if reply.tool_call is not None or not (name.endswith("-r1") or "reasoning" in name):
        return None
    return f"The user wrote {len(reply.text.split())} words back; I echo them."


def chat_completion(
    reply: Reply,
    *,
    completion_id: str,
    created: int,
    model: str,
    choices: int = 1,
    top_logprobs: int | None = None,
    reasoning: str | None = None,
) -> dict[str, Any]:
    """An OpenAI-style ``chat.completion`` body with ``choices`` copies of ``reply``; a
    tool-call reply's message has ``"content": null`` and one ``tool_calls`` entry. With
    ``top_logprobs`` (not None), each choice has a ``logprobs`` object of its content; with
    ``reasoning``, the message has it as ``reasoning_content``."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if reply.tool_call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [reply.tool_call.to_json()]}
    logprobs = None
    if top_logprobs is not None:
        logprobs = choice_logprobs(pieces(reply.text), top_logprobs)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "message": message, "finish_reason": reply.finish_reason, "logprobs": logprobs}
            for index in range(choices)
        ],
        "usage": _usage(reply, choices),
    }


def dedicated_answer(
    reply: Reply, shape: DedicatedShape, *, completion_id: str, created: int, model: str
) -> Any:
    """The body a dedicated deployment answers, in one of the shapes scoring scripts use."""
    if shape == "output":
        return {"output": reply.text}
    if shape == "list":
        return [{"0": reply.text}]
    return chat_completion(reply, completion_id=completion_id, created=created, model=model)


def stream_events(
    reply: Reply,
    *,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
    choices: int = 1,
    top_logprobs: int | None = None,
    reasoning: str | None = None,
) -> list[bytes]:
    """The SSE events of a streamed ``chat.completion.chunk`` answer, without ``[DONE]``.

    Order: a role chunk, one chunk per word (each word keeps its following space, so the
    deltas join to exactly ``reply.text``), a finish chunk, and, if ``include_usage``, a
    usage chunk with no choices.

    A tool-call reply has instead: a role chunk with ``"content": null``, a chunk that
    opens tool call 0 (its ``id``, ``type``, ``name`` and ``"arguments": ""``), one chunk per
    piece of the arguments (at most 8 characters each, joining to exactly ``arguments``), a
    finish chunk (``"tool_calls"``), and the usage chunk if asked.

    With ``choices`` > 1, each chunk carries one choice, and the choices take turns: the
    role chunks of choices 0 to n-1, then their first pieces, and so on. With
    ``top_logprobs`` (not None), every chunk but the finish chunk carries a ``logprobs``
    object of the tokens in its delta (an empty list when it has none). With ``reasoning``,
    one ``reasoning_content`` chunk per word of it comes before the first content chunk.
    """

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        data = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    def turns(index: int) -> list[bytes]:
        def choice(delta: dict[str, Any], logprobs: Any = None, finish_reason: str | None = None) -> bytes:
            return chunk(
                [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}]
            )

        def logprobs_of(tokens: list[str], start: int = 0) -> Any:
            return None if top_logprobs is None else choice_logprobs(tokens, top_logprobs, start=start)

        if reply.tool_call is None:
            events = [choice({"role": "assistant", "content": ""}, logprobs_of([]))]
            events += [
                choice({"reasoning_content": piece}, logprobs_of([])) for piece in pieces(reasoning or "")
            ]
            events += [
                choice({"content": piece}, logprobs_of([piece], position))
                for position, piece in enumerate(pieces(reply.text))
            ]
        else:
            events = [choice({"role": "assistant", "content": None}, logprobs_of([]))]
            deltas = _tool_call_deltas(reply.tool_call)
            events += [choice({"tool_calls": [delta]}, logprobs_of([])) for delta in deltas]
        events.append(choice({}, finish_reason=reply.finish_reason))
        return events

    per_choice = [turns(index) for index in range(choices)]
    events = [event for turn in zip(*per_choice, strict=True) for event in turn]
    if include_usage:
        events.append(chunk([], usage=_usage(reply, choices)))
    return events


def _tool_call_deltas(call: ToolCall) -> list[dict[str, Any]]:
    """The streamed ``tool_calls`` deltas of ``call``: its header, then its arguments in pieces."""
    opening = {
        "index": 0,
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    arguments = call.arguments
    parts = [
        arguments[start : start + ARGUMENTS_PIECE_CHARS]
        for start in range(0, len(arguments), ARGUMENTS_PIECE_CHARS)
    ]
    return [opening, *({"index": 0, "function": {"arguments": part}} for part in parts)]


def _usage(reply: Reply, choices: int = 1) -> dict[str, int]:
    """Usage of ``choices`` copies of ``reply``: the prompt once, the completion each time."""
    completion_tokens = reply.completion_tokens * choices
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": reply.prompt_tokens + completion_tokens,
    }
