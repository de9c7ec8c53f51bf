"""Api-type routing: the upstream URL, headers and body for one call. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .api_type import ApiType
from .config import EndpointConfig
from .transport import UpstreamRequest


def merge_parameters(endpoint: EndpointConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The endpoint's `model_kwargs` overridden by this request's parameters, in a new dict."""
    api_type = endpoint.api_type
    merged = {**endpoint.model_kwargs, **endpoint.formatter.format_request_parameters(params, api_type)}
    if api_type is ApiType.SERVERLESS and endpoint.upstream_model:
        merged["model"] = endpoint.upstream_model
    return merged


def build_upstream_request(
    endpoint: EndpointConfig,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    credential_headers: Mapping[str, str],
    *,
    client_request_id: str | None = None,
) -> UpstreamRequest:
    """The call to make for `messages`, authorized by `credential_headers` (a key or a token in
    the header its auth type sends it in).

    Nothing of the caller's request but its messages, its parameters and its request id reaches
    the endpoint: the headers are built here, from the configuration.
    """
    formatter = endpoint.formatter
    body = formatter.format_messages_request_payload(
        messages, merge_parameters(endpoint, params), endpoint.api_type
    )
    headers = {
        "Content-Type": formatter.content_type,
        "Accept": formatter.accepts,
        **credential_headers,
    }
    if endpoint.deployment_name:
        headers["azureml-model-deployment"] = endpoint.deployment_name
    if endpoint.extra_parameters and endpoint.api_type is ApiType.SERVERLESS:
        headers["extra-parameters"] = endpoint.extra_parameters
    if client_request_id:
        # Azure ML's traffic logs record it as XMSClientRequestId: one id across both sides.
        headers["x-ms-client-request-id"] = client_request_id
    return UpstreamRequest(endpoint.name, endpoint.endpoint_url, headers, body)
