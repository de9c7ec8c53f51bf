"""A serverless chat endpoint whose stream has a chosen shape on the wire, for the benchmark.

    EMULATOR_KEY=... python bench/shaped_upstream.py --port 7074

The emulator writes each event of a stream on its own; real endpoints also answer in other
shapes, and the relay's first chunk must not lag behind in any of them:
- `POST /one-read/v1/chat/completions`: the whole stream, every event and `data: [DONE]`, in
  one write with the response head (a fast or cached answer, read by the caller in one read);
- `POST /drip/v1/chat/completions`: the head with the first event, then one event per
  millisecond, and the end of the body right after `data: [DONE]`;
- `POST /drip-late-end/v1/chat/completions`: the same, but the end of the body comes one
  millisecond after `data: [DONE]` (a client that lets go of the connection as soon as it has
  read `[DONE]` cannot reuse it).
Both send the same events (a role chunk, one chunk per word of a 25-word answer, a finish chunk)
with chunked transfer encoding, as a streaming endpoint does. `GET /health` answers 200;
`GET /connections` the number of connections accepted so far.

Raw asyncio on 127.0.0.1, so that the upstream costs the same few microseconds for the gateway
and for the floor; it reads requests with a Content-Length (what both send) and refuses others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

#: The shapes whose first chunk is a target: the paths' prefixes, and the names of the
#: gateway's endpoints and of the floors that serve them in the benchmark.
STREAM_SHAPES = ("one-read", "drip")
LATE_END = "drip-late-end"
UPSTREAM_PATHS = (*STREAM_SHAPES, LATE_END)
WORDS = 25
#: Far above the benchmark's requests: a request larger than this is refused.
MAX_REQUEST_BYTES = 1 << 20
DRIP_INTERVAL_S = 0.001


def stream_events() -> list[bytes]:
    """The `data:` events of one answer, `[DONE]` last."""
    created = int(time.time())

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        data = {
            "id": "chatcmpl-shaped",
            "object": "chat.completion.chunk",
            "created": created,
            "model": "shaped-upstream",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    words = [f"word{i} " for i in range(WORDS)]
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": word}) for word in words),
        chunk({}, "stop"),
        b"data: [DONE]\n\n",
    ]


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)
END = b"0\r\n\r\n"
HEALTH = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n" + b'{"status":"ok"}'
)
UNAUTHORIZED = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class ShapedUpstream:
    def __init__(self, key: str) -> None:
        self._auth = f"authorization: bearer {key}".lower().encode()
        events = stream_events()
        self.one_read = HEAD + chunked(b"".join(events)) + END
        self.drip_first = HEAD + chunked(events[0])
        self.drip_rest = [chunked(e) for e in events[1:]]
        #: Connections accepted so far: a client that reuses its connections opens few.
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                request_line, *header_lines = head.split(b"\r\n")
                headers = [line.lower() for line in header_lines if line]
                length = next(
                    (h.split(b":", 1)[1].strip() for h in headers if h.startswith(b"content-length:")), b"0"
                )
                if not length.isdigit() or int(length) > MAX_REQUEST_BYTES:
                    writer.write(BAD_REQUEST)
                    return
                await reader.readexactly(int(length))
                method, _, rest = request_line.partition(b" ")
                path = rest.split(b" ", 1)[0]
                if method == b"GET" and path == b"/health":
                    writer.write(HEALTH)
                elif method == b"GET" and path == b"/connections":
                    count = b"%d" % self.connections
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(count), count))
                elif method != b"POST" or not path.endswith(b"/v1/chat/completions"):
                    writer.write(NOT_FOUND)
                elif self._auth not in headers:
                    writer.write(UNAUTHORIZED)
                elif path.startswith(b"/one-read/"):
                    writer.write(self.one_read)
                elif path.startswith((b"/drip/", b"/drip-late-end/")):
                    writer.write(self.drip_first)
                    for piece in self.drip_rest:
                        await asyncio.sleep(DRIP_INTERVAL_S)
                        writer.write(piece)
                    if path.startswith(b"/drip-late-end/"):
                        await writer.drain()
                        await asyncio.sleep(DRIP_INTERVAL_S)
                    writer.write(END)
                else:
                    writer.write(NOT_FOUND)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()


async def main(port: int, key: str) -> None:
    upstream = ShapedUpstream(key)
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:  # the gateway's own loop, when installed: the upstream then costs both sides little
        from uvloop import run
    except ImportError:
        from asyncio import run
    run(main(args.port, os.environ["EMULATOR_KEY"]))
