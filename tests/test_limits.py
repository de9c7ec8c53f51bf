"""`callers.limits`: requests and tokens per caller, in this process (memory) and across
gateways sharing one real `redis-server`."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from emulator import Fault
from shared.asgi import server_command
from shared.callers import Caller, LimitsSettings, StoreSettings
from shared.errors import CallerLimitError
from shared.limits import (
    RATE_LIMIT_HEADERS,
    Bucket,
    CallerLimits,
    MemoryStore,
    RedisStore,
    duration,
    estimate_tokens,
)

from .client import assert_openai_error, post, stream
from .conftest import emulator_config
from .redis_server import RedisServer, free_port
from .test_local_server import wait_until_serving


def limited(url: str, **limits: Any) -> dict[str, Any]:
    return emulator_config(url, callers={"limits": limits})


def remaining(reply, kind: str) -> int:
    return int(reply.headers[f"x-ratelimit-remaining-{kind}"])


async def test_requests_per_minute_429_with_retry_after_and_headers_on_every_answer(emulator, start_gateway):
    url = start_gateway(limited(emulator[1], requests_per_minute=3, tokens_per_minute=100000))
    replies = [await post(url) for _ in range(4)]
    assert [r.status for r in replies] == [200, 200, 200, 429]
    for reply in replies:
        assert set(RATE_LIMIT_HEADERS) <= set(reply.headers), reply.headers
        assert reply.headers["x-ratelimit-limit-requests"] == "3"
    assert [remaining(r, "requests") for r in replies[:3]] == [2, 1, 0]
    error = assert_openai_error(replies[3], 429, "3 requests per minute")
    assert error["code"] == "rate_limit_exceeded"
    # One request comes back every 20 s.
    assert 1 <= int(replies[3].headers["Retry-After"]) <= 20


async def test_a_caller_refused_before_any_endpoint_keeps_its_tokens(emulator, start_gateway):
    url = start_gateway(limited(emulator[1], tokens_per_day=1_000_000))
    first = await post(url, {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    assert first.status == 404
    assert first.headers["x-ratelimit-limit-tokens"] == "1000000"
    second = await post(url, {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    # The first reservation was given back: the second reserves from a full bucket again.
    assert remaining(second, "tokens") == remaining(first, "tokens")


async def test_token_limits_settle_with_the_endpoints_usage_streams_included(emulator, start_gateway):
    """tokens_per_day refills ~0.01 token a second: what the headers say is what was spent."""
    limit = 1_000_000
    url = start_gateway(limited(emulator[1], tokens_per_day=limit))
    body = {"model": "mistral-large", "messages": [{"role": "user", "content": "Count the tokens, please"}]}
    first = await post(url, body)
    assert first.status == 200
    used = first.json()["usage"]["total_tokens"]
    streamed = await stream(url, body)  # the caller asks for no usage: the gateway still settles with it
    assert streamed.status == 200
    assert '"usage"' not in streamed.text
    estimate = estimate_tokens(len(_json(body)))
    estimate_streamed = estimate_tokens(len(_json({**body, "stream": True})))
    assert remaining(first, "tokens") in range(limit - estimate - 1, limit - estimate + 1)
    # The second answer's headers: the first request settled (its usage), the second reserved.
    assert remaining(streamed, "tokens") in range(
        limit - used - estimate_streamed - 1, limit - used - estimate_streamed + 1
    )
    third = await post(url, body)
    assert remaining(third, "tokens") in range(
        limit - 2 * used - estimate - 1, limit - 2 * used - estimate + 1
    )


async def test_score_endpoints_are_settled_with_an_estimate_of_their_answer(emulator, start_gateway):
    limit = 1_000_000
    url = start_gateway(limited(emulator[1], tokens_per_day=limit))
    body = {"model": "llama-chat", "messages": [{"role": "user", "content": "hello"}]}
    first = await post(url, body)
    assert first.status == 200
    assert first.json().get("usage") is None  # /score reports none
    second = await post(url, body)
    spent = remaining(first, "tokens") - remaining(second, "tokens")
    answer_tokens = estimate_tokens(len(_json([first.json()["choices"][0]["message"]])))
    # The second reservation (the prompt again) plus the first answer's estimate.
    assert abs(spent - (answer_tokens + estimate_tokens(len(_json(body))))) <= 2


async def test_tokens_per_day_over_is_insufficient_quota(emulator, start_gateway):
    url = start_gateway(limited(emulator[1], tokens_per_day=40))
    body = {"model": "mistral-large", "messages": [{"role": "user", "content": "x" * 200}]}
    replies = [await post(url, body) for _ in range(3)]
    refused = [r for r in replies if r.status == 429]
    assert refused, [r.status for r in replies]
    error = assert_openai_error(refused[0], 429, "40 tokens per day")
    assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")


async def test_by_role_raises_a_callers_limits():
    settings = LimitsSettings(
        requests_per_minute=1,
        by_role={"Chat.Premium": {"requests_per_minute": 5}, "Other": {"tokens_per_day": 9}},
    )
    limits = CallerLimits(settings, MemoryStore())
    [bucket] = limits.buckets(Caller("a", frozenset({"Chat.Premium"})))
    assert bucket.limit == 5
    assert [b.limit for b in limits.buckets(Caller("b"))] == [1]
    assert [b.limit for b in limits.buckets(Caller("c", frozenset({"Other"})))] == [1, 9]


async def test_no_window_boundary_lets_twice_the_limit_through():
    """A fixed window would let 60 through at 59.9 s and 60 more at 60.1 s. GCRA lets a whole
    minute's worth through at once, then one a second: the minute's boundary changes nothing."""
    now = [59.9]
    limits = CallerLimits(LimitsSettings(requests_per_minute=60), MemoryStore(lambda: now[0]))
    caller = Caller("boundary")

    async def admitted(count: int) -> int:
        passed = 0
        for _ in range(count):
            try:
                await limits.admit(caller, 1)
                passed += 1
            except CallerLimitError:
                pass
        return passed

    assert await admitted(100) == 60
    now[0] = 60.1
    assert await admitted(100) == 0
    now[0] = 61.2
    assert await admitted(100) == 1
    now[0] = 91.2
    assert await admitted(100) == 30


def test_reset_durations_read_like_openais():
    assert [duration(x) for x in (20, 1500, 360_000, 3_723_000)] == ["20ms", "1.5s", "6m0s", "1h2m3s"]


async def test_the_openai_client_reads_the_limit_headers(emulator, start_gateway, servers):
    url = start_gateway(limited(emulator[1], requests_per_minute=5, tokens_per_minute=50000))

    def call() -> Any:
        client = openai.OpenAI(base_url=f"{url}/api/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="mistral-large", messages=[{"role": "user", "content": "hi"}]
        )
        return raw.headers

    headers = await asyncio.to_thread(call)
    assert headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "4"
    assert headers["x-ratelimit-limit-tokens"] == "50000"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 50000
    assert headers["x-ratelimit-reset-requests"].endswith("s")


# --- Redis: one store for every gateway ---------------------------------------------------


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def redis_limits(redis_url: str, **limits: Any) -> dict[str, Any]:
    return {"store": {"type": "redis", "url": redis_url, "timeout_s": 0.5, "retry_s": 0.3}, **limits}


@pytest.fixture
def gateway_processes(emulator, canary_key, redis_server) -> Iterator[list[str]]:
    """Two gateway processes, each started as `make dev` starts it, sharing one Redis."""
    limits = redis_limits(redis_server.url, requests_per_minute=10)
    env = {
        **os.environ,
        "GATEWAY_CONFIG": json.dumps(emulator_config(emulator[1], callers={"limits": limits})),
        "EMULATOR_KEY": canary_key,
    }
    processes, urls = [], []
    try:
        for _ in range(2):
            port = free_port()
            process = subprocess.Popen(
                server_command(port, "--log-level", "warning"),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            processes.append(process)
            wait_until_serving(process, port)
            urls.append(f"http://127.0.0.1:{port}")
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.communicate(timeout=10)


async def test_two_gateway_processes_sharing_redis_let_exactly_the_limit_through(
    gateway_processes, redis_server
):
    # In turn, so that each process answers every other request: 5 each, then both refuse.
    replies = [await post(gateway_processes[i % 2]) for i in range(30)]
    statuses = [r.status for r in replies]
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 20, statuses
    assert statuses[:10] == [200] * 10, statuses
    assert all(r.headers.get("Retry-After", "").isdigit() for r in replies if r.status == 429)
    # Concurrently, from a fresh start: still exactly the limit.
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    burst = await asyncio.gather(*(post(gateway_processes[i % 2]) for i in range(30)))
    statuses = [r.status for r in burst]
    assert (statuses.count(200), statuses.count(429)) == (10, 20), statuses


async def test_redis_token_limits_settle_with_usage(emulator, start_gateway, redis_server):
    limit = 1_000_000
    config = emulator_config(
        emulator[1], callers={"limits": redis_limits(redis_server.url, tokens_per_day=limit)}
    )
    first_gateway, second_gateway = start_gateway(config), start_gateway(config)
    body = {"model": "mistral-large", "messages": [{"role": "user", "content": "Count the tokens, please"}]}
    estimate = estimate_tokens(len(_json(body)))
    first = await post(first_gateway, body)
    used = first.json()["usage"]["total_tokens"]
    # The same process's next admission takes the settlement along: no wait.
    again = await post(first_gateway, body)
    assert abs(remaining(again, "tokens") - (limit - used - estimate)) <= 1
    # Another process sees it once the first has sent what no admission of its took along.
    waited = time.monotonic()
    await asyncio.sleep(RedisStore.SETTLE_DELAY_S + 0.25)
    second = await post(second_gateway, body)
    refilled = limit * (time.monotonic() - waited) / 86_400  # the day's bucket fills as time passes
    assert abs(remaining(second, "tokens") - (limit - 2 * used - estimate)) <= 1 + refilled


async def test_a_pending_settlement_applies_even_when_the_admission_refuses(redis_server):
    store = RedisStore(StoreSettings(type="redis", url=redis_server.url, timeout_s=1))
    bucket, key = Bucket("tokens", 60_000, 100), "gateway:limits:{c}:tokens"
    try:
        assert (await store.admit([key], [bucket], [90])).admitted
        store.settle([key], [bucket], [-80])  # used 10 of the 90 reserved
        refused = await store.admit([key], [bucket], [95])
        # 10 left in the bucket after the settlement (not 90): 95 more would overfill it.
        assert not refused.admitted and refused.debts_before_ms[0] == pytest.approx(6_000, abs=50)
        assert (await store.admit([key], [bucket], [85])).admitted
        # No admission takes this one along: the flush sends it.
        store.settle([key], [bucket], [-85])
        settled = time.monotonic()
        await asyncio.sleep(RedisStore.SETTLE_DELAY_S + 0.2)
        debt = (await store.admit([key], [bucket], [0])).debts_before_ms[0]
        assert debt == pytest.approx(6_000 - (time.monotonic() - settled) * 1000, abs=100)
        # A settlement pending at close is sent before the connection pool closes.
        store.settle([key], [bucket], [-10])
    finally:
        await store.aclose()
    check = RedisStore(StoreSettings(type="redis", url=redis_server.url, timeout_s=1))
    try:
        assert (await check.admit([key], [bucket], [0])).debts_before_ms[0] == pytest.approx(0, abs=150)
    finally:
        await check.aclose()


@pytest.mark.parametrize(
    ("keys", "argument"),
    [
        (
            ["gateway:limits:{oid-1}:requests", "gateway:limits:{oid-1}:tokens"],
            "60000,10,1,0,60000,900,25,-3",
        ),
        (["gateway:limits:{é\r\n$3}:tokens_day"], "86400000,1000000000000,250,0"),
        ([], "x" * 70_000),
    ],
)
def test_the_admission_command_is_packed_as_redis_py_packs_it(keys, argument):
    from redis.asyncio.connection import Connection

    from shared.limits import _evalsha_command

    sha = "0123456789abcdef0123456789abcdef01234567"
    expected = b"".join(Connection().pack_command("EVALSHA", sha, len(keys), *keys, argument))
    assert _evalsha_command(sha.encode(), keys, argument) == expected


async def test_the_store_survives_a_restart_a_script_flush_and_a_cancelled_command(redis_server):
    """Admissions hold their connections between commands: none of these may cost an admission
    an error, or give it another command's reply."""
    import redis.asyncio as redis

    store = RedisStore(StoreSettings(type="redis", url=redis_server.url, timeout_s=1))
    bucket = Bucket("tokens", 60_000, 100)
    admitted = lambda key, cost: store.admit([f"gateway:limits:{{{key}}}:tokens"], [bucket], [cost])  # noqa: E731
    admin = redis.Redis.from_url(redis_server.url)
    try:
        # Three at once: three connections held.
        assert all(d.admitted for d in await asyncio.gather(*(admitted(k, 10) for k in "abc")))
        redis_server.stop()
        redis_server.start()  # same port, empty: the held connections are all broken
        await asyncio.sleep(0.1)  # the event loop sees the old server's connections close
        assert (await admitted("a", 10)).debts_after_ms == [pytest.approx(6_000, abs=50)]
        await admin.script_flush()
        assert (await admitted("a", 10)).debts_after_ms == [pytest.approx(12_000, abs=100)]
        # A command cancelled while the server is paused: its reply comes after the cancel.
        await admin.client_pause(300)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await admitted("d", 50)
        # The next admission has its own reply (key e's: empty), not the cancelled one's (d's,
        # 30 s of debt).
        assert (await admitted("e", 0)).debts_after_ms == [0]
    finally:
        await admin.aclose()
        await store.aclose()


