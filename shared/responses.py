"""The OpenAI Responses API over each endpoint's chat protocol: the request, parsed once at the
edge and translated into a `ChatRequest`, and the endpoint's answer as a `response` object.

The gateway is stateless: a request carries the whole conversation in `input`, and what would
need stored responses (`previous_response_id`, `store: true`, `item_reference`, ...) or tools the
gateway would have to run itself (web search, file search, ...) is refused with 400 naming the
field. Fields the Responses API does not define are forwarded to the endpoint as parameters,
as Chat Completions forwards them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError
from pydantic_core import from_json

from .chat import ChatRequest, check_counts, field_message, field_path
from .errors import InvalidRequestError
from .formatters import ChatChoice, ChatResult
from .ids import item_id, response_id


class _Open(BaseModel):
    """Typed where OpenAI defines a field; unknown fields are accepted (and not forwarded)."""

    model_config = ConfigDict(extra="allow", strict=True)


class InputText(_Open):
    type: Literal["input_text"]
    text: str


class OutputText(_Open):
    """Assistant text from an earlier answer, sent back as history."""

    type: Literal["output_text"]
    text: str


class InputImage(_Open):
    type: Literal["input_image"]
    image_url: str | None = Field(default=None, min_length=1)
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


ContentPart = Annotated[InputText | OutputText | InputImage, Field(discriminator="type")]


class MessageItem(_Open):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]


class FunctionCallItem(_Open):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(_Open):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[ContentPart]


def _item_type(value: Any) -> str:
    """Messages may leave out `"type": "message"` (OpenAI's "easy input message")."""
    if isinstance(value, dict):
        kind = value.get("type", "message")
        return kind if isinstance(kind, str) else ""
    return "message"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_type),
]


class FunctionTool(_Open):
    type: str
    #: Required of function tools; built-in tools have none (and are refused by their type).
    name: str | None = Field(default=None, min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(_Open):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormatText(_Open):
    type: Literal["text"]


class TextFormatJsonSchema(_Open):
    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextFormatJsonObject(_Open):
    type: Literal["json_object"]


class TextConfig(_Open):
    format: (
        Annotated[TextFormatText | TextFormatJsonSchema | TextFormatJsonObject, Field(discriminator="type")]
        | None
    ) = None
    verbosity: None = None


class ReasoningConfig(_Open):
    effort: str | None = None
    summary: None = None
    generate_summary: None = None


class ResponsesRequest(_Open):
    """The request's schema. Fields whose only supported value is "off" (`store`,
    `background`, ...) are typed so; anything else is refused with 400 naming the field."""

    model: str | None = Field(default=None, min_length=1)
    input: str | list[InputItem]
    instructions: str | None = None
    stream: bool = False
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(default=None, max_length=16)
    user: str | None = None
    reasoning: ReasoningConfig | None = None
    include: list[str] | None = None
    # Accepted as hints and not forwarded: nothing behind the gateway reads them.
    stream_options: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    service_tier: Literal["auto", "default"] | None = None
    truncation: Literal["disabled"] | None = None
    # Stateful or server-run features: only their "off" values.
    store: Literal[False] | None = None
    background: Literal[False] | None = None
    previous_response_id: None = None
    conversation: None = None
    prompt: None = None
    max_tool_calls: None = None
    top_logprobs: None = None


#: Fields this module consumes; every other field is forwarded to the endpoint as a parameter.
_RESPONSES_FIELDS = frozenset(ResponsesRequest.model_fields)
#: The chat request's own fields, which the gateway builds from `input` and `stream`: an
#: unknown field of the same name must not replace them (`messages` would replace the whole
#: conversation, past every check).
_CHAT_OWN = frozenset({"messages", "model", "stream", "stream_options", "n"})

#: What each refused field needs that a stateless gateway in front of chat endpoints lacks.
_UNSUPPORTED: dict[str, str] = {
    "store": "this gateway is stateless and stores no responses; leave store out or set it to false",
    "background": "this gateway runs no background responses; leave background out",
    "previous_response_id": (
        "this gateway is stateless and keeps no earlier responses; send the whole conversation in input"
    ),
    "conversation": "this gateway is stateless and keeps no conversations; send the whole conversation in input",
    "prompt": "this gateway keeps no stored prompts; send the instructions and input themselves",
    "max_tool_calls": "this gateway runs no tools itself, so it has no tool calls to limit",
    "top_logprobs": "this gateway does not return log probabilities from the Responses API",
    "service_tier": "the endpoints behind this gateway have one service tier; leave it out or use 'auto'",
    "truncation": "this gateway never drops input to fit; leave truncation out or use 'disabled'",
    "text.verbosity": "the endpoints behind this gateway take no verbosity setting",
    "reasoning.summary": "the endpoints behind this gateway return no reasoning summaries",
    "reasoning.generate_summary": "the endpoints behind this gateway return no reasoning summaries",
}

#: `include` values the gateway honours: there are no reasoning items to carry encrypted content.
_INCLUDABLE = frozenset({"reasoning.encrypted_content"})


@dataclass(frozen=True, slots=True)
class ResponsesCall:
    """A validated Responses request: the chat request the endpoint is sent, and what every
    `response` object of it repeats (its instructions, tools, settings)."""

    chat: ChatRequest
    echo: dict[str, Any] = field(default_factory=dict)


def parse_responses_request(
    body: bytes, *, max_messages: int | None = None, max_content_parts: int | None = None
) -> ResponsesCall:
    """Parse, validate and translate a request body; `InvalidRequestError` names the bad field.
    Input items and content parts are counted before validation (`check_counts`)."""
    try:
        sent = from_json(body)
    except ValueError:
        sent = None  # the model's validation says what is wrong
    if isinstance(sent, dict):
        check_counts(sent.get("input"), max_messages, max_content_parts, param="input")
    try:
        request = ResponsesRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc) from None
    for index, tool in enumerate(request.tools or ()):
        if tool.type != "function":
            param = f"tools[{index}].type"
            raise InvalidRequestError(
                f"{param}: {tool.type!r} is a built-in tool, which this gateway cannot run; "
                "only function tools are supported",
                param=param,
            )
        if tool.name is None:
            raise InvalidRequestError(f"tools[{index}].name: is required", param=f"tools[{index}].name")
    for index, value in enumerate(request.include or ()):
        if value not in _INCLUDABLE:
            param = f"include[{index}]"
            raise InvalidRequestError(
                f"{param}: {value!r} cannot be included by this gateway (it supports {sorted(_INCLUDABLE)})",
                param=param,
            )
    parameters = {
        k: v for k, v in sent.items() if k not in _RESPONSES_FIELDS and k not in _CHAT_OWN and v is not None
    }
    parameters.update(_chat_parameters(request))
    chat = ChatRequest(
        model=request.model,
        messages=_messages(request),
        parameters=parameters,
        stream=request.stream,
        include_usage=True,  # a response always reports its usage
    )
    return ResponsesCall(chat, _echo(request, sent))


