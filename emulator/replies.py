"""The emulator's deterministic answer: an echo of the last user message (or tool result),
a call of a tool with arguments valid against its parameters' schema, or JSON content for a
``response_format`` that asks for it.

Nothing here pretends to be a model. The reply is a pure function of the messages (and of
the tool or format asked for), and "tokens" are words (the text split on single spaces), so
tests can predict every answer, every truncation, every tool call id and every usage count.
Wherever a schema asks for a free-form string, the string is the last user message's text
(see :func:`~emulator.instances.instance_of`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .instances import SchemaError, instance_of

FinishReason = Literal["stop", "length", "tool_calls"]

NO_USER_MESSAGE_REPLY = "You said nothing."
REPLY_PREFIX = "You said: "
TOOL_RESULT_PREFIX = "Tool said: "
NON_TEXT_PART = "[image]"
TOOL_CALL_ID_PREFIX = "call_"
TOOL_CALL_ID_HEX_CHARS = 24
#: The parameters of a function that declares none (OpenAI: "an empty parameter list").
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
#: The parameters of a function taking one optional string, ``text``.
TEXT_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {"text": {"type": "string"}}}
# A JSON-mode answer looks for a schema in the conversation (format instructions); bounded,
# since the conversation is the caller's.
MAX_SCHEMA_SCAN_CHARS = 200_000
MAX_SCHEMA_SCAN_ATTEMPTS = 500


def message_text(message: Mapping[str, Any]) -> str:
    """The text of one chat message.

    String ``content`` is returned as is. A list of content parts becomes the ``text`` of
    each ``{"type": "text"}`` part, and ``[image]`` for every other part, joined by single
    spaces. Any other content (``None``, missing) is the empty string.
    """
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_part_text(part) for part in content)
    return ""


def _part_text(part: Any) -> str:
    if isinstance(part, Mapping) and part.get("type") == "text":
        text = part.get("text")
        return text if isinstance(text, str) else ""
    return NON_TEXT_PART


def reply_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The full (untruncated) text reply to a conversation.

    ``"Tool said: " + <its text>`` when the last message has the role ``tool`` (the turn
    that hands a tool's result back); otherwise ``"You said: " + <text of the last message
    whose role is "user">``, or ``"You said nothing."`` when no message has the role ``user``.
    """
    if ends_with_tool_result(messages):
        return TOOL_RESULT_PREFIX + message_text(messages[-1])
    text = last_user_text(messages)
    return NO_USER_MESSAGE_REPLY if text is None else REPLY_PREFIX + text


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The text of the last message whose role is ``user``; None when there is none."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return None


