"""In-process stand-ins for the pipeline's and the relay's unit tests: a scripted transport
behind `shared.transport.Sender`, and an observer that records every event. No sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.config import parse_config
from shared.errors import GatewayError
from shared.observe import Observer
from shared.transport import UpstreamRequest, UpstreamResponse


@dataclass
class Scripted:
    """One answer of the fake endpoint: a status and a body, or a stream of `pieces` (each
    read after `pause_s`), or an `error` raised by `send`; after `delay_s`."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    retry_after: str | None = None
    pieces: list[bytes] | None = None
    pause_s: float = 0.0
    error: GatewayError | None = None
    delay_s: float = 0.0


class FakeAnswer:
    def __init__(self, scripted: Scripted, released: list[str], name: str) -> None:
        self._scripted = scripted
        self._released = released
        self._name = name
        self.status = scripted.status
        self.content_type = scripted.content_type
        self.retry_after = scripted.retry_after

    async def read(self) -> UpstreamResponse:
        body = self._scripted.body
        if self._scripted.pieces is not None:
            body = b"".join(self._scripted.pieces)
        return UpstreamResponse(self.status, body, self.content_type, self.retry_after)

    async def chunks(self, idle_s: Callable[[], float]) -> AsyncIterator[bytes]:
        for piece in self._scripted.pieces or [self._scripted.body]:
            if self._scripted.pause_s:
                try:
                    async with asyncio.timeout(idle_s()):
                        await asyncio.sleep(self._scripted.pause_s)
                except TimeoutError:
                    yield b""  # idle: the relay's keep-alive
                    await asyncio.sleep(self._scripted.pause_s)
            yield piece

    async def drain(self) -> None:
        self._released.append(f"{self._name} drained")

    def release(self) -> None:
        self._released.append(self._name)


@dataclass
class FakeTransport:
    """Answers each endpoint's calls from its script, in order; records what was sent."""

    scripts: dict[str, list[Scripted]]
    sent: list[UpstreamRequest] = field(default_factory=list)
    released: list[str] = field(default_factory=list)

    async def send(self, request: UpstreamRequest, *, timeout_s: float, streaming: bool = True) -> FakeAnswer:
        self.sent.append(request)
        scripted = self.scripts[request.endpoint].pop(0)
        if scripted.delay_s:
            await asyncio.sleep(scripted.delay_s)
        if scripted.error is not None:
            raise scripted.error
        return FakeAnswer(scripted, self.released, request.endpoint)

    async def aclose(self) -> None:
        pass


class RecordingObserver(Observer):
    """Every event, as (name, the arguments that are not the exchange)."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_") or name == "events" or not hasattr(Observer, name):
            return object.__getattribute__(self, name)

        def record(*args: Any) -> None:
            from shared.observe import Exchange

            self.events.append((name, *(a for a in args if not isinstance(a, Exchange))))

        return record

    def names(self) -> list[str]:
        return [event[0] for event in self.events]


def completion(text: str, **extra: Any) -> bytes:
    return json.dumps(
        {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            **extra,
        }
    ).encode()


def config(*endpoints: dict[str, Any], **top: Any):
    """A validated configuration of serverless endpoints on a made-up loopback host."""
    defaults = {
        "endpoint_api_type": "serverless",
        "auth": {"type": "env", "variable": "KEY"},
        "max_retries": 0,
    }
    document = {
        "endpoints": [
            {"endpoint_url": f"http://127.0.0.1:9/{e['name']}/v1/chat/completions", **defaults, **e}
            for e in endpoints
        ],
        "resilience": {"backoff_s": 0.001, "max_backoff_s": 0.002, **top.pop("resilience", {})},
        **top,
    }
    return parse_config(json.dumps(document))
