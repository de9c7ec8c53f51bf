"""The OpenAPI document of the gateway's HTTP API, served by the local server."""

from __future__ import annotations

from typing import Any

from .chat import ChatCompletionRequest
from .responses import ResponsesRequest
from .routes import ROUTES

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {
                    "index": {"type": "integer"},
                    "message": {"type": "object", "required": ["role"]},
                    "finish_reason": {"type": ["string", "null"]},
                },
            },
        },
        "usage": {"type": "object"},
    },
}

#: One server-sent event: its data is a chat.completion.chunk, an error object, or [DONE].
_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}

_RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created_at", "status", "model", "output"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "response"},
        "created_at": {"type": "integer"},
        "status": {"enum": ["completed", "incomplete"]},
        "model": {"type": "string"},
        "output": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "id"],
                "properties": {"type": {"enum": ["message", "function_call"]}, "id": {"type": "string"}},
            },
        },
        "incomplete_details": {"type": ["object", "null"]},
        "usage": {"type": ["object", "null"]},
    },
}

_MODEL = {
    "type": "object",
    "required": ["id", "object"],
    "properties": {"id": {"type": "string"}, "object": {"const": "model"}},
}

_MODELS = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "object"],
                "properties": {"id": {"type": "string"}},
            },
        },
    },
}

_ERROR_STATUSES = {
    "400": "Invalid request: bad JSON, a field that fails validation, or parameters the endpoint cannot take",
    "401": "callers.auth entra: no valid Entra ID access token (WWW-Authenticate: Bearer error=invalid_token)",
    "403": "callers.auth entra: the token has none of the required roles or scopes",
    "404": "Unknown model",
    "413": "Request body larger than max_request_bytes",
    "415": "The body is not declared as Content-Type: application/json",
    "421": "Local server only: the Host header does not name the server (see allowed_hosts)",
    "429": "The caller is over its limits, the endpoint is throttling, or its max_concurrency is reached (see Retry-After)",
    "502": "The endpoint answered badly",
    "503": "The endpoint, its key or token, the tenant's signing keys or the limits' store is unavailable",
    "504": "The endpoint did not answer in time",
}


def _errors(*statuses: str) -> dict[str, Any]:
    return {
        status: {
            "description": _ERROR_STATUSES[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


#: What the table's routes take and answer, by route name; a route without an entry is
#: described by its summary and a JSON object.
_OPERATIONS: dict[str, dict[str, Any]] = {
    "chat_completions": {
        "requestBody": {
            "required": True,
            "content": _json({"$ref": "#/components/schemas/ChatCompletionRequest"}),
        },
        "responses": {
            "200": {
                "description": "A chat.completion, or with stream=true server-sent chat.completion.chunk "
                "events ending in data: [DONE]",
                "content": {
                    **_json({"$ref": "#/components/schemas/ChatCompletion"}),
                    "text/event-stream": {"schema": _SSE_EVENT},
                },
            },
            **_errors("400", "401", "403", "404", "413", "415", "421", "429", "502", "503", "504"),
        },
    },
    "responses": {
        "requestBody": {
            "required": True,
            "content": _json({"$ref": "#/components/schemas/ResponsesRequest"}),
        },
        "responses": {
            "200": {
                "description": "A response object, or with stream=true the Responses API's server-sent "
                "events, from response.created to response.completed (response.incomplete, response.failed)",
                "content": {
                    **_json({"$ref": "#/components/schemas/Response"}),
                    "text/event-stream": {"schema": _SSE_EVENT},
                },
            },
            **_errors("400", "401", "403", "404", "413", "415", "421", "429", "502", "503", "504"),
        },
    },
    "retrieve_model": {
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "The model", "content": _json({"$ref": "#/components/schemas/Model"})},
            **_errors("404"),
        },
    },
    "models": {
        "responses": {
            "200": {
                "description": "One model per configured endpoint",
                "content": _json({"$ref": "#/components/schemas/ModelList"}),
            }
        }
    },
}


def openapi_document() -> dict[str, Any]:
    request_schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = request_schema.pop("$defs", {})
    responses_schema = ResponsesRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(responses_schema.pop("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operation = _OPERATIONS.get(route.name) or {
            "responses": {"200": {"description": route.summary, "content": _json({"type": "object"})}}
        }
        paths.setdefault(route.url_path, {})[route.method.lower()] = {
            "operationId": route.name,
            "summary": route.summary,
            **operation,
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Azure ML chat gateway",
            "version": "1.0.0",
            "description": "OpenAI Chat Completions and the Responses API in front of Azure Machine "
            "Learning online endpoints.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                **components,
                "ChatCompletionRequest": request_schema,
                "ChatCompletion": _COMPLETION,
                "ResponsesRequest": responses_schema,
                "Response": _RESPONSE,
                "Model": _MODEL,
                "ModelList": _MODELS,
                "Error": _ERROR,
            }
        },
    }