async def test_held_connections_go_back_through_the_pool(redis_server, monkeypatch):
    """Past `HOLD_S` a held connection returns to redis-py's pool (which re-authenticates it
    after an Entra token renewal) and is taken from there again, not leaked."""
    import redis.asyncio as redis

    monkeypatch.setattr(RedisStore, "HOLD_S", 0.0)
    store = RedisStore(StoreSettings(type="redis", url=redis_server.url, timeout_s=1))
    admin = redis.Redis.from_url(redis_server.url)
    bucket = Bucket("requests", 60_000, 100)
    try:
        debts = [
            (await store.admit(["gateway:limits:{h}:requests"], [bucket], [1])).debts_after_ms[0]
            for _ in range(5)
        ]
        assert debts == [pytest.approx(600 * n, abs=50) for n in range(1, 6)]
        # Not one per admission: the admissions' connection, the one that loaded the script
        # (the first EVALSHA found none), and the admin's.
        assert len(await admin.client_list()) == 3
    finally:
        await admin.aclose()
        await store.aclose()


async def test_a_caller_well_inside_its_limits_starts_before_its_admission_but_a_refusal_still_wins(
    emulator, start_gateway, redis_server
):
    config = emulator_config(
        emulator[1], callers={"limits": redis_limits(redis_server.url, requests_per_minute=100)}
    )
    gateway = start_gateway(config)
    assert (await post(gateway)).status == 200  # 1 of 100 used: the next one may start early
    # Other instances spend the rest of the minute meanwhile (this one has not seen it).
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_server.url)
    seconds, microseconds = await client.time()
    full = seconds * 1000 + microseconds / 1000 + 60_000  # a full bucket: a minute's worth owed
    await client.set("gateway:limits:{anonymous}:requests", f"{full:.3f}", px=60_000)
    # Redis holds scripts for 200 ms (within the store's timeout_s): the call to the endpoint,
    # started early, gets there first, however fast the round trip would have been.
    await client.client_pause(200, all=False)
    await client.aclose()
    emulator[0].add_fault(Fault(latency_s=2))  # the endpoint is slow: the call is on its way
    started = time.monotonic()
    refused = await post(gateway)
    assert refused.status == 429 and refused.headers["Retry-After"].isdigit()
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert time.monotonic() - started < 1  # the call to the endpoint was cancelled, not awaited
    assert len(emulator[0].requests) == 2  # it had started: the early start's price


