"""The gateway configuration document, parsed and validated once per process.

Read from `GATEWAY_CONFIG` (inline JSON) or `GATEWAY_CONFIG_FILE` (a path). Every problem is a
`ConfigError` whose message names the field and says how to fix it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from .api_type import ApiType
from .callers import CallersSettings
from .credentials import PROVIDERS, Auth, CredentialSettings, EnvAuth, KeyAuthSettings
from .errors import ConfigError
from .formatters import BUILTIN_FORMATTERS, ContentFormatterBase
from .url_forms import form_problem, form_warning, with_url_defaults
from .vault_url import is_loopback

logger = logging.getLogger("gateway.config")

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: Auth types whose key goes in the header `auth.header` names.
_KEY_AUTH_TYPES = frozenset(name for name, p in PROVIDERS.items() if issubclass(p.settings, KeyAuthSettings))
#: The most an endpoint's whole answer may hold, counted after decompression.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
#: The most one event of an endpoint's stream may hold.
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointConfig(_Model):
    """One Azure ML endpoint, selected by the request's `model` equal to `name`."""

    name: str = Field(pattern=r"^[^\s\x00-\x1f\x7f]+$", max_length=256)
    # Before endpoint_url, whose check depends on it.
    endpoint_api_type: Literal["dedicated", "serverless", "realtime"] = "dedicated"
    endpoint_url: str
    content_formatter: str = "CustomOpenAIChatContentFormatter"
    deployment_name: str | None = Field(default=None, min_length=1)
    auth: Auth
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    upstream_model: str | None = Field(default=None, min_length=1)
    extra_parameters: Literal["pass-through", "drop", "error"] | None = None
    timeout_s: float = Field(default=60.0, gt=0, le=600)
    max_retries: int = Field(default=2, ge=0, le=10)
    fallbacks: list[str] = Field(default_factory=list)
    max_concurrency: int | None = Field(default=128, ge=1)

    @cached_property
    def api_type(self) -> ApiType:
        return ApiType.from_config(self.endpoint_api_type)

    @cached_property
    def formatter(self) -> ContentFormatterBase:
        return load_formatter(self.content_formatter)()

    @model_validator(mode="before")
    @classmethod
    def _defaults_follow_the_url(cls, data: Any) -> Any:
        return with_url_defaults(data, _KEY_AUTH_TYPES)

    @field_validator("endpoint_url")
    @classmethod
    def _url_fits_the_api_type(cls, url: str, info: Any) -> str:
        return _check_url(url.rstrip("/"), info.data.get("endpoint_api_type", "dedicated"))

    @field_validator("deployment_name")
    @classmethod
    def _deployment_name_is_a_header_value(cls, name: str | None) -> str | None:
        if name is not None and not _HEADER_SAFE.match(name):
            raise ValueError(
                f"{name!r} is sent as the azureml-model-deployment header: use printable ASCII "
                "without spaces or control characters"
            )
        return name

    @field_validator("content_formatter")
    @classmethod
    def _formatter_exists(cls, name: str) -> str:
        load_formatter(name)
        return name

    @model_validator(mode="after")
    def _formatter_supports_the_api_type(self) -> EndpointConfig:
        supported = load_formatter(self.content_formatter).supported_api_types
        if self.api_type not in supported:
            names = ", ".join(t.value for t in supported)
            raise ValueError(
                f"content_formatter {self.content_formatter} does not support endpoint_api_type "
                f"{self.api_type.value!r}; it supports: {names}"
            )
        return self

    @model_validator(mode="after")
    def _url_form_has_what_it_needs(self) -> EndpointConfig:
        if self.api_type is ApiType.SERVERLESS:
            problem = form_problem(self.endpoint_url, self.upstream_model)
            if problem:
                raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _extra_parameters_only_on_serverless(self) -> EndpointConfig:
        if self.extra_parameters is not None and self.api_type is not ApiType.SERVERLESS:
            raise ValueError(
                "extra_parameters is sent only to serverless endpoints (the Azure AI model "
                "inference API); remove it from this dedicated endpoint"
            )
        return self


class GroupMember(_Model):
    endpoint: str
    #: The member's share of requests under `weighted`; 0: only when no other member can
    #: take the request (an overflow).
    weight: float = Field(default=1.0, ge=0, le=1_000_000)


class GroupConfig(_Model):
    """A name in `model` that spreads requests over several endpoints (docs/groups.md)."""

    name: str = Field(pattern=r"^\S+$", max_length=256)
    strategy: Literal["weighted", "least_busy", "lowest_latency"] = "weighted"
    members: list[GroupMember] = Field(min_length=1, max_length=64)
    fallbacks: list[str] = Field(default_factory=list)


