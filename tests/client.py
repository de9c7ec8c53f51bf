"""The tests' HTTP client: one request to a gateway over a real socket, read whole."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import aiohttp
from multidict import CIMultiDict

CHAT = "/api/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello there"}]

# A gateway under test answers in well under this; a hang fails the test instead of the run.
TIMEOUT = aiohttp.ClientTimeout(total=30)


class Reply(NamedTuple):
    """An answer read to its end; unpacks as `status, headers, body`."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def lines(self) -> list[str]:
        """The body's non-blank lines: an event stream's `data:` lines and comments."""
        return [line for line in self.text.split("\n") if line]


async def request(
    method: str,
    base: str,
    path: str,
    *,
    body: object = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """`body` is sent as JSON; `raw` is sent byte for byte instead. Either is declared as
    `Content-Type: application/json` unless `headers` say otherwise."""
    sent = dict(headers or {})
    data = raw
    if raw is None and body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.request(method, base + path, data=data, headers=sent) as response:
            return Reply(response.status, CIMultiDict(response.headers), await response.read())


async def post(
    base: str,
    body: object = None,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    path: str = CHAT,
) -> Reply:
    """A chat request; without `body` or `raw`, "Hello there" to the default model."""
    if body is None and raw is None:
        body = {"messages": HELLO}
    return await request("POST", base, path, body=body, raw=raw, headers=headers)


async def get(base: str, path: str, *, headers: dict[str, str] | None = None) -> Reply:
    return await request("GET", base, path, headers=headers)


async def stream(base: str, body: dict[str, Any], *, headers: dict[str, str] | None = None) -> Reply:
    """A chat request with `"stream": true`, read to the end of the stream."""
    return await post(base, {**body, "stream": True}, headers=headers)


def assert_openai_error(reply: Reply, status: int, *fragments: str) -> dict[str, Any]:
    """Check an OpenAI error body with `status` whose message holds `fragments`; the error."""
    assert reply.status == status, reply.body
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error