async def test_only_a_caller_recently_seen_well_inside_its_limits_may_start_early():
    now = [1000.0]
    limits = CallerLimits(
        LimitsSettings(requests_per_minute=4, tokens_per_minute=1000),
        MemoryStore(lambda: now[0]),
        lambda: now[0],
    )
    limits.early_start = True  # as with a shared store
    caller = Caller("c")
    assert not limits.has_headroom(caller)  # never seen here
    await limits.admit(caller, 100)  # a quarter of the requests, a tenth of the tokens
    assert limits.has_headroom(caller)
    now[0] += 1.5
    assert not limits.has_headroom(caller)  # what this process saw is too old
    await limits.admit(caller, 0)
    assert limits.has_headroom(caller)
    with pytest.raises(CallerLimitError):
        await limits.admit(caller, 950)  # refused: counts as full
    assert not limits.has_headroom(caller)
    await limits.admit(caller, 0)  # three of four requests: more than half full
    assert not limits.has_headroom(caller)


async def test_a_request_that_ends_before_its_admission_is_settled_when_it_is_decided():
    limits = CallerLimits(LimitsSettings(tokens_per_minute=1000), MemoryStore())
    caller = Caller("c")
    admission = limits.reserve(caller, 400)
    limits.settle(admission, 100)  # the request is over: used 100 of the 400 estimated
    assert not admission.settled
    await limits.decide(admission)
    assert admission.settled
    # 100 taken, not 400: 900 left.
    assert (await limits.admit(Caller("c"), 0)).headers["x-ratelimit-remaining-tokens"] == "900"


