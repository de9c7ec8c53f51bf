"""The chat URL forms Azure serves, and what each one implies: the header a key goes in, the
Entra scope of its tokens, whether the body needs `model`, and its query string. Pure.

| form | URL | key header |
| --- | --- | --- |
| `azureml` | `https://<endpoint>.<region>.inference.ml.azure.com/score`, `…models.ai.azure.com/v1/chat/completions`, any other host | `Authorization: Bearer` |
| `openai_v1` | `https://<resource>.services.ai.azure.com/openai/v1/chat/completions`, `…openai.azure.com/openai/v1/…` | `api-key` |
| `model_inference` | `https://<resource>.services.ai.azure.com/models/chat/completions?api-version=…` (retiring) | `api-key` |
| `openai_deployment` | `https://<resource>.openai.azure.com/openai/deployments/<d>/chat/completions?api-version=…` | `api-key` |

The defaults follow the host: a key goes as `api-key` to Azure AI Foundry and Azure OpenAI hosts
(`*.services.ai.azure.com`, `*.openai.azure.com`, `*.cognitiveservices.azure.com`), as
`Authorization: Bearer` anywhere else (Azure ML, the emulator, a proxy). The path decides what
else the form needs, so a proxy or the emulator in front of a Foundry path gets the same checks.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .credentials import ML_SCOPE

#: Hosts of Azure AI Foundry and Azure OpenAI resources: keys go as `api-key`, Entra tokens
#: are for the Cognitive Services audience.
COGNITIVE_HOST_SUFFIXES = (".services.ai.azure.com", ".openai.azure.com", ".cognitiveservices.azure.com")
#: The Entra scope Azure AI Foundry and Azure OpenAI resources accept (the Cognitive Services
#: audience; the v1 API also documents https://ai.azure.com/.default).
COGNITIVE_SCOPE = "https://cognitiveservices.azure.com/.default"
#: The model inference API's current GA version, and the ones Azure no longer serves.
MODEL_INFERENCE_API_VERSION = "2025-04-01"
RETIRED_MODEL_INFERENCE_VERSIONS = frozenset({"2024-05-01-preview"})
#: A GA api-version of Azure OpenAI's deployment routes, suggested when one is missing.
OPENAI_DEPLOYMENT_API_VERSION = "2024-10-21"
#: What the model inference API is told to do with parameters it does not know, unless the
#: endpoint says otherwise: pass them to the model, so `stream_options` (usage in streams) and
#: model-specific parameters work.
MODEL_INFERENCE_EXTRA_PARAMETERS = "pass-through"


class UrlForm(enum.Enum):
    AZUREML = "azureml"
    OPENAI_V1 = "openai_v1"
    MODEL_INFERENCE = "model_inference"
    OPENAI_DEPLOYMENT = "openai_deployment"

    @classmethod
    def of(cls, url: str) -> UrlForm:
        path = urlsplit(url).path.rstrip("/")
        if path.endswith("/openai/v1/chat/completions"):
            return cls.OPENAI_V1
        if path.endswith("/models/chat/completions"):
            return cls.MODEL_INFERENCE
        if "/openai/deployments/" in path and path.endswith("/chat/completions"):
            return cls.OPENAI_DEPLOYMENT
        return cls.AZUREML

    @property
    def needs_upstream_model(self) -> bool:
        """The deployment is named in the body's `model`, not in the URL."""
        return self in (UrlForm.OPENAI_V1, UrlForm.MODEL_INFERENCE)

    @property
    def needs_api_version(self) -> bool:
        return self in (UrlForm.MODEL_INFERENCE, UrlForm.OPENAI_DEPLOYMENT)


def is_cognitive_host(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host.endswith(COGNITIVE_HOST_SUFFIXES)


def with_url_defaults(endpoint: Any, key_types: Collection[str] = ("key_vault", "env")) -> Any:
    """An endpoint's raw configuration with the defaults its URL implies filled in where it
    left them out: `auth.header` (the auth types of `key_types`), `auth.scope` (`entra`), and
    `extra_parameters` (the model inference API). Anything unexpected is left for validation."""
    if not isinstance(endpoint, dict) or not isinstance(endpoint.get("endpoint_url"), str):
        return endpoint
    url = endpoint["endpoint_url"]
    try:
        form = UrlForm.of(url)
        cognitive = is_cognitive_host(url)
    except ValueError:  # an unparsable URL: its own check says so
        return endpoint
    filled = dict(endpoint)
    auth = endpoint.get("auth")
    if isinstance(auth, dict):
        if auth.get("type") == "entra":
            if "scope" not in auth:
                filled["auth"] = {**auth, "scope": COGNITIVE_SCOPE if cognitive else ML_SCOPE}
        elif auth.get("type") in key_types and "header" not in auth:
            filled["auth"] = {**auth, "header": "api-key" if cognitive else "authorization"}
    if form is UrlForm.MODEL_INFERENCE and "extra_parameters" not in endpoint:
        filled["extra_parameters"] = MODEL_INFERENCE_EXTRA_PARAMETERS
    return filled


def form_problem(url: str, upstream_model: str | None) -> str | None:
    """What keeps a serverless endpoint with this URL from working, with the fix; None if
    nothing."""
    form = UrlForm.of(url)
    if form.needs_upstream_model and not upstream_model:
        return (
            "upstream_model is required for this URL: the name of the model's deployment, sent "
            "as the body's model (az cognitiveservices account deployment list -g <group> -n "
            "<resource> --query [].name)"
        )
    if form.needs_api_version:
        versions = parse_qs(urlsplit(url).query).get("api-version")
        suggested = (
            MODEL_INFERENCE_API_VERSION if form is UrlForm.MODEL_INFERENCE else OPENAI_DEPLOYMENT_API_VERSION
        )
        if not versions or not versions[0]:
            return f"{url!r} needs its api-version: append ?api-version={suggested}"
        if form is UrlForm.MODEL_INFERENCE and versions[0] in RETIRED_MODEL_INFERENCE_VERSIONS:
            return f"api-version {versions[0]} is retired and no longer served: use api-version={suggested}"
    return None


def form_warning(url: str) -> str | None:
    """A warning to log at start-up for a URL that works today but will not for long."""
    if UrlForm.of(url) is UrlForm.MODEL_INFERENCE:
        return (
            "uses the Azure AI model inference API (/models/chat/completions), which Microsoft "
            "is retiring (notices target 26 Aug 2026); move to the v1 API: "
            "https://<resource>.services.ai.azure.com/openai/v1/chat/completions with the "
            "deployment name as upstream_model (docs/foundry.md)"
        )
    return None
