"""The two Azure ML online-endpoint wire protocols: request parsing and answer shapes.

*Dedicated* (managed online endpoint, ``POST .../score``)::

    {"input_data": {"input_string": [<message>, ...], "parameters": {...}}}

*Serverless* (pay-as-you-go, OpenAI-compatible, ``POST .../v1/chat/completions``, or Azure
AI Foundry's ``POST .../models/chat/completions``)::

    {"messages": [<message>, ...], "max_tokens": 50, "stream": true, "tools": [...], ...}

Both are parsed into one :class:`ChatCall`; the answer is rendered back from a
:class:`~emulator.replies.Reply`. Parsing raises :class:`BadRequest` with a message that
names the offending field; the server turns it into the protocol's 400 body.

Only serverless knows ``tools``: with a non-empty list (and ``tool_choice`` not ``"none"``)
the answer calls one of them (see :meth:`~emulator.replies.Reply.to`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .replies import Reply, ToolCall, words

DedicatedShape = Literal["output", "list", "choices"]
DEDICATED_SHAPES: tuple[str, ...] = ("output", "list", "choices")
DEFAULT_MODEL = "emulator-model"
DONE_EVENT = b"data: [DONE]\n\n"
TOOL_CHOICE_MODES = ("none", "auto", "required")
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
    tool: str | None = None  # the function a tool-call answer calls; None: answer text

    def reply(self) -> Reply:
        return Reply.to(self.messages, max_words=self.max_words, tool=self.tool)


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
    tool = _chosen_tool(_tool_names(body.get("tools")), body.get("tool_choice"))
    return ChatCall(
        messages=messages,
        max_words=max_words,
        stream=stream,
        include_usage=include_usage,
        model=model,
        tool=tool,
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


def _tool_names(value: Any) -> list[str]:
    """The function names of a ``tools`` list, in order (none when ``tools`` is absent)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest("'tools' must be a list of tools")
    names = []
    for index, tool in enumerate(value):
        if not isinstance(tool, Mapping):
            raise BadRequest(f"'tools'[{index}] must be an object")
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise BadRequest(f"'tools'[{index}].function must be an object")
        name = function.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"'tools'[{index}].function.name must be a string")
        names.append(name)
    return names


def _chosen_tool(names: list[str], choice: Any) -> str | None:
    """The function an answer calls: the one ``choice`` names, else the first of ``names``;
    None (a text answer) when there are no tools or ``choice`` is ``"none"``.

    ``choice`` is null, one of ``"none"``, ``"auto"``, ``"required"``, or
    ``{"type": "function", "function": {"name": <one of names>}}``.
    """
    if choice is None or choice in TOOL_CHOICE_MODES:
        return names[0] if names and choice != "none" else None
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
    return name


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


def chat_completion(reply: Reply, *, completion_id: str, created: int, model: str) -> dict[str, Any]:
    """An OpenAI-style ``chat.completion`` body; a tool-call reply's message has
    ``"content": null`` and one ``tool_calls`` entry."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.tool_call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [reply.tool_call.to_json()]}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": reply.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(reply),
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
    reply: Reply, *, completion_id: str, created: int, model: str, include_usage: bool
) -> list[bytes]:
    """The SSE events of a streamed ``chat.completion.chunk`` answer, without ``[DONE]``.

    Order: a role chunk, one chunk per word (each word keeps its following space, so the
    deltas join to exactly ``reply.text``), a finish chunk, and, if ``include_usage``, a
    usage chunk with no choices.

    A tool-call reply has instead: a role chunk with ``"content": null``, a chunk that
    opens tool call 0 (its ``id``, ``type``, ``name`` and ``"arguments": ""``), one chunk per
    piece of the arguments (at most 8 characters each, joining to exactly ``arguments``), a
    finish chunk (``"tool_calls"``), and the usage chunk if asked.
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

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]

    if reply.tool_call is None:
        events = [chunk(choice({"role": "assistant", "content": ""}))]
        events += [chunk(choice({"content": piece})) for piece in _word_pieces(reply.text)]
    else:
        events = [chunk(choice({"role": "assistant", "content": None}))]
        deltas = _tool_call_deltas(reply.tool_call)
        events += [chunk(choice({"tool_calls": [delta]})) for delta in deltas]
    events.append(chunk(choice({}, reply.finish_reason)))
    if include_usage:
        events.append(chunk([], usage=_usage(reply)))
    return events


def _word_pieces(text: str) -> list[str]:
    pieces = [word + " " for word in words(text)]
    if pieces:
        pieces[-1] = pieces[-1][:-1]
    return [piece for piece in pieces if piece]


def _tool_call_deltas(call: ToolCall) -> list[dict[str, Any]]:
    """The streamed ``tool_calls`` deltas of ``call``: its header, then its arguments in pieces."""
    opening = {
        "index": 0,
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    arguments = call.arguments
    pieces = [
        arguments[start : start + ARGUMENTS_PIECE_CHARS]
        for start in range(0, len(arguments), ARGUMENTS_PIECE_CHARS)
    ]
    return [opening, *({"index": 0, "function": {"arguments": piece}} for piece in pieces)]


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.total_tokens,
    }
