"""Server-sent events on the wire: writing events, and reading an endpoint's event stream."""

from __future__ import annotations

import codecs
from typing import Any

from .codec import dumps

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
    comment lines (keep-alives), and fields other than `data`.
    """

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        return self._lines(self._pending + self._text.decode(chunk))

    def close(self) -> list[str]:
        """The last event, if the stream ended without the blank line that completes it."""
        return self._lines(self._pending + self._text.decode(b"", final=True) + "\n\n")

    def _lines(self, text: str) -> list[str]:
        events: list[str] = []
        # A trailing CR may be the first half of a CRLF that the next read completes.
        keep = len(text) if not text.endswith("\r") else len(text) - 1
        lines = text[:keep].replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._pending = lines.pop() + text[keep:]
        for line in lines:
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)
        return events
