"""The stream relay: an endpoint's answer as the caller's `chat.completion.chunk` events.

The stream a caller gets is always the same: chunks with the gateway's id and model name, then
`data: [DONE]`. Serverless endpoints' event streams are relayed chunk by chunk; a dedicated
endpoint's whole answer (`/score` does not stream) is sent as the chunks a streaming endpoint
would have sent. Keep-alive comments go out whenever the caller has received nothing for
`keepalive_s`. A stream that breaks after it started ends with one `data: {"error": {...}}`
event and no `[DONE]`, so a client never takes a partial answer for a complete one; a failure
before the first event is raised, so the caller still gets a status code.

What goes on the wire is an `EventWriter`'s to say: Chat Completions' own events by default,
the Responses API's events (shared/response_events.py) from the same normalized chunks.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .codec import loads
from .config import DEFAULT_MAX_EVENT_BYTES, EndpointConfig
from .errors import INTERNAL_ERROR_BODY, GatewayError, UpstreamError
from .formatters import ChatResult
from .ids import completion_id
from .logs import get_logger
from .observe import Exchange, Observer
from .sse import DONE, KEEPALIVE, SSEDecoder, event
from .transport import Answer, UpstreamResponse

log = get_logger("gateway.relay")

#: How a whole answer is read (the endpoint's content formatter).
ReadResult = Callable[[EndpointConfig, UpstreamResponse], ChatResult]


class EventWriter(Protocol):
    """What the caller is sent for each normalized `chat.completion.chunk` (an empty result
    sends nothing), for the end of a finished answer, and for a failure after the first event."""

    def chunk(self, data: dict[str, Any]) -> bytes: ...

    def done(self) -> bytes: ...

    def failed(self, body: dict[str, Any]) -> bytes: ...


class ChatEvents:
    """Chat Completions' events: each chunk as one `data:` event, `[DONE]`, an error object."""

    chunk = staticmethod(event)

    def done(self) -> bytes:
        return DONE

    def failed(self, body: dict[str, Any]) -> bytes:
        return event(body)


CHAT_EVENTS = ChatEvents()


