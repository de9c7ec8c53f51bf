"""Server-sent events: reading an endpoint's stream, writing `chat.completion.chunk` events.

The stream a caller gets is always the same: chunks with the gateway's id and model name, then
`data: [DONE]`. A stream that breaks after it started ends with one `data: {"error": {...}}`
event and no `[DONE]`, so a client never takes a partial answer for a complete one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import GatewayError
from .formatters import ChatResult
from .ids import completion_id
from .sse import KEEPALIVE, event


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