def _invalid(exc: ValidationError) -> InvalidRequestError:
    error = max(exc.errors(include_url=False), key=lambda e: len(e["loc"]))
    if error["type"] == "json_invalid":
        return InvalidRequestError(f"The request body is not valid JSON: {error['msg']}.")
    if error["type"] == "model_type" and not error["loc"]:
        return InvalidRequestError("The request body must be a JSON object.")
    param = field_path(error["loc"])
    if param in _UNSUPPORTED and error["type"] != "missing":
        return InvalidRequestError(f"{param}: {_UNSUPPORTED[param]}", param=param)
    if error["type"] == "union_tag_invalid":
        if param.startswith("input"):
            return _unsupported_item(param, error["input"])
        param = f"{param}.type"
        tags = error.get("ctx", {}).get("expected_tags")
        return InvalidRequestError(f"{param}: unsupported type; use {tags}", param=param)
    return InvalidRequestError(f"{param}: {field_message(error)}", param=param)


def _unsupported_item(param: str, item: Any) -> InvalidRequestError:
    kind = item.get("type") if isinstance(item, dict) else None
    param = f"{param}.type"
    if kind == "item_reference":
        return InvalidRequestError(
            f"{param}: this gateway is stateless and cannot resolve item references; send the item "
            "itself (with the Vercel AI SDK: providerOptions.openai.store = false)",
            param=param,
        )
    if param.count("[") > 1:  # a content part
        return InvalidRequestError(
            f"{param}: unsupported content part {kind!r}; use input_text, input_image or output_text",
            param=param,
        )
    return InvalidRequestError(
        f"{param}: unsupported input item {kind!r}; use message, function_call or function_call_output",
        param=param,
    )


