"""Model groups through the real gateway: the `openai`-shaped API over sockets, members on the
emulator (each at its own path, so faults and latency can target one member)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from emulator import Fault

CHAT = "/api/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello group"}]


def member(name: str, url: str, **fields) -> dict:
    return {
        "name": name,
        "endpoint_url": f"{url}/{name}/v1/chat/completions",
        "endpoint_api_type": "serverless",
        "auth": {"type": "env", "variable": "EMULATOR_KEY"},
        "timeout_s": 5,
        "max_retries": 0,
        **fields,
    }


def group_config(url: str, *names: str, weights=None, strategy="weighted", fallbacks=(), **top) -> dict:
    weights = weights or [1] * len(names)
    members = [{"endpoint": n, "weight": w} for n, w in zip(names, weights, strict=True)]
    return {
        "endpoints": [member(n, url) for n in (*names, *fallbacks)],
        "groups": [{"name": "chat", "strategy": strategy, "members": members, "fallbacks": list(fallbacks)}],
        **top,
    }


async def post(session: aiohttp.ClientSession, base: str, **body) -> tuple[int, dict, bytes]:
    async with session.post(base + CHAT, json={"model": "chat", "messages": HELLO, **body}) as response:
        return response.status, dict(response.headers), await response.read()


async def answered_by(session, base) -> str:
    status, _, body = await post(session, base)
    assert status == 200, body
    return json.loads(body)["model"]


async def test_models_lists_endpoints_and_groups(emulator, start_gateway):
    base = start_gateway(group_config(emulator[1], "east", "west"))
    async with aiohttp.ClientSession() as session, session.get(base + "/api/v1/models") as response:
        listing = await response.json()
    assert [m["id"] for m in listing["data"]] == ["east", "west", "chat"]


async def test_a_weighted_group_spreads_requests_and_names_who_answered(emulator, start_gateway):
    base = start_gateway(group_config(emulator[1], "east", "west", weights=[3, 1]))
    async with aiohttp.ClientSession() as session:
        answered = []
        for _ in range(20):  # 200 requests, 10 at a time
            answered += await asyncio.gather(*(answered_by(session, base) for _ in range(10)))
    east, west = answered.count("east"), answered.count("west")
    # Binomial(200, 0.75): east <= west or west == 0 is over 8 standard deviations away (p < 1e-15).
    assert east + west == 200 and east > west > 0
    paths = [r.path for r in emulator[0].requests]
    assert (
        paths.count("/east/v1/chat/completions") == east and paths.count("/west/v1/chat/completions") == west
    )


async def test_least_busy_sends_new_requests_away_from_a_slow_member(emulator, start_gateway):
    base = start_gateway(group_config(emulator[1], "slow", "quick", strategy="least_busy"))
    emulator[0].add_fault(Fault(latency_s=1.0, path="/slow/v1/chat/completions", times=10))
    async with aiohttp.ClientSession() as session:
        pair = [asyncio.create_task(answered_by(session, base)) for _ in range(2)]  # one each
        while len(emulator[0].requests) < 2:
            await asyncio.sleep(0.01)
        later = [await answered_by(session, base) for _ in range(6)]  # while slow still works
        assert later == ["quick"] * 6
        assert sorted(await asyncio.gather(*pair)) == ["quick", "slow"]


async def test_lowest_latency_moves_away_from_a_member_that_slows(emulator, start_gateway):
    base = start_gateway(group_config(emulator[1], "a", "b", strategy="lowest_latency"))
    async with aiohttp.ClientSession() as session:
        first = {await answered_by(session, base) for _ in range(2)}
        assert first == {"a", "b"}  # each measured once
        # Whichever is quicker now gets the traffic; make it slow for its next answer.
        leader = await answered_by(session, base)
        emulator[0].add_fault(Fault(latency_s=0.8, path=f"/{leader}/v1/chat/completions", times=5))
        assert await answered_by(session, base) == leader  # measured slow ...
        other = ({"a", "b"} - {leader}).pop()
        assert [await answered_by(session, base) for _ in range(4)] == [other] * 4  # ... so skipped


async def test_a_member_answering_503_cools_down_and_comes_back(emulator, start_gateway):
    config = group_config(
        emulator[1],
        "east",
        "west",
        weights=[1, 0],  # west only when east cannot
        resilience={"cooldown_failures": 1, "cooldown_s": 0.5},
    )
    base = start_gateway(config)
    emulator[0].add_fault(Fault(status=503, path="/east/v1/chat/completions"))
    async with aiohttp.ClientSession() as session:
        assert await answered_by(session, base) == "west"  # east failed, west took its request
        assert [await answered_by(session, base) for _ in range(3)] == ["west"] * 3
        assert [r.path for r in emulator[0].requests].count("/east/v1/chat/completions") == 1  # skipped
        await asyncio.sleep(0.6)
        assert await answered_by(session, base) == "east"  # back after cooldown_s


async def test_all_members_down_then_the_fallback_then_503_with_retry_after(emulator, start_gateway):
    config = group_config(
        emulator[1],
        "east",
        "west",
        fallbacks=["backup"],
        resilience={"cooldown_failures": 1, "cooldown_s": 30},
    )
    base = start_gateway(config)
    for name in ("east", "west"):
        emulator[0].add_fault(Fault(status=503, path=f"/{name}/v1/chat/completions", times=100))
    async with aiohttp.ClientSession() as session:
        assert await answered_by(session, base) == "backup"
        emulator[0].add_fault(Fault(status=503, path="/backup/v1/chat/completions", times=100))
        for _ in range(2):  # backup fails, then everything is cooling down
            status, headers, body = await post(session, base)
            assert status == 503 and 1 <= int(headers["Retry-After"]) <= 30, body
    assert len(emulator[0].requests) == 4  # east, west, backup; then backup once more


async def test_a_stream_chooses_once_before_its_first_byte(emulator, start_gateway):
    base = start_gateway(group_config(emulator[1], "east", "west", weights=[1, 0]))
    emulator[0].add_fault(Fault(status=503, path="/east/v1/chat/completions"))
    async with aiohttp.ClientSession() as session:
        status, _, body = await post(session, base, stream=True)  # east fails before a byte: west
        assert status == 200
        chunks = [json.loads(line[6:]) for line in body.decode().split("\n") if line.startswith("data: {")]
        assert {c["model"] for c in chunks} == {"west"}
        emulator[0].clear()
        emulator[0].add_fault(Fault(break_stream_after=2, path="/east/v1/chat/completions"))
        status, _, body = await post(session, base, stream=True)  # east breaks after 2 events
    text = body.decode()
    assert (
        status == 200
        and '"error"' in text
        and text.count('"model": "east"') + text.count('"model":"east"') == 2
    )
    assert [r.path for r in emulator[0].requests] == ["/east/v1/chat/completions"]  # not moved mid-stream
