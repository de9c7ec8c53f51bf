"""The HTTP handlers, shared by both hosts: Starlette requests in, Starlette responses out.

The Azure Functions HTTP-streams extension hands functions Starlette `Request` objects and sends
back Starlette responses, so `function_app.py` and the local ASGI app call the same methods.
Every response carries `x-request-id`; every failure is an OpenAI error body.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import unquote

from starlette import responses
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .callers import Caller, caller_auth
from .chat import ChatRequest, parse_chat_request
from .codec import dumps
from .errors import (
    INTERNAL_ERROR_BODY,
    CallerLimitError,
    GatewayError,
    InvalidRequestError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)
from .limits import estimate_tokens
from .logs import bind_request_id, get_logger
from .service import Gateway
from .sse import SSE_HEADERS
from .tracecontext import bind_caller_trace

log = get_logger("gateway.http")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.encode("latin-1")
_ASCII_DIGITS = re.compile(r"[0-9]{1,20}")
#: How long an answer may take before the handler starts watching for its caller to leave.
WATCH_AFTER_S = 0.05

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


class JSONResponse(responses.JSONResponse):
    """Rendered with the gateway's one JSON encoder."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


class EventStreamResponse(StreamingResponse):
    """Starlette's `StreamingResponse` for server-sent events, streamed from the request's own
    task (Starlette runs it and a disconnect listener in an anyio task group: two more tasks and
    a scheduling round before the first byte). A `CallerWatch` cancels the stream if the caller
    disconnects, which ends the call to the endpoint; a stream over within `WATCH_AFTER_S` costs
    no watching task."""

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        watch: CallerWatch | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(content, headers=headers)
        self._watch = watch or CallerWatch()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._watch.watched(receive, self.stream_response(send))
        except CallerLeft:
            pass  # the caller went away: nobody reads the rest


