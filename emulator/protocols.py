"""The two Azure ML online-endpoint wire protocols: request parsing and answer shapes.

*Dedicated* (managed online endpoint, ``POST .../score``)::

    {"input_data": {"input_string": [<message>, ...], "parameters": {...}}}

*Serverless* (pay-as-you-go, OpenAI-compatible, ``POST .../v1/chat/completions``)::

    {"messages": [<message>, ...], "max_tokens": 50, "stream": true, ...}

Both are parsed into one :class:`ChatCall`; the answer is rendered back from a
:class:`~emulator.replies.Reply`. Parsing raises :class:`BadRequest` with a message that
names the offending field; the server turns it into the protocol's 400 body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .replies import Reply, words

DedicatedShape = Literal["output", "list", "choices"]
DEDICATED_SHAPES: tuple[str, ...] = ("output", "list", "choices")
DEFAULT_MODEL = "emulator-model"
DONE_EVENT = b"data: [DONE]\n\n"


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

    def reply(self) -> Reply:
        return Reply.to(self.messages, max_words=self.max_words)


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
    max_words = _smallest_limit(
        parameters, ("max_new_tokens", "max_tokens"), "input_data.parameters"
    )
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
    return ChatCall(
        messages=messages,
        max_words=max_words,
        stream=stream,
        include_usage=include_usage,
        model=model,
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


def chat_completion(
    reply: Reply, *, completion_id: str, created: int, model: str
) -> dict[str, Any]:
    """An OpenAI-style ``chat.completion`` body."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
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

    events = [chunk(choice({"role": "assistant", "content": ""}))]
    events += [chunk(choice({"content": piece})) for piece in _word_pieces(reply.text)]
    events.append(chunk(choice({}, reply.finish_reason)))
    if include_usage:
        events.append(chunk([], usage=_usage(reply)))
    return events


def _word_pieces(text: str) -> list[str]:
    pieces = [word + " " for word in words(text)]
    if pieces:
        pieces[-1] = pieces[-1][:-1]
    return [piece for piece in pieces if piece]


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.total_tokens,
    }