@pytest.mark.parametrize("on_store_error", ["allow", "deny"])
async def test_redis_down_then_back(emulator, start_gateway, redis_server, on_store_error, caplog):
    config = emulator_config(
        emulator[1],
        callers={
            "limits": redis_limits(redis_server.url, requests_per_minute=2, on_store_error=on_store_error)
        },
    )
    url = start_gateway(config)
    assert [(await post(url)).status for _ in range(3)] == [200, 200, 429]
    redis_server.stop()
    caplog.set_level(logging.ERROR, logger="gateway.limits")
    down = [await post(url) for _ in range(3)]
    if on_store_error == "allow":
        assert [r.status for r in down] == [200, 200, 200]
        assert "x-ratelimit-limit-requests" not in down[0].headers
    else:
        error = assert_openai_error(down[0], 503, "limits")
        assert error["code"] == "limit_store_unavailable"
        assert all(r.status == 503 for r in down)
    assert any("limits' store failed" in r.getMessage() for r in caplog.records)
    redis_server.start()  # same port, empty: limits count from zero again
    await asyncio.sleep(0.35)  # the circuit's retry_s
    assert [(await post(url)).status for _ in range(3)] == [200, 200, 429]


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_estimates_are_a_quarter_of_the_characters():
    assert estimate_tokens(8) == 2 and estimate_tokens(9) == math.ceil(9 / 4) and estimate_tokens(0) == 1
