"""Every failure the gateway reports, with its HTTP status and OpenAI error body.

This is the one place that decides which status a failure gets. Inner layers raise these
exceptions; the HTTP handlers turn them into responses with `error_body`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .codec import loads
from .logs import printable


class GatewayError(Exception):
    """A failure with a status code and an OpenAI-style error body.

    `message` is shown to the caller: it must never contain a key, a token or an upstream
    `Authorization` header.
    """

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        upstream_status: int | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})
        #: The endpoint's HTTP status, when this error reports one.
        self.upstream_status = upstream_status
        #: A connection failure or a timeout: worth another try.
        self.transient = transient

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


class ConfigError(ValueError):
    """The gateway configuration is invalid; raised once, at start-up."""


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ModelNotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowedError(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class MisdirectedRequestError(GatewayError):
    """The request's `Host` does not name the local server (a DNS-rebinding defence)."""

    status = 421
    type = "invalid_request_error"
    code = "host_not_allowed"


class InvalidTokenError(GatewayError):
    """A caller's access token is missing, malformed, expired, not signed by the tenant or not
    meant for this gateway. The message says which, never what the token holds."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_token"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class InsufficientScopeError(GatewayError):
    """A valid token without any of the roles or scopes the gateway requires."""

    status = 403
    type = "invalid_request_error"
    code = "insufficient_scope"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'})


class CallerLimitError(GatewayError):
    """A caller over its own limit (`callers.limits`): `rate_limit_exceeded` per minute,
    `insufficient_quota` per day."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    #: The limit it is over: "requests_per_minute", "tokens_per_minute" or "tokens_per_day".
    limit = "requests_per_minute"


class UpstreamThrottledError(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class ConcurrencyLimitError(UpstreamThrottledError):
    """This process already has `max_concurrency` calls in flight to the endpoint."""

    code = "endpoint_concurrency_limit"


class UpstreamError(GatewayError):
    """The endpoint answered, but not with something the gateway can use."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class ResponseFormatError(UpstreamError):
    """A formatter could not read the endpoint's answer."""

    code = "bad_upstream_response"


class ServiceUnavailableError(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class CredentialUnavailableError(ServiceUnavailableError):
    """An endpoint's key or token cannot be had. `outage` marks a source that is down (a cached
    value may keep serving) as opposed to one that said no (secret missing, access denied)."""

    code = "credential_unavailable"

    def __init__(self, message: str, *, outage: bool) -> None:
        super().__init__(message)
        self.outage = outage


class SigningKeysUnavailableError(ServiceUnavailableError):
    """The tenant's token signing keys cannot be fetched and no cached key fits the token."""

    code = "signing_keys_unavailable"


class LimitStoreUnavailableError(ServiceUnavailableError):
    """The limits' store (Redis) cannot be reached and `on_store_error` is `deny`."""

    code = "limit_store_unavailable"


class UpstreamTimeoutError(GatewayError):
    status = 504
    type = "timeout"
    code = "upstream_timeout"


def error_body(message: str, *, type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


INTERNAL_ERROR_BODY = error_body(
    "The gateway failed unexpectedly; the request id identifies it in the gateway's logs.",
    type="server_error",
    code="internal_error",
)


def upstream_status_error(
    endpoint: str,
    status: int,
    body: bytes,
    retry_after: str | None = None,
    *,
    secret: str | None = None,
) -> GatewayError:
    """The error the caller gets when endpoint `endpoint` answered HTTP `status` (>= 400).

    The endpoint's own message is kept, with every piece of `secret` (the key or token the
    gateway sent it) scrubbed out before it is cut to length, and its control characters
    escaped. `retry_after` is copied only as a number of seconds.
    """
    error = _status_error(
        f"endpoint {endpoint!r} answered HTTP {status}", status, _upstream_message(body, secret)
    )
    error.upstream_status = status
    if retry_after and status in (429, 503) and _SECONDS.match(retry_after):
        error.headers["Retry-After"] = retry_after
    return error


_SECONDS = re.compile(r"[0-9]{1,9}\Z")


def _status_error(said: str, status: int, detail: str) -> GatewayError:
    if status in (400, 422):
        return InvalidRequestError(
            f"{said}: the endpoint rejected the request{detail}", code="upstream_rejected_request"
        )
    if status in (401, 403):
        return UpstreamError(
            f"{said}: it refused the gateway's credentials; check this "
            "endpoint's auth (key or role) in the gateway configuration",
            code="upstream_auth_failed",
        )
    if status == 404:
        return UpstreamError(
            f"{said}: check endpoint_url and deployment_name{detail}", code="upstream_not_found"
        )
    if status in (408, 504):
        return UpstreamTimeoutError(f"{said}: it timed out{detail}")
    if status == 413:
        return RequestTooLargeError(f"{said}: the request is too large for it{detail}")
    if status == 429:
        return UpstreamThrottledError(f"{said}: it is throttling requests; retry later{detail}")
    if status == 503:
        return ServiceUnavailableError(f"{said}: it is unavailable{detail}", code="upstream_unavailable")
    if status == 424:
        return UpstreamError(f"{said}: its model container failed{detail}")
    return UpstreamError(f"{said}{detail}")


_MAX_DETAIL = 300
#: The shortest run of a secret's characters that counts as a piece of it.
SECRET_PIECE = 8
REDACTED = "[redacted]"


def scrub(text: str, secret: str | None) -> str:
    """`text` with every run of `SECRET_PIECE` or more characters of `secret` replaced.

    A run is found by its windows of `SECRET_PIECE` characters, each looked up in the set of the
    secret's own windows; only stretches made of the secret's characters are looked at. Linear
    in the text, for a 40-character key as for a 2 KB token.
    """
    if not secret or not text:
        return text
    width = min(SECRET_PIECE, len(secret))
    alphabet = re.escape("".join(sorted(set(secret))))
    stretches = re.finditer(f"[{alphabet}]{{{width},}}", text)
    windows: set[str] | None = None
    runs: list[tuple[int, int]] = []
    for stretch in stretches:
        if windows is None:
            windows = {secret[i : i + width] for i in range(len(secret) - width + 1)}
        for start in range(stretch.start(), stretch.end() - width + 1):
            if text[start : start + width] in windows:
                if runs and start <= runs[-1][1]:
                    runs[-1] = (runs[-1][0], start + width)
                else:
                    runs.append((start, start + width))
    if not runs:
        return text
    pieces: list[str] = []
    end = 0
    for run_start, run_end in runs:
        pieces += (text[end:run_start], REDACTED)
        end = run_end
    pieces.append(text[end:])
    return "".join(pieces)


def _upstream_message(body: bytes, secret: str | None) -> str:
    """The endpoint's own error message, if its body has one, as `: <message>`."""
    try:
        data = loads(body)
    except ValueError:  # not JSON, or nested too deep
        return ""
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        data = data["error"]
    message = None
    if isinstance(data, dict):
        message = next((data[k] for k in ("message", "detail") if isinstance(data.get(k), str)), None)
    if not message:
        return ""
    message = scrub(printable(" ".join(message.split())), secret)
    if len(message) > _MAX_DETAIL:
        message = message[:_MAX_DETAIL] + "…"
    return f": {message}"
