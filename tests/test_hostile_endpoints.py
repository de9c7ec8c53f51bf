"""An endpoint must not be able to hurt the gateway or its callers (issue 12, items 1-5 and 7).

A deliberately hostile endpoint (tests/hostile_upstream.py: raw sockets, any bytes at any pace)
answers the real gateway over real sockets. Every case checks what a caller sees (status and
OpenAI error body), that no piece of the key reaches an answer or a log line, and that the
gateway still answers /api/health afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
from multidict import CIMultiDict

from shared.api_type import ApiType
from shared.config import parse_config
from shared.errors import SECRET_PIECE, scrub, upstream_status_error
from shared.formatters import CustomOpenAIChatContentFormatter, ResponseFormatError
from shared.logs import get_logger, printable
from shared.sse import EventTooLargeError, SSEDecoder
from shared.transport import Transport

from .conftest import emulator_config
from .hostile_upstream import (
    HostileUpstream,
    Received,
    Sent,
    gzip_bomb,
    json_reply,
    repeated,
    reply,
    sse_reply,
)

CHAT = "/api/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello there"}]
MiB = 1024 * 1024


@pytest.fixture
def hostile(servers):
    upstream = servers.run(HostileUpstream().start())
    yield upstream
    servers.run(upstream.stop())


def hostile_config(url: str, *, retries: int = 0) -> dict:
    config = emulator_config(url, resilience={"backoff_s": 0.01, "max_backoff_s": 0.02})
    for endpoint in config["endpoints"]:
        endpoint["max_retries"] = retries
    return config


async def post(base: str, body: dict | None = None) -> tuple[int, CIMultiDict, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(base + CHAT, json=body or {"messages": HELLO}) as response:
            return response.status, CIMultiDict(response.headers), await response.read()


def error_of(status: int, body: bytes, expected_status: int, code: str) -> dict:
    assert status == expected_status, body[:300]
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    return error


def key_pieces(key: str) -> set[str]:
    return {key[i : i + SECRET_PIECE] for i in range(len(key) - SECRET_PIECE + 1)}


def assert_no_piece_of(key: str, *texts: str) -> None:
    pieces = key_pieces(key)
    for text in texts:
        leaked = [piece for piece in pieces if piece in text]
        assert not leaked, f"{len(leaked)} pieces of the key in {text[:200]!r}"


async def assert_still_healthy(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/api/health") as response:
            assert response.status == 200 and await response.json() == {"status": "ok"}


async def hung_up_early(sent: Sent, seconds: float = 5) -> bool:
    """Whether the gateway closed the connection before the whole answer was sent (the hostile
    server notices at its next write)."""
    deadline = time.monotonic() + seconds
    while not sent.cut_off and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return sent.cut_off


def seen_by_caller(headers: CIMultiDict, body: bytes) -> str:
    return body.decode("utf-8", "replace") + json.dumps(list(headers.items()))


def echo_of_the_key(status: int, before: int) -> object:
    """A script answering `status` with the Authorization header it got, `before` characters
    into its message (the gateway cuts messages at 300)."""

    async def script(request: Received, writer, sent) -> None:
        message = "x" * before + " " + request.headers["authorization"] + " was refused"
        await json_reply(status, json.dumps({"error": {"message": message}}).encode())(request, writer, sent)

    return script


# 1. No piece of a key.


def test_a_key_echoed_across_the_cut_leaves_no_piece_in_the_message(canary_key):
    body = json.dumps({"error": {"message": "x" * 280 + " Bearer " + canary_key}}).encode()
    error = upstream_status_error("llama-chat", 400, body, secret=canary_key)
    assert "[redacted]" in error.message
    assert_no_piece_of(canary_key, error.message)


def test_pieces_of_a_long_entra_token_are_scrubbed_wherever_they_are():
    token = secrets.token_urlsafe(1536)  # a 2 KB bearer token
    echoed = f"token {token[:40]} then {token[1000:1100]} then {token[-9:]} end"
    body = json.dumps({"message": echoed}).encode()
    error = upstream_status_error("llama-chat", 503, body, secret=token)
    assert error.message.endswith("end") and error.message.count("[redacted]") == 3
    assert_no_piece_of(token, error.message)


def test_scrub_keeps_runs_shorter_than_a_piece():
    key = "k3y-0123456789abcdef"
    assert scrub(f"a {key[:7]} b {key[5:13]} c", key) == f"a {key[:7]} b [redacted] c"
    assert scrub("nothing here", key) == "nothing here"


async def test_a_key_echoed_across_the_cut_reaches_no_caller_and_no_log(
    hostile, start_gateway, canary_key, caplog
):
    base = start_gateway(hostile_config(hostile.url))
    hostile.answer(echo_of_the_key(400, 283), echo_of_the_key(503, 283))
    with caplog.at_level(logging.DEBUG):
        answers = [await post(base), await post(base)]
    error_of(answers[0][0], answers[0][2], 400, "upstream_rejected_request")
    error_of(answers[1][0], answers[1][2], 503, "upstream_unavailable")
    assert_no_piece_of(canary_key, *(seen_by_caller(h, b) for _, h, b in answers), caplog.text)
    await assert_still_healthy(base)


# 2. Bounded answers, counted after decompression.


def huge_json_reply(total_bytes: int, *, content_length: bool = True) -> object:
    headers = [("Content-Type", "application/json")]
    if content_length:
        headers.append(("Content-Length", str(total_bytes)))
    pieces = itertools.chain([b'{"output": "'], repeated(b"x" * 65536, total_bytes))
    return reply(200, headers, None, pieces=pieces)


async def test_an_answer_larger_than_max_response_bytes_is_a_502_naming_the_limit(
    hostile, start_gateway, canary_key, caplog
):
    base = start_gateway(hostile_config(hostile.url))
    hostile.answer(huge_json_reply(200 * MiB))
    with caplog.at_level(logging.DEBUG):
        status, headers, body = await post(base)
    error = error_of(status, body, 502, "upstream_response_too_large")
    assert f"more than {8 * MiB} bytes (max_response_bytes)" in error["message"]
    assert "raise max_response_bytes in the gateway configuration" in error["message"]
    assert await hung_up_early(hostile.sent[0]) and hostile.sent[0].bytes < 50 * MiB
    assert_no_piece_of(canary_key, seen_by_caller(headers, body), caplog.text)
    await assert_still_healthy(base)


async def test_a_gzip_bomb_is_bounded_after_decompression(hostile, start_gateway):
    base = start_gateway(hostile_config(hostile.url), transport=Transport(max_response_bytes=2 * MiB))
    bomb = gzip_bomb(30 * MiB)
    assert len(bomb) < 64 * 1024
    hostile.answer(reply(200, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")], bomb))
    status, _, body = await post(base)
    error = error_of(status, body, 502, "upstream_response_too_large")
    assert f"more than {2 * MiB} bytes" in error["message"]
    await assert_still_healthy(base)


async def test_a_dedicated_answer_to_a_stream_request_is_bounded_too(hostile, start_gateway):
    base = start_gateway(hostile_config(hostile.url), transport=Transport(max_response_bytes=MiB))
    hostile.answer(huge_json_reply(100 * MiB, content_length=False))
    status, _, body = await post(base, {"messages": HELLO, "stream": True})
    error_of(status, body, 502, "upstream_response_too_large")
    assert await hung_up_early(hostile.sent[0])
    await assert_still_healthy(base)


async def test_an_endless_error_body_is_read_only_for_its_message(hostile, start_gateway):
    base = start_gateway(hostile_config(hostile.url))
    endless = reply(503, [("Content-Type", "application/json")], None, pieces=itertools.repeat(b" " * 65536))
    hostile.answer(endless)
    status, _, body = await post(base)  # without the bound: read until timeout_s, then 504
    error_of(status, body, 503, "upstream_unavailable")
    assert await hung_up_early(hostile.sent[0])
    await assert_still_healthy(base)


def test_the_answer_limits_are_configuration_fields_with_defaults(hostile):
    defaults = parse_config(json.dumps(emulator_config(hostile.url)))
    assert (defaults.max_response_bytes, defaults.max_event_bytes) == (8 * MiB, MiB)
    raised = parse_config(json.dumps(emulator_config(hostile.url, max_response_bytes=32 * MiB)))
    assert raised.max_response_bytes == 32 * MiB


async def test_the_configured_limits_bound_answers_and_events(hostile, start_gateway):
    config = hostile_config(hostile.url)
    config.update(max_response_bytes=64 * 1024, max_event_bytes=4096)
    base = start_gateway(config)
    hostile.answer(
        json_reply(200, json.dumps({"output": "x" * 100_000}).encode()),
        sse_reply([b"data: " + b"x" * 5000 + b"\n\n"]),
    )
    status, _, body = await post(base)
    assert "more than 65536 bytes" in error_of(status, body, 502, "upstream_response_too_large")["message"]
    status, _, body = await post(base, {"model": "mistral-large", "messages": HELLO, "stream": True})
    error = error_of(status, body, 502, "upstream_event_too_large")
    assert "endpoint 'mistral-large' sent a stream event larger than 4096 bytes" in error["message"]


# 3. Linear SSE parsing, with a bounded event.


def test_an_endless_line_is_refused_once_it_passes_max_event_bytes():
    decoder = SSEDecoder()
    piece = b"x" * 65536
    fed = 0
    with pytest.raises(EventTooLargeError, match=r"larger than 1048576 bytes \(max_event_bytes\)"):
        for _ in range(20 * MiB // len(piece)):  # 20 MB without a line end
            decoder.feed(piece)
            fed += len(piece)
    assert fed == MiB  # refused by the read that passed the bound: nothing more was held


def test_many_data_lines_count_towards_one_event():
    decoder = SSEDecoder(max_event_bytes=4096)
    with pytest.raises(EventTooLargeError):
        for _ in range(1000):
            decoder.feed(b"data: 0123456789\n")
    assert SSEDecoder(max_event_bytes=4096).feed(b"data: 0123456789\n\n" * 1000) == ["0123456789"] * 1000


async def test_a_stream_event_larger_than_max_event_bytes_is_a_502(
    hostile, start_gateway, canary_key, caplog
):
    base = start_gateway(hostile_config(hostile.url))
    hostile.answer(sse_reply(itertools.chain([b"data: "], repeated(b"x" * 65536, 20 * MiB))))
    with caplog.at_level(logging.DEBUG):
        status, headers, body = await post(
            base, {"model": "mistral-large", "messages": HELLO, "stream": True}
        )
    error = error_of(status, body, 502, "upstream_event_too_large")
    assert "raise max_event_bytes in the gateway configuration" in error["message"]
    assert await hung_up_early(hostile.sent[0]) and hostile.sent[0].bytes < 10 * MiB
    assert_no_piece_of(canary_key, seen_by_caller(headers, body), caplog.text)
    await assert_still_healthy(base)


# 4. An endpoint's values never crash a handler.


@pytest.mark.parametrize("retry_after", ["²", "€", "1.5", "-3", "soon", "9" * 40])
async def test_an_unreadable_retry_after_is_dropped_not_a_crash(hostile, start_gateway, retry_after):
    base = start_gateway(hostile_config(hostile.url, retries=1))
    throttled = json_reply(429, b'{"error": {"message": "slow down"}}', [("Retry-After", retry_after)])
    hostile.answer(throttled, throttled)
    status, headers, body = await post(base)
    error_of(status, body, 429, "rate_limited")
    assert "Retry-After" not in headers and len(hostile.requests) == 2
    await assert_still_healthy(base)


async def test_an_http_date_retry_after_reaches_the_caller_as_seconds(hostile, start_gateway):
    base = start_gateway(hostile_config(hostile.url))
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    hostile.answer(json_reply(503, b"{}", [("Retry-After", later)]))
    status, headers, body = await post(base)
    error_of(status, body, 503, "upstream_unavailable")
    assert 25 <= int(headers["Retry-After"]) <= 31


async def test_an_error_body_nested_100000_deep_is_no_crash(hostile, start_gateway):
    base = start_gateway(hostile_config(hostile.url))
    hostile.answer(json_reply(400, b"[" * 100_000))
    status, _, body = await post(base)
    error = error_of(status, body, 400, "upstream_rejected_request")
    assert error["message"] == "endpoint 'llama-chat' answered HTTP 400: the endpoint rejected the request"
    await assert_still_healthy(base)


def choices_body(message: dict, finish_reason: object = "stop") -> bytes:
    return json.dumps(
        {"choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]}
    ).encode()


async def test_a_dedicated_answer_with_unreadable_tool_calls_is_a_502_when_streamed(hostile, start_gateway):
    base = start_gateway(hostile_config(hostile.url))
    hostile.answer(json_reply(200, choices_body({"role": "assistant", "content": None, "tool_calls": "abc"})))
    status, _, body = await post(base, {"messages": HELLO, "stream": True})
    error = error_of(status, body, 502, "bad_upstream_response")
    assert '"tool_calls" is not a list' in error["message"]
    await assert_still_healthy(base)


@pytest.mark.parametrize(
    ("message", "finish_reason", "reason"),
    [
        ({"role": "assistant", "content": {}}, "stop", '"content" is not a string'),
        ({"role": "user", "content": "I am the caller now"}, "stop", "\"role\" is 'user'"),
        ({"role": "assistant", "content": "hi"}, 7, '"finish_reason" is not a string'),
        ({"role": "assistant", "content": "hi", "reasoning_content": ["x"]}, "stop", '"reasoning_content"'),
        (
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"name": 1}}]},
            "tool_calls",
            '"tool_calls" is not a list',
        ),
    ],
)
async def test_an_answer_the_caller_could_not_trust_is_a_502(
    hostile, start_gateway, message, finish_reason, reason
):
    base = start_gateway(hostile_config(hostile.url))
    hostile.answer(json_reply(200, choices_body(message, finish_reason)))
    status, _, body = await post(base, {"model": "mistral-large", "messages": HELLO})
    error = error_of(status, body, 502, "bad_upstream_response")
    assert reason in error["message"]


def test_a_valid_answer_is_normalized_to_an_assistant_message():
    answer = choices_body(
        {
            "content": [
                {"type": "text", "text": "Hel"},
                {"type": "thinking"},
                {"type": "text", "text": "lo"},
            ],
            "tool_calls": None,
            "reasoning_content": "because",
            "x-vendor-field": {"anything": 1},
        },
        None,
    )
    result = CustomOpenAIChatContentFormatter().format_response_payload(answer, ApiType.SERVERLESS)
    assert result.choices[0].message == {
        "role": "assistant",
        "content": "Hello",
        "reasoning_content": "because",
    }
    assert result.choices[0].finish_reason is None


def test_usage_with_counts_that_are_not_counts_is_left_out():
    answer = json.loads(choices_body({"content": "hi"}))
    answer["usage"] = {"prompt_tokens": "many", "completion_tokens": 1, "total_tokens": 1}
    result = CustomOpenAIChatContentFormatter().format_response_payload(
        json.dumps(answer).encode(), ApiType.SERVERLESS
    )
    assert result.usage is None
    with pytest.raises(ResponseFormatError):
        CustomOpenAIChatContentFormatter().format_response_payload(
            choices_body({"content": "hi"}, {"why": "x"}), ApiType.DEDICATED
        )


# 5. No redirects.


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("where", ["another host", "the same host"])
async def test_a_redirect_is_not_followed_and_names_where_it_pointed(
    servers, hostile, start_gateway, canary_key, caplog, status, where
):
    elsewhere = servers.run(HostileUpstream(json_reply(200, b'{"output": "followed"}')).start())
    try:
        base = start_gateway(hostile_config(hostile.url))
        if where == "another host":
            location, named = f"http://localhost:{elsewhere.port}/steal", "host 'localhost'"
        else:
            location, named = "/score?again", "another path on the same host"
        hostile.answer(reply(status, [("Location", location)]), json_reply(200, b'{"output": "followed"}'))
        with caplog.at_level(logging.DEBUG):
            got, headers, body = await post(base)
        error = error_of(got, body, 502, "upstream_redirect")
        assert f"answered HTTP {status}, a redirect to {named}" in error["message"]
        assert "set this endpoint's endpoint_url" in error["message"]
        assert len(hostile.requests) == 1 and elsewhere.requests == []
        assert_no_piece_of(canary_key, seen_by_caller(headers, body), caplog.text)
    finally:
        servers.run(elsewhere.stop())


async def test_a_redirect_to_an_unreadable_host_is_named_as_such(hostile, start_gateway):
    base = start_gateway(hostile_config(hostile.url))
    hostile.answer(reply(307, [(b"Location", b"http://ev\x1b[2Kil\xe2\x80\xae.example/")]))
    status, _, body = await post(base)
    error = error_of(status, body, 502, "upstream_redirect")
    assert "a redirect to an unreadable host" in error["message"]


# 7. Log lines cannot be forged.

FORGERY = "busy\r\x1b[2K\u202e2024-01-01 00:00:00 INFO gateway.http all good\x85\u2066"


def test_printable_escapes_control_and_bidi_characters_only():
    controls = "".join(map(chr, [*range(0x20), *range(0x7F, 0xA0), 0x61C, 0x200E, 0x200F]))
    bidi = "".join(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))
    escaped = printable(controls + bidi)
    assert escaped.isascii() and escaped.isprintable() and escaped.count("\\") == len(controls + bidi)
    ordinary = "naïve € ² 中文 🙂 \\ 'quoted'"
    assert printable(ordinary) is ordinary


def test_the_gateway_logger_escapes_what_it_is_given(caplog):
    with caplog.at_level(logging.INFO, logger="gateway"):
        get_logger("gateway.test").warning("endpoint said: %s", FORGERY)
    [record] = [r for r in caplog.records if r.name == "gateway.test"]
    assert record.getMessage() == "endpoint said: " + printable(FORGERY)
    assert "\r" not in record.getMessage() and "\u202e" not in record.getMessage()


async def test_an_endpoint_message_cannot_forge_a_log_line(hostile, start_gateway, caplog):
    base = start_gateway(hostile_config(hostile.url))
    hostile.answer(json_reply(503, json.dumps({"error": {"message": FORGERY}}).encode()))
    with caplog.at_level(logging.DEBUG):
        status, _, body = await post(base)
    error = error_of(status, body, 503, "upstream_unavailable")
    assert "\\x1b[2K\\u202e2024-01-01" in error["message"]
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("gateway")]
    assert any("\\u202e2024-01-01" in m for m in messages), messages
    for message in messages:
        assert message.isprintable(), message


# The whole gateway, in its own process, under the worst of it.


async def test_peak_memory_and_health_latency_stay_bounded_under_hostile_answers(
    servers, hostile, canary_key
):
    from .test_local_server import free_port, start_uvicorn, wait_until_serving

    port = free_port()
    env = {"GATEWAY_CONFIG": json.dumps(hostile_config(hostile.url)), "EMULATOR_KEY": canary_key}
    process = start_uvicorn(env, port)
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_until_serving, process, port)
        stream = {"model": "mistral-large", "messages": HELLO, "stream": True}
        hostile.answer(
            huge_json_reply(200 * MiB),
            reply(
                200,
                [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
                gzip_bomb(300 * MiB),
            ),
            sse_reply(itertools.chain([b"data: "], repeated(b"x" * 65536, 100 * MiB))),
            huge_json_reply(200 * MiB, content_length=False),
        )
        for body in ({"messages": HELLO}, {"messages": HELLO}, stream, {**stream, "model": "llama-chat"}):
            status, _, answer = await post(base, body)
            assert status == 502, answer[:300]

        # One hostile stream that keeps the gateway parsing (a flood of comment lines) while
        # /api/health is asked, one request after another.
        hostile.answer(sse_reply(comment_flood(seconds=3)))
        flooded = asyncio.create_task(post(base, stream))
        latencies = []
        async with aiohttp.ClientSession() as session:
            while not flooded.done() and len(latencies) < 2000:
                started = time.perf_counter()
                async with session.get(base + "/api/health") as response:
                    assert response.status == 200
                    await response.read()
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.005)
        status, _, answer = await flooded
        assert status == 200 and answer.endswith(b"data: [DONE]\n\n")
        assert len(latencies) >= 100
        p99 = sorted(latencies)[int(len(latencies) * 0.99)]
        assert p99 < 0.050, f"/api/health p99 {p99 * 1000:.1f} ms while a hostile stream was read"
        peak_mb = peak_rss_mb(process.pid)
        assert peak_mb < 150, f"peak RSS {peak_mb:.0f} MB"
    finally:
        process.terminate()
        output, _ = await asyncio.to_thread(process.communicate, timeout=10)
    assert_no_piece_of(canary_key, output)


def comment_flood(*, seconds: float):
    """A stream's first chunk, then comment lines as fast as they go for `seconds`, then the end."""
    chunk = {
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}]
    }
    yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
    deadline = time.monotonic() + seconds
    flood = b":\n" * 32768
    while time.monotonic() < deadline:
        yield flood
    done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield b"data: " + json.dumps(done).encode() + b"\n\ndata: [DONE]\n\n"


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")
