"""The emulator's aiohttp application: routes, key check, recording and fault injection."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web

from .faults import HANG_LIMIT_S, Fault, FaultQueue
from .protocols import (
    DEDICATED_SHAPES,
    DEFAULT_MODEL,
    DONE_EVENT,
    BadRequest,
    DedicatedShape,
    chat_completion,
    dedicated_answer,
    parse_dedicated,
    parse_serverless,
    reasoning_for,
    stream_events,
)
from .url_forms import COGNITIVE_REFUSAL, MODEL_MISSING, UrlForm, apply_extra_parameters

REDACTED = "<redacted>"
# Header (and query parameter) names whose values may carry a credential: `authorization`
# and `api-key` carry keys (which one depends on the URL form); the others are redacted just in case.
SENSITIVE_NAMES = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "ocp-apim-subscription-key",
        "cookie",
    }
)
DEPLOYMENT_HEADER = "azureml-model-deployment"
# Scoring bodies can carry base64 images; aiohttp's default limit (1 MiB) is too small.
MAX_BODY_BYTES = 64 * 1024 * 1024
_HANG_POLL_S = 0.05
#: How long a `break_stream_after` fault waits after its last event before dropping the connection.
BREAK_PAUSE_S = 0.05
MAX_RECORDED = 10_000


@dataclass(frozen=True)
class RecordedRequest:
    """One scoring request as the emulator received it, minus any credential."""

    method: str
    path: str
    query: dict[str, str]
    deployment: str | None
    authorized: bool
    headers: dict[str, str]
    body: Any
    raw_body: bytes

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field except ``raw_body``."""
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "deployment": self.deployment,
            "authorized": self.authorized,
            "headers": self.headers,
            "body": self.body,
        }