@dataclass(frozen=True, slots=True)
class ChunkIds:
    """What every chunk of one response shares: one id, one timestamp, the gateway's model name."""

    model: str
    id: str = field(default_factory=completion_id)
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def delta(self, index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return self.chunk(
            [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        )


#: What a caller's chunk may hold at its top level.
_CHUNK_FIELDS = frozenset(
    {"id", "object", "created", "model", "choices", "usage", "system_fingerprint", "service_tier"}
)


def normalized_chunk(
    data: Any, ids: ChunkIds, exchange: Exchange, *, include_usage: bool
) -> dict[str, Any] | None:
    """An endpoint's chunk as the caller gets it; its usage and finish reasons are noted in
    `exchange`.

    The chunk keeps its choices and deltas (tool calls included) and takes the gateway's id,
    timestamp and model name; other top-level fields an endpoint adds (an `error` echoing who
    knows what, say) are left out. Usage is dropped unless the caller asked for it; a chunk
    left with nothing to say is dropped (None).
    """
    if not isinstance(data, dict) or not isinstance(data.get("choices", []), list):
        raise ValueError("a stream event is not a chat.completion.chunk object")
    for key in [key for key in data if key not in _CHUNK_FIELDS]:
        del data[key]
    data.update(id=ids.id, object="chat.completion.chunk", created=ids.created, model=ids.model)
    usage = data.get("usage")
    if isinstance(usage, dict):
        exchange.usage = usage
    if usage is not None and not include_usage:
        del data["usage"]
        if not data.get("choices"):
            return None
    for choice in data.get("choices", ()):
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        if reason:
            exchange.finish_reasons.append(reason)
    return data


def result_chunks(result: ChatResult, ids: ChunkIds, *, include_usage: bool) -> Iterator[dict[str, Any]]:
    """A whole answer as the chunks a streaming endpoint would have sent: for each choice a role
    chunk, its reasoning, its content, its tool calls, and its finish reason; then the usage if
    asked for."""
    for index, choice in enumerate(result.choices):
        message = choice.message
        yield ids.delta(index, {"role": message.get("role", "assistant"), "content": ""})
        if message.get("reasoning_content"):
            yield ids.delta(index, {"reasoning_content": message["reasoning_content"]})
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

    The keep-alive clock counts what reached the caller: an endpoint that sends only comments
    of its own still leaves the caller a keep-alive every `keepalive_s`. Waits that may be long
    (for the endpoint's answer, then for each read of its stream) ask `wait_s()` how long to
    wait; past `max_duration_s` from the start, `on_timeout` is raised instead.
    """

    def __init__(self, *, keepalive_s: float, max_duration_s: float, on_timeout: GatewayError) -> None:
        self._clock = asyncio.get_running_loop().time
        self._last_sent = self._clock()
        self._deadline = self._last_sent + max_duration_s
        self._keepalive_s = keepalive_s
        self._on_timeout = on_timeout

    def wait_s(self) -> float:
        """Seconds until a keep-alive is due (0 if it is), or until the end of the stream's time."""
        now = self._clock()
        remaining = self._deadline - now
        if remaining <= 0:
            raise self._on_timeout
        return max(0.0, min(self._last_sent + self._keepalive_s - now, remaining))

    def sent(self) -> None:
        """The caller was just sent something."""
        self._last_sent = self._clock()

    def keepalive_due(self) -> bool:
        return self._clock() - self._last_sent >= self._keepalive_s

    def keepalive(self) -> bytes:
        """The comment to send now; raises once out of time."""
        self.wait_s()
        self.sent()
        return KEEPALIVE

    async def keepalives_until(self, task: asyncio.Future[Any]) -> AsyncIterator[bytes]:
        """Keep-alive comments while `task` runs; its result is the caller's to read after.
        Out of time, or when the caller stops listening, the task is cancelled."""
        try:
            while not task.done():
                await _done_or_timeout(task, self.wait_s())
                if not task.done():
                    yield self.keepalive()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))


async def _done_or_timeout(task: asyncio.Future[Any], timeout_s: float) -> None:
    """Wait until `task` is done or `timeout_s` has passed; the task is not cancelled either way.
    (`asyncio.wait((task,), timeout=timeout_s)` without the sets and closures it builds for
    many tasks: 12 µs instead of 17 for a task and its wait, paid once per stream before its
    first event.)"""
    loop = task.get_loop()
    waiter = loop.create_future()
    wake = functools.partial(_set_done, waiter)
    task.add_done_callback(wake)
    timer = loop.call_later(timeout_s, wake, None)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)


