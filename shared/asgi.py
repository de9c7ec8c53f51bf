"""The local server: the shared handlers as an ASGI app for uvicorn (or any ASGI server).

    uvicorn --factory shared.asgi:create_app --port 7071

Configured by the same environment variables as the Azure Functions app. Also how the gateway
runs in a container. It checks no caller credential: bind it to 127.0.0.1, or put it behind
something that does. It answers only requests whose `Host` names it (see `shared.guard`), and
`server_command` bounds what one caller can hold (see `shared.uvicorn_protocol`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .callers import EntraCallers
from .codec import dumps
from .config import GatewayConfig
from .errors import ConfigError, GatewayError, MethodNotAllowedError, NotFoundError
from .guard import HostGuard, OpenAICORSMiddleware
from .http import REQUEST_ID_HEADER, GatewayApi, error_response, internal_error_response
from .limits import RATE_LIMIT_HEADERS
from .logs import bind_request_id
from .routes import ROUTES, describe_routes
from .runtime import tune_gc, warm_up
from .uvicorn_protocol import LIMITS_STATE_KEY

#: The example front-end: streams an answer with plain fetch and SSE parsing.
CHAT_PAGE = Path(__file__).parent / "web" / "chat.html"


def server_command(port: int, *options: str, host: str = "127.0.0.1") -> list[str]:
    """The command line that serves `create_app` with uvicorn (as `make dev` runs it). The
    gateway reads no client address and need not name its server, so uvicorn's proxy-headers
    middleware and `server` header are left out; it serves no WebSocket. Its HTTP protocol
    bounds what one caller can hold (`local_server` in the configuration)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "shared.asgi:create_app",
        "--host",
        host,
        "--port",
        str(port),
        "--no-proxy-headers",
        "--no-server-header",
        "--http",
        "shared.uvicorn_protocol:BoundedHttpToolsProtocol",
        "--ws",
        "none",
        "--lifespan",
        "on",
        *options,
    ]


def create_app(environ: Mapping[str, str] | None = None) -> ASGIApp:
    """Build the app; the configuration is loaded and validated here, once. A configuration
    that cannot work stops the process with the message alone, no traceback."""
    _configure_logging()
    try:
        api = GatewayApi.from_environ(os.environ if environ is None else environ)
    except ConfigError as exc:
        logging.getLogger("gateway.config").critical("%s", exc)
        raise SystemExit(1) from None
    app = build_app(api)
    tune_gc()
    warm_up(api.gateway.modules_to_warm())
    return app


def build_app(api: GatewayApi) -> ASGIApp:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        # The server's HTTP protocol reads its limits from the lifespan state.
        yield {LIMITS_STATE_KEY: api.gateway.config.local_server}
        await api.aclose()

    chat_page = HTMLResponse(_chat_page(api.gateway.config))

    async def chat(request: Request) -> Response:
        return chat_page

    api_routes = {(route.method, route.url_path): getattr(api, route.handler) for route in ROUTES}
    starlette = Starlette(
        routes=[
            *(Route(route.url_path, getattr(api, route.handler), methods=[route.method]) for route in ROUTES),
            Route("/", chat, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _routing_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    # A redirect to the same path with a slash would go to whatever host the `Host` header names.
    starlette.router.redirect_slashes = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # The API routes are looked up in a dict and answered directly: their handlers catch
        # every error themselves, so Starlette's router and exception middlewares (a measurable
        # share of a request's CPU: bench/README.md) have nothing to do for them.
        # Everything else (lifespan, the page, 404 and 405) goes through Starlette.
        handler = (
            api_routes.get((scope.get("method", ""), scope["path"])) if scope["type"] == "http" else None
        )
        if handler is None:
            await starlette(scope, receive, send)
            return
        response = await handler(Request(scope, receive, send))
        await response(scope, receive, send)

    return _answering_browsers(app, api.gateway.config)


def _answering_browsers(app: ASGIApp, config: GatewayConfig) -> ASGIApp:
    """CORS for the configured origins, and only requests whose `Host` names this server."""
    cors = config.cors
    if cors.allowed_origins:
        app = OpenAICORSMiddleware(
            app,
            allow_origins=cors.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            allow_credentials=cors.allow_credentials,
            expose_headers=[REQUEST_ID_HEADER, "Retry-After", *RATE_LIMIT_HEADERS],
            max_age=cors.max_age_s,
        )
    return HostGuard(app, config.allowed_hosts)


def _chat_page(config: GatewayConfig) -> bytes:
    """The page, told how to sign users in when callers need an Entra ID token."""
    page = CHAT_PAGE.read_bytes()
    auth = config.callers.auth
    settings = auth.page_settings() if isinstance(auth, EntraCallers) else None
    if settings is None:
        return page
    # JSON inside <script>: "<" escaped so no value can close the element.
    data = dumps(settings).replace(b"<", b"\\u003c")
    return page.replace(
        _AUTH_PLACEHOLDER, b'<script id="gateway-auth" type="application/json">' + data + b"</script>"
    )


_AUTH_PLACEHOLDER = b'<script id="gateway-auth" type="application/json">null</script>'


async def _routing_error(request: Request, exc: Exception) -> Response:
    error: GatewayError
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        error = MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}.")
        error.headers.update(exc.headers or {})
    else:
        error = NotFoundError(
            f"No route {request.url.path}; the gateway serves {describe_routes()} (and its chat page at GET /)."
        )
    response = error_response(error)
    response.headers[REQUEST_ID_HEADER] = bind_request_id(request.headers.get(REQUEST_ID_HEADER))
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    response = internal_error_response()
    response.headers[REQUEST_ID_HEADER] = bind_request_id(request.headers.get(REQUEST_ID_HEADER))
    return response


def _configure_logging() -> None:
    """Log lines to stderr at INFO unless the host configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=os.environ.get("GATEWAY_LOG_LEVEL", "INFO").upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
