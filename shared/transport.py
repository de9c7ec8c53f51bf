"""The upstream transport: one pooled aiohttp session per process, created lazily."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from .errors import GatewayError, ServiceUnavailableError, UpstreamError, UpstreamTimeoutError
from .routing import UpstreamRequest

USER_AGENT = "azureml-chat-gateway/0.1"


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str
    retry_after: str | None


class UpstreamStream:
    """An endpoint's answer whose body is read as it arrives; `release()` it when done."""

    def __init__(self, response: aiohttp.ClientResponse, endpoint: str, read_timeout_s: float) -> None:
        self._response = response
        self._endpoint = endpoint
        self._read_timeout_s = read_timeout_s
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "")
        self.retry_after = response.headers.get("Retry-After")

    async def read(self) -> UpstreamResponse:
        """The whole body (for an error answer, or an endpoint that did not stream)."""
        try:
            body = await self._response.read()
        except Exception as exc:
            raise _error(exc, self._endpoint, self._read_timeout_s, streaming=False) from None
        return UpstreamResponse(self.status, body, self.content_type, self.retry_after)

    async def chunks(self, idle_s: Callable[[], float]) -> AsyncIterator[bytes]:
        """The body as it arrives; an empty chunk whenever nothing came for `idle_s()` seconds
        (nothing is lost: the next read goes on where this one stopped)."""
        content = self._response.content
        while True:
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

    def release(self) -> None:
        """Give the connection back to the pool, or close it if the body was not read."""
        self._response.release()


class Transport:
    """Sends upstream requests over one shared connection pool.

    The session is created on first use, inside the running event loop, and reused by every
    request of the process; `aclose` closes it.
    """

    def __init__(self, *, connection_limit: int = 0, connect_timeout_s: float = 10.0) -> None:
        """`connection_limit` 0: no pool-wide cap; each endpoint's `max_concurrency` bounds its
        connections instead, so one busy endpoint cannot starve the others."""
        self._connection_limit = connection_limit
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
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
        The caller releases it."""
        try:
            response = await self._client().post(
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=self._timeout(timeout_s, streaming),
            )
        except Exception as exc:
            raise _error(exc, request.endpoint, timeout_s, streaming=False) from None
        return UpstreamStream(response, request.endpoint, timeout_s)

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

    def release(self) -> None: ...


class Sender(Protocol):
    """What the pipeline uses of the transport (`Transport`); tests put a fake behind it."""

    async def send(self, request: UpstreamRequest, *, timeout_s: float, streaming: bool = True) -> Answer: ...

    async def aclose(self) -> None: ...
