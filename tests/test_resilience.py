"""Retries, timeouts, fallbacks, cooldowns and limits, against the emulator's injected faults."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import aiohttp.web
import pytest

from emulator import Emulator, Fault
from shared.errors import UpstreamError, UpstreamThrottledError
from shared.retry import Backoff, Cooldowns
from shared.transport import parse_retry_after

from .client import CHAT, HELLO, post, stream
from .conftest import emulator_config
from .servers import AiohttpServer


def resilient(url: str, *, retries: int = 2, **resilience) -> dict:
    config = emulator_config(url, resilience={"backoff_s": 0.01, "max_backoff_s": 0.05, **resilience})
    for endpoint in config["endpoints"]:
        endpoint["max_retries"] = retries
    return config


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried(emulator, start_gateway, status):
    base = start_gateway(resilient(emulator[1]))
    emulator[0].add_fault(Fault(status=status, times=2))
    reply = await post(base)
    assert reply.status == 200 and reply.json()["choices"][0]["message"]["content"] == "You said: Hello there"
    assert len(emulator[0].requests) == 3


@pytest.mark.parametrize("status", [400, 404, 422, 424])
async def test_answers_that_will_not_change_are_not_retried(emulator, start_gateway, status):
    base = start_gateway(resilient(emulator[1]))
    emulator[0].add_fault(Fault(status=status, times=3))
    assert (await post(base)).status in (400, 502) and len(emulator[0].requests) == 1


async def test_a_refused_connection_is_retried_then_503(start_gateway):
    base = start_gateway(resilient("http://127.0.0.1:9"))
    started = time.monotonic()
    reply = await post(base)
    assert reply.status == 503 and reply.json()["error"]["code"] == "upstream_unreachable"
    assert time.monotonic() - started < 2


async def test_retries_stop_at_max_retries(emulator, start_gateway):
    base = start_gateway(resilient(emulator[1], retries=1))
    emulator[0].add_fault(Fault(status=503, times=5))
    assert (await post(base)).status == 503 and len(emulator[0].requests) == 2


async def test_retry_after_is_honoured(emulator, start_gateway):
    base = start_gateway(resilient(emulator[1]))
    emulator[0].add_fault(Fault(status=429, retry_after="1"))
    started = time.monotonic()
    status = (await post(base)).status
    assert status == 200 and 0.95 <= time.monotonic() - started < 3


async def test_throttling_to_the_end_is_a_429_with_retry_after(emulator, start_gateway):
    base = start_gateway(resilient(emulator[1], max_retry_after_s=5))
    emulator[0].add_fault(Fault(status=429, retry_after="60", times=5))
    started = time.monotonic()
    reply = await post(base)
    assert reply.status == 429 and reply.headers["Retry-After"] == "60"
    assert reply.json()["error"]["type"] == "rate_limit_error"
    assert time.monotonic() - started < 1  # 60 s is more than max_retry_after_s: not waited for
    assert len(emulator[0].requests) == 1


async def test_a_hanging_endpoint_is_a_504_within_the_deadline(emulator, start_gateway):
    config = resilient(emulator[1], request_timeout_s=1.0)
    config["endpoints"][0]["timeout_s"] = 0.4
    base = start_gateway(config)
    emulator[0].add_fault(Fault(hang=True, times=5))
    started = time.monotonic()
    reply = await post(base)
    elapsed = time.monotonic() - started
    assert reply.status == 504 and reply.json()["error"]["type"] == "timeout"
    assert elapsed < 1.5  # two 0.4 s tries and the rest of the deadline, not 3 × timeout_s and more


async def test_a_failing_endpoint_falls_back_in_order(servers, canary_key, start_gateway, emulator):
    backup = Emulator(canary_key, dedicated_shape="list")
    server = servers.run(AiohttpServer(backup.app).start())
    try:
        config = resilient(emulator[1], retries=1)
        config["endpoints"].append(
            {**config["endpoints"][0], "name": "backup", "endpoint_url": f"{server.url}/score"}
        )
        config["endpoints"][0]["fallbacks"] = ["mistral-large", "backup"]
        base = start_gateway(config)
        emulator[0].add_fault(Fault(status=503, times=4))  # llama-chat twice, then mistral-large twice
        reply = await post(base)
        assert reply.status == 200 and reply.json()["model"] == "backup"  # the endpoint that answered
        assert [r.path for r in emulator[0].requests] == [
            "/score",
            "/score",
            "/v1/chat/completions",
            "/v1/chat/completions",
        ]
        assert len(backup.requests) == 1
    finally:
        servers.run(server.stop())


async def test_a_fallback_that_cannot_take_the_request_is_skipped(emulator, start_gateway):
    config = resilient(emulator[1], retries=0)
    config["endpoints"][1]["fallbacks"] = ["llama-chat"]  # a /score endpoint: no tools
    base = start_gateway(config)
    emulator[0].add_fault(Fault(status=502))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    reply = await post(base, {"model": "mistral-large", "messages": HELLO, "tools": tools})
    assert reply.status == 502 and "'mistral-large'" in reply.json()["error"]["message"]
    assert len(emulator[0].requests) == 1


async def test_an_endpoint_failing_repeatedly_cools_down_and_fallbacks_answer_at_once(
    emulator, start_gateway
):
    config = resilient(emulator[1], retries=0, cooldown_failures=2, cooldown_s=30)
    config["endpoints"][0]["fallbacks"] = ["mistral-large"]
    base = start_gateway(config)
    emulator[0].add_fault(Fault(status=500, times=2, path="/score"))
    for _ in range(2):
        assert (await post(base)).json()["model"] == "mistral-large"
    emulator[0].clear()
    for _ in range(3):
        reply = await post(base)
        assert reply.status == 200 and reply.json()["model"] == "mistral-large"
    assert all(r.path == "/v1/chat/completions" for r in emulator[0].requests)  # /score skipped


async def test_a_cooling_endpoint_without_fallback_answers_503_with_retry_after(emulator, start_gateway):
    base = start_gateway(resilient(emulator[1], retries=0, cooldown_failures=1, cooldown_s=30))
    emulator[0].add_fault(Fault(status=500))
    assert (await post(base)).status == 502
    reply = await post(base)
    assert reply.status == 503 and reply.json()["error"]["code"] == "endpoint_cooling_down"
    assert 25 <= int(reply.headers["Retry-After"]) <= 30
    assert len(emulator[0].requests) == 1


def test_cooldown_lets_one_request_try_again_afterwards():
    now = [0.0]
    cooldowns = Cooldowns(threshold=2, cooldown_s=10, clock=lambda: now[0])
    failure = UpstreamError("boom", upstream_status=500)
    assert cooldowns.failed("a", failure) is False
    assert cooldowns.admit("a") is None
    assert cooldowns.failed("a", failure) is True  # opened
    assert cooldowns.admit("a").status == 503
    now[0] = 10.5
    assert cooldowns.admit("a") is None  # half-open: this request is the probe
    assert cooldowns.failed("a", failure) is True  # the probe failed: open again
    assert cooldowns.admit("a") is not None
    now[0] = 21
    assert cooldowns.admit("a") is None
    assert cooldowns.succeeded("a") is True  # closed
    cooldowns.failed("a", UpstreamThrottledError("slow down", upstream_status=429))
    assert cooldowns.admit("a") is None


def test_half_open_admits_one_probe_until_it_ends():
    now = [0.0]
    cooldowns = Cooldowns(threshold=1, cooldown_s=10, clock=lambda: now[0], probe_timeout_s=60)
    cooldowns.failed("a", UpstreamError("boom", upstream_status=500))
    now[0] = 11
    assert cooldowns.admit("a") is None  # the probe
    second = cooldowns.admit("a")  # everyone else still falls back meanwhile
    assert second is not None and second.code == "endpoint_cooling_down"
    assert second.headers["Retry-After"] == "1"
    cooldowns.abandoned("a")  # the probe's caller left: the next request probes instead
    assert cooldowns.admit("a") is None
    assert cooldowns.admit("a") is not None
    now[0] = 72  # a probe that never ends gives its turn up after probe_timeout_s
    assert cooldowns.admit("a") is None
    assert cooldowns.succeeded("a") is True
    assert cooldowns.admit("a") is None and cooldowns.admit("a") is None


async def test_concurrency_beyond_max_is_a_429_not_a_pile_up(emulator, start_gateway):
    config = resilient(emulator[1], retries=0)
    config["endpoints"][0]["max_concurrency"] = 2
    base = start_gateway(config)
    emulator[0].add_fault(Fault(latency_s=0.5, times=2))
    answers = await asyncio.gather(*(post(base) for _ in range(5)))
    assert sorted(answer.status for answer in answers) == [200, 200, 429, 429, 429]
    throttled = [answer for answer in answers if answer.status == 429]
    assert all(
        answer.headers["Retry-After"] == "1"
        and answer.json()["error"]["code"] == "endpoint_concurrency_limit"
        for answer in throttled
    )
    assert (await post(base)).status == 200  # the slots were given back


async def test_a_stream_holds_its_slot_until_it_ends(emulator, start_gateway):
    config = resilient(emulator[1], retries=0)
    config["endpoints"][1]["max_concurrency"] = 1
    base = start_gateway(config)
    for _ in range(3):
        reply = await stream(base, {"model": "mistral-large", "messages": HELLO})
        assert reply.status == 200 and reply.body.endswith(b"data: [DONE]\n\n")


async def test_no_retry_after_the_first_byte_of_a_stream(emulator, start_gateway):
    base = start_gateway(resilient(emulator[1]))
    emulator[0].add_fault(Fault(break_stream_after=2))
    text = (await stream(base, {"model": "mistral-large", "messages": HELLO})).text
    assert '"error"' in text and "[DONE]" not in text
    assert len(emulator[0].requests) == 1


async def test_too_many_messages_is_a_400(emulator, start_gateway):
    base = start_gateway(emulator_config(emulator[1], max_messages=3))
    reply = await post(base, {"messages": HELLO * 4})
    assert reply.status == 400 and "at most 3 messages" in reply.json()["error"]["message"]


async def test_caller_headers_do_not_reach_the_endpoint_but_the_request_id_does(gateway, emulator):
    sent = {
        "Authorization": "Bearer caller-token",
        "Cookie": "session=1",
        "x-functions-key": "fk",
        "azureml-model-deployment": "other",
        "X-Forwarded-For": "10.0.0.1",
        "extra-parameters": "pass-through",
        "x-request-id": "trace-123",
    }
    await post(gateway, headers=sent)
    headers = emulator[0].requests[-1].headers
    assert headers["x-ms-client-request-id"] == "trace-123"
    assert headers["azureml-model-deployment"] == "llama-2-7b-chat-1"
    for name in ("cookie", "x-functions-key", "x-forwarded-for", "extra-parameters", "x-request-id"):
        assert name not in headers
    assert emulator[0].requests[-1].authorized  # the endpoint's own key, not the caller's token


async def test_an_endpoints_cookies_are_not_sent_back_with_the_next_callers_request(servers, start_gateway):
    cookies_seen: list[str | None] = []

    async def handler(request: aiohttp.web.Request) -> aiohttp.web.Response:
        cookies_seen.append(request.headers.get("Cookie"))
        answer = {"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
        response = aiohttp.web.json_response(answer)
        response.set_cookie("affinity", "first-callers-session")
        return response

    app = aiohttp.web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = servers.run(AiohttpServer(app).start())
    # By name, as real endpoints are: aiohttp's cookie jar keeps no cookies from IP addresses.
    base = start_gateway(emulator_config(server.url.replace("127.0.0.1", "localhost")))
    try:
        for _ in range(2):
            assert (await post(base, {"model": "mistral-large", "messages": HELLO})).status == 200
    finally:
        servers.run(server.stop())
    assert cookies_seen == [None, None]


async def test_the_model_never_names_a_url(gateway, emulator):
    reply = await post(gateway, {"model": "http://169.254.169.254/score", "messages": HELLO})
    assert reply.status == 404 and reply.json()["error"]["code"] == "model_not_found"
    assert emulator[0].requests == []


def test_retry_after_parsing():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert 28 <= parse_retry_after(format_datetime(later, usegmt=True)) <= 30
    assert parse_retry_after(format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)) == 0


def test_backoff_grows_is_capped_and_honours_retry_after():
    backoff = Backoff(base_s=0.5, max_s=4, max_retry_after_s=10)
    assert [backoff.delay(n, None, rand=lambda: 1.0) for n in range(5)] == [0.5, 1, 2, 4, 4]
    assert backoff.delay(3, None, rand=lambda: 0.25) == 1.0  # full jitter
    assert backoff.delay(0, 3.0) == 3.0 and backoff.delay(0, 11.0) is None


async def test_fallback_config_must_name_other_endpoints():
    from shared.config import parse_config
    from shared.errors import ConfigError

    config = emulator_config("http://127.0.0.1:1")
    config["endpoints"][0]["fallbacks"] = ["llama-chat"]
    with pytest.raises(ConfigError, match="fallback 'llama-chat' is not the name of another endpoint"):
        parse_config(json.dumps(config))


@pytest.mark.parametrize("stream", [False, True])
async def test_a_caller_who_leaves_gives_back_its_slot_at_once(emulator, start_gateway, stream):
    """A whole answer, or a stream before its first event: the call to the endpoint is
    cancelled when the caller goes, so its `max_concurrency` slot serves the next caller
    while the endpoint would still be working on the first one."""
    config = resilient(emulator[1], retries=0)
    config["endpoints"][0].update(max_concurrency=1, timeout_s=30)
    config["streaming"] = {"keepalive_s": 30}
    base = start_gateway(config)
    emulator[0].add_fault(Fault(hang=True, times=1))
    body = {"messages": HELLO, "stream": stream}
    async with aiohttp.ClientSession() as session:
        leaving = asyncio.create_task(session.post(base + CHAT, json=body))
        while not emulator[0].requests:  # the endpoint has the first call
            await asyncio.sleep(0.01)
        leaving.cancel()  # the caller goes away
        with pytest.raises(asyncio.CancelledError):
            await leaving
    started = time.monotonic()
    while True:  # the slot comes back as soon as the gateway notices, not after the hang
        status = (await post(base, {"messages": HELLO})).status
        if status != 429 or time.monotonic() - started > 3:
            break
        await asyncio.sleep(0.02)
    assert status == 200, (status, time.monotonic() - started)


def test_only_the_probe_itself_can_give_its_turn_up_or_reopen_the_circuit():
    now = [0.0]
    cooldowns = Cooldowns(threshold=1, cooldown_s=10, clock=lambda: now[0])
    early, probe, other = object(), object(), object()
    assert cooldowns.admit("a", early) is None  # let in while the circuit is closed
    assert cooldowns.failed("a", UpstreamError("boom", upstream_status=500), other) is True
    assert cooldowns.failed("a", UpstreamError("late", upstream_status=500), early) is False  # no new opening
    now[0] = 11
    assert cooldowns.admit("a", probe) is None
    cooldowns.abandoned("a", early)  # not the probe: its turn stays taken
    assert cooldowns.admit("a", other) is not None
    assert cooldowns.failed("a", UpstreamError("boom", upstream_status=500), probe) is True
    assert cooldowns.admit("a", other) is not None