class GatewayApi:
    """The handlers of the routes in `shared.routes.ROUTES`, bound to one process-wide `Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._max_request_bytes = gateway.config.max_request_bytes
        self._openapi_document: bytes | None = None
        #: What a request may hold, counted before it is validated.
        self._counts = {
            "max_messages": gateway.config.max_messages,
            "max_content_parts": gateway.config.max_content_parts,
        }
        #: Who is calling (`callers.auth`): checked first, before the body is read.
        self.callers = caller_auth(gateway.config.callers.auth)
        self._caller_watch = CallerWatch()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> GatewayApi:
        return cls(Gateway.from_environ(environ))

    async def chat_completions(self, request: Request) -> Response:
        return await _respond(request, self._chat_completions)

    async def responses(self, request: Request) -> Response:
        return await _respond(request, self._responses)

    async def models(self, request: Request) -> Response:
        return await _respond(request, self._models)

    async def retrieve_model(self, request: Request) -> Response:
        return await _respond(request, self._retrieve_model)

    async def health(self, request: Request) -> Response:
        return await _respond(request, _health)

    async def openapi(self, request: Request) -> Response:
        return await _respond(request, self._openapi)

    async def aclose(self) -> None:
        await self.callers.aclose()
        await self.gateway.aclose()

    async def _chat_completions(self, request: Request) -> Response:
        caller = await self.callers.authenticate(request.headers)
        body = await self._json_body(request)
        chat = parse_chat_request(body, **self._counts)

        async def answer() -> Response:
            if chat.stream:
                return await self._streamed(self.gateway.chat_stream(chat, caller))
            return JSONResponse(await self.gateway.chat(chat, caller))

        return await self._within_limits(caller, chat, "chat", len(body), request, answer)

    async def _responses(self, request: Request) -> Response:
        # Not imported at start-up (its models cost 15 ms of every cold start); the warm-up
        # thread has normally imported it before the first call (shared/runtime.py).
        from .responses import parse_responses_request

        caller = await self.callers.authenticate(request.headers)
        body = await self._json_body(request)
        call = parse_responses_request(body, **self._counts)

        async def answer() -> Response:
            if call.chat.stream:
                return await self._streamed(self.gateway.responses_stream(call, caller))
            return JSONResponse(await self.gateway.responses(call, caller))

        return await self._within_limits(caller, call.chat, "responses", len(body), request, answer)

    async def _json_body(self, request: Request) -> bytes:
        require_json(request.headers.get("content-type"))
        return await read_body(request, self._max_request_bytes)

    async def _within_limits(
        self,
        caller: Caller,
        chat: ChatRequest,
        operation: str,
        body_bytes: int,
        request: Request,
        answer: Callable[[], Awaitable[Response]],
    ) -> Response:
        """`answer` (while the caller is connected) if the caller is within its limits (else
        429), with its limits' headers; the prompt's tokens are estimated from the body's length
        and reserved until the request ends (the limits' observer settles them)."""
        limits = self.gateway.limits
        if limits is None:
            return await self._caller_watch.answer(request, answer())
        admission = limits.reserve(caller, estimate_tokens(body_bytes))
        answering: Awaitable[Response]
        if limits.has_headroom(caller):
            # Well inside its limits: the call to the endpoint starts while the admission's round
            # trip to the shared store is on its way; the answer waits for it, a refusal cancels.
            answering = asyncio.ensure_future(self._caller_watch.answer(request, answer()))
            try:
                await limits.decide(admission)
            except BaseException as exc:
                answering.cancel()
                await asyncio.gather(answering, return_exceptions=True)
                if isinstance(exc, CallerLimitError):
                    self.gateway.caller_refused(chat, operation, caller, exc)
                raise
        else:
            try:
                await limits.decide(admission)
            except CallerLimitError as exc:
                self.gateway.caller_refused(chat, operation, caller, exc)
                raise
            answering = self._caller_watch.answer(request, answer())
        try:
            response = await answering
        except GatewayError as exc:
            exc.headers.update(admission.headers)
            limits.settle(admission, 0)  # unless the request reached an endpoint (settled then)
            raise
        except BaseException:
            limits.settle(admission, 0)
            raise
        _append_headers(response, admission.headers)
        return response

    async def _streamed(self, events: AsyncIterator[bytes]) -> Response:
        # Failures before the first event still get their status code and a JSON error.
        first = await anext(events)
        return EventStreamResponse(_prepend(first, events), watch=self._caller_watch, headers=SSE_HEADERS)

    async def _models(self, request: Request) -> Response:
        await self.callers.authenticate(request.headers)
        return JSONResponse(self.gateway.models())

    async def _retrieve_model(self, request: Request) -> Response:
        await self.callers.authenticate(request.headers)
        # The local server's router fills path_params; the Functions host forwards the URL only.
        name = request.path_params.get("id") or unquote(request.url.path.rpartition("/v1/models/")[2])
        return JSONResponse(self.gateway.model(name))

    async def _openapi(self, request: Request) -> Response:
        await self.callers.authenticate(request.headers)
        if self._openapi_document is None:
            from .openapi import openapi_document  # its models cost a cold start 30 ms: built when asked

            self._openapi_document = dumps(openapi_document())
        return Response(self._openapi_document, media_type="application/json")


class CallerLeft(Exception):
    """The caller disconnected while its request was served; the work was cancelled."""


class CallerWatch:
    """Cancels an answer, or a stream, when its caller disconnects: its call to the endpoint
    and its in-flight slot are given back then, not when the endpoint answers.

    Most answers come sooner than `WATCH_AFTER_S`, so a request only registers here; one timer
    per process looks every `WATCH_AFTER_S` for requests that have waited that long and starts
    watching their connections then. A quick request costs no task and no timer."""

    def __init__(self) -> None:
        self._start(None)

    def _start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop
        #: Work not watched yet, oldest first: (the server's `receive`, when it started).
        self._waiting: dict[asyncio.Task[Any], tuple[Receive, float]] = {}
        self._watching: dict[asyncio.Task[Any], asyncio.Task[None]] = {}
        #: Tasks this watch cancelled because their caller left.
        self._left: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """The answers and streams under way, watched or not yet."""
        return len(self._waiting) + len(self._watching)

    async def answer(self, request: Request, answer: Awaitable[Response]) -> Response:
        """`answer`, cancelled if the caller disconnects (then a 499 nobody reads)."""
        try:
            return await self.watched(request.receive, answer)
        except CallerLeft:
            log.info("the caller left before the answer; its call to the endpoint was cancelled")
            return Response(status_code=499)  # nobody reads it: the connection is gone

    async def watched(self, receive: Receive, work: Awaitable[T]) -> T:
        """`work`, run in this task and cancelled if the caller disconnects (`receive` is the
        server's, after the request's body): then `CallerLeft` is raised."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests start several): nothing carries over
            self._start(loop)
        working = cast(asyncio.Task[Any], asyncio.current_task())
        self._waiting[working] = (receive, loop.time())
        if self._timer is None:
            self._timer = loop.call_later(WATCH_AFTER_S, self._look)
        try:
            return await work
        except asyncio.CancelledError:
            if working not in self._left or working.uncancel() > 0:
                raise  # not ours: a server shutdown goes on up
            raise CallerLeft from None
        finally:
            if self._waiting.pop(working, None) is None:
                watching = self._watching.pop(working, None)
                if watching is not None:
                    watching.cancel()
                self._left.discard(working)

    def _look(self) -> None:
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        self._timer = None
        started_by = loop.time() - WATCH_AFTER_S
        while self._waiting:
            working, (receive, started) = next(iter(self._waiting.items()))
            if started > started_by:
                break
            del self._waiting[working]
            self._watching[working] = loop.create_task(self._watch(receive, working))
        if self._waiting:
            self._timer = loop.call_later(WATCH_AFTER_S, self._look)

    async def _watch(self, receive: Receive, working: asyncio.Task[Any]) -> None:
        # The body has been read: the server's next message is the disconnect.
        if (await receive())["type"] == "http.disconnect":
            self._left.add(working)
            working.cancel()


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for item in rest:
        yield item


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _respond(request: Request, handler: Handler) -> Response:
    request_id = bind_request_id(request.headers.get(REQUEST_ID_HEADER))
    bind_caller_trace(request.headers)
    try:
        response = await handler(request)
    except GatewayError as exc:
        log.info("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.code)
        response = error_response(exc)
    except Exception:
        log.exception("%s %s failed unexpectedly", request.method, request.url.path)
        response = internal_error_response()
    response.raw_headers.append((_REQUEST_ID_KEY, request_id.encode("latin-1")))
    return response


def _append_headers(response: Response, headers: Mapping[str, str]) -> None:
    """Add headers the response does not have yet: onto its raw list, as `MutableHeaders` would
    after looking for each name among those already there."""
    response.raw_headers.extend(
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    )


def internal_error_response() -> JSONResponse:
    return JSONResponse(INTERNAL_ERROR_BODY, status_code=500)


def error_response(error: GatewayError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def require_json(content_type: str | None) -> None:
    """Refuse with 415 a body not declared as `application/json` (a UTF-8 charset allowed):
    every OpenAI client declares it, and a browser cannot send it cross-site without a CORS
    preflight, unlike `text/plain` or a form."""
    if content_type == "application/json":
        return
    media_type, _, parameters = (content_type or "").partition(";")
    if media_type.strip().lower() != "application/json":
        got = f"got {shown_header(content_type)}" if content_type else "it had none"
        raise UnsupportedMediaTypeError(
            f"The request body must be JSON, sent with the header Content-Type: application/json ({got})."
        )
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaTypeError(
                f"The gateway reads JSON as UTF-8 (got {shown_header(content_type or '')}): send the header "
                "Content-Type: application/json, with no charset or charset=utf-8."
            )


def shown_header(value: str, length: int = 100) -> str:
    """A caller's header value as it may appear in a message: quoted, control characters
    escaped, cut at `length` characters."""
    return ascii(value[:length]) + ("…" if len(value) > length else "")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not _ASCII_DIGITS.fullmatch(declared):
            raise InvalidRequestError("The Content-Length header is not a number.")
        if int(declared) > limit:
            raise _too_large(limit)
    # The server's messages read directly: Starlette's `stream()` is an async generator, whose
    # machinery costs more than the few messages a body comes in.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":  # http.disconnect
            raise InvalidRequestError("The client went away before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"The request body is larger than this gateway's limit of {limit} bytes "
        "(max_request_bytes in the gateway configuration)."
    )
