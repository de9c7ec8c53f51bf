"""Request ids in every log line of a request, on every host, and text that cannot forge one.

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

#: C0 and C1 controls, DEL, and the bidirectional controls that reorder what a terminal shows.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every control and bidi character written as an escape (`\\r`, `\\x1b`,
    `\\u202e`): what an endpoint or a caller wrote cannot end a log line, fake a new one, or
    rewrite what a terminal shows."""
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def bind_request_id(candidate: str | None) -> str:
    """Use the caller's `x-request-id` if it is sane, else a new one; bind it to this context."""
    request_id = candidate if candidate and _ACCEPTABLE_ID.match(candidate) else new_id()
    _request_id.set(request_id)
    return request_id


def current_request_id() -> str | None:
    return _request_id.get()


class RequestLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger that prefixes each message with the request id bound to the current context,
    and writes its text arguments `printable`: they may hold what an endpoint or a caller sent."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            args = tuple(printable(arg) if isinstance(arg, str) else arg for arg in args)
            msg, kwargs = self.process(msg, kwargs)
            self.logger.log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        request_id = _request_id.get()
        if request_id is None:
            return msg, kwargs
        return f"[{request_id}] {msg}", kwargs


def get_logger(name: str) -> RequestLogger:
    return RequestLogger(logging.getLogger(name), {})
