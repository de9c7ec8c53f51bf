"""The gateway service: Chat Completions and the Responses API over the dispatch pipeline and
the stream relay."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from .api_type import ApiType
from .callers import Caller
from .chat import ChatRequest, chat_completion
from .config import EndpointConfig, GatewayConfig, load_config
from .credentials import PROVIDERS, Credential, Credentials
from .errors import (
    CallerLimitError,
    GatewayError,
    ModelNotFoundError,
    ResponseFormatError,
    UpstreamError,
    UpstreamTimeoutError,
)
from .formatters import ChatResult
from .ids import completion_id, response_id
from .limits import CallerLimits
from .logs import current_request_id, get_logger
from .observe import NO_OBSERVER, Exchange, Observer, Observers
from .pipeline import Leases, Pipeline, RequestBuilder, Target
from .relay import CHAT_EVENTS, EventWriter, Pacing, relay_chat
from .routing import build_upstream_request
from .telemetry import flush_telemetry, telemetry_observer
from .transport import Sender, Transport, UpstreamRequest, UpstreamResponse

if TYPE_CHECKING:  # imported by the first Responses API call, or the warm-up before it
    from .responses import ResponsesCall

log = get_logger("gateway.service")


class Gateway:
    """Everything with a lifetime of one process: the configuration, the credentials, the
    connection pool and the pipeline over them. Create one per process; close it on shutdown."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        credentials: Credentials | None = None,
        transport: Sender | None = None,
        observer: Observer = NO_OBSERVER,
        limits: CallerLimits | None = None,
    ) -> None:
        self.config = config
        #: `callers.limits`, whose observer settles each request's tokens.
        self.limits = limits
        if limits is None and config.callers.limits is not None:
            self.limits = CallerLimits.create(config.callers.limits)
        # Every observer behind `Observers`: one that raises is logged, not the request's failure.
        told = [o for o in (self.limits and self.limits.observer, observer) if o and o is not NO_OBSERVER]
        observer = Observers(told) if told else NO_OBSERVER
        self._credentials = credentials or Credentials(settings=config.credentials)
        self._credentials.observe(observer)
        self._transport: Sender = transport or Transport(max_response_bytes=config.max_response_bytes)
        self._observer = observer
        self.pipeline = Pipeline(config, self._credentials, self._transport, observer)
        self._model_list: dict[str, Any] = {
            "object": "list",
            "data": [
                *(
                    {"id": e.name, "object": "model", "created": 0, "owned_by": "azureml"}
                    for e in config.endpoints
                ),
                *(
                    {"id": g.name, "object": "model", "created": 0, "owned_by": "gateway"}
                    for g in config.groups
                ),
            ],
        }

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Gateway:
        config = load_config(environ)
        limits = CallerLimits.create(config.callers.limits, environ) if config.callers.limits else None
        credentials = Credentials(environ, config.credentials)
        return cls(
            config, credentials=credentials, limits=limits, observer=telemetry_observer(environ, config)
        )

    def models(self) -> dict[str, Any]:
        return self._model_list

    def model(self, name: str) -> dict[str, Any]:
        """The entry of `models()` named `name`; `ModelNotFoundError` if there is none."""
        entries: list[dict[str, Any]] = self._model_list["data"]
        if name:
            self.pipeline.endpoint_for(name)  # the one "does not exist" error, naming what does
        for entry in entries:
            if entry["id"] == name:
                return entry
        raise ModelNotFoundError(f"The model {name!r} does not exist on this gateway", param="model")

    async def chat(self, request: ChatRequest, caller: Caller | None = None) -> dict[str, Any]:
        """The `chat.completion` for a validated request."""
        answered_by, result, exchange = await self._complete(request, "chat", caller)
        return chat_completion(result, model=answered_by.name, id=exchange.response_id)

    async def responses(self, call: ResponsesCall, caller: Caller | None = None) -> dict[str, Any]:
        """The `response` object for a validated Responses API request."""
        from .responses import response_from_result

        answered_by, result, exchange = await self._complete(call.chat, "responses", caller)
        return response_from_result(call, result, model=answered_by.name, id=exchange.response_id)

    def chat_stream(self, request: ChatRequest, caller: Caller | None = None) -> AsyncIterator[bytes]:
        """The SSE events of a `"stream": true` request; failures before the first event raise,
        so the caller still gets a status code."""
        return self._stream(request, "chat", CHAT_EVENTS, caller)

    def responses_stream(self, call: ResponsesCall, caller: Caller | None = None) -> AsyncIterator[bytes]:
        """The Responses API's SSE events, as `chat_stream`'s."""
        from .response_events import ResponseEvents

        return self._stream(
            call.chat, "responses", ResponseEvents(call, self.config.max_response_bytes), caller
        )

    async def _complete(
        self, request: ChatRequest, operation: str, caller: Caller | None
    ) -> tuple[EndpointConfig, ChatResult, Exchange]:
        endpoint, exchange = self._start(request, operation, caller)
        error: BaseException | None = None
        try:
            with Leases() as leases:
                answered_by, upstream = await self.pipeline.open(
                    exchange, endpoint, _chat_builder(request), leases
                )
                response = await upstream.read()
            result = read_result(answered_by, response)
            # Before request_ended: observers read them there.
            exchange.usage, exchange.answer = result.usage, result
            if result.usage is None:
                exchange.answer_chars = result.text_chars()
            exchange.finish_reasons.extend(c.finish_reason or "stop" for c in result.choices)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._observer.request_ended(exchange, error)
        return answered_by, result, exchange

    async def _stream(
        self, request: ChatRequest, operation: str, writer: EventWriter, caller: Caller | None
    ) -> AsyncIterator[bytes]:
        endpoint, exchange = self._start(request, operation, caller)
        exchange.response_id = getattr(writer, "id", None) or exchange.response_id
        settings = self.config.streaming
        pacing = Pacing(
            keepalive_s=settings.keepalive_s,
            max_duration_s=settings.max_duration_s,
            on_timeout=UpstreamTimeoutError(
                f"the answer took longer than streaming.max_duration_s ({settings.max_duration_s:g} s)"
            ),
        )
        error: BaseException | None = None
        try:
            with Leases() as leases:
                # Limits settle with the endpoint's usage: ask for it; the relay passes it on only
                # if the caller asked.
                build = _chat_builder(request, ask_usage=request.include_usage or self.limits is not None)
                opening = self.pipeline.open(exchange, endpoint, build, leases, stream=True)
                async for item in relay_chat(
                    opening,
                    pacing=pacing,
                    read_result=read_result,
                    exchange=exchange,
                    observer=self._observer,
                    include_usage=request.include_usage,
                    writer=writer,
                    max_event_bytes=self.config.max_event_bytes,
                ):
                    yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._observer.request_ended(exchange, error)

    def _start(self, request: ChatRequest, operation: str, caller: Caller | None) -> tuple[Target, Exchange]:
        endpoint = self.pipeline.endpoint_for(request.model)
        exchange = Exchange(
            operation, endpoint.name, request.stream, current_request_id(), caller=caller, request=request
        )
        exchange.response_id = completion_id() if operation == "chat" else response_id()
        self._observer.request_started(exchange)
        return endpoint, exchange

    def modules_to_warm(self) -> list[str]:
        """What the first request imports that the start-up did not: aiohttp, the Azure SDKs of
        the configured credentials, and the Responses API's models."""
        needed = dict.fromkeys(["aiohttp"])
        for endpoint in self.config.endpoints:
            needed.update(dict.fromkeys(PROVIDERS[endpoint.auth.type].modules))
        return [*needed, "shared.response_events"]

    def caller_refused(
        self, request: ChatRequest, operation: str, caller: Caller, error: CallerLimitError
    ) -> None:
        """Tell observers of a request its caller's limits refused before it started."""
        model = request.model or self.config.default_model or ""
        exchange = Exchange(operation, model, request.stream, current_request_id(), caller=caller)
        self._observer.limit_rejected(exchange, error.limit, error)

    async def aclose(self) -> None:
        await self._transport.aclose()
        await self._credentials.aclose()
        if self.limits is not None:
            await self.limits.aclose()
        await flush_telemetry()


