"""The upstream transport: one pooled aiohttp session per process, created lazily."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from .errors import ServiceUnavailableError, UpstreamError, UpstreamTimeoutError
from .routing import UpstreamRequest

USER_AGENT = "azureml-chat-gateway/0.1"


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str
    retry_after: str | None


class Transport:
    """Sends upstream requests over one shared connection pool.

    The session is created on first use, inside the running event loop, and reused by every
    request of the process; `aclose` closes it.
    """

    def __init__(self, *, connection_limit: int = 256, connect_timeout_s: float = 10.0) -> None:
        self._connection_limit = connection_limit
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._connection_limit, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": USER_AGENT}, raise_for_status=False
            )
        return self._session

    def _timeout(self, total_s: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(total_s)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(
                total=total_s, sock_connect=min(total_s, self._connect_timeout_s)
            )
            self._timeouts[total_s] = timeout
        return timeout

    async def post(self, request: UpstreamRequest, *, timeout_s: float) -> UpstreamResponse:
        """POST the request and read the whole answer, whatever its status."""
        name = request.endpoint
        try:
            async with self._client().post(
                request.url, data=request.body, headers=request.headers, timeout=self._timeout(timeout_s)
            ) as response:
                body = await response.read()
                return UpstreamResponse(
                    response.status,
                    body,
                    response.headers.get("Content-Type", ""),
                    response.headers.get("Retry-After"),
                )
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"endpoint {name!r} did not answer within its timeout_s ({timeout_s:g} s)"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise ServiceUnavailableError(
                f"endpoint {name!r} cannot be reached ({_reason(exc)})", code="upstream_unreachable"
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"endpoint {name!r} broke the connection ({type(exc).__name__})",
                code="upstream_connection_error",
            ) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _reason(exc: aiohttp.ClientConnectorError) -> str:
    os_error = exc.os_error
    return os_error.strerror or type(os_error).__name__ if os_error else type(exc).__name__
