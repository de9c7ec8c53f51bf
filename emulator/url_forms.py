"""The URL forms Azure serves chat on, each with its own rule for where the key goes.

| form | path | key in | also |
| --- | --- | --- | --- |
| Azure ML | ``/score``, ``…/v1/chat/completions`` | ``Authorization: Bearer <key>`` | |
| Foundry / Azure OpenAI v1 | ``…/openai/v1/chat/completions`` | ``api-key: <key>`` or ``Authorization: Bearer <key>`` | ``model`` (the deployment) required |
| model inference API | ``…/models/chat/completions?api-version=…`` | ``api-key: <key>`` | ``model`` required; ``extra-parameters`` |
| Azure OpenAI deployment | ``…/openai/deployments/<d>/chat/completions?api-version=…`` | ``api-key: <key>`` | |

Entra tokens go as ``Authorization: Bearer <token>`` on every form. A key in the header its form
does not read is refused with 401, as Azure refuses it: the gateway's tests see the same failure
a real deployment would.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

#: api-versions Azure no longer serves on the model inference API.
RETIRED_MODEL_INFERENCE_VERSIONS = frozenset({"2024-05-01-preview"})
#: The request fields the model inference API knows; others are "extra parameters", which it
#: refuses unless the `extra-parameters` header says `pass-through` (or `drop`s them).
MODEL_INFERENCE_FIELDS = frozenset(
    {
        "messages",
        "model",
        "frequency_penalty",
        "presence_penalty",
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "stream",
        "tools",
        "tool_choice",
        "response_format",
        "seed",
        "modalities",
    }
)
COGNITIVE_REFUSAL = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
    "valid key for an active subscription and use a correct regional API endpoint for your resource."
)


MODEL_MISSING = "Missing required parameter: 'model' (the name of the deployment)"


class UrlForm(enum.Enum):
    AZUREML = "azureml"
    OPENAI_V1 = "openai_v1"
    MODEL_INFERENCE = "model_inference"
    OPENAI_DEPLOYMENT = "openai_deployment"

    @classmethod
    def of(cls, path: str) -> UrlForm:
        if path.endswith("/openai/v1/chat/completions"):
            return cls.OPENAI_V1
        if path.endswith("/models/chat/completions"):
            return cls.MODEL_INFERENCE
        if "/openai/deployments/" in path:
            return cls.OPENAI_DEPLOYMENT
        return cls.AZUREML

    @property
    def key_headers(self) -> tuple[str, ...]:
        """Where this form reads a key: ``authorization`` (as ``Bearer <key>``), ``api-key``."""
        return {
            UrlForm.AZUREML: ("authorization",),
            UrlForm.OPENAI_V1: ("api-key", "authorization"),
        }.get(self, ("api-key",))

    @property
    def needs_model(self) -> bool:
        return self in (UrlForm.OPENAI_V1, UrlForm.MODEL_INFERENCE)

    def missing_query(self, query: Mapping[str, str]) -> str | None:
        """What is wrong with the query string, for forms that need an api-version."""
        if self not in (UrlForm.MODEL_INFERENCE, UrlForm.OPENAI_DEPLOYMENT):
            return None
        version = query.get("api-version")
        if not version:
            return "the api-version query parameter is required"
        if self is UrlForm.MODEL_INFERENCE and version in RETIRED_MODEL_INFERENCE_VERSIONS:
            return f"api-version {version} is retired"
        return None


def apply_extra_parameters(form: UrlForm, body: Any, header: str | None) -> tuple[Any, str | None]:
    """The body as the model sees it under the ``extra-parameters`` header, or the 422 message
    the model inference API answers when the body has fields it does not know."""
    if form is not UrlForm.MODEL_INFERENCE or not isinstance(body, dict):
        return body, None
    extra = sorted(name for name in body if name not in MODEL_INFERENCE_FIELDS)
    if not extra or header == "pass-through":
        return body, None
    if header == "drop":
        return {name: value for name, value in body.items() if name in MODEL_INFERENCE_FIELDS}, None
    return body, (
        f"Extra parameters {extra} are not allowed when extra-parameters is not set or set to be "
        "'error'. Set extra-parameters to 'pass-through' to pass to the model."
    )
