"""The OpenAI Chat Completions request, parsed once at the edge, and the normalized answer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, from_json

from .errors import InvalidRequestError
from .formatters import ChatResult
from .ids import completion_id


class _Open(BaseModel):
    """Typed where OpenAI defines a field; unknown fields are kept and forwarded."""

    model_config = ConfigDict(extra="allow", strict=True)


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageUrl(_Open):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_is_text_or_parts(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, (str, list)):
            raise ValueError("must be a string, a list of content parts, or null")
        return value

    @model_validator(mode="after")
    def _content_is_present(self) -> Message:
        if self.content is None and not (self.role == "assistant" and getattr(self, "tool_calls", None)):
            raise ValueError(f"a {self.role} message needs content")
        return self


class StreamOptions(_Open):
    include_usage: bool | None = None


_GATEWAY_FIELDS = frozenset({"model", "messages", "stream", "stream_options"})


class ChatCompletionRequest(_Open):
    """The request's schema: `model` picks the endpoint; every other field except the stream
    switches is a parameter that overrides the endpoint's `model_kwargs` for this request only."""

    model: str | None = Field(default=None, min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


@dataclass(slots=True)
class ChatRequest:
    """A validated request, as the caller sent it: what the gateway forwards. (Not frozen, which
    costs a microsecond per request: nothing changes it after `parse_chat_request`.)"""

    model: str | None
    messages: list[dict[str, Any]]
    #: The caller's parameters; explicit nulls (meaning "the endpoint's default") left out.
    parameters: dict[str, Any]
    stream: bool = False
    include_usage: bool = False


def parse_chat_request(
    body: bytes, *, max_messages: int | None = None, max_content_parts: int | None = None
) -> ChatRequest:
    """Parse and validate a request body; raise `InvalidRequestError` naming the bad field.

    Too many messages or content parts are refused on the parsed JSON, before the model is built:
    validating them would cost far more than counting them.
    """
    try:
        sent = from_json(body)
    except ValueError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: Invalid JSON: {exc}.") from None
    if not isinstance(sent, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    check_counts(sent.get("messages"), max_messages, max_content_parts)
    try:
        request = ChatCompletionRequest.model_validate(sent)
    except ValidationError as exc:
        # Of a union's alternatives, the deepest error is the one about what the caller meant.
        error = max(exc.errors(include_url=False), key=lambda e: len(e["loc"]))
        param = field_path(error["loc"])
        raise InvalidRequestError(f"{param}: {field_message(error)}", param=param) from None
    # Forward the caller's own JSON rather than a re-serialized model: exactly as sent.
    return ChatRequest(
        model=request.model,
        messages=sent["messages"],
        parameters={k: v for k, v in sent.items() if k not in _GATEWAY_FIELDS and v is not None},
        stream=request.stream,
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
    )


def check_counts(
    messages: Any, max_messages: int | None, max_content_parts: int | None, *, param: str = "messages"
) -> None:
    """Refuse more than `max_messages` messages (or input items) or `max_content_parts` content
    parts over all of them, counted on the parsed JSON before any validation: a body of many
    tiny items costs a parse, not a model per item."""
    if not isinstance(messages, list):
        return  # the model says what is wrong with it
    if max_messages is not None and len(messages) > max_messages:
        raise InvalidRequestError(
            f"{param}: this gateway takes at most {max_messages} messages (max_messages); got {len(messages)}",
            param=param,
        )
    if max_content_parts is None:
        return
    parts = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        for key in ("content", "output"):  # a Responses function_call_output has parts in output
            value = message.get(key)
            if isinstance(value, list):
                parts += len(value)
    if parts > max_content_parts:
        raise InvalidRequestError(
            f"{param}: this gateway takes at most {max_content_parts} content parts over all "
            f"messages (max_content_parts); got {parts}",
            param=param,
        )


def field_path(loc: tuple[Any, ...]) -> str:
    """`messages[0].content[1].text` from pydantic's location, without its union labels."""
    text, after_tagged_union = "", False
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        if after_tagged_union:  # the member's tag comes first, then its fields
            after_tagged_union = False
            continue
        if "[" in part or part == "str":
            after_tagged_union = "tagged-union" in part
            continue
        text += f".{part}" if text else part
    return text


def field_message(error: ErrorDetails) -> str:
    if error["type"] == "missing":
        return "is required"
    if error["type"] == "too_short" and error["loc"] == ("messages",):
        return "must contain at least one message"
    if error["type"] == "union_tag_invalid":
        return f"unsupported content part type; use {error['ctx']['expected_tags']}"
    return error["msg"].removeprefix("Value error, ")


def chat_completion(result: ChatResult, *, model: str, id: str | None = None) -> dict[str, Any]:
    """The normalized OpenAI `chat.completion` object for an endpoint's answer."""
    completion: dict[str, Any] = {
        "id": id or completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": index,
                "message": choice.message,
                "finish_reason": choice.finish_reason,
                "logprobs": choice.logprobs,
            }
            for index, choice in enumerate(result.choices)
        ],
    }
    if result.usage is not None:
        completion["usage"] = result.usage
    return completion
