"""The gateway service: pick the endpoint, call it, normalize its answer (whole or streamed)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import Any

from .chat import ChatRequest, chat_completion
from .config import EndpointConfig, GatewayConfig, load_config
from .credentials import Credentials
from .errors import (
    INTERNAL_ERROR_BODY,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    ResponseFormatError,
    UpstreamError,
    UpstreamTimeoutError,
    upstream_status_error,
)
from .formatters import ApiType, ChatResult
from .logs import get_logger
from .routing import build_upstream_request
from .streaming import DONE, ChunkIds, SSEDecoder, error_event, event, normalized_chunk, paced, result_chunks
from .transport import Transport, UpstreamResponse, UpstreamStream

log = get_logger("gateway.service")

Messages = list[dict[str, Any]]
Params = dict[str, Any]


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

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        """The `chat.completion` for a validated request."""
        endpoint = self.endpoint_for(request.model)
        result = await self._complete(endpoint, request.message_dicts(), request.parameters())
        return chat_completion(result, model=endpoint.name)

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[bytes]:
        """The SSE events of a `"stream": true` request.

        Failures before the first event raise, so the caller still gets a status code; after
        it, they end the stream with an error event and no `[DONE]`.
        """
        endpoint = self.endpoint_for(request.model)
        settings = self.config.streaming
        events = paced(
            self._stream_events(endpoint, request),
            keepalive_s=settings.keepalive_s,
            max_duration_s=settings.max_duration_s,
            on_timeout=UpstreamTimeoutError(
                f"the answer took longer than streaming.max_duration_s ({settings.max_duration_s:g} s)"
            ),
        )
        started = False
        try:
            async for item in events:
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

    async def _stream_events(self, endpoint: EndpointConfig, request: ChatRequest) -> AsyncIterator[bytes]:
        ids = ChunkIds(endpoint.name)
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        messages, params = request.message_dicts(), request.parameters()
        if endpoint.api_type is ApiType.DEDICATED:
            # /score does not stream: the same events, from the whole answer.
            result = await self._complete(endpoint, messages, params)
            for chunk in result_chunks(result, ids, include_usage=include_usage):
                yield chunk
            yield DONE
            return
        params["stream"] = True
        if include_usage:
            params["stream_options"] = {"include_usage": True}
        async with AsyncExitStack() as stack:
            upstream = await self._open(endpoint, messages, params, stack)
            if "text/event-stream" not in upstream.content_type:
                # An endpoint that answered the whole completion at once.
                result = self._read_result(endpoint, await upstream.read())
                for chunk in result_chunks(result, ids, include_usage=include_usage):
                    yield chunk
                yield DONE
                return
            async for chunk in self._relay(endpoint, upstream, ids, include_usage):
                yield chunk

    async def _relay(
        self, endpoint: EndpointConfig, upstream: UpstreamStream, ids: ChunkIds, include_usage: bool
    ) -> AsyncIterator[bytes]:
        """The endpoint's chunks, normalized, then `[DONE]`: also when the endpoint ended a
        finished answer without one, but never after an answer cut short."""
        decoder, finished = SSEDecoder(), False
        async for raw in upstream.chunks():
            for data in decoder.feed(raw):
                if data.strip() == "[DONE]":
                    yield DONE
                    return
                chunk, finished_now = self._chunk(endpoint, data, ids, include_usage)
                finished = finished or finished_now
                if chunk is not None:
                    yield chunk
        for data in decoder.close():
            if data.strip() == "[DONE]":
                finished = True
                continue
            chunk, finished_now = self._chunk(endpoint, data, ids, include_usage)
            finished = finished or finished_now
            if chunk is not None:
                yield chunk
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
            return normalized_chunk(json.loads(data), ids, include_usage=include_usage)
        except ValueError:
            raise UpstreamError(
                f"endpoint {endpoint.name!r} sent a stream event that is not a "
                "chat.completion.chunk; check its endpoint_api_type",
                code="bad_upstream_response",
            ) from None

    async def _complete(self, endpoint: EndpointConfig, messages: Messages, params: Params) -> ChatResult:
        async with AsyncExitStack() as stack:
            upstream = await self._open(endpoint, messages, params, stack, streaming=False)
            response = await upstream.read()
        return self._read_result(endpoint, response)

    async def _open(
        self,
        endpoint: EndpointConfig,
        messages: Messages,
        params: Params,
        stack: AsyncExitStack,
        *,
        streaming: bool = True,
    ) -> UpstreamStream:
        """Call the endpoint; its answer once it says yes. A refused credential is fetched again
        once (a rotated key); an error status raises the matching gateway error."""
        for attempt in (1, 2):
            credential = await self._credentials.get(endpoint)
            upstream_request = build_upstream_request(endpoint, messages, params, credential)
            answer_stack = AsyncExitStack()
            upstream = await answer_stack.enter_async_context(
                self._transport.stream(upstream_request, timeout_s=endpoint.timeout_s, streaming=streaming)
            )
            if upstream.status < 400:
                stack.push_async_exit(answer_stack)
                return upstream
            async with answer_stack:
                response = await upstream.read()
            if attempt == 1 and response.status in (401, 403) and self._credentials.refreshable(endpoint):
                log.warning(
                    "endpoint %r refused its credential (HTTP %d); fetching it again",
                    endpoint.name,
                    response.status,
                )
                self._credentials.invalidate(endpoint, credential)
                continue
            log.warning("endpoint %r answered HTTP %d", endpoint.name, response.status)
            error = upstream_status_error(endpoint.name, response.status, response.body, response.retry_after)
            raise _scrubbed(error, credential)
        raise AssertionError("unreachable")

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


def _scrubbed(error: GatewayError, secret: str) -> GatewayError:
    """Belt and braces: an endpoint that echoes the key in its error text must not leak it."""
    if secret and secret in error.message:
        error.message = error.message.replace(secret, "[redacted]")
    return error