class Emulator:
    """An in-process imitation of Azure ML online endpoints (dedicated and serverless).

    ``app`` serves both protocols behind ``key``, sent in the header each URL form takes
    (see :mod:`emulator.url_forms`), and Entra tokens given to ``allow_token``; ``requests`` records every
    scoring request in arrival order; ``add_fault`` scripts misbehaviour for the next ones;
    ``open_streams`` counts the streamed answers being written right now.
    All state lives on the event loop that runs ``app``: touch it from that loop only.
    """

    def __init__(self, key: str, *, dedicated_shape: str = "output", stream_delay_s: float = 0.0) -> None:
        if not key:
            raise ValueError("key must be a non-empty string")
        if dedicated_shape not in DEDICATED_SHAPES:
            choices = ", ".join(DEDICATED_SHAPES)
            raise ValueError(f"dedicated_shape must be one of {choices}, not {dedicated_shape!r}")
        if stream_delay_s < 0:
            raise ValueError("stream_delay_s must not be negative")
        self._key = key.encode()
        self._tokens: set[bytes] = set()
        self._dedicated_shape = cast(DedicatedShape, dedicated_shape)
        self._stream_delay_s = stream_delay_s
        self._faults = FaultQueue()
        self._open_streams = 0
        self.requests: list[RecordedRequest] = []
        self.app = self._build_app()

    def __repr__(self) -> str:
        # Deliberately not the dataclass-style repr of every attribute: the key stays out.
        return f"Emulator(dedicated_shape={self._dedicated_shape!r}, stream_delay_s={self._stream_delay_s!r})"

    @property
    def open_streams(self) -> int:
        """How many streamed (SSE) answers are being written right now.

        A stream counts from the moment its handler starts it until it ends for any reason:
        ``[DONE]`` written, cut by a ``break_stream_after`` fault, or the client gone (noticed
        before each event, so within one ``stream_delay_s`` of the disconnect).
        """
        return self._open_streams

    def rotate_key(self, key: str) -> None:
        """Accept only `key` from now on, as after a key rotation on a real endpoint."""
        if not key:
            raise ValueError("key must be a non-empty string")
        self._key = key.encode()

    def allow_token(self, token: str) -> None:
        """Accept `token` as an Entra ID token, `Authorization: Bearer <token>`, on every URL
        form (Azure takes tokens in that header everywhere, keys only where the form says)."""
        if not token:
            raise ValueError("token must be a non-empty string")
        self._tokens.add(f"Bearer {token}".encode())

    def add_fault(self, fault: Fault) -> None:
        """Apply a copy of ``fault`` to the next ``fault.times`` scoring requests it matches."""
        self._faults.add(fault)

    def clear(self) -> None:
        """Forget recorded requests and pending faults."""
        self.requests.clear()
        self._faults.clear()

    # --- application ------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/_emulator/health", self._health)
        app.router.add_get("/_emulator/requests", self._list_requests)
        app.router.add_delete("/_emulator/requests", self._clear_requests)
        app.router.add_post("/_emulator/faults", self._add_faults)
        for path in ("/score", "/{prefix:.*}/score"):
            app.router.add_post(path, self._score)
        # Serverless: Azure OpenAI / Foundry's own forms first (their paths also end in
        # /v1/chat/completions), then the OpenAI-style path and the model inference API's.
        for path in (
            "/openai/v1/chat/completions",
            "/{prefix:.*}/openai/v1/chat/completions",
            "/openai/deployments/{deployment}/chat/completions",
            "/{prefix:.*}/openai/deployments/{deployment}/chat/completions",
            "/v1/chat/completions",
            "/{prefix:.*}/v1/chat/completions",
            "/models/chat/completions",
            "/{prefix:.*}/models/chat/completions",
        ):
            app.router.add_post(path, self._chat_completions)
        return app

    # --- control endpoints (no key: local tooling only) -------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _list_requests(self, request: web.Request) -> web.Response:
        return web.json_response([recorded.to_json() for recorded in self.requests])

    async def _clear_requests(self, request: web.Request) -> web.Response:
        self.clear()
        return web.Response(status=204)

    async def _add_faults(self, request: web.Request) -> web.Response:
        try:
            data = json.loads(await request.read())
            if not isinstance(data, list):
                raise ValueError("the body must be a JSON list of faults")
            faults = [Fault.from_json(item) for item in data]
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            return _error(400, "BadRequest", str(exc))
        for fault in faults:
            self.add_fault(fault)
        return web.json_response({"added": len(faults), "pending": len(self._faults)})

    # --- scoring ----------------------------------------------------------------------

    async def _score(self, request: web.Request) -> web.StreamResponse:
        return await self._scoring(request, self._answer_dedicated)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._scoring(request, self._answer_serverless)

    async def _scoring(
        self,
        request: web.Request,
        answer: Callable[[web.Request, Any, Fault | None], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Record, then fault, then key check, then the protocol's own answer."""
        raw_body = await request.read()
        body = _json_or_none(raw_body)
        authorized = self._is_authorized(request, UrlForm.of(request.path))
        if len(self.requests) >= MAX_RECORDED:  # bounded memory under benchmarks and make dev
            del self.requests[: MAX_RECORDED // 2]
        self.requests.append(_record(request, raw_body, body, authorized))
        fault = self._faults.take(request.path)
        if fault is not None:
            response = await _apply_fault(request, fault)
            if response is not None:
                return response
        if not authorized:
            form = UrlForm.of(request.path)
            if form is UrlForm.AZUREML:
                return _error(401, "Unauthorized", "invalid or missing key")
            return _error(401, "401", COGNITIVE_REFUSAL)
        return await answer(request, body, fault)

    def _is_authorized(self, request: web.Request, form: UrlForm) -> bool:
        authorization = request.headers.get("Authorization", "").encode()
        if any(hmac.compare_digest(authorization, token) for token in self._tokens):
            return True
        if "authorization" in form.key_headers and hmac.compare_digest(authorization, b"Bearer " + self._key):
            return True
        api_key = request.headers.get("api-key", "").encode()
        return "api-key" in form.key_headers and hmac.compare_digest(api_key, self._key)

    async def _answer_dedicated(
        self, request: web.Request, body: Any, fault: Fault | None
    ) -> web.StreamResponse:
        try:
            call = parse_dedicated(body)
        except BadRequest as exc:
            return _error(400, "BadRequest", str(exc))
        answer = dedicated_answer(
            call.reply(),
            self._dedicated_shape,
            completion_id=_completion_id(),
            created=_now(),
            model=DEFAULT_MODEL,
        )
        return web.json_response(answer)

    async def _answer_serverless(
        self, request: web.Request, body: Any, fault: Fault | None
    ) -> web.StreamResponse:
        form = UrlForm.of(request.path)
        missing = form.missing_query(request.query)
        if missing:
            return _error(404, "404", f"Resource not found ({missing})")
        if form.needs_model and isinstance(body, dict) and not body.get("model"):
            return _error(400, "BadRequest", MODEL_MISSING, status_field=True)
        body, problem = apply_extra_parameters(form, body, request.headers.get("extra-parameters"))
        if problem:
            return _error(422, "Invalid input", problem, status_field=True)
        deployment = request.match_info.get("deployment")
        if deployment and isinstance(body, dict) and "model" not in body:
            body = {**body, "model": deployment}
        try:
            call = parse_serverless(body)
            reply = call.reply()
        except BadRequest as exc:
            return _error(400, "Bad Request", str(exc), status_field=True)
        reasoning = reasoning_for(call.model, reply)
        completion_id, created = _completion_id(), _now()
        if not call.stream:
            return web.json_response(
                chat_completion(
                    reply,
                    completion_id=completion_id,
                    created=created,
                    model=call.model,
                    choices=call.choices,
                    top_logprobs=call.top_logprobs,
                    reasoning=reasoning,
                )
            )
        events = stream_events(
            reply,
            completion_id=completion_id,
            created=created,
            model=call.model,
            include_usage=call.include_usage,
            choices=call.choices,
            top_logprobs=call.top_logprobs,
            reasoning=reasoning,
        )
        break_after = fault.break_stream_after if fault is not None else None
        return await self._stream(request, events, break_after=break_after)

    async def _stream(
        self, request: web.Request, events: list[bytes], *, break_after: int | None
    ) -> web.StreamResponse:
        """Send ``events`` then ``[DONE]``; with ``break_after``, drop the connection after
        that many events instead. Stops early, without error, once the client has gone.
        Counted in ``open_streams`` for its whole duration."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        if break_after is not None:
            events = events[:break_after]
        else:
            events = [*events, DONE_EVENT]
        self._open_streams += 1
        try:
            await response.prepare(request)
            for index, event in enumerate(events):
                if index and self._stream_delay_s:
                    await asyncio.sleep(self._stream_delay_s)
                # aiohttp does not cancel the handler when the client leaves (outside
                # TestServer), so look before each write rather than stream into the void.
                if _client_gone(request):
                    return response
                # One write per event: aiohttp sends each as its own chunk, so clients see
                # the stream progress instead of one buffered blob.
                await response.write(event)
            if break_after is not None:
                await asyncio.sleep(max(self._stream_delay_s, BREAK_PAUSE_S))
                _drop_connection(request)
                return response
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away mid-write; there is no one left to answer
        finally:
            self._open_streams -= 1
        return response


# --- helpers --------------------------------------------------------------------------


def _record(request: web.Request, raw_body: bytes, body: Any, authorized: bool) -> RecordedRequest:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return RecordedRequest(
        method=request.method,
        path=request.path,
        query=_redacted(dict(request.query)),
        deployment=request.headers.get(DEPLOYMENT_HEADER),
        authorized=authorized,
        headers=_redacted(headers),
        body=body,
        raw_body=raw_body,
    )


def _redacted(values: Mapping[str, str]) -> dict[str, str]:
    return {name: REDACTED if name.lower() in SENSITIVE_NAMES else value for name, value in values.items()}


def _json_or_none(raw_body: bytes) -> Any:
    try:
        return json.loads(raw_body, parse_constant=_not_json)
    except (ValueError, RecursionError):  # ValueError covers JSONDecodeError and UnicodeDecodeError
        return None


def _not_json(constant: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON has not: such a body is not JSON.
    raise ValueError(f"{constant} is not JSON")


async def _apply_fault(request: web.Request, fault: Fault) -> web.StreamResponse | None:
    """Apply ``fault``; the response that replaces the normal answer, or None to answer normally."""
    if fault.latency_s:
        await asyncio.sleep(fault.latency_s)
    if fault.hang:
        await _wait_for_disconnect(request, HANG_LIMIT_S)
        _drop_connection(request)
        # Never delivered: the connection is gone. aiohttp just needs something to return.
        return web.Response(status=504)
    if not fault.answers:
        return None
    status = fault.status if fault.status is not None else 200
    body = fault.body if fault.body is not None else _default_fault_body(status)
    headers = {"Content-Type": fault.content_type}
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    return web.Response(status=status, body=body.encode() if isinstance(body, str) else body, headers=headers)


def _default_fault_body(status: int) -> bytes:
    if status < 400:
        return b""
    try:
        code = HTTPStatus(status).phrase.replace(" ", "")
    except ValueError:
        code = "Error"
    return json.dumps({"error": {"code": code, "message": f"emulated fault: HTTP {status}"}}).encode()


async def _wait_for_disconnect(request: web.Request, limit_s: float) -> None:
    # aiohttp does not cancel handlers when the client leaves (handler_cancellation is off
    # by default), so watch the transport instead.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        if _client_gone(request):
            return
        await asyncio.sleep(_HANG_POLL_S)


def _client_gone(request: web.Request) -> bool:
    """Whether the connection ``request`` came on is closed or closing."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _drop_connection(request: web.Request) -> None:
    # close() (not abort()) so the events already written still reach the client first.
    transport = request.transport
    if transport is not None:
        transport.close()


def _error(status: int, code: str, message: str, *, status_field: bool = False) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if status_field:
        error["status"] = status
    return web.json_response({"error": error}, status=status)


def _completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def _now() -> int:
    return int(time.time())
