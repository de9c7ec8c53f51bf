"""Azure Functions entry point (Python v2 programming model): routes only.

Importing the HTTP-streams extension switches the whole app to Starlette request and response
types, so every route here takes its `Request`; the work is done by `shared.http`.
"""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from shared.http import GatewayApi
from shared.runtime import tune_gc

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
api = GatewayApi.from_environ()


@app.route(route="v1/chat/completions", methods=[func.HttpMethod.POST])
async def chat_completions(req: Request) -> Response:
    return await api.chat_completions(req)


@app.route(route="v1/models", methods=[func.HttpMethod.GET])
async def models(req: Request) -> Response:
    return await api.models(req)


@app.route(route="health", methods=[func.HttpMethod.GET], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: Request) -> Response:
    return await api.health(req)


tune_gc()  # after everything above is created: see shared/runtime.py