def _set_done(waiter: asyncio.Future[None], _: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def relay_chat(
    opening: Awaitable[tuple[EndpointConfig, Answer]],
    *,
    pacing: Pacing,
    read_result: ReadResult,
    exchange: Exchange,
    observer: Observer,
    include_usage: bool,
    writer: EventWriter = CHAT_EVENTS,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> AsyncIterator[bytes]:
    """The caller's events for the answer `opening` gives (awaited here, with keep-alives
    meanwhile), as `writer` writes them. What `opening` holds is the caller's to release after
    the last event."""
    started = told = False  # started: something was sent; told: the first chunk, to observers
    try:
        async for item in _events(
            opening, pacing, read_result, exchange, include_usage, writer, max_event_bytes
        ):
            started = True
            if not told and item != KEEPALIVE:
                told = True
                observer.first_chunk(exchange)
            yield item
    except GatewayError as exc:
        if not started:
            raise
        log.warning("stream from endpoint %r ended early: %s", exchange.endpoint, exc.message)
        exchange.error = exc
        yield writer.failed(exc.body())
    except Exception as exc:
        if not started:
            raise
        log.exception("stream from endpoint %r failed unexpectedly", exchange.endpoint)
        exchange.error = exc
        yield writer.failed(INTERNAL_ERROR_BODY)


async def _events(
    opening: Awaitable[tuple[EndpointConfig, Answer]],
    pacing: Pacing,
    read_result: ReadResult,
    exchange: Exchange,
    include_usage: bool,
    writer: EventWriter,
    max_event_bytes: int,
) -> AsyncIterator[bytes]:
    # Waiting for the answer (a dedicated endpoint's whole answer) may take long: it runs as a
    # task, and keep-alives go out meanwhile.
    opened = asyncio.ensure_future(opening)
    async for keepalive in pacing.keepalives_until(opened):
        yield keepalive
    endpoint, upstream = opened.result()
    ids = ChunkIds(endpoint.name, exchange.response_id) if exchange.response_id else ChunkIds(endpoint.name)
    if "text/event-stream" in upstream.content_type:
        async for events in _relayed(
            endpoint, upstream, ids, exchange, include_usage, pacing, writer, max_event_bytes
        ):
            yield events
        return
    # /score does not stream (nor does an endpoint that ignored "stream"): the same events,
    # made from the whole answer, sent together.
    reading = asyncio.ensure_future(upstream.read())
    async for keepalive in pacing.keepalives_until(reading):
        yield keepalive
    result = read_result(endpoint, reading.result())
    exchange.usage, exchange.answer = result.usage, result
    if result.usage is None:
        exchange.answer_chars = result.text_chars()
    exchange.finish_reasons.extend(c.finish_reason or "stop" for c in result.choices)
    encode = writer.chunk
    yield (
        b"".join([encode(c) for c in result_chunks(result, ids, include_usage=include_usage)]) + writer.done()
    )


async def _relayed(
    endpoint: EndpointConfig,
    upstream: Answer,
    ids: ChunkIds,
    exchange: Exchange,
    include_usage: bool,
    pacing: Pacing,
    writer: EventWriter,
    max_event_bytes: int,
) -> AsyncIterator[bytes]:
    """The endpoint's chunks, normalized, then `[DONE]`: also when the endpoint ended a finished
    answer without one, but never after an answer cut short. The events of one read are sent
    in one write, as they came (but the first event at once, on its own)."""
    started = False
    encode = writer.chunk
    async for batch in _event_batches(
        upstream, pacing.wait_s, SSEDecoder(max_event_bytes, endpoint=endpoint.name)
    ):
        if batch is None:
            yield pacing.keepalive()
            continue
        events: list[bytes] = []
        for data in batch:
            if data.strip() == "[DONE]":
                pacing.sent()
                yield b"".join(events) + writer.done()
                await upstream.drain()  # the connection goes back to the pool
                return
            try:
                normalized = normalized_chunk(loads(data), ids, exchange, include_usage=include_usage)
            except ValueError:
                if events:  # what came before the bad event still reaches the caller
                    yield b"".join(events)
                raise UpstreamError(
                    f"endpoint {endpoint.name!r} sent a stream event that is not a "
                    "chat.completion.chunk; check its endpoint_api_type",
                    code="bad_upstream_response",
                ) from None
            if normalized is None:
                continue
            chunk = encode(normalized)
            if not chunk:
                continue
            if not started:
                started = True
                pacing.sent()
                yield chunk
                continue
            events.append(chunk)
        if events:
            pacing.sent()
            yield b"".join(events)
        elif pacing.keepalive_due():  # the endpoint sent only comments of its own
            yield pacing.keepalive()
    if not exchange.finish_reasons:
        raise UpstreamError(
            f"endpoint {endpoint.name!r} ended the stream before the answer was finished",
            code="upstream_stream_truncated",
        )
    yield writer.done()


async def _event_batches(
    upstream: Answer, wait_s: Callable[[], float], decoder: SSEDecoder
) -> AsyncIterator[list[str] | None]:
    """The data of the events completed by each read (the last one included if it lacks its
    blank line), and None for each wait of `wait_s()` seconds that read nothing. The first
    read's first event comes alone, so that it reaches the caller before the rest is parsed
    (an endpoint may send its whole answer in one read)."""
    first = True
    async for raw in upstream.chunks(wait_s):
        if not raw:
            yield None
            continue
        if first:
            first = False
            cut = _end_of_first_event(raw)
            if 0 < cut < len(raw):
                yield decoder.feed(raw[:cut])
                raw = raw[cut:]
        yield decoder.feed(raw)
    yield decoder.close()


def _end_of_first_event(raw: bytes) -> int:
    """Where the blank line that ends the first event of `raw` ends, or -1."""
    ends = [i + len(blank) for blank in (b"\n\n", b"\r\n\r\n") if (i := raw.find(blank)) >= 0]
    return min(ends, default=-1)
