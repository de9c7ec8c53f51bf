"""The gateway's HTTP routes: the one table that both hosts, the 404 message and the OpenAPI
document are built from. A new route is one entry here and its handler on `GatewayApi`."""

from __future__ import annotations

from dataclasses import dataclass

#: Azure Functions' default route prefix (host.json), kept by the local server too.
API_PREFIX = "/api"


@dataclass(frozen=True, slots=True)
class Route:
    #: The Azure Functions function name and the OpenAPI operationId.
    name: str
    method: str
    #: Below `API_PREFIX`, in the template syntax both hosts read (`v1/models/{id}`).
    path: str
    #: The `GatewayApi` method that answers it.
    handler: str
    summary: str
    #: Served without any caller credential (health), on both hosts.
    anonymous: bool = False

    @property
    def url_path(self) -> str:
        return f"{API_PREFIX}/{self.path}"


ROUTES: tuple[Route, ...] = (
    Route(
        "chat_completions",
        "POST",
        "v1/chat/completions",
        "chat_completions",
        "An OpenAI chat completion, or with stream=true its chunks as server-sent events",
    ),
    Route(
        "responses",
        "POST",
        "v1/responses",
        "responses",
        "An OpenAI Responses API response (stateless), or with stream=true its events as server-sent events",
    ),
    Route("models", "GET", "v1/models", "models", "The models (configured endpoints) callers may name"),
    Route("retrieve_model", "GET", "v1/models/{id}", "retrieve_model", "One model, by its id"),
    Route("openapi", "GET", "openapi.json", "openapi", "This document"),
    Route("health", "GET", "health", "health", "Liveness: touches no secret and no endpoint", anonymous=True),
)


def describe_routes() -> str:
    """`POST /api/v1/chat/completions, GET /api/v1/models, ...`: for error messages."""
    return ", ".join(f"{route.method} {route.url_path}" for route in ROUTES)
