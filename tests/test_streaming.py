"""`"stream": true`: server-sent `chat.completion.chunk` events through the local server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import aiohttp
import openai
import pytest
from aiohttp import web

from emulator import Emulator, Fault
from shared.errors import UpstreamTimeoutError
from shared.http import EventStreamResponse
from shared.relay import Pacing
from shared.sse import KEEPALIVE

from .client import CHAT, stream
from .conftest import emulator_config
from .servers import AiohttpServer

HELLO = [{"role": "user", "content": "Hello there, streaming world"}]
REPLY = "You said: Hello there, streaming world"


def chunks(lines: list[str]) -> list[dict]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def content(lines: list[str]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks(lines) if c.get("choices"))


@pytest.mark.parametrize("model", ["mistral-large", "llama-chat"])
async def test_stream_is_sse_with_one_id_the_gateway_model_and_done(gateway, model):
    reply = await stream(gateway, {"model": model, "messages": HELLO})
    lines = reply.lines
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    assert reply.headers["Cache-Control"] == "no-cache" and reply.headers["X-Accel-Buffering"] == "no"
    assert reply.headers["x-request-id"]
    events = chunks(lines)
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    assert {c["id"] for c in events} == {events[0]["id"]} and events[0]["id"].startswith("chatcmpl-")
    assert {c["model"] for c in events} == {model}
    assert {c["object"] for c in events} == {"chat.completion.chunk"}
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert content(lines) == REPLY


def test_openai_sync_client_streams(gateway):
    client = openai.OpenAI(base_url=f"{gateway}/api/v1", api_key="x", max_retries=0)
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="mistral-large", messages=HELLO, stream=True)
        if c.choices
    ]
    assert "".join(pieces) == REPLY and len(pieces) > 3  # token by token, not one blob


async def test_openai_async_client_streams_a_dedicated_answer(gateway):
    async with openai.AsyncOpenAI(base_url=f"{gateway}/api/v1", api_key="x", max_retries=0) as client:
        response = await client.chat.completions.create(model="llama-chat", messages=HELLO, stream=True)
        finish = [c.choices[0].finish_reason async for c in response if c.choices]
    assert finish[-1] == "stop"


async def test_include_usage_adds_a_final_usage_chunk(gateway):
    reply = await stream(
        gateway, {"model": "mistral-large", "messages": HELLO, "stream_options": {"include_usage": True}}
    )
    lines = reply.lines
    last = chunks(lines)[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == len(REPLY.split())
    reply = await stream(gateway, {"model": "mistral-large", "messages": HELLO})
    lines = reply.lines
    assert all("usage" not in c for c in chunks(lines))


async def test_errors_before_the_first_event_keep_their_status(gateway, emulator):
    emulator[0].add_fault(Fault(status=429, retry_after="4"))
    reply = await stream(gateway, {"model": "mistral-large", "messages": HELLO})
    lines = reply.lines
    assert reply.status == 429 and reply.headers["Retry-After"] == "4"
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.status == 429 and json.loads(lines[0])["error"]["type"] == "rate_limit_error"
    reply = await stream(gateway, {"model": "nope", "messages": HELLO})
    assert reply.status == 404


async def test_a_stream_broken_midway_ends_with_an_error_event_and_no_done(gateway, emulator):
    emulator[0].add_fault(Fault(break_stream_after=3))
    reply = await stream(gateway, {"model": "mistral-large", "messages": HELLO})
    lines = reply.lines
    assert reply.status == 200
    assert "data: [DONE]" not in lines
    error = json.loads(lines[-1][6:])["error"]
    assert (
        error["code"] == "upstream_connection_error"
        and "'mistral-large' broke the stream" in error["message"]
    )
    assert set(error) == {"message", "type", "param", "code"}


def test_openai_client_raises_on_a_broken_stream(gateway, emulator):
    emulator[0].add_fault(Fault(break_stream_after=3))
    client = openai.OpenAI(base_url=f"{gateway}/api/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError, match="broke the stream"):
        for _ in client.chat.completions.create(model="mistral-large", messages=HELLO, stream=True):
            pass


async def test_client_disconnect_closes_the_upstream_stream_and_service_goes_on(
    servers, canary_key, start_gateway
):
    slow = Emulator(canary_key, stream_delay_s=0.05)
    server = servers.run(AiohttpServer(slow.app).start())
    try:
        base = start_gateway(emulator_config(server.url))
        long_question = [{"role": "user", "content": " ".join(["word"] * 200)}]  # ~10 s to stream
        async with aiohttp.ClientSession() as session:
            async with session.post(
                base + CHAT, json={"model": "mistral-large", "messages": long_question, "stream": True}
            ) as response:
                await response.content.readline()
                assert slow.open_streams == 1
        deadline = time.monotonic() + 2
        while slow.open_streams and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert slow.open_streams == 0
        reply = await stream(base, {"model": "mistral-large", "messages": HELLO})
        lines = reply.lines
        assert content(lines) == REPLY and lines[-1] == "data: [DONE]"
    finally:
        servers.run(server.stop())


async def test_keepalive_comments_while_a_dedicated_answer_is_prepared(emulator, start_gateway):
    base = start_gateway(emulator_config(emulator[1], streaming={"keepalive_s": 0.05}))
    emulator[0].add_fault(Fault(latency_s=0.4))
    reply = await stream(base, {"model": "llama-chat", "messages": HELLO})
    lines = reply.lines
    assert reply.status == 200
    first_chunk = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_chunk >= 3 and set(lines[:first_chunk]) == {": keep-alive"}
    assert content(lines) == REPLY and lines[-1] == "data: [DONE]"


async def test_a_stream_longer_than_max_duration_ends_with_an_error(emulator, start_gateway):
    base = start_gateway(emulator_config(emulator[1], streaming={"keepalive_s": 0.05, "max_duration_s": 0.3}))
    emulator[0].add_fault(Fault(hang=True))
    started = time.monotonic()
    reply = await stream(base, {"model": "mistral-large", "messages": HELLO})
    lines = reply.lines
    assert time.monotonic() - started < 2
    assert reply.status == 200 and lines[0] == ": keep-alive" and "data: [DONE]" not in lines
    error = json.loads(lines[-1][6:])["error"]
    assert error["code"] == "upstream_timeout" and "streaming.max_duration_s (0.3 s)" in error["message"]


# --- what an endpoint's stream may look like ------------------------------------------------


def chunk_json(delta: dict, finish: str | None = None, **extra) -> str:
    return json.dumps(
        {
            "id": "up-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "up",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
    )


async def raw_upstream(
    servers,
    start_gateway,
    pieces: list[bytes],
    content_type: str = "text/event-stream",
    *,
    pause_s: float = 0.005,
    configure: Callable[[dict], None] | None = None,
):
    """A serverless endpoint that writes `pieces` as separate network writes, `pause_s` apart,
    and a gateway in front of it (its configuration edited by `configure`)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(pause_s)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = servers.run(AiohttpServer(app).start())
    config = emulator_config(server.url)
    if configure is not None:
        configure(config)
    return server, start_gateway(config)


