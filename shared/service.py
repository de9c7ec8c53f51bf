"""The gateway service: pick the endpoint, call it, normalize its answer."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .chat import ChatRequest, chat_completion
from .config import EndpointConfig, GatewayConfig, load_config
from .credentials import Credentials
from .errors import (
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    ResponseFormatError,
    upstream_status_error,
)
from .logs import get_logger
from .routing import build_upstream_request
from .transport import Transport, UpstreamResponse

log = get_logger("gateway.service")


class Gateway:
    """Everything with a lifetime of one process: the configuration, the credentials and the
    connection pool. Create one per process; close it on shutdown."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        credentials: Credentials | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self._credentials = credentials or Credentials()
        self._transport = transport or Transport()
        self._model_list = {
            "object": "list",
            "data": [
                {"id": e.name, "object": "model", "created": 0, "owned_by": "azureml"}
                for e in config.endpoints
            ],
        }

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Gateway:
        config = load_config(environ)
        return cls(config, credentials=Credentials(environ, config.credentials))

    def models(self) -> dict[str, Any]:
        return self._model_list

    def endpoint_for(self, model: str | None) -> EndpointConfig:
        name = model or self.config.default_model
        if name is None:
            raise InvalidRequestError(
                "model: is required (this gateway has no default_model)", param="model"
            )
        endpoint = self.config.endpoint(name)
        if endpoint is None:
            names = ", ".join(e.name for e in self.config.endpoints)
            raise ModelNotFoundError(
                f"The model {name!r} does not exist on this gateway; available: {names}",
                param="model",
            )
        return endpoint

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        """The `chat.completion` for a validated request."""
        endpoint = self.endpoint_for(request.model)
        messages, params = request.message_dicts(), request.parameters()
        response, credential = await self._call(endpoint, messages, params)
        if response.status in (401, 403) and self._credentials.refreshable(endpoint):
            # The key was rotated (or the token revoked): fetch it again, once.
            log.warning("endpoint %r refused its credential (HTTP %d); fetching it again",
                        endpoint.name, response.status)
            self._credentials.invalidate(endpoint, credential)
            response, credential = await self._call(endpoint, messages, params)
        if response.status >= 400:
            error = upstream_status_error(
                endpoint.name, response.status, response.body, response.retry_after
            )
            log.warning("endpoint %r answered HTTP %d", endpoint.name, response.status)
            raise _scrubbed(error, credential)
        try:
            result = endpoint.formatter.format_response_payload(response.body, endpoint.api_type)
        except ResponseFormatError as exc:
            raise self._unreadable(endpoint, response, exc.message) from None
        except Exception as exc:  # a user formatter's KeyError on an unexpected shape, say
            raise self._unreadable(endpoint, response, f"{type(exc).__name__} in the formatter") from None
        return chat_completion(result, model=endpoint.name)

    async def _call(
        self, endpoint: EndpointConfig, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> tuple[UpstreamResponse, str]:
        credential = await self._credentials.get(endpoint)
        upstream = build_upstream_request(endpoint, messages, params, credential)
        return await self._transport.post(upstream, timeout_s=endpoint.timeout_s), credential

    @staticmethod
    def _unreadable(endpoint: EndpointConfig, response: UpstreamResponse, reason: str) -> ResponseFormatError:
        log.warning(
            "endpoint %r: %s cannot read the answer (%s; content-type %r, %d bytes)",
            endpoint.name, endpoint.content_formatter, reason, response.content_type, len(response.body),
        )
        return ResponseFormatError(
            f"endpoint {endpoint.name!r} answered with a body that {endpoint.content_formatter} "
            f"cannot read ({reason}); check this endpoint's content_formatter and endpoint_api_type"
        )

    async def aclose(self) -> None:
        await self._transport.aclose()
        await self._credentials.aclose()


def _scrubbed(error: GatewayError, secret: str) -> GatewayError:
    """Belt and braces: an endpoint that echoes the key in its error text must not leak it."""
    if secret and secret in error.message:
        error.message = error.message.replace(secret, "[redacted]")
    return error
