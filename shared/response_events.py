"""The Responses API's stream events, written from the chat relay's normalized chunks.

`ResponseEvents` is the relay's `EventWriter` for `POST /v1/responses` with `stream: true`: the
relay does the endpoint's side (SSE relay or a whole `/score` answer as chunks, keep-alives,
truncation), this writes the caller's side. Each event is an SSE `event:` line naming its type
and a `data:` line with `type` and `sequence_number`; text and function-call arguments go out
as deltas as they arrive. A finished answer ends with `response.completed` (or
`response.incomplete` when the endpoint stopped for length); a broken one with
`response.failed`. Chunks of the shapes the writer does not expect are passed over, never
raised on: the relay has already checked that each is a chunk object.
"""

from __future__ import annotations

import time
from typing import Any

from .codec import dumps
from .config import DEFAULT_MAX_RESPONSE_BYTES
from .errors import UpstreamError
from .ids import item_id, response_id
from .responses import (
    ResponsesCall,
    function_call_item,
    message_item,
    output_text_part,
    response_object,
    response_usage,
    status_of,
)


class _Message:
    __slots__ = ("id", "output_index", "pieces", "delta_head")

    def __init__(self, output_index: int) -> None:
        self.id = item_id("msg")
        self.output_index = output_index
        self.pieces: list[str] = []
        #: A text delta event up to its text: most events of a stream are these, so they are
        #: written from this and the text's JSON, without a dict to encode.
        self.delta_head = (
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":"'
            + self.id.encode()
            + b'","output_index":'
            + str(output_index).encode()
            + b',"content_index":0,"delta":'
        )


class _FunctionCall:
    __slots__ = ("id", "output_index", "call_id", "name", "pieces")

    def __init__(self, output_index: int, call_id: str, name: str) -> None:
        self.id = item_id("fc")
        self.output_index = output_index
        self.call_id = call_id
        self.name = name
        self.pieces: list[str] = []