def _chat_builder(request: ChatRequest, *, ask_usage: bool = False) -> RequestBuilder:
    """The upstream request of a chat request, for whichever endpoint the pipeline tries."""
    request_id = current_request_id()

    def build(endpoint: EndpointConfig, credential: Credential) -> UpstreamRequest:
        params = request.parameters
        if request.stream and endpoint.api_type is ApiType.SERVERLESS:
            params = {**params, "stream": True}
            if ask_usage:
                params["stream_options"] = {"include_usage": True}
        try:
            return build_upstream_request(
                endpoint, request.messages, params, credential.headers, client_request_id=request_id
            )
        except GatewayError:
            raise
        except Exception as exc:  # a user formatter's bug, say: the endpoint's configuration
            log.exception(
                "endpoint %r: %s cannot build the request", endpoint.name, endpoint.content_formatter
            )
            raise UpstreamError(
                f"endpoint {endpoint.name!r}: {endpoint.content_formatter} failed to build the request "
                f"({type(exc).__name__}); check this endpoint's content_formatter",
                code="formatter_failed",
            ) from exc

    return build


def read_result(endpoint: EndpointConfig, response: UpstreamResponse) -> ChatResult:
    """The endpoint's whole answer, read by its content formatter; 502 if it cannot be read."""
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
