"""The emulator's deterministic answer: an echo of the last user message.

Nothing here pretends to be a model. The reply is a pure function of the messages, and
"tokens" are words (the text split on single spaces), so tests can predict every answer,
every truncation and every usage count exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

FinishReason = Literal["stop", "length"]

NO_USER_MESSAGE_REPLY = "You said nothing."
REPLY_PREFIX = "You said: "
NON_TEXT_PART = "[image]"


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
    """The full (untruncated) reply to a conversation.

    ``"You said: " + <text of the last message whose role is "user">``, or
    ``"You said nothing."`` when no message has the role ``user``.
    """
    for message in reversed(messages):
        if message.get("role") == "user":
            return REPLY_PREFIX + message_text(message)
    return NO_USER_MESSAGE_REPLY


def words(text: str) -> list[str]:
    """``text`` split on single spaces; the empty string has no words."""
    return text.split(" ") if text else []


@dataclass(frozen=True)
class Reply:
    """One answer, ready to be rendered in any protocol's shape."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def to(cls, messages: Sequence[Mapping[str, Any]], *, max_words: int | None = None) -> Reply:
        """The reply to ``messages``, cut to ``max_words`` words if it is longer.

        A cut reply finishes with ``"length"``, any other with ``"stop"``. Prompt tokens are
        the words of every message's text; completion tokens the words of the final text.
        """
        reply_words = words(reply_text(messages))
        finish_reason: FinishReason = "stop"
        if max_words is not None and len(reply_words) > max_words:
            reply_words = reply_words[:max_words]
            finish_reason = "length"
        return cls(
            text=" ".join(reply_words),
            finish_reason=finish_reason,
            prompt_tokens=sum(len(words(message_text(m))) for m in messages),
            completion_tokens=len(reply_words),
        )