class ResilienceSettings(_Model):
    """Retries, their backoff, and the cooldown of endpoints that keep failing."""

    #: Everything a request may take before its answer starts, retries and fallbacks included.
    request_timeout_s: float = Field(default=180.0, gt=0)
    backoff_s: float = Field(default=0.5, ge=0)
    max_backoff_s: float = Field(default=8.0, ge=0)
    #: A `Retry-After` longer than this is not waited for: the caller gets it instead.
    max_retry_after_s: float = Field(default=20.0, ge=0)
    #: Requests in a row that fail (after retries) before an endpoint is skipped ...
    cooldown_failures: int = Field(default=3, ge=1)
    #: ... for this long.
    cooldown_s: float = Field(default=30.0, ge=0)


class StreamingSettings(_Model):
    """How `"stream": true` answers are paced."""

    #: A keep-alive comment is sent when nothing else was sent for this long.
    keepalive_s: float = Field(default=15.0, gt=0)
    #: A stream that lasts longer ends with an error event (Azure's front ends cut HTTP
    #: responses at about 230 s on Consumption plans).
    max_duration_s: float = Field(default=220.0, gt=0)


class TelemetrySettings(_Model):
    """What telemetry records, when it is on (docs/telemetry.md)."""

    #: Record the request's messages on its span (`gen_ai.input.messages`): off by default, as
    #: conversations may hold personal data.
    capture_content: bool = False