def ends_with_tool_result(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the last message has the role ``tool``: the answer to it is never a tool call."""
    return bool(messages) and messages[-1].get("role") == "tool"


def words(text: str) -> list[str]:
    """``text`` split on single spaces; the empty string has no words."""
    return text.split(" ") if text else []


def pieces(text: str) -> list[str]:
    """The tokens an answer's ``text`` streams as: its words, each keeping the space that
    follows it, so that they join to exactly ``text``."""
    split = [word + " " for word in words(text)]
    if split:
        split[-1] = split[-1][:-1]
    return [piece for piece in split if piece]


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Tool:
    """A function the caller offers: its name and its parameters' JSON Schema."""

    name: str
    parameters: Any = field(default_factory=lambda: NO_PARAMETERS)


@dataclass(frozen=True)
class JsonFormat:
    """A ``response_format`` asking for JSON content: an instance of ``schema``
    (``json_schema``), or, with ``schema`` None (``json_object``), a JSON object."""

    schema: Any = None

    def content(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The JSON text answering ``messages``.

        Without a schema: an instance of the last JSON Schema written in the conversation
        (format instructions, as LangChain's output parsers write them), else
        ``{"text": <the text reply>}``.
        """
        text = last_user_text(messages) or ""
        if self.schema is not None:
            try:
                return compact_json(instance_of(self.schema, text=text))
            except SchemaError as exc:
                raise SchemaError(f"'response_format.json_schema.schema': {exc}") from exc
        instructed = schema_in(messages)
        if instructed is not None:
            try:
                return compact_json(instance_of(instructed, text=text))
            except SchemaError:
                pass  # not a schema after all, or not one the emulator can answer
        return compact_json({"text": reply_text(messages)})


def schema_in(messages: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The last JSON object in the conversation that looks like an object's JSON Schema (has
    ``properties`` whose values are schemas), searching the latest message first."""
    decoder = json.JSONDecoder()
    attempts = 0
    for message in reversed(messages):
        if attempts >= MAX_SCHEMA_SCAN_ATTEMPTS:
            break
        text = message_text(message)[-MAX_SCHEMA_SCAN_CHARS:]
        found = None
        position = text.find("{")
        while position != -1 and attempts < MAX_SCHEMA_SCAN_ATTEMPTS:
            attempts += 1
            try:
                value, end = decoder.raw_decode(text, position)
            except (ValueError, RecursionError):
                position = text.find("{", position + 1)
                continue
            if _looks_like_schema(value):
                found = value
            position = text.find("{", end)
        if found is not None:
            return found
    return None


def _looks_like_schema(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    properties = value.get("properties")
    return (
        isinstance(properties, dict)
        and bool(properties)
        and all(isinstance(schema, (dict, bool)) for schema in properties.values())
    )


@dataclass(frozen=True)
class ToolCall:
    """One call of a function tool, as an assistant message's ``tool_calls`` entry."""

    id: str
    name: str
    arguments: str

    @classmethod
    def to(
        cls, name: str, messages: Sequence[Mapping[str, Any]], parameters: Any = TEXT_PARAMETERS
    ) -> ToolCall:
        """The call of ``name``, a function taking ``parameters`` (a JSON Schema), that
        answers ``messages``.

        ``arguments`` is the compact JSON of :func:`~emulator.instances.instance_of` the
        parameters, whose strings are the last user text (the empty string when no message
        has the role ``user``): ``{"text":<last user text>}`` for the default parameters.
        ``id`` is ``"call_"`` + the first 24 hex digits of the SHA-256 of ``arguments``, so
        equal arguments give equal ids. :class:`SchemaError` when the parameters have no
        instance the emulator can make.
        """
        text = last_user_text(messages) or ""
        try:
            arguments = compact_json(instance_of(parameters, text=text))
        except SchemaError as exc:
            raise SchemaError(f"the parameters of function {name!r}: {exc}") from exc
        digest = hashlib.sha256(arguments.encode()).hexdigest()[:TOOL_CALL_ID_HEX_CHARS]
        return cls(id=TOOL_CALL_ID_PREFIX + digest, name=name, arguments=arguments)

    def to_json(self) -> dict[str, Any]:
        """The OpenAI ``tool_calls`` entry: ``{"id", "type": "function", "function"}``."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class Reply:
    """One answer, ready to be rendered in any protocol's shape.

    A tool-call answer has ``tool_call`` set, an empty ``text`` and the finish reason
    ``"tool_calls"``. A JSON answer (``response_format``) has the JSON in ``text``.
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    tool_call: ToolCall | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def to(
        cls,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_words: int | None = None,
        tool: Tool | None = None,
        tool_forced: bool = False,
        json_format: JsonFormat | None = None,
    ) -> Reply:
        """The reply to ``messages``, cut to ``max_words`` words if it is longer.

        A cut reply finishes with ``"length"``, any other with ``"stop"``. Prompt tokens are
        the words of every message's text; completion tokens the words of the final text.

        With ``tool``, the reply is instead a call of that function (see
        :meth:`ToolCall.to`), finishing with ``"tool_calls"``, whose completion tokens are
        the words of its ``arguments`` (at least 1) and which ``max_words`` does not cut —
        unless the last message is a tool result and the call is not ``tool_forced``
        (``tool_choice`` "required" or a named function): that is answered with text.

        With ``json_format``, the text is its JSON content (see :meth:`JsonFormat.content`),
        which ``max_words`` does not cut either.
        """
        prompt_tokens = sum(len(words(message_text(m))) for m in messages)
        if tool is not None and (tool_forced or not ends_with_tool_result(messages)):
            call = ToolCall.to(tool.name, messages, tool.parameters)
            return cls(
                text="",
                finish_reason="tool_calls",
                prompt_tokens=prompt_tokens,
                completion_tokens=max(1, len(words(call.arguments))),
                tool_call=call,
            )
        if json_format is not None:
            content = json_format.content(messages)
            return cls(
                text=content,
                finish_reason="stop",
                prompt_tokens=prompt_tokens,
                completion_tokens=max(1, len(words(content))),
            )
        reply_words = words(reply_text(messages))
        finish_reason: FinishReason = "stop"
        if max_words is not None and len(reply_words) > max_words:
            reply_words = reply_words[:max_words]
            finish_reason = "length"
        return cls(
            text=" ".join(reply_words),
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(reply_words),
        )
