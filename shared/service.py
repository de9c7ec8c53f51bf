"""The gateway service: pick the endpoint, call it, normalize its answer (whole or streamed)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json

from .api_type import ApiType
from .chat import ChatRequest, chat_completion
from .config import EndpointConfig, GatewayConfig, load_config
from .credentials import Credentials
from .errors import (
    INTERNAL_ERROR_BODY,
    ConcurrencyLimitError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    ResponseFormatError,
    UpstreamError,
    UpstreamTimeoutError,
    upstream_status_error,
)
from .formatters import ChatResult
from .logs import current_request_id, get_logger
from .retry import Backoff, Cooldowns, parse_retry_after, retryable
from .routing import build_upstream_request
from .sse import DONE, SSEDecoder, event
from .streaming import ChunkIds, Pacing, error_event, normalized_chunk, result_chunks
from .transport import Transport, UpstreamResponse, UpstreamStream

log = get_logger("gateway.service")

Messages = list[dict[str, Any]]
Params = dict[str, Any]


@dataclass(slots=True)
class Call:
    """What one request asks every endpoint it may try."""

    messages: Messages
    params: Params
    stream: bool = False
    include_usage: bool = False

    def params_for(self, endpoint: EndpointConfig) -> Params:
        if not (self.stream and endpoint.api_type is ApiType.SERVERLESS):
            return self.params
        extra: Params = {"stream": True}
        if self.include_usage:
            extra["stream_options"] = {"include_usage": True}
        return {**self.params, **extra}


class Held(list[Callable[[], None]]):
    """What one request holds (an endpoint's answer, an in-flight slot), each given back by a
    callback that cannot fail; on leaving the `with` block, the last taken is released first.
    `contextlib.ExitStack` with only what this needs: a fifth of its cost per request."""

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc_info: object) -> None:
        while self:
            self.pop()()


class Gateway:
    """Everything with a lifetime of one process: the configuration, the credentials and the
    connection pool. Create one per process; close it on shutdown."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        credentials: Credentials | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self._credentials = credentials or Credentials(settings=config.credentials)
        self._transport = transport or Transport()
        resilience = config.resilience
        self._backoff = Backoff(resilience.backoff_s, resilience.max_backoff_s, resilience.max_retry_after_s)
        self._cooldowns = Cooldowns(resilience.cooldown_failures, resilience.cooldown_s)
        self._in_flight: dict[str, int] = {}
        #: Each endpoint, then its fallbacks in order.
        self._candidates = {
            e.name: (e, *(config.endpoint(name) for name in e.fallbacks)) for e in config.endpoints
        }
        self._model_list = {
            "object": "list",
            "data": [
                {"id": e.name, "object": "model", "created": 0, "owned_by": "azureml"}
                for e in config.endpoints
            ],
        }

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Gateway:
        config = load_config(environ)
        return cls(config, credentials=Credentials(environ, config.credentials))

    def models(self) -> dict[str, Any]:
        return self._model_list

    def endpoint_for(self, model: str | None) -> EndpointConfig:
        name = model or self.config.default_model
        if name is None:
            raise InvalidRequestError("model: is required (this gateway has no default_model)", param="model")
        endpoint = self.config.endpoint(name)
        if endpoint is None:
            names = ", ".join(e.name for e in self.config.endpoints)
            raise ModelNotFoundError(
                f"The model {name!r} does not exist on this gateway; available: {names}",
                param="model",
            )
        return endpoint

    def _endpoint_of(self, request: ChatRequest) -> EndpointConfig:
        if len(request.messages) > self.config.max_messages:
            raise InvalidRequestError(
                f"messages: this gateway takes at most {self.config.max_messages} messages "
                f"(max_messages); got {len(request.messages)}",
                param="messages",
            )
        return self.endpoint_for(request.model)

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        """The `chat.completion` for a validated request."""
        endpoint = self._endpoint_of(request)
        answered_by, result = await self._complete(endpoint, request.messages, request.parameters)
        return chat_completion(result, model=answered_by.name)

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[bytes]:
        """The SSE events of a `"stream": true` request.

        Failures before the first event raise, so the caller still gets a status code; after
        it, they end the stream with an error event and no `[DONE]`.
        """
        endpoint = self._endpoint_of(request)
        settings = self.config.streaming
        pacing = Pacing(
            keepalive_s=settings.keepalive_s,
            max_duration_s=settings.max_duration_s,
            on_timeout=UpstreamTimeoutError(
                f"the answer took longer than streaming.max_duration_s ({settings.max_duration_s:g} s)"
            ),
        )
        started = False
        try:
            async for item in self._stream_events(endpoint, request, pacing):
                started = True
                yield item
        except GatewayError as exc:
            if not started:
                raise
            log.warning("stream from endpoint %r ended early: %s", endpoint.name, exc.message)
            yield error_event(exc)
        except Exception:
            if not started:
                raise
            log.exception("stream from endpoint %r failed unexpectedly", endpoint.name)
            yield event(INTERNAL_ERROR_BODY)

    async def _stream_events(
        self, endpoint: EndpointConfig, request: ChatRequest, pacing: Pacing
    ) -> AsyncIterator[bytes]:
        include_usage = request.include_usage
        call = Call(request.messages, request.parameters, stream=True, include_usage=include_usage)
        with Held() as held:
            # Waiting for the answer (a dedicated endpoint's whole answer) may take long: it
            # runs as a task, and keep-alives go out meanwhile.
            opening = asyncio.create_task(self._open(endpoint, call, held))
            async for keepalive in pacing.keepalives_until(opening):
                yield keepalive
            answered_by, upstream = opening.result()
            ids = ChunkIds(answered_by.name)
            if "text/event-stream" not in upstream.content_type:
                # /score does not stream (nor does an endpoint that ignored "stream"): the same
                # events, made from the whole answer, sent together.
                reading = asyncio.create_task(upstream.read())
                async for keepalive in pacing.keepalives_until(reading):
                    yield keepalive
                result = self._read_result(answered_by, reading.result())
                yield b"".join(result_chunks(result, ids, include_usage=include_usage)) + DONE
                return
            async for events in self._relay(answered_by, upstream, ids, include_usage, pacing):
                yield events

    async def _relay(
        self,
        endpoint: EndpointConfig,
        upstream: UpstreamStream,
        ids: ChunkIds,
        include_usage: bool,
        pacing: Pacing,
    ) -> AsyncIterator[bytes]:
        """The endpoint's chunks, normalized, then `[DONE]`: also when the endpoint ended a
        finished answer without one, but never after an answer cut short. The events of one
        read are sent in one write, as they came (but the first event at once, on its own); a
        read that waited too long sends a keep-alive."""
        finished = started = False
        async for batch in _event_batches(upstream, pacing.wait_s):
            if batch is None:
                yield pacing.keepalive()
                continue
            events: list[bytes] = []
            for data in batch:
                if data.strip() == "[DONE]":
                    yield b"".join(events) + DONE
                    return
                try:
                    chunk, finished_now = self._chunk(endpoint, data, ids, include_usage)
                except UpstreamError:
                    if events:  # what came before the bad event still reaches the caller
                        yield b"".join(events)
                    raise
                finished = finished or finished_now
                if chunk is None:
                    continue
                if not started:
                    started = True
                    yield chunk
                    continue
                events.append(chunk)
            if events:
                yield b"".join(events)
        if not finished:
            raise UpstreamError(
                f"endpoint {endpoint.name!r} ended the stream before the answer was finished",
                code="upstream_stream_truncated",
            )
        yield DONE

    @staticmethod
    def _chunk(
        endpoint: EndpointConfig, data: str, ids: ChunkIds, include_usage: bool
    ) -> tuple[bytes | None, bool]:
        try:
            return normalized_chunk(from_json(data), ids, include_usage=include_usage)
        except ValueError:
            raise UpstreamError(
                f"endpoint {endpoint.name!r} sent a stream event that is not a "
                "chat.completion.chunk; check its endpoint_api_type",
                code="bad_upstream_response",
            ) from None

    async def _complete(
        self, endpoint: EndpointConfig, messages: Messages, params: Params
    ) -> tuple[EndpointConfig, ChatResult]:
        with Held() as held:
            answered_by, upstream = await self._open(endpoint, Call(messages, params), held)
            response = await upstream.read()
        return answered_by, self._read_result(answered_by, response)

    async def _open(
        self, endpoint: EndpointConfig, call: Call, held: Held
    ) -> tuple[EndpointConfig, UpstreamStream]:
        """The first endpoint that answers yes: `endpoint`, retried, then its fallbacks in
        order. The answer's status is < 400; leaving `held` releases it."""
        deadline = asyncio.get_running_loop().time() + self.config.resilience.request_timeout_s
        failures: list[GatewayError] = []
        for candidate in self._candidates[endpoint.name]:
            blocked = self._cooldowns.blocked(candidate.name)
            if blocked is not None:
                failures.append(blocked)
                continue
            try:
                upstream = await self._tries(candidate, call, held, deadline)
            except ConcurrencyLimitError as exc:
                failures.append(exc)
                continue
            except InvalidRequestError as exc:
                if candidate is endpoint:
                    raise
                log.info("fallback %r cannot take this request: %s", candidate.name, exc.message)
                continue
            except GatewayError as exc:
                if not retryable(exc):
                    raise
                self._cooldowns.failed(candidate.name, exc)
                failures.append(exc)
                log.warning("endpoint %r failed: %s", candidate.name, exc.message)
                continue
            self._cooldowns.succeeded(candidate.name)
            return candidate, upstream
        raise failures[-1]

    async def _tries(
        self, endpoint: EndpointConfig, call: Call, held: Held, deadline: float
    ) -> UpstreamStream:
        """`endpoint`, tried again after retryable failures, at most `max_retries` times. One of
        its in-flight slots is held until the caller is done with the answer."""
        release = self._acquire_slot(endpoint)
        try:
            upstream = await self._retried(endpoint, call, held, deadline)
        except BaseException:
            release()
            raise
        held.append(release)
        return upstream

    async def _retried(
        self, endpoint: EndpointConfig, call: Call, held: Held, deadline: float
    ) -> UpstreamStream:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise UpstreamTimeoutError(
                    f"endpoint {endpoint.name!r} gave no answer within resilience.request_timeout_s "
                    f"({self.config.resilience.request_timeout_s:g} s)",
                    transient=True,
                )
            try:
                return await self._attempt(endpoint, call, held, min(endpoint.timeout_s, remaining))
            except GatewayError as exc:
                if attempt >= endpoint.max_retries or not retryable(exc):
                    raise
                delay = self._backoff.delay(attempt, parse_retry_after(exc.headers.get("Retry-After")))
                if delay is None or loop.time() + delay >= deadline:
                    raise
                attempt += 1
                log.info(
                    "endpoint %r: %s; try %d of %d in %.2f s",
                    endpoint.name,
                    exc.message,
                    attempt + 1,
                    endpoint.max_retries + 1,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _attempt(
        self, endpoint: EndpointConfig, call: Call, held: Held, timeout_s: float
    ) -> UpstreamStream:
        """One call of `endpoint`; a refused credential is fetched again, once (a rotated key)."""
        params = call.params_for(endpoint)
        for refetched in (False, True):
            credential = await self._credentials.get(endpoint)
            upstream_request = build_upstream_request(
                endpoint, call.messages, params, credential, client_request_id=current_request_id()
            )
            upstream = await self._transport.send(
                upstream_request, timeout_s=timeout_s, streaming=call.stream
            )
            if upstream.status < 400:
                held.append(upstream.release)  # when the caller is done with it
                return upstream
            try:
                response = await upstream.read()
            finally:
                upstream.release()
            if not refetched and response.status in (401, 403) and self._credentials.refreshable(endpoint):
                log.warning(
                    "endpoint %r refused its credential (HTTP %d); fetching it again",
                    endpoint.name,
                    response.status,
                )
                self._credentials.invalidate(endpoint, credential)
                continue
            error = upstream_status_error(endpoint.name, response.status, response.body, response.retry_after)
            raise _scrubbed(error, credential)
        raise AssertionError("unreachable")

    def _acquire_slot(self, endpoint: EndpointConfig) -> Callable[[], None]:
        """Count one more call in flight to `endpoint`, or answer 429 at once beyond its
        `max_concurrency`; returns the release."""
        in_flight = self._in_flight.get(endpoint.name, 0)
        if endpoint.max_concurrency is not None and in_flight >= endpoint.max_concurrency:
            raise ConcurrencyLimitError(
                f"endpoint {endpoint.name!r} already has {in_flight} requests in flight (its "
                "max_concurrency); retry shortly",
                headers={"Retry-After": "1"},
            )
        self._in_flight[endpoint.name] = in_flight + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._in_flight[endpoint.name] -= 1

        return release

    def _read_result(self, endpoint: EndpointConfig, response: UpstreamResponse) -> ChatResult:
        try:
            return endpoint.formatter.format_response_payload(response.body, endpoint.api_type)
        except ResponseFormatError as exc:
            reason = exc.message
        except Exception as exc:  # a user formatter's KeyError on an unexpected shape, say
            reason = f"{type(exc).__name__} in the formatter"
        log.warning(
            "endpoint %r: %s cannot read the answer (%s; content-type %r, %d bytes)",
            endpoint.name,
            endpoint.content_formatter,
            reason,
            response.content_type,
            len(response.body),
        )
        raise ResponseFormatError(
            f"endpoint {endpoint.name!r} answered with a body that {endpoint.content_formatter} "
            f"cannot read ({reason}); check this endpoint's content_formatter and endpoint_api_type"
        )

    async def aclose(self) -> None:
        await self._transport.aclose()
        await self._credentials.aclose()


async def _event_batches(
    upstream: UpstreamStream, idle_s: Callable[[], float]
) -> AsyncIterator[list[str] | None]:
    """The data of the events completed by each read (the last one included if it lacks its
    blank line), and None for each wait of `idle_s()` seconds that read nothing."""
    decoder = SSEDecoder()
    async for raw in upstream.chunks(idle_s):
        yield decoder.feed(raw) if raw else None
    yield decoder.close()


def _scrubbed(error: GatewayError, secret: str) -> GatewayError:
    """Belt and braces: an endpoint that echoes the key in its error text must not leak it."""
    if secret and secret in error.message:
        error.message = error.message.replace(secret, "[redacted]")
    return error