class ResponseEvents:
    """One response's events; one instance per stream."""

    def __init__(self, call: ResponsesCall, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self._call = call
        #: The text and arguments kept for the final events: bounded like a whole answer.
        self._max_bytes = max_bytes
        self._kept = 0
        self.id = response_id()
        self._created_at = int(time.time())
        self._model = call.chat.model or ""
        self._sequence = 0
        self._started = False
        self._items: list[_Message | _FunctionCall] = []
        self._message: _Message | None = None
        #: Open function calls by their index in the chat stream.
        self._calls: dict[int, _FunctionCall] = {}
        self._finish_reason: str | None = None
        self._usage: Any = None

    def _keep(self, text: str) -> None:
        """Count what the final events repeat; past `max_bytes`, the stream fails."""
        self._kept += len(text)
        if self._kept > self._max_bytes:
            raise UpstreamError(
                f"the endpoint's streamed answer is larger than {self._max_bytes} characters "
                "(max_response_bytes); if its answers are really this large, raise "
                "max_response_bytes in the gateway configuration",
                code="upstream_response_too_large",
            )

    def chunk(self, data: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if not self._started:
            model = data.get("model")
            if isinstance(model, str):
                self._model = model
            self._open(out)
        choices = data.get("choices")
        if choices.__class__ is list:
            for choice in choices:
                if choice.__class__ is not dict or choice.get("index", 0) != 0:
                    continue  # the Responses API has one answer: the first choice
                delta = choice.get("delta")
                if delta.__class__ is dict:
                    content = delta.get("content")
                    if content and content.__class__ is str:
                        self._text(content, out)
                    tool_calls = delta.get("tool_calls")
                    if tool_calls and tool_calls.__class__ is list:
                        for position, call in enumerate(tool_calls):
                            if call.__class__ is dict:
                                self._call_delta(position, call, out)
                reason = choice.get("finish_reason")
                if reason and reason.__class__ is str:
                    self._finish_reason = reason
        usage = data.get("usage")
        if usage.__class__ is dict:
            self._usage = usage
        return out[0] if len(out) == 1 else b"".join(out)

    def done(self) -> bytes:
        out: list[bytes] = []
        self._open(out)
        status, reason = status_of(self._finish_reason)
        if not self._items:
            self._text("", out)
        output = [self._close(item, status, out) for item in self._items]
        response = self._response(status, output, incomplete_reason=reason)
        self._emit(
            out, "response.completed" if status == "completed" else "response.incomplete", response=response
        )
        return b"".join(out)

    def failed(self, body: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        self._open(out)
        error = body.get("error")
        if not isinstance(error, dict):
            error = {}
        output = [self._snapshot(item, "incomplete") for item in self._items]
        # The Responses API's error codes are a fixed list; the message says what happened.
        code = "rate_limit_exceeded" if error.get("type") == "rate_limit_error" else "server_error"
        response = self._response(
            "failed", output, error={"code": code, "message": error.get("message") or ""}
        )
        self._emit(out, "response.failed", response=response)
        return b"".join(out)

    def _open(self, out: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        response = self._response("in_progress", [])
        self._emit(out, "response.created", response=response)
        self._emit(out, "response.in_progress", response=response)

    def _text(self, text: str, out: list[bytes]) -> None:
        message = self._message
        if message is None:
            message = self._message = _Message(len(self._items))
            self._items.append(message)
            item = {
                "id": message.id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            self._emit(out, "response.output_item.added", output_index=message.output_index, item=item)
            self._emit(
                out,
                "response.content_part.added",
                item_id=message.id,
                output_index=message.output_index,
                content_index=0,
                part=output_text_part(""),
            )
        if not text:
            return
        self._keep(text)
        message.pieces.append(text)
        sequence = self._sequence
        self._sequence = sequence + 1
        out.append(
            message.delta_head
            + dumps(text)
            + b',"logprobs":[],"sequence_number":'
            + str(sequence).encode()
            + b"}\n\n"
        )

    def _call_delta(self, position: int, delta: dict[str, Any], out: list[bytes]) -> None:
        index = delta.get("index")
        key = index if isinstance(index, int) else position
        function = delta.get("function")
        function = function if isinstance(function, dict) else {}
        call = self._calls.get(key)
        if call is None:
            call_id = delta.get("id")
            name = function.get("name")
            call = _FunctionCall(
                len(self._items),
                call_id if isinstance(call_id, str) and call_id else item_id("call"),
                name if isinstance(name, str) else "",
            )
            self._calls[key] = call
            self._items.append(call)
            item = function_call_item(call.call_id, call.name, "", status="in_progress", id=call.id)
            self._emit(out, "response.output_item.added", output_index=call.output_index, item=item)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self._keep(arguments)
            call.pieces.append(arguments)
            self._emit(
                out,
                "response.function_call_arguments.delta",
                item_id=call.id,
                output_index=call.output_index,
                delta=arguments,
            )

    def _close(self, item: _Message | _FunctionCall, status: str, out: list[bytes]) -> dict[str, Any]:
        """The `.done` events of an output item; returns the finished item."""
        if isinstance(item, _Message):
            text = "".join(item.pieces)
            where = {"item_id": item.id, "output_index": item.output_index, "content_index": 0}
            self._emit(out, "response.output_text.done", **where, text=text, logprobs=[])
            self._emit(out, "response.content_part.done", **where, part=output_text_part(text))
            finished = message_item(text, status=status, id=item.id)
        else:
            arguments = "".join(item.pieces)
            self._emit(
                out,
                "response.function_call_arguments.done",
                item_id=item.id,
                output_index=item.output_index,
                name=item.name,
                arguments=arguments,
            )
            finished = function_call_item(item.call_id, item.name, arguments, id=item.id)
        self._emit(out, "response.output_item.done", output_index=item.output_index, item=finished)
        return finished

    @staticmethod
    def _snapshot(item: _Message | _FunctionCall, status: str) -> dict[str, Any]:
        if isinstance(item, _Message):
            return message_item("".join(item.pieces), status=status, id=item.id)
        return function_call_item(item.call_id, item.name, "".join(item.pieces), status=status, id=item.id)

    def _response(self, status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return response_object(
            self._call,
            model=self._model,
            output=output,
            status=status,
            usage=response_usage(self._usage) if status != "in_progress" else None,
            id=self.id,
            created_at=self._created_at,
            **extra,
        )

    def _emit(self, out: list[bytes], type: str, **fields: Any) -> None:
        payload = {"type": type, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        out.append(b"event: " + type.encode() + b"\ndata: " + dumps(payload) + b"\n\n")