async def test_sse_framing_edge_cases_are_read_correctly(servers, start_gateway):
    text = (
        "data: "
        + chunk_json({"role": "assistant", "content": ""})
        + "\r\n\r\n"
        + ": keep-alive\r\n\r\n"
        + "data: "
        + chunk_json({"content": "Grüße, "})
        + "\r\n\r\n"
        + "event: message\ndata: "
        + chunk_json({"content": "世界"})
        + "\n\n"
        + "data: "
        + chunk_json({}, "stop", usage={"prompt_tokens": 1})
        + "\n\n"
    )  # no [DONE]
    raw = text.encode()
    pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]  # splits events and UTF-8 characters
    server, base = await raw_upstream(servers, start_gateway, pieces)
    try:
        reply = await stream(base, {"model": "mistral-large", "messages": HELLO})
        lines = reply.lines
    finally:
        servers.run(server.stop())
    assert reply.status == 200 and content(lines) == "Grüße, 世界"
    assert lines[-1] == "data: [DONE]" and all("usage" not in c for c in chunks(lines))
    assert {c["id"] for c in chunks(lines)} != {"up-1"} and {c["model"] for c in chunks(lines)} == {
        "mistral-large"
    }


@pytest.mark.parametrize(
    ("events", "code"),
    [
        (["data: " + chunk_json({"content": "cut"}) + "\n\n"], "upstream_stream_truncated"),
        (
            ["data: " + chunk_json({"role": "assistant"}) + "\n\n", "data: {not json\n\n"],
            "bad_upstream_response",
        ),
    ],
)
async def test_an_unfinished_or_malformed_stream_ends_with_an_error(servers, start_gateway, events, code):
    server, base = await raw_upstream(servers, start_gateway, [e.encode() for e in events])
    try:
        reply = await stream(base, {"model": "mistral-large", "messages": HELLO})
        lines = reply.lines
    finally:
        servers.run(server.stop())
    assert "data: [DONE]" not in lines, lines
    assert json.loads(lines[-1][6:])["error"]["code"] == code, lines


