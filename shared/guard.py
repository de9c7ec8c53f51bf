"""The local server's middleware for what browsers may do: requests for another `Host` are
refused, and CORS refusals are OpenAI errors.

A web page on any site can make a browser send requests to 127.0.0.1; by DNS rebinding (its own
name resolving to 127.0.0.1) it can even read the answers, spending the developer's credentials.
Such a page's requests carry the page's own name in `Host`. (Its cross-site POSTs are refused
by the handlers' `Content-Type: application/json` rule, which browsers do not send cross-site
without a CORS preflight.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import GatewayError, InvalidRequestError, MisdirectedRequestError
from .http import REQUEST_ID_HEADER, error_response, shown_header
from .logs import bind_request_id, get_logger

log = get_logger("gateway.guard")

#: The names every local server answers to, with any port.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})

#: Answered whatever the Host: it reveals nothing, and container probes (Kubernetes, Azure
#: Container Apps) call it by the container's IP address.
HEALTH_PATH = "/api/health"

_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::[0-9]{1,5})?$")


class HostGuard:
    """ASGI middleware: 421 for HTTP requests whose `Host` names neither a loopback address nor
    one of `allowed_hosts` (exact names, or `.example.com` for that domain and its subdomains)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        allowed = [host.lower().rstrip(".") for host in allowed_hosts]
        self._names = LOOPBACK_HOSTS | {h for h in allowed if not h.startswith(".")}
        self._domains = tuple(h for h in allowed if h.startswith("."))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        if len(hosts) == 1 and self.allows(hosts[0].decode("latin-1")):
            await self.app(scope, receive, send)
            return
        shown = shown_header(hosts[0].decode("latin-1")) if len(hosts) == 1 else f"{len(hosts)} Host headers"
        log.info("%s %s -> 421: Host %s is not this server's", scope["method"], scope["path"], shown)
        error = MisdirectedRequestError(
            f"This server does not answer to Host {shown}: it answers to localhost, 127.0.0.1, [::1] "
            "and the names in allowed_hosts. If the name is this server's own (a container's), add "
            "it to allowed_hosts in the gateway configuration."
        )
        await _answer(error, scope, receive, send)

    def allows(self, host: str) -> bool:
        match = _HOST.match(host.lower())
        if match is None:
            return False
        name = match.group(1).rstrip(".")
        if name in self._names:
            return True
        return any(name.endswith(domain) or name == domain[1:] for domain in self._domains)


async def _answer(error: GatewayError, scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(error)
    response.headers[REQUEST_ID_HEADER] = bind_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
    await response(scope, receive, send)


class OpenAICORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, whose refused preflight is an OpenAI error (Starlette's is
    `400 text/plain`) that says what was refused."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        origin = request_headers["origin"]
        method = request_headers["access-control-request-method"]
        refused = []
        if not self.is_allowed_origin(origin):
            refused.append(f"the origin {shown_header(origin)} is not in cors.allowed_origins")
        if method not in self.allow_methods:
            refused.append(f"the method {shown_header(method)} is not one of {', '.join(self.allow_methods)}")
        if "access-control-request-private-network" in request_headers:
            refused.append("a public page may not call a server on a private network")
        error = InvalidRequestError(
            f"CORS preflight refused: {'; '.join(refused) or bytes(response.body).decode()}.",
            code="cors_refused",
        )
        shaped = error_response(error)
        for name, value in response.headers.items():
            if name.startswith("access-control-") or name == "vary":
                shaped.headers[name] = value
        shaped.headers[REQUEST_ID_HEADER] = bind_request_id(request_headers.get(REQUEST_ID_HEADER))
        return shaped
