"""Server-sent events: reading an endpoint's stream, writing `chat.completion.chunk` events.

The stream a caller gets is always the same: chunks with the gateway's id and model name, then
`data: [DONE]`. A stream that breaks after it started ends with one `data: {"error": {...}}`
event and no `[DONE]`, so a client never takes a partial answer for a complete one.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from .chat import completion_id
from .errors import GatewayError
from .formatters import ChatResult, dumps

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(data: dict[str, Any]) -> bytes:
    return b"data: " + dumps(data) + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    return event(error.body())


@dataclass(frozen=True, slots=True)
class ChunkIds:
    """What every chunk of one response shares: one id, one timestamp, the gateway's model name."""

    model: str
    id: str = field(default_factory=completion_id)
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return event(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **extra,
            }
        )

    def delta(self, index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self.chunk(
            [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        )


def normalized_chunk(data: Any, ids: ChunkIds, *, include_usage: bool) -> tuple[bytes | None, bool]:
    """An endpoint's chunk as the caller gets it, and whether it finished a choice.

    The chunk keeps its choices and deltas (tool calls included) and takes the gateway's id,
    timestamp and model name. Usage is dropped unless the caller asked for it; a chunk left
    with nothing to say is dropped (None).
    """
    if not isinstance(data, dict) or not isinstance(data.get("choices", []), list):
        raise ValueError("a stream event is not a chat.completion.chunk object")
    data.update(id=ids.id, object="chat.completion.chunk", created=ids.created, model=ids.model)
    if not include_usage and "usage" in data:
        del data["usage"]
        if not data.get("choices"):
            return None, False
    finished = any(isinstance(c, dict) and c.get("finish_reason") for c in data.get("choices", []))
    return event(data), finished


def result_chunks(result: ChatResult, ids: ChunkIds, *, include_usage: bool) -> Iterator[bytes]:
    """A whole answer as the chunks a streaming endpoint would have sent: for each choice a role
    chunk, its content, its tool calls, and its finish reason; then the usage if asked for."""
    for index, choice in enumerate(result.choices):
        message = choice.message
        yield ids.delta(index, {"role": message.get("role", "assistant"), "content": ""})
        if message.get("content"):
            yield ids.delta(index, {"content": message["content"]})
        tool_calls = message.get("tool_calls")
        if tool_calls:
            yield ids.delta(
                index, {"tool_calls": [{"index": i, **call} for i, call in enumerate(tool_calls)]}
            )
        yield ids.delta(index, {}, choice.finish_reason or "stop")
    if include_usage and result.usage is not None:
        yield ids.chunk([], usage=result.usage)


class SSEDecoder:
    """Incremental parser of an event stream: bytes in, the `data` of complete events out.

    Copes with events and UTF-8 characters split across reads, CRLF / CR / LF line ends,
    comment lines (keep-alives), and fields other than `data`.
    """

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        return self._lines(self._pending + self._text.decode(chunk))

    def close(self) -> list[str]:
        """The last event, if the stream ended without the blank line that completes it."""
        return self._lines(self._pending + self._text.decode(b"", final=True) + "\n\n")

    def _lines(self, text: str) -> list[str]:
        events: list[str] = []
        # A trailing CR may be the first half of a CRLF that the next read completes.
        keep = len(text) if not text.endswith("\r") else len(text) - 1
        lines = text[:keep].replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._pending = lines.pop() + text[keep:]
        for line in lines:
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)
        return events


class Pacing:
    """When one stream sends keep-alive comments, and when it must end.

    Waits that may be long (for the endpoint's answer, then for each read of its stream) ask
    `wait_s()` how long to wait before a keep-alive; past `max_duration_s` from the start,
    `on_timeout` is raised instead.
    """

    def __init__(self, *, keepalive_s: float, max_duration_s: float, on_timeout: GatewayError) -> None:
        self._clock = asyncio.get_running_loop().time
        self._deadline = self._clock() + max_duration_s
        self._keepalive_s = keepalive_s
        self._on_timeout = on_timeout

    def wait_s(self) -> float:
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            raise self._on_timeout
        return min(self._keepalive_s, remaining)

    def keepalive(self) -> bytes:
        """The comment to send after a wait that timed out; raises once out of time."""
        self.wait_s()
        return KEEPALIVE

    async def keepalives_until(self, task: asyncio.Future[Any]) -> AsyncIterator[bytes]:
        """Keep-alive comments while `task` runs; its result is the caller's to read after.
        Out of time, or when the caller stops listening, the task is cancelled."""
        try:
            while not task.done():
                await asyncio.wait((task,), timeout=self.wait_s())
                if not task.done():
                    yield self.keepalive()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))
