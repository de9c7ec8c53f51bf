"""Request ids in every log line of a request, on every host.

The Azure Functions worker forwards only a record's formatted message, so the id is written into
the message itself rather than into a formatter field that one host would drop.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from typing import Any

from .ids import new_id

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

_ACCEPTABLE_ID = re.compile(r"^[0-9A-Za-z._:@/+=-]{1,128}$")


def bind_request_id(candidate: str | None) -> str:
    """Use the caller's `x-request-id` if it is sane, else a new one; bind it to this context."""
    request_id = candidate if candidate and _ACCEPTABLE_ID.match(candidate) else new_id()
    _request_id.set(request_id)
    return request_id


def current_request_id() -> str | None:
    return _request_id.get()


class RequestLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger that prefixes each message with the request id bound to the current context."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        request_id = _request_id.get()
        if request_id is None:
            return msg, kwargs
        return f"[{request_id}] {msg}", kwargs


def get_logger(name: str) -> RequestLogger:
    return RequestLogger(logging.getLogger(name), {})