async def test_events_read_together_with_a_malformed_one_still_reach_the_caller(servers, start_gateway):
    # One network write: two good events, then one that is not JSON.
    write = (
        "data: " + chunk_json({"role": "assistant", "content": ""}) + "\n\n"
        "data: " + chunk_json({"content": "kept"}) + "\n\n"
        "data: {not json\n\n"
    )
    server, base = await raw_upstream(servers, start_gateway, [write.encode()])
    try:
        reply = await stream(base, {"model": "mistral-large", "messages": HELLO})
        lines = reply.lines
    finally:
        servers.run(server.stop())
    assert reply.status == 200 and content(lines) == "kept", lines
    assert json.loads(lines[-1][6:])["error"]["code"] == "bad_upstream_response", lines


async def test_a_malformed_first_event_is_a_502_with_a_status(servers, start_gateway):
    server, base = await raw_upstream(servers, start_gateway, [b"data: <html>\n\n"])
    try:
        reply = await stream(base, {"model": "mistral-large", "messages": HELLO})
        lines = reply.lines
    finally:
        servers.run(server.stop())
    assert reply.status == 502 and "endpoint_api_type" in json.loads(lines[0])["error"]["message"]


async def test_an_endpoint_that_ignores_stream_still_gives_a_stream(servers, start_gateway):
    completion = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}
        ]
    }
    server, base = await raw_upstream(
        servers, start_gateway, [json.dumps(completion).encode()], content_type="application/json"
    )
    try:
        reply = await stream(base, {"model": "mistral-large", "messages": HELLO})
        lines = reply.lines
    finally:
        servers.run(server.stop())
    assert content(lines) == "whole" and lines[-1] == "data: [DONE]"


# --- pacing -----------------------------------------------------------------------------------


async def test_pacing_sends_keepalives_while_a_task_runs_then_lets_its_result_through():
    pacing = Pacing(keepalive_s=0.05, max_duration_s=5, on_timeout=UpstreamTimeoutError("slow"))
    task = asyncio.create_task(asyncio.sleep(0.22, result="answer"))
    keepalives = [item async for item in pacing.keepalives_until(task)]
    # One per 50 ms at most; fewer on a busy machine, whose timers fire late.
    assert set(keepalives) == {KEEPALIVE} and 1 <= len(keepalives) <= 4
    assert task.result() == "answer"


async def test_pacing_cancels_the_task_and_raises_when_out_of_time():
    pacing = Pacing(keepalive_s=0.05, max_duration_s=0.2, on_timeout=UpstreamTimeoutError("slow"))
    task = asyncio.create_task(asyncio.sleep(10))
    with pytest.raises(UpstreamTimeoutError):
        async for _ in pacing.keepalives_until(task):
            pass
    assert task.cancelled()


async def test_a_stream_that_pauses_gets_keepalives_and_loses_nothing(servers, start_gateway):
    first = "data: " + chunk_json({"role": "assistant", "content": "before "}) + "\n\n"
    second = "data: " + chunk_json({"content": "af"}) + "\n\n"
    third = "data: " + chunk_json({"content": "ter"}, "stop") + "\n\ndata: [DONE]\n\n"
    # The pause falls in the middle of the second event.
    pieces = [(first + second[:30]).encode(), (second[30:] + third).encode()]
    server, base = await raw_upstream(
        servers,
        start_gateway,
        pieces,
        pause_s=0.35,
        configure=lambda c: c.update(streaming={"keepalive_s": 0.1}),
    )
    try:
        reply = await stream(base, {"model": "mistral-large", "messages": HELLO})
        lines = reply.lines
    finally:
        servers.run(server.stop())
    assert reply.status == 200 and content(lines) == "before after" and lines[-1] == "data: [DONE]"
    assert lines.count(": keep-alive") >= 1, lines


