"""W3C trace context through the request path, with no OpenTelemetry import.

The HTTP layer notes the caller's `traceparent` / `tracestate`, telemetry starts its spans under
them, and the transport sends the current upstream try's `traceparent` to the endpoint. All of it
is plain context variables, set only while telemetry is on (`enable`): off, each hook is one
global read.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar

_enabled = False

#: The caller's (traceparent, tracestate) headers, unvalidated (telemetry's propagator checks them).
_caller: ContextVar[tuple[str | None, str | None]] = ContextVar("caller_trace", default=(None, None))
#: The `traceparent` of the upstream try being sent, if telemetry records it.
_upstream: ContextVar[str | None] = ContextVar("upstream_traceparent", default=None)

#: The longest header kept: a valid traceparent is 55 characters; tracestate at most 32 entries.
_MAX_HEADER = 512


def enable() -> None:
    global _enabled
    _enabled = True


def bind_caller_trace(headers: Mapping[str, str]) -> None:
    """Note the caller's trace context headers for this request (telemetry on only)."""
    if _enabled:
        parent = headers.get("traceparent")
        state = headers.get("tracestate")
        _caller.set(
            (
                parent if parent is None or len(parent) <= _MAX_HEADER else None,
                state if state is None or len(state) <= _MAX_HEADER else None,
            )
        )


def caller_trace() -> tuple[str | None, str | None]:
    return _caller.get()


def set_upstream_traceparent(value: str | None) -> None:
    _upstream.set(value)


def upstream_traceparent() -> str | None:
    """The `traceparent` the next upstream call carries, if any."""
    return _upstream.get() if _enabled else None
