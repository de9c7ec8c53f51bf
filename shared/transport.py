"""The upstream transport: one pooled aiohttp session per process, created lazily.

What an endpoint sends is bounded here: whole answers and error bodies by their size after
decompression, stream events by theirs, redirects refused, `Retry-After` kept only as seconds.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from .config import DEFAULT_MAX_RESPONSE_BYTES
from .errors import GatewayError, ServiceUnavailableError, UpstreamError, UpstreamTimeoutError
from .tracecontext import upstream_traceparent

if TYPE_CHECKING:
    import aiohttp

USER_AGENT = "azureml-chat-gateway/0.1"
#: An error answer is read for its message only: what is past this is not read.
MAX_ERROR_BODY_BYTES = 64 * 1024
#: A `Retry-After` longer than a day is passed on as a day.
MAX_RETRY_AFTER_S = 86400


@dataclass(slots=True)
class UpstreamRequest:
    endpoint: str
    url: str
    headers: dict[str, str]
    body: bytes

    def __repr__(self) -> str:  # the headers hold the key
        return f"UpstreamRequest(endpoint={self.endpoint!r}, url={self.url!r}, body={len(self.body)} bytes)"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds (ASCII digits) or an HTTP
    date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if _DELAY_SECONDS.match(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


#: `str.isdigit` also takes `²` and other digits that `float` does not read.
_DELAY_SECONDS = re.compile(r"[0-9]{1,15}\Z")


@dataclass(frozen=True, slots=True)
class Limits:
    """How much of an endpoint's answer the gateway reads, counted after decompression."""

    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_error_body_bytes: int = MAX_ERROR_BODY_BYTES


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str
    retry_after: str | None