class CorsSettings(_Model):
    """Browser origins the local server answers with CORS headers (in Azure, the platform's
    CORS setting applies instead)."""

    allowed_origins: list[str] = Field(default_factory=list)
    allow_credentials: bool = False
    max_age_s: int = Field(default=600, ge=0)

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_explicit(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin == "*":
                raise ValueError("'*' is not allowed: list the front-ends' origins")
            if not _HEADER_SAFE.match(origin):
                raise ValueError(
                    f"{origin!r} has spaces or control characters; an origin is sent as a header"
                )
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        return [origin.rstrip("/") for origin in origins]


class LocalServerSettings(_Model):
    """What one caller can hold on the local server (uvicorn with `server_command`'s protocol);
    Azure Functions applies its own limits instead."""

    #: The request line and headers of one request, in bytes; more gets 431.
    max_header_bytes: int = Field(default=65536, ge=4096, le=1048576)
    #: From a connection's first byte (or a kept-alive connection's next request) to the end of
    #: the headers; slower callers get 408 and are disconnected.
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: From the end of the headers to the end of the body.
    body_timeout_s: float = Field(default=60.0, gt=0, le=600)
    #: An idle kept-alive connection is closed after this long.
    keepalive_timeout_s: float = Field(default=5.0, gt=0, le=300)
    #: Open connections; one more is answered 503 and closed at once.
    max_connections: int = Field(default=2048, ge=1)


class GatewayConfig(_Model):
    """The whole document: the endpoints and the gateway-wide settings."""

    default_model: str | None = None
    endpoints: list[EndpointConfig] = Field(min_length=1)
    groups: list[GroupConfig] = Field(default_factory=list)
    max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=1024)
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=1024)
    max_event_bytes: int = Field(default=DEFAULT_MAX_EVENT_BYTES, ge=1024)
    max_messages: int = Field(default=512, ge=1)
    #: Content parts (text, images) over all the messages of one request.
    max_content_parts: int = Field(default=1024, ge=1)
    #: Names besides localhost, 127.0.0.1 and [::1] that the local server answers to in `Host`.
    allowed_hosts: list[str] = Field(default_factory=list)
    resilience: ResilienceSettings = Field(default_factory=ResilienceSettings)
    credentials: CredentialSettings = Field(default_factory=CredentialSettings)
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    local_server: LocalServerSettings = Field(default_factory=LocalServerSettings)
    #: Who may call, and how much (docs/callers.md).
    callers: CallersSettings = Field(default_factory=CallersSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_are_names(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if host == "*":
                raise ValueError(
                    "'*' is not allowed: it would let any web page reach the server by DNS rebinding"
                )
            if not _ALLOWED_HOST.match(host):
                raise ValueError(
                    f"{host!r} is not a host name like gateway.internal, an IP address, or a "
                    "domain like .example.com (no scheme, no port)"
                )
        return [host.lower().rstrip(".") for host in hosts]

    @model_validator(mode="after")
    def _names_are_unique_and_default_exists(self) -> GatewayConfig:
        seen: set[str] = set()
        for endpoint in self.endpoints:
            if endpoint.name in seen:
                raise ValueError(f"two endpoints are named {endpoint.name!r}; names must be unique")
            seen.add(endpoint.name)
        for endpoint in self.endpoints:
            for fallback in endpoint.fallbacks:
                if fallback not in seen or fallback == endpoint.name:
                    raise ValueError(
                        f"endpoint {endpoint.name!r}: fallback {fallback!r} is not the name of another "
                        f"endpoint (names: {', '.join(sorted(seen))})"
                    )
            if len(set(endpoint.fallbacks)) != len(endpoint.fallbacks):
                raise ValueError(f"endpoint {endpoint.name!r}: fallbacks lists an endpoint twice")
        _check_groups(self.groups, seen)
        seen.update(group.name for group in self.groups)
        if self.default_model is not None and self.default_model not in seen:
            raise ValueError(
                f"default_model {self.default_model!r} is not the name of an endpoint or a group "
                f"(names: {', '.join(sorted(seen))})"
            )
        return self

    @cached_property
    def endpoints_by_name(self) -> dict[str, EndpointConfig]:
        return {e.name: e for e in self.endpoints}

    @cached_property
    def groups_by_name(self) -> dict[str, GroupConfig]:
        return {g.name: g for g in self.groups}


def _check_groups(groups: list[GroupConfig], endpoint_names: set[str]) -> None:
    """Refuse groups that cannot work, saying how to fix each."""
    group_names = {group.name for group in groups}
    endpoints = ", ".join(sorted(endpoint_names))
    seen: set[str] = set()
    for group in groups:
        where = f"group {group.name!r}"
        if group.name in endpoint_names or group.name in seen:
            kind = "an endpoint" if group.name in endpoint_names else "another group"
            raise ValueError(
                f"{where}: {kind} has the same name; endpoint and group names share one "
                "namespace (what callers put in model): rename one of them"
            )
        seen.add(group.name)
        members = [member.endpoint for member in group.members]
        for name in (*members, *group.fallbacks):
            role = "member" if name in members else "fallback"
            if name in group_names:
                raise ValueError(
                    f"{where}: {role} {name!r} is a group; a group's {role}s are endpoints: "
                    f"list that group's endpoints instead"
                )
            if name not in endpoint_names:
                raise ValueError(f"{where}: {role} {name!r} is not an endpoint (endpoints: {endpoints})")
        if len(set(members)) != len(members):
            raise ValueError(f"{where}: members lists an endpoint twice; give it one entry and a weight")
        if len(set(group.fallbacks)) != len(group.fallbacks) or set(group.fallbacks) & set(members):
            raise ValueError(
                f"{where}: fallbacks lists an endpoint twice or one of the members; "
                "list each endpoint once, members first"
            )
        if group.strategy == "weighted" and not sum(member.weight for member in group.members) > 0:
            raise ValueError(
                f"{where}: the members' weights add up to 0, so none would be chosen; "
                "give at least one member a weight above 0"
            )


def load_formatter(name: str) -> type[ContentFormatterBase]:
    """A built-in formatter by class name, or a user's class as `package.module:ClassName`."""
    if name in BUILTIN_FORMATTERS:
        return BUILTIN_FORMATTERS[name]
    module_name, sep, class_name = name.partition(":")
    if not sep or not module_name or not class_name:
        builtins = ", ".join(BUILTIN_FORMATTERS)
        raise ValueError(
            f"unknown content_formatter {name!r}: use one of {builtins}, "
            "or your own class as 'package.module:ClassName'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for content_formatter: {exc}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ContentFormatterBase)):
        raise ValueError(
            f"content_formatter {name!r} must name a subclass of shared.formatters.ContentFormatterBase"
        )
    return cls


#: What may be sent as an HTTP header value: visible ASCII, no spaces or control characters.
_HEADER_SAFE = re.compile(r"^[!-~]+$")
#: A host name (or a `.domain` suffix), an IPv4 address, or an IPv6 address in brackets.
_ALLOWED_HOST = re.compile(
    r"^(\.?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?|\[[0-9A-Fa-f:.]+\])$"
)
_PLACEHOLDER = re.compile(r"<[^<>]*>")

_EXPECTED_PATH = {"dedicated": "/score", "realtime": "/score", "serverless": "/v1/chat/completions"}


def _check_url(url: str, api_type: str) -> str:
    placeholder = _PLACEHOLDER.search(url)
    if placeholder:
        raise ValueError(
            f"{url!r} still has the placeholder {placeholder.group()}: use the endpoint's own URL "
            "(Azure ML studio, Endpoints, the endpoint's Consume tab)"
        )
    if not _HEADER_SAFE.match(url):
        # urlsplit would silently drop tabs and newlines and keep other control characters.
        raise ValueError("the URL has spaces or control characters; check for a stray character")
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        # The URL is not quoted back: it holds a password.
        raise ValueError(
            "the URL carries a user name or password (https://user:password@...); remove it and "
            "give the endpoint's key in auth (key_vault, entra or env)"
        )
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute http(s) URL")
    try:
        parts.port  # noqa: B018 (it parses the port)
    except ValueError:
        raise ValueError(f"{url!r} has a port that is not a number from 0 to 65535") from None
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(
            f"{url!r} uses plain http; keys must travel over https (plain http is accepted only "
            "for 127.0.0.1/localhost, e.g. the local emulator)"
        )
    expected = _EXPECTED_PATH[api_type]
    if parts.path in ("", "/"):
        raise ValueError(
            f"{url!r} has no path; a {api_type} endpoint URL ends in {expected}: use {url}{expected}"
        )
    if api_type == "serverless":
        if parts.path.endswith("/score"):
            raise ValueError(
                f"{url!r} is a /score URL; set endpoint_api_type to 'dedicated' "
                "or use the endpoint's /v1/chat/completions URL"
            )
        if not parts.path.endswith("/chat/completions"):
            raise ValueError(
                f"a serverless endpoint URL ends in /v1/chat/completions "
                f"(or /models/chat/completions on Azure AI Foundry); got {url!r}"
            )
    elif not parts.path.endswith("/score"):
        hint = (
            "; for an OpenAI-compatible /chat/completions URL set endpoint_api_type to 'serverless'"
            if parts.path.endswith("/chat/completions")
            else ""
        )
        raise ValueError(f"a dedicated endpoint URL ends in /score; got {url!r}{hint}")
    return url


def parse_config(document: str | bytes, *, source: str = "GATEWAY_CONFIG") -> GatewayConfig:
    """Parse and validate a configuration document; raise `ConfigError` naming the bad field."""
    try:
        data = json.loads(document)
    except ValueError as exc:
        raise ConfigError(f"{source} is not valid JSON: {exc}") from None
    try:
        # Strict: "60" is not a number and "true" is not a boolean, as a JSON schema would say.
        config = GatewayConfig.model_validate(data, strict=True)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n" + _describe(exc, data)) from None
    for endpoint in config.endpoints:
        if endpoint.endpoint_api_type == "realtime":
            logger.warning(
                "endpoint %r: endpoint_api_type 'realtime' is deprecated; use 'dedicated'",
                endpoint.name,
            )
        retiring = form_warning(endpoint.endpoint_url)
        if retiring:
            logger.warning("endpoint %r %s", endpoint.name, retiring)
        replacement = endpoint.formatter.deprecated_in_favour_of
        if replacement:
            logger.warning(
                "endpoint %r: %s is deprecated; use %s (same behaviour)",
                endpoint.name,
                endpoint.content_formatter,
                replacement,
            )
    return config


def load_config(environ: Mapping[str, str] = os.environ) -> GatewayConfig:
    """The configuration named by the environment, checked against the environment too."""
    inline, path = environ.get("GATEWAY_CONFIG"), environ.get("GATEWAY_CONFIG_FILE")
    if inline and path:
        raise ConfigError("Set GATEWAY_CONFIG or GATEWAY_CONFIG_FILE, not both.")
    if path:
        try:
            document = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"GATEWAY_CONFIG_FILE {path!r} cannot be read: {exc.strerror}") from None
        config = parse_config(document, source=f"GATEWAY_CONFIG_FILE {path!r}")
    elif inline:
        config = parse_config(inline)
    else:
        raise ConfigError(
            "No configuration: set GATEWAY_CONFIG (inline JSON) or GATEWAY_CONFIG_FILE (a path)."
        )
    _check_environment(config, environ)
    return config


def _check_environment(config: GatewayConfig, environ: Mapping[str, str]) -> None:
    for i, endpoint in enumerate(config.endpoints):
        auth = endpoint.auth
        problem = PROVIDERS[auth.type].check(auth, environ)
        if problem:
            raise ConfigError(f"endpoints[{i}] ({endpoint.name!r}).auth: {problem}")
        if isinstance(auth, EnvAuth):
            logger.warning(
                "endpoint %r takes its key from the environment variable %s: for local development only",
                endpoint.name,
                auth.variable,
            )


def _describe(exc: ValidationError, data: Any) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        where = _location(error["loc"], data)
        lines.append(f"  {where}: {_message(error)}" if where else f"  {_message(error)}")
    return "\n".join(lines)


def _location(loc: tuple[Any, ...], data: Any) -> str:
    text, node = "", data
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                text += f" ({node['name']!r})"
        elif part in PROVIDERS and text.endswith("auth"):
            continue  # the union tag pydantic adds to the location
        else:
            text += f".{part}" if text else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return text


_names = [repr(name) for name in PROVIDERS]
_AUTH_TYPE_NAMES = ", ".join(_names[:-1]) + " or " + _names[-1]


def _message(error: ErrorDetails) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown field (check its spelling)"
    if error["type"] == "union_tag_invalid":
        return f"unknown auth type; use {_AUTH_TYPE_NAMES}"
    if error["type"] == "union_tag_not_found":
        return f"missing 'type'; use {_AUTH_TYPE_NAMES}"
    return message