async def test_an_endpoint_silent_past_its_timeout_mid_stream_ends_it_with_an_error(servers, start_gateway):
    def configure(config: dict) -> None:
        config["endpoints"][1]["timeout_s"] = 0.3
        config["streaming"] = {"keepalive_s": 5}

    first = "data: " + chunk_json({"role": "assistant", "content": "started"}) + "\n\n"
    # Silent past the endpoint's timeout_s, within the keep-alive interval.
    pieces = [first.encode(), b": still thinking\n\n"]
    server, base = await raw_upstream(servers, start_gateway, pieces, pause_s=1.5, configure=configure)
    try:
        reply = await stream(base, {"model": "mistral-large", "messages": HELLO})
        lines = reply.lines
    finally:
        servers.run(server.stop())
    assert reply.status == 200 and content(lines) == "started" and ": keep-alive" not in lines
    error = json.loads(lines[-1][6:])["error"]
    assert error["code"] == "upstream_timeout" and "sent nothing for its timeout_s" in error["message"]


# --- the SSE response ---------------------------------------------------------------------------


async def endless(closed: list[bool]):
    try:
        while True:
            yield b"data: {}\n\n"
            await asyncio.sleep(0.01)
    finally:
        closed.append(True)


async def test_an_event_stream_ends_quietly_when_the_caller_leaves():
    left, closed, sent = asyncio.Event(), [], []

    async def receive():
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    response = EventStreamResponse(endless(closed))
    serving = asyncio.create_task(response({"type": "http"}, receive, send))
    await asyncio.sleep(0.05)
    left.set()
    await asyncio.wait_for(serving, 1)  # returns, no CancelledError
    assert closed == [True] and sent[0]["type"] == "http.response.start" and len(sent) > 2


async def test_an_event_stream_passes_on_a_cancellation_that_is_not_the_callers():
    closed = []

    async def receive():
        await asyncio.Event().wait()

    async def send(message):
        pass

    serving = asyncio.create_task(EventStreamResponse(endless(closed))({"type": "http"}, receive, send))
    await asyncio.sleep(0.05)
    serving.cancel()  # a server shutdown, say
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert closed == [True]


async def test_an_endpoint_that_sends_only_its_own_comments_still_leaves_the_caller_keepalives(
    servers, start_gateway
):
    """The keep-alive clock counts what reached the caller: `: ping` comments from the endpoint
    every 20 ms reach nobody, so the caller still gets a keep-alive every 100 ms."""
    pings = [b": ping\n\n"] * 40  # 0.8 s of the endpoint's own comments
    first = ("data: " + chunk_json({"role": "assistant", "content": "late"}, "stop") + "\n\n").encode()
    server, base = await raw_upstream(
        servers,
        start_gateway,
        [*pings, first, b"data: [DONE]\n\n"],
        pause_s=0.02,
        configure=lambda config: config.update(streaming={"keepalive_s": 0.1}),
    )
    reply = await stream(base, {"model": "mistral-large", "messages": HELLO})
    lines = reply.lines
    assert reply.status == 200 and content(lines) == "late" and lines[-1] == "data: [DONE]"
    # About eight are due; a slow machine's timers lower the count, never to none.
    assert 3 <= lines.count(": keep-alive") <= 9, lines
    servers.run(server.stop())


async def test_the_endpoint_connection_is_reused_when_its_body_ends_after_done(servers, start_gateway):
    """An endpoint that ends its body a moment after `data: [DONE]`: the relay reads that end
    before giving the connection back, so the next stream needs no new connection (against
    Azure: no new TLS handshake before its first chunk)."""
    peers: list[tuple[str, int]] = []
    answer = ("data: " + chunk_json({"role": "assistant", "content": "hi"}, "stop") + "\n\n").encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(answer + b"data: [DONE]\n\n")
        await asyncio.sleep(0.02)  # the end of the body comes after [DONE]
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = servers.run(AiohttpServer(app).start())
    base = start_gateway(emulator_config(server.url))
    try:
        for _ in range(3):
            reply = await stream(base, {"model": "mistral-large", "messages": HELLO})
            assert reply.lines[-1] == "data: [DONE]"
            await asyncio.sleep(0.05)  # the body's end has been read by now
        assert len(peers) == 3 and len(set(peers)) == 1, peers
    finally:
        servers.run(server.stop())