class UpstreamStream:
    """An endpoint's answer whose body is read as it arrives; `release()` it when done."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        endpoint: str,
        read_timeout_s: float,
        limits: Limits,
    ) -> None:
        self._response = response
        self._endpoint = endpoint
        self._read_timeout_s = read_timeout_s
        self._limits = limits
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "")
        #: The endpoint's `Retry-After` as whole seconds, or None if it sent none it could mean.
        self.retry_after = retry_after_seconds(response.headers.get("Retry-After"))

    async def read(self) -> UpstreamResponse:
        """The whole body (for an error answer, or an endpoint that did not stream), at most
        `max_response_bytes` of it; of an error answer, its first `max_error_body_bytes`."""
        error = self.status >= 400
        limit = self._limits.max_error_body_bytes if error else self._limits.max_response_bytes
        try:
            body, complete = await _read_at_most(self._response.content, limit)
        except Exception as exc:
            raise _error(exc, self._endpoint, self._read_timeout_s, streaming=False) from None
        if not complete and not error:
            raise UpstreamError(
                f"endpoint {self._endpoint!r} answered with more than {limit} bytes "
                "(max_response_bytes); if its answers are really this large, raise "
                "max_response_bytes in the gateway configuration",
                code="upstream_response_too_large",
            )
        return UpstreamResponse(self.status, body, self.content_type, self.retry_after)

    async def chunks(self, idle_s: Callable[[], float]) -> AsyncIterator[bytes]:
        """The body as it arrives; an empty chunk whenever nothing came for `idle_s()` seconds
        (nothing is lost: the next read goes on where this one stopped)."""
        content = self._response.content
        while True:
            try:
                buffered = content.read_nowait()  # what has come already needs no timer
            except Exception as exc:
                raise _error(exc, self._endpoint, self._read_timeout_s, streaming=True) from None
            if buffered:
                yield buffered
                continue
            if content.at_eof():
                return
            idle = asyncio.timeout(idle_s())
            try:
                async with idle:
                    chunk = await content.readany()
            except TimeoutError as exc:
                if not idle.expired():  # the endpoint's own read timeout
                    raise _error(exc, self._endpoint, self._read_timeout_s, streaming=True) from None
                chunk = None
            except Exception as exc:
                raise _error(exc, self._endpoint, self._read_timeout_s, streaming=True) from None
            if chunk is None:
                yield b""
            elif chunk:
                yield chunk
            else:  # the end of the body
                return

    async def drain(self, max_bytes: int = 64 * 1024, timeout_s: float = 0.25) -> None:
        """Read what is left of the body after the answer is complete (what follows a stream's
        `[DONE]`), so that `release()` returns the connection to the pool instead of closing it
        and the next call needs no new TLS handshake. Past either bound it gives up: the
        connection is then closed."""
        content = self._response.content
        try:
            async with asyncio.timeout(timeout_s):
                while max_bytes > 0 and (chunk := await content.readany()):
                    max_bytes -= len(chunk)
        except (TimeoutError, aiohttp.ClientError):
            pass

    def release(self) -> None:
        """Give the connection back to the pool, or close it if the body was not read."""
        self._response.release()


class Transport:
    """Sends upstream requests over one shared connection pool.

    The session is created on first use, inside the running event loop, and reused by every
    request of the process; `aclose` closes it.
    """

    def __init__(
        self,
        *,
        connection_limit: int = 0,
        connect_timeout_s: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_error_body_bytes: int = MAX_ERROR_BODY_BYTES,
    ) -> None:
        """`connection_limit` 0: no pool-wide cap; each endpoint's `max_concurrency` bounds its
        connections instead, so one busy endpoint cannot starve the others. The `max_*_bytes`
        bound what is read of an answer (see `Limits`; one stream event is bounded by the relay's
        decoder)."""
        self._connection_limit = connection_limit
        self._connect_timeout_s = connect_timeout_s
        self._limits = Limits(max_response_bytes, max_error_body_bytes)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # aiohttp (0.2-0.3 s of a cold start) is imported by the first call, not at start-up:
            # the hosts warm it in the background (shared.runtime.warm_up). Everything else here
            # that names aiohttp runs after this.
            global aiohttp
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self._connection_limit, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": USER_AGENT},
                raise_for_status=False,
                # Keep no cookie an endpoint sets: the next request is another caller's.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _timeout(self, timeout_s: float, streaming: bool) -> aiohttp.ClientTimeout:
        return _client_timeout(timeout_s, min(timeout_s, self._connect_timeout_s), streaming)

    async def send(
        self, request: UpstreamRequest, *, timeout_s: float, streaming: bool = True
    ) -> UpstreamStream:
        """POST the request; the answer's status and headers, its body to be read as it comes.
        The caller releases it. A redirect is never followed: the request carries the key and
        the conversation, which go only to `endpoint_url`."""
        traceparent = upstream_traceparent()
        if traceparent is not None:
            request.headers["traceparent"] = traceparent
        try:
            response = await self._client().post(
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=self._timeout(timeout_s, streaming),
                allow_redirects=False,
            )
        except Exception as exc:
            raise _error(exc, request.endpoint, timeout_s, streaming=False) from None
        if 300 <= response.status < 400:
            response.release()
            raise redirect_error(request.endpoint, response.status, response.headers.get("Location"))
        return UpstreamStream(response, request.endpoint, timeout_s, self._limits)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@functools.lru_cache(maxsize=64)  # the same few per endpoint, request after request
def _client_timeout(timeout_s: float, connect_s: float, streaming: bool) -> aiohttp.ClientTimeout:
    """A whole call bounded by `timeout_s`; a stream by `timeout_s` between two reads."""
    if streaming:
        return aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=timeout_s)
    return aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_s)


async def _read_at_most(content: aiohttp.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Up to `limit` bytes of a body as aiohttp hands them over (decompressed), and whether
    that was all of it. Never holds more than `limit` plus one read."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await content.readany()
        if not chunk:
            return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), True
        size += len(chunk)
        if size > limit:
            chunks.append(chunk[: limit - size + len(chunk)])
            return b"".join(chunks), False
        chunks.append(chunk)


def retry_after_seconds(value: str | None) -> str | None:
    """An endpoint's `Retry-After` as the caller may get it: whole seconds (an HTTP date
    converted, at most a day), or None for anything else."""
    seconds = parse_retry_after(value)
    if seconds is None:
        return None
    return str(min(math.ceil(seconds), MAX_RETRY_AFTER_S))


def redirect_error(endpoint: str, status: int, location: str | None) -> UpstreamError:
    """The 502 for an endpoint that answered with a redirect, naming where it pointed."""
    error = UpstreamError(
        f"endpoint {endpoint!r} answered HTTP {status}, a redirect to {_location_host(location)}, "
        "which the gateway does not follow (it would carry the key and the conversation); "
        "set this endpoint's endpoint_url to the URL that answers",
        code="upstream_redirect",
    )
    error.upstream_status = status
    return error


_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}\Z|\[[0-9A-Fa-f:.]{2,45}\]\Z")


def _location_host(location: str | None) -> str:
    if not location:
        return "nowhere (no Location header)"
    try:
        netloc = urlsplit(location.strip()).netloc
    except ValueError:
        return "an unreadable host"
    if not netloc:
        return "another path on the same host"
    host = netloc.rpartition("@")[2]
    host = host if host.startswith("[") else host.partition(":")[0]
    return f"host {host!r}" if _HOST.match(host) else "an unreadable host"


def _error(exc: Exception, endpoint: str, timeout_s: float, *, streaming: bool) -> Exception:
    """The gateway error for a transport failure; anything else is returned as it was."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, TimeoutError):
        what = "sent nothing for" if streaming else "did not answer within"
        return UpstreamTimeoutError(
            f"endpoint {endpoint!r} {what} its timeout_s ({timeout_s:g} s)", transient=True
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ServiceUnavailableError(
            f"endpoint {endpoint!r} cannot be reached ({_reason(exc)})",
            code="upstream_unreachable",
            transient=True,
        )
    if isinstance(exc, aiohttp.ClientError):
        what = "broke the stream" if streaming else "broke the connection"
        return UpstreamError(
            f"endpoint {endpoint!r} {what} ({type(exc).__name__})",
            code="upstream_connection_error",
            transient=True,
        )
    if isinstance(exc, ValueError):  # aiohttp refusing a header or URL value of the request
        return UpstreamError(
            f"the request to endpoint {endpoint!r} could not be sent ({type(exc).__name__}); "
            "check its configuration",
            code="upstream_request_invalid",
        )
    return exc


def _reason(exc: aiohttp.ClientConnectorError) -> str:
    os_error = exc.os_error
    return os_error.strerror or type(os_error).__name__ if os_error else type(exc).__name__


class Answer(Protocol):
    """What the pipeline and the relay use of an endpoint's answer (`UpstreamStream`)."""

    status: int
    content_type: str
    retry_after: str | None

    async def read(self) -> UpstreamResponse: ...

    def chunks(self, idle_s: Callable[[], float]) -> AsyncIterator[bytes]: ...

    async def drain(self) -> None: ...

    def release(self) -> None: ...


class Sender(Protocol):
    """What the pipeline uses of the transport (`Transport`); tests put a fake behind it."""

    async def send(self, request: UpstreamRequest, *, timeout_s: float, streaming: bool = True) -> Answer: ...

    async def aclose(self) -> None: ...
