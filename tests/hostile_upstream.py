"""A deliberately hostile endpoint: a raw-socket server on 127.0.0.1 that answers whatever a test
scripts, byte for byte (any status line, any headers, any body), at any pace.

Each connection gets one request and one scripted answer, then is closed. What the gateway sent
is recorded, and so is how much of each answer it read before it hung up.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

MAX_REQUEST_HEAD = 64 * 1024


@dataclass
class Received:
    """One request the gateway sent."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class Sent:
    """What became of one scripted answer."""

    bytes: int = 0
    #: The gateway closed the connection before the whole answer was written.
    cut_off: bool = False


Script = Callable[[Received, asyncio.StreamWriter, Sent], Awaitable[None]]


def reply(
    status: int | bytes = 200,
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    body: bytes | None = b"",
    *,
    pieces: Iterable[bytes] = (),
    pace_s: float = 0.0,
    content_length: bool = True,
) -> Script:
    """An answer: a status (a code, or a whole raw status line), headers sent exactly as given,
    then `body` (with its Content-Length unless told not to) or, without one, `pieces` written
    one by one `pace_s` apart and ended by closing the connection."""

    async def script(request: Received, writer: asyncio.StreamWriter, sent: Sent) -> None:
        status_line = status if isinstance(status, bytes) else f"HTTP/1.1 {status} Hostile".encode()
        head = [status_line]
        for name, value in headers:
            head.append(_raw(name) + b": " + _raw(value))
        if body is not None and content_length:
            head.append(b"Content-Length: " + str(len(body)).encode())
        head.append(b"Connection: close")
        await _write(writer, sent, b"\r\n".join(head) + b"\r\n\r\n" + (body or b""))
        for piece in pieces:
            if pace_s:
                await asyncio.sleep(pace_s)
            await _write(writer, sent, piece)

    return script


def json_reply(status: int, document: bytes, headers: Iterable[tuple[str, str]] = ()) -> Script:
    return reply(status, [("Content-Type", "application/json"), *headers], document)


def sse_reply(pieces: Iterable[bytes], *, pace_s: float = 0.0) -> Script:
    """A serverless stream: `text/event-stream`, its body the pieces, ended by closing."""
    return reply(200, [("Content-Type", "text/event-stream")], None, pieces=pieces, pace_s=pace_s)


def repeated(piece: bytes, total_bytes: int) -> Iterable[bytes]:
    """`piece` again and again, `total_bytes` in all, made as they are sent (never all held)."""
    return itertools.repeat(piece, total_bytes // len(piece))


@functools.cache
def gzip_bomb(inflated_bytes: int) -> bytes:
    """A gzip body of zeros that inflates to `inflated_bytes` (about a thousandth of that)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    parts = [compressor.compress(block) for _ in range(inflated_bytes // len(block))]
    parts.append(compressor.flush())
    return b"".join(parts)


class HostileUpstream:
    """The server. `answer(...)` queues scripts, used one per request in order; `default`
    answers when the queue is empty."""

    def __init__(self, default: Script | None = None) -> None:
        self.requests: list[Received] = []
        self.sent: list[Sent] = []
        self.default = default or json_reply(500, b'{"error": {"message": "no answer scripted"}}')
        self._scripts: deque[Script] = deque()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def answer(self, *scripts: Script) -> None:
        self._scripts.extend(scripts)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> HostileUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        sent = Sent()
        try:
            request = await _read_request(reader)
            if request is None:
                return
            self.requests.append(request)
            self.sent.append(sent)
            script = self._scripts.popleft() if self._scripts else self.default
            await script(request, writer, sent)
        except (ConnectionError, asyncio.IncompleteReadError):
            sent.cut_off = True
        finally:
            self._writers.discard(writer)
            if sent.cut_off:
                writer.transport.abort()
            else:
                writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    if len(head) > MAX_REQUEST_HEAD:
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Received(method, path, headers, body)


async def _write(writer: asyncio.StreamWriter, sent: Sent, data: bytes) -> None:
    if writer.is_closing():
        raise ConnectionResetError("the gateway hung up")
    writer.write(data)
    await writer.drain()
    sent.bytes += len(data)


def _raw(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")
