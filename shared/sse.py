"""Server-sent events on the wire: writing events, and reading an endpoint's event stream."""

from __future__ import annotations

import re
from typing import Any

from .codec import dumps
from .config import DEFAULT_MAX_EVENT_BYTES
from .errors import UpstreamError

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
#: No caching, and no buffering by a proxy (nginx honours X-Accel-Buffering).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(data: dict[str, Any]) -> bytes:
    """One `data:` event carrying `data` as JSON."""
    return b"data: " + dumps(data) + b"\n\n"


class SSEDecoder:
    """Incremental parser of an event stream: bytes in, the `data` of complete events out.

    Copes with events and UTF-8 characters split across reads, CRLF / CR / LF line ends,
    comment lines (keep-alives), and fields other than `data`. Linear: each byte is looked at
    a bounded number of times (lines are cut from the bytes, as a line end never occurs inside
    a UTF-8 character), and an event that grows past `max_event_bytes` (its data and its
    unfinished line) is refused with `EventTooLargeError` as soon as it does.
    """

    def __init__(
        self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, *, endpoint: str | None = None
    ) -> None:
        self._max_event_bytes = max_event_bytes
        self._endpoint = endpoint
        self._line = bytearray()  # the unfinished last line
        self._data = bytearray()  # the data lines of the event so far, joined by LF
        self._has_data = False
        self._after_cr = False  # the last read ended in CR: an LF first in the next is its pair

    def feed(self, chunk: bytes) -> list[str]:
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return []
        if b"\r" in chunk:
            self._after_cr = chunk[-1] == _CR
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        first_end = chunk.find(b"\n")
        if first_end < 0:
            self._line += chunk
            self._check_size()
            return []
        events: list[str] = []
        if self._line:  # the line earlier reads left unfinished ends here
            self._line += chunk[:first_end]
            self._take(bytes(self._line), events)
            self._line.clear()
        else:
            self._take(chunk[:first_end], events)
        # The other complete lines: only data lines, and blank lines that end an event, are
        # looked at one by one; comments and other fields are skipped by the regex engine.
        pos, end = first_end + 1, chunk.rfind(b"\n") + 1
        while pos < end:
            if not self._has_data:  # only the next data line matters
                pos = chunk.find(b"\ndata:", pos - 1, end) + 1
                if pos == 0:
                    break
            match = _DATA_OR_BLANK.search(chunk, pos, end)
            if match is None:
                break
            value = match.group(1)
            if value is None:
                self._dispatch(events)
            else:
                self._add_data(value)
            pos = match.end()
        if end < len(chunk):
            self._line += chunk[end:]
            self._check_size()
        return events

    def close(self) -> list[str]:
        """The last event, if the stream ended without the blank line that completes it."""
        events: list[str] = []
        if self._line:
            self._take(bytes(self._line), events)
            self._line.clear()
        self._take(b"", events)
        return events

    def _take(self, line: bytes, events: list[str]) -> None:
        if not line:
            self._dispatch(events)
        elif line.startswith(b"data:"):
            self._add_data(line[5:])

    def _dispatch(self, events: list[str]) -> None:
        if self._has_data:
            events.append(self._data.decode("utf-8", "replace"))
            self._data.clear()
            self._has_data = False

    def _add_data(self, value: bytes) -> None:
        """One `data:` line's value (after the colon): joined to the event's data by LF."""
        if self._has_data:
            self._data += b"\n"
        self._data += value[1:] if value[:1] == b" " else value
        self._has_data = True
        self._check_size()

    def _check_size(self) -> None:
        if len(self._data) + len(self._line) > self._max_event_bytes:
            raise EventTooLargeError(self._max_event_bytes, self._endpoint)


_CR = ord("\r")
_DATA_OR_BLANK = re.compile(rb"^(?:data:([^\n]*))?\n", re.MULTILINE)


class EventTooLargeError(UpstreamError):
    """One event of an endpoint's stream is larger than `max_event_bytes`."""

    code = "upstream_event_too_large"

    def __init__(self, limit: int, endpoint: str | None) -> None:
        who = f"endpoint {endpoint!r}" if endpoint else "the endpoint"
        super().__init__(
            f"{who} sent a stream event larger than {limit} bytes (max_event_bytes); if its "
            "events are really this large, raise max_event_bytes in the gateway configuration"
        )
