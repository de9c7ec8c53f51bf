"""The emulator's deterministic answer: an echo of the last user message (or tool result),
or a call of a tool with that text as its only argument.

Nothing here pretends to be a model. The reply is a pure function of the messages (and of
the tool asked for), and "tokens" are words (the text split on single spaces), so tests can
predict every answer, every truncation, every tool call id and every usage count exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

FinishReason = Literal["stop", "length", "tool_calls"]

NO_USER_MESSAGE_REPLY = "You said nothing."
REPLY_PREFIX = "You said: "
TOOL_RESULT_PREFIX = "Tool said: "
NON_TEXT_PART = "[image]"
TOOL_CALL_ID_PREFIX = "call_"
TOOL_CALL_ID_HEX_CHARS = 24


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


@dataclass(frozen=True)
class ToolCall:
    """One call of a function tool, as an assistant message's ``tool_calls`` entry."""

    id: str
    name: str
    arguments: str

    @classmethod
    def to(cls, name: str, messages: Sequence[Mapping[str, Any]]) -> ToolCall:
        """The call of ``name`` that answers ``messages``.

        ``arguments`` is the compact JSON ``{"text":<last user text>}`` (the empty string
        when no message has the role ``user``); ``id`` is ``"call_"`` + the first 24 hex
        digits of the SHA-256 of ``arguments``, so equal arguments give equal ids.
        """
        text = last_user_text(messages) or ""
        arguments = json.dumps({"text": text}, separators=(",", ":"))
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
    ``"tool_calls"``.
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
        tool: str | None = None,
    ) -> Reply:
        """The reply to ``messages``, cut to ``max_words`` words if it is longer.

        A cut reply finishes with ``"length"``, any other with ``"stop"``. Prompt tokens are
        the words of every message's text; completion tokens the words of the final text.

        With ``tool`` (a function name), the reply is instead a call of that function (see
        :meth:`ToolCall.to`), finishing with ``"tool_calls"``, whose completion tokens are
        the words of its ``arguments`` (at least 1) and which ``max_words`` does not cut —
        unless the last message is a tool result, which is always answered with text.
        """
        prompt_tokens = sum(len(words(message_text(m))) for m in messages)
        if tool is not None and not ends_with_tool_result(messages):
            call = ToolCall.to(tool, messages)
            return cls(
                text="",
                finish_reason="tool_calls",
                prompt_tokens=prompt_tokens,
                completion_tokens=max(1, len(words(call.arguments))),
                tool_call=call,
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
