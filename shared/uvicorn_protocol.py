"""uvicorn's HTTP/1.1 protocol (httptools) with bounds on what one caller can hold.

uvicorn with httptools reads headers of any size, waits forever for the rest of a request's
headers or body, and accepts every connection; a few slow or huge requests can hold the local
server's memory and sockets. `server_command` serves the gateway with this protocol, which adds
the bounds of the configuration's `local_server` section (the app hands them over in its
lifespan state): header bytes (431), the time to send the headers and the body (408), idle
kept-alive connections, and open connections (503). Refusals it writes itself are OpenAI error
bodies, as is its answer to bytes that are not HTTP (uvicorn's is plain text).

Each connection has one deadline at a time (headers, body, or idle keep-alive) and one timer,
re-armed only when it fires before the deadline: moving a deadline is an assignment, not a
timer cancelled and another scheduled (uvicorn schedules three per request; at thousands of
requests a second that is a measurable share of the event loop's work).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from .codec import dumps
from .config import LocalServerSettings
from .errors import error_body
from .ids import new_id

#: The key under which the app's lifespan state holds its `LocalServerSettings`.
LIMITS_STATE_KEY = "gateway.local_server"


class HeadWithBody:
    """A connection's transport that sends a response's head with the first write of its body.

    uvicorn writes a response's head and its body apart: two system calls, and two packets on a
    socket without Nagle's delay. Here the head waits for the next write and leaves with it, as
    aiohttp's server sends them; every other write goes out at once (a stream's events are not
    held). A head with no body write after it (HEAD, an empty body) leaves when the response
    completes, at `close`, or at the event loop's next turn, whichever comes first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif data.startswith(b"HTTP/"):  # uvicorn writes a head in one piece, status line first
            self._head = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():  # else nobody reads it
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One connection. A request's headers must arrive within `header_timeout_s` of its first
    byte (or of the connection, for the first request) and within `max_header_bytes`; its body
    within `body_timeout_s` of the headers."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: LocalServerSettings = app_state.get(LIMITS_STATE_KEY) or LocalServerSettings()
        self._reading_headers = True
        self._header_bytes = 0
        self._headers_completed = 0
        self._request_started = False
        #: When the current deadline passes (loop time) and what then happens; None: no deadline.
        self._deadline: float | None = None
        self._on_deadline: Callable[[], None] = self._idle_too_long
        #: The one timer, and when it fires; it may fire before the deadline and re-arm.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = HeadWithBody(transport, self.loop)  # type: ignore[assignment]
        if len(self.connections) > self.limits.max_connections:
            self.logger.warning("Refused a connection: %d are open.", len(self.connections) - 1)
            self._refuse(
                503,
                "The server has too many open connections (local_server.max_connections); try again shortly.",
                type="service_unavailable",
                code="too_many_connections",
            )
            return
        self._set_deadline(self.limits.header_timeout_s, self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._reading_headers and not self._request_started:
            self._request_started = True
            # A kept-alive connection's next request: its headers' time counts from now. (The
            # first request's counts from the connection, set when it was made.)
            if self._deadline is None or self._on_deadline == self._idle_too_long:
                self._set_deadline(self.limits.header_timeout_s, self._headers_too_slow)
        completed = self._headers_completed
        super().data_received(data)
        # httptools gathers a header before handing it over: count what it was fed instead.
        if self._reading_headers and completed == self._headers_completed:
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
                self._refuse(
                    431,
                    f"The request's headers are larger than {self.limits.max_header_bytes} bytes "
                    "(local_server.max_header_bytes).",
                    code="request_headers_too_large",
                )

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._headers_completed += 1
        self._set_deadline(self.limits.body_timeout_s, self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel_deadline()
        self._reading_headers = True
        self._header_bytes = 0
        self._request_started = False

    def on_response_complete(self) -> None:
        # uvicorn's, with the idle keep-alive as this connection's deadline instead of a timer
        # of its own.
        self.server_state.total_requests += 1
        cast(HeadWithBody, self.transport).flush()  # a head with no body written after it
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._deadline is None:  # the next request's first bytes may have come already
            self._set_deadline(self.limits.keepalive_timeout_s, self._idle_too_long)

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "The request is not valid HTTP/1.1.", code="invalid_http")

    def _idle_too_long(self) -> None:
        self.transport.close()

    def _headers_too_slow(self) -> None:
        if not self._request_started or self._busy():
            self.transport.close()  # an idle connection, or one still answering: nothing to say
            return
        self._refuse(
            408,
            f"The request's headers took longer than {self.limits.header_timeout_s:g} s "
            "(local_server.header_timeout_s).",
            code="request_timeout",
        )

    def _body_too_slow(self) -> None:
        cycle = self.cycle
        if cycle is None or self._busy() or cycle.response_started:
            self.transport.close()
        else:
            self._refuse(
                408,
                f"The request's body took longer than {self.limits.body_timeout_s:g} s "
                "(local_server.body_timeout_s).",
                code="request_timeout",
            )
        if cycle is not None:
            # The app, waiting for the rest of the body, sees the caller leave; its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()

    def _busy(self) -> bool:
        """Another request's answer is under way on this connection (a pipelined request)."""
        return bool(self.pipeline) or (
            self._reading_headers and self.cycle is not None and not self.cycle.response_complete
        )

    def _refuse(self, status: int, message: str, *, code: str, type: str = "invalid_request_error") -> None:
        """Answer `status` with an OpenAI error body and close the connection."""
        self._cancel_deadline()
        body = dumps(error_body(message, type=type, code=code))
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: %s\r\n" % new_id().encode(),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _set_deadline(self, seconds: float, on_expiry: Callable[[], None]) -> None:
        deadline = self.loop.time() + seconds
        self._deadline, self._on_deadline = deadline, on_expiry
        if self._timer is not None and self._timer_at <= deadline:
            return  # it fires first, and re-arms for the rest
        if self._timer is not None:
            self._timer.cancel()
        self._arm(deadline)

    def _cancel_deadline(self) -> None:
        self._deadline = None  # the timer, when it fires, finds nothing due

    def _arm(self, when: float) -> None:
        self._timer, self._timer_at = self.loop.call_at(when, self._timer_fired), when

    def _timer_fired(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if self.loop.time() < deadline:
            self._arm(deadline)
            return
        self._deadline = None
        self._on_deadline()
