"""Content formatters: chat messages to an endpoint's wire format and its answer back.

Formatters are pure: bytes out, bytes in, no I/O, no clock, no globals, and they never mutate
their arguments. The names and the methods to override are those of LangChain's
`AzureMLChatOnlineEndpoint` formatters, so a LangChain subclass ports with few changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .api_type import ApiType
from .codec import dumps
from .codec import loads as _decode
from .errors import InvalidRequestError, ResponseFormatError


@dataclass(frozen=True, slots=True)
class ChatChoice:
    """One normalized answer: an OpenAI assistant message and why generation stopped."""

    message: dict[str, Any]
    finish_reason: str | None = "stop"
    logprobs: Any = None


@dataclass(frozen=True, slots=True)
class ChatResult:
    """What a formatter reads out of an endpoint's answer."""

    choices: list[ChatChoice]
    usage: dict[str, Any] | None = field(default=None)

    @classmethod
    def from_text(cls, text: str, finish_reason: str | None = "stop") -> ChatResult:
        return cls([ChatChoice({"role": "assistant", "content": text}, finish_reason)])

    def text_chars(self) -> int:
        """The characters of the answer's text (content, reasoning, tool call arguments)."""
        return len(dumps([choice.message for choice in self.choices]))


def loads(output: bytes) -> Any:
    """An endpoint's JSON answer; `ResponseFormatError` if it is not JSON."""
    try:
        return _decode(output)
    except ValueError:
        raise ResponseFormatError("the body is not JSON") from None


class ContentFormatterBase:
    """Base class of every content formatter, built-in or yours.

    Subclass it, implement `format_messages_request_payload` and `format_response_payload`,
    and name the class as `content_formatter: "package.module:ClassName"`. Raise
    `InvalidRequestError` for a conversation the endpoint cannot take (the caller gets 400)
    and `ResponseFormatError` for an answer you cannot read (the caller gets 502).
    """

    content_type: ClassVar[str] = "application/json"
    accepts: ClassVar[str] = "application/json"
    supported_api_types: ClassVar[tuple[ApiType, ...]] = (ApiType.DEDICATED, ApiType.SERVERLESS)
    #: Set by deprecated formatters to the name of their replacement.
    deprecated_in_favour_of: ClassVar[str | None] = None

    def format_request_parameters(self, params: dict[str, Any], api_type: ApiType) -> dict[str, Any]:
        """The request's OpenAI parameters in the endpoint's vocabulary (default: unchanged).

        Applied to the caller's parameters only, before they override `model_kwargs`, which
        are written in the endpoint's own vocabulary already.
        """
        return params

    def format_messages_request_payload(
        self, messages: list[dict[str, Any]], model_kwargs: dict[str, Any], api_type: ApiType
    ) -> bytes:
        raise NotImplementedError

    def format_response_payload(self, output: bytes, api_type: ApiType) -> ChatResult:
        raise NotImplementedError


_OPENAI_LENGTH_PARAMS = ("max_tokens", "max_completion_tokens")
#: OpenAI parameters that `/score`'s input_data has no way to carry.
_NOT_FOR_SCORE = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
)