def _chat_parameters(request: ResponsesRequest) -> dict[str, Any]:
    """The request's settings in Chat Completions' vocabulary."""
    params: dict[str, Any] = {}
    for name in ("temperature", "top_p", "user"):
        value = getattr(request, name)
        if value is not None:
            params[name] = value
    if request.max_output_tokens is not None:
        params["max_tokens"] = request.max_output_tokens
    if request.reasoning is not None and request.reasoning.effort is not None:
        params["reasoning_effort"] = request.reasoning.effort
    if request.tools:
        params["tools"] = [_chat_tool(tool) for tool in request.tools]
        if request.parallel_tool_calls is not None:
            params["parallel_tool_calls"] = request.parallel_tool_calls
    choice = request.tool_choice
    if isinstance(choice, FunctionChoice):
        params["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        params["tool_choice"] = choice
    text_format = request.text.format if request.text is not None else None
    if isinstance(text_format, TextFormatJsonSchema):
        schema: dict[str, Any] = {"name": text_format.name, "schema": text_format.schema_}
        if text_format.description is not None:
            schema["description"] = text_format.description
        if text_format.strict is not None:
            schema["strict"] = text_format.strict
        params["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(text_format, TextFormatJsonObject):
        params["response_format"] = {"type": "json_object"}
    return params


def _chat_tool(tool: FunctionTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name or ""}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    """`instructions` and `input` as chat messages: `developer` is `system` (the role chat
    endpoints know), a function call joins the assistant message before it, and a function
    call's output is a `tool` message."""
    messages: list[dict[str, Any]] = []
    if request.instructions is not None:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
        return messages
    if not request.input:
        raise InvalidRequestError("input: must contain at least one item", param="input")
    for index, item in enumerate(request.input):
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            messages.append({"role": role, "content": _content(item.content, f"input[{index}]", role)})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            output = _content(item.output, f"input[{index}]", "tool")
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
    return messages


def _content(content: str | list[Any], where: str, role: str) -> Any:
    """Chat content: a string, unless a user message carries an image (then chat parts)."""
    if isinstance(content, str):
        return content
    if not any(isinstance(part, InputImage) for part in content):
        return "\n".join(part.text for part in content)
    if role != "user":
        param = f"{where}.content"
        raise InvalidRequestError(f"{param}: only user messages may carry images", param=param)
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        if not isinstance(part, InputImage):
            parts.append({"type": "text", "text": part.text})
            continue
        if part.image_url is None:
            param = f"{where}.content[{index}].image_url"
            raise InvalidRequestError(
                f"{param}: is required (this gateway has no Files API, so file_id cannot be used)",
                param=param,
            )
        image: dict[str, Any] = {"url": part.image_url}
        if part.detail is not None:
            image["detail"] = part.detail
        parts.append({"type": "image_url", "image_url": image})
    return parts


def _echo(request: ResponsesRequest, sent: dict[str, Any]) -> dict[str, Any]:
    """The request's settings as every `response` object states them."""
    text = sent.get("text") if isinstance(sent.get("text"), dict) else None
    return {
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "metadata": request.metadata or {},
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "temperature": request.temperature,
        "text": {"format": (text or {}).get("format") or {"type": "text"}},
        "tool_choice": sent.get("tool_choice") or "auto",
        "tools": sent.get("tools") or [],
        "top_p": request.top_p,
        "user": request.user,
    }


def response_object(
    call: ResponsesCall,
    *,
    model: str,
    output: list[dict[str, Any]],
    status: str,
    usage: dict[str, Any] | None,
    id: str | None = None,
    created_at: int | None = None,
    incomplete_reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": id or response_id(),
        "object": "response",
        "created_at": created_at if created_at is not None else int(time.time()),
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "model": model,
        "output": output,
        "previous_response_id": None,
        "reasoning": None,
        "store": False,
        "truncation": "disabled",
        "usage": usage,
        **call.echo,
    }


def status_of(finish_reason: str | None) -> tuple[str, str | None]:
    """The response's `status` and incomplete reason for the endpoint's finish reason."""
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    if finish_reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def message_item(text: str, *, status: str, id: str | None = None) -> dict[str, Any]:
    return {
        "id": id or item_id("msg"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [output_text_part(text)],
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(
    call_id: str, name: str, arguments: str, *, status: str = "completed", id: str | None = None
) -> dict[str, Any]:
    return {
        "id": id or item_id("fc"),
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def response_from_result(
    call: ResponsesCall, result: ChatResult, *, model: str, id: str | None = None
) -> dict[str, Any]:
    """The `response` object for an endpoint's whole answer (its first choice)."""
    choice = result.choices[0] if result.choices else ChatChoice({"role": "assistant", "content": ""})
    status, reason = status_of(choice.finish_reason)
    message = choice.message
    output: list[dict[str, Any]] = []
    content = message.get("content")
    tool_calls = message.get("tool_calls")
    if not isinstance(tool_calls, list):
        tool_calls = []
    if (isinstance(content, str) and content) or not tool_calls:
        output.append(message_item(content if isinstance(content, str) else "", status=status))
    for call_ in tool_calls:
        function = call_.get("function") if isinstance(call_, dict) else None
        if not isinstance(function, dict):
            continue
        output.append(
            function_call_item(
                _text(call_.get("id")) or item_id("call"),
                _text(function.get("name")),
                _text(function.get("arguments")),
            )
        )
    return response_object(
        call,
        model=model,
        output=output,
        status=status,
        usage=response_usage(result.usage),
        incomplete_reason=reason,
        id=id,
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def response_usage(usage: Any) -> dict[str, Any] | None:
    """Chat usage (`prompt_tokens`, ...) as Responses usage (`input_tokens`, ...)."""
    if not isinstance(usage, dict):
        return None
    input_tokens = _count(usage.get("prompt_tokens"))
    output_tokens = _count(usage.get("completion_tokens"))
    total = usage.get("total_tokens")
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": _count(prompt_details.get("cached_tokens"))
            if isinstance(prompt_details, dict)
            else 0,
            "cache_write_tokens": _count(prompt_details.get("cache_write_tokens"))
            if isinstance(prompt_details, dict)
            else 0,
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {
            "reasoning_tokens": _count(completion_details.get("reasoning_tokens"))
            if isinstance(completion_details, dict)
            else 0
        },
        "total_tokens": _count(total) if isinstance(total, int) else input_tokens + output_tokens,
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
