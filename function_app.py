"""Azure Functions entry point (Python v2 programming model): routes only.

Importing the HTTP-streams extension switches the whole app to Starlette request and response
types, so every function takes its `Request`. One function per entry of `shared.routes.ROUTES`;
the work is done by `shared.http.GatewayApi`.
"""

import gc

# Off while the modules are imported, back on in tune_gc() below (also when the configuration
# is refused): nearly all of what the imports create lives as long as the process
# (shared/runtime.py). 35–40 ms of every cold start.
gc.disable()

from collections.abc import Awaitable, Callable  # noqa: E402

import azure.functions as func  # noqa: E402
from azurefunctions.extensions.http.fastapi import Request, Response  # noqa: E402

from shared.http import GatewayApi  # noqa: E402
from shared.routes import ROUTES, Route  # noqa: E402
from shared.runtime import tune_gc, warm_up  # noqa: E402
from shared.telemetry import host_records_requests  # noqa: E402

tune_gc()
app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
host_records_requests()  # the host records each invocation: telemetry must not count it twice
api = GatewayApi.from_environ()
# With callers.auth.type entra the gateway checks each caller's token itself (docs/callers.md),
# so the host must let requests through without a function key.
_gateway_checks_callers = api.gateway.config.callers.auth.type == "entra"


def _function(route: Route) -> Callable[[Request], Awaitable[Response]]:
    handler = getattr(api, route.handler)

    async def function(req: Request) -> Response:
        return await handler(req)

    function.__name__ = function.__qualname__ = route.name
    return function


for _route in ROUTES:
    app.function_name(_route.name)(
        app.route(
            route=_route.path,
            methods=[_route.method],
            auth_level=func.AuthLevel.ANONYMOUS if _route.anonymous or _gateway_checks_callers else None,
        )(_function(_route))
    )

warm_up(api.gateway.modules_to_warm())  # what the first request imports, while the host starts