class CustomOpenAIChatContentFormatter(ContentFormatterBase):
    """OpenAI-style chat messages, for both api types.

    dedicated: `{"input_data": {"input_string": messages, "parameters": kwargs}}`, answered by
    `{"output": text}`, `[{"0": text}]` or an OpenAI `choices` body;
    serverless: `{"messages": messages, **kwargs}`, answered by an OpenAI chat completion.
    """

    def format_request_parameters(self, params: dict[str, Any], api_type: ApiType) -> dict[str, Any]:
        if api_type is ApiType.SERVERLESS:
            return params
        for name in _NOT_FOR_SCORE:
            if name in params:
                raise _cannot_express(type(self).__name__, name)
        if params.get("n", 1) != 1:
            raise _cannot_express(type(self).__name__, "n")
        if not any(k in params for k in _OPENAI_LENGTH_PARAMS):
            return params
        # Azure ML's chat-completion containers read the length limit as max_new_tokens.
        params = dict(params)
        for name in _OPENAI_LENGTH_PARAMS:
            if name in params:
                params["max_new_tokens"] = params.pop(name)
        return params

    def format_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages as the endpoint must receive them (default: exactly as sent)."""
        return messages

    def format_messages_request_payload(
        self, messages: list[dict[str, Any]], model_kwargs: dict[str, Any], api_type: ApiType
    ) -> bytes:
        messages = self.format_messages(messages)
        if api_type is ApiType.DEDICATED:
            return dumps({"input_data": {"input_string": messages, "parameters": model_kwargs}})
        return dumps({"messages": messages, **model_kwargs})

    def format_response_payload(self, output: bytes, api_type: ApiType) -> ChatResult:
        data = loads(output)
        if isinstance(data, dict) and "choices" in data:
            return _openai_result(data)
        if api_type is ApiType.DEDICATED:
            text = _dedicated_text(data)
            if text is not None:
                return ChatResult.from_text(text)
            raise ResponseFormatError(
                'expected {"output": "..."}, [{"0": "..."}] or an OpenAI "choices" body'
            )
        raise ResponseFormatError('expected an OpenAI chat completion with "choices"')


class LlamaChatContentFormatter(CustomOpenAIChatContentFormatter):
    """Deprecated: behaves exactly as `CustomOpenAIChatContentFormatter`."""

    deprecated_in_favour_of = "CustomOpenAIChatContentFormatter"


class MistralChatContentFormatter(CustomOpenAIChatContentFormatter):
    """For models without a system role: leading system messages are merged into the first
    user message, separated by a blank line."""

    def format_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        first_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
        if first_user is None:
            raise InvalidRequestError(
                "MistralChatContentFormatter needs at least one user message.", param="messages"
            )
        leading = 0
        while leading < len(messages) and messages[leading].get("role") == "system":
            leading += 1
        if leading == 0:
            return messages
        system_text = "\n\n".join(_text_of(m) for m in messages[:leading])
        merged = []
        for i, message in enumerate(messages[leading:], start=leading):
            if i == first_user:
                message = {**message, "content": _prepend_text(system_text, message.get("content"))}
            merged.append(message)
        return merged


def _cannot_express(formatter: str, name: str) -> InvalidRequestError:
    what = "n > 1" if name == "n" else name
    return InvalidRequestError(
        f"{name}: a dedicated endpoint (/score) cannot take {what} with {formatter}; "
        "use a serverless endpoint, or a content formatter of your own that supports it",
        param=name,
    )


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if p.get("type") == "text")
    return content or ""


def _prepend_text(text: str, content: Any) -> Any:
    if isinstance(content, list):
        return [{"type": "text", "text": text}, *content]
    return f"{text}\n\n{content}" if content else text


def _dedicated_text(data: Any) -> str | None:
    if isinstance(data, dict):
        output = data.get("output")
        return output if isinstance(output, str) else None
    if isinstance(data, list) and data:
        first = data[0]
        if isinstance(first, str):
            return first
        if isinstance(first, dict):
            value = first.get("0")
            if isinstance(value, dict):
                value = value.get("generated_text")
            return value if isinstance(value, str) else None
    return None


def _openai_result(data: dict[str, Any]) -> ChatResult:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ResponseFormatError('"choices" is not a non-empty list')
    normalized = []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise ResponseFormatError('a choice has no "message" object')
        finish_reason = choice.get("finish_reason")
        if finish_reason is not None and not isinstance(finish_reason, str):
            raise ResponseFormatError('a choice\'s "finish_reason" is not a string or null')
        logprobs = choice.get("logprobs")
        if not isinstance(logprobs, dict):
            logprobs = None  # optional, as usage is: one the caller could not read is left out
        normalized.append(ChatChoice(_assistant_message(message), finish_reason, logprobs))
    return ChatResult(normalized, _usage(data.get("usage")))


def _assistant_message(message: dict[str, Any]) -> dict[str, Any]:
    """The endpoint's message as the caller gets it: an assistant message whose every field
    has its OpenAI type; other fields are left out. `ResponseFormatError` for a wrong one."""
    role = message.get("role", "assistant")
    if role != "assistant":
        raise ResponseFormatError(f'the message\'s "role" is {_shown(role)}, not "assistant"')
    normalized: dict[str, Any] = {"role": "assistant", "content": _content(message.get("content"))}
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if not isinstance(tool_calls, list) or not all(_is_function_call(c) for c in tool_calls):
            raise ResponseFormatError(
                '"tool_calls" is not a list of {"id", "type": "function", "function": '
                '{"name", "arguments"}} objects'
            )
        if tool_calls:
            normalized["tool_calls"] = tool_calls
    for name in ("reasoning_content", "refusal"):
        value = message.get(name)
        if value is not None and not isinstance(value, str):
            raise ResponseFormatError(f'"{name}" is not a string or null')
        if name in message:
            normalized[name] = value
    return normalized


def _content(content: Any) -> str | None:
    """A message's content: text or null; a list of content parts becomes the text of its
    text parts (parts of other types, such as a model's thinking, are left out)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type") == "text"]
        if all(isinstance(t, str) for t in texts):
            return "".join(texts)
    raise ResponseFormatError('the message\'s "content" is not a string, a list of text parts, or null')


def _is_function_call(call: Any) -> bool:
    if not isinstance(call, dict) or not isinstance(call.get("id"), str):
        return False
    function = call.get("function")
    return (
        call.get("type", "function") == "function"
        and isinstance(function, dict)
        and isinstance(function.get("name"), str)
        and isinstance(function.get("arguments"), str)
    )


_USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _usage(usage: Any) -> dict[str, Any] | None:
    """The endpoint's token usage if its counts are counts; else none (it is optional)."""
    if not isinstance(usage, dict):
        return None
    for name in _USAGE_COUNTS:
        count = usage.get(name)
        if count is not None and (type(count) is not int or count < 0):
            return None
    return usage


def _shown(value: Any) -> str:
    """A short, printable rendering of an endpoint's value for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


BUILTIN_FORMATTERS: dict[str, type[ContentFormatterBase]] = {
    cls.__name__: cls
    for cls in (
        CustomOpenAIChatContentFormatter,
        LlamaChatContentFormatter,
        MistralChatContentFormatter,
    )
}
