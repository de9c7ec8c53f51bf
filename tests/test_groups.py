"""Model groups: their configuration checks, and member choice in the pipeline with a scripted
transport (no sockets; tests/test_groups_gateway.py drives the real gateway)."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from shared.config import parse_config
from shared.credentials import Credentials
from shared.errors import ConfigError, ServiceUnavailableError
from shared.groups import Latencies
from shared.observe import Exchange
from shared.pipeline import Leases, Pipeline

from .fakes import FakeTransport, RecordingObserver, Scripted, completion, config
from .test_pipeline import build, call


def group(name="chat", *members, **fields):
    return {"name": name, "members": [{"endpoint": m, "weight": w} for m, w in members], **fields}


def pipeline(cfg, scripts, *, seed=None):
    transport = FakeTransport(scripts)
    observer = RecordingObserver()
    rng = random.Random(seed) if seed is not None else None
    pipe = Pipeline(cfg, Credentials({"KEY": "the-key"}, cfg.credentials), transport, observer, rng=rng)
    return pipe, transport, observer


def ok(n: int, text: str = "ok") -> list[Scripted]:
    return [Scripted(200, completion(text)) for _ in range(n)]


# --- configuration ----------------------------------------------------------------------


def refusal(*groups, endpoints=("east", "west")) -> str:
    document = {
        "endpoints": [
            {
                "name": name,
                "endpoint_url": f"http://127.0.0.1:9/{name}/v1/chat/completions",
                "endpoint_api_type": "serverless",
                "auth": {"type": "env", "variable": "KEY"},
            }
            for name in endpoints
        ],
        "groups": list(groups),
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(json.dumps(document))
    return str(caught.value)


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        (
            [group("chat", ("east", 1), ("north", 1))],
            "group 'chat': member 'north' is not an endpoint (endpoints: east, west)",
        ),
        (
            [group("chat", ("east", 1), ("other", 1)), group("other", ("west", 1))],
            "group 'chat': member 'other' is a group; a group's members are endpoints: list that "
            "group's endpoints instead",
        ),
        (
            [group("chat", ("east", 0), ("west", 0))],
            "group 'chat': the members' weights add up to 0, so none would be chosen; give at least "
            "one member a weight above 0",
        ),
        (
            [group("east", ("west", 1))],
            "group 'east': an endpoint has the same name; endpoint and group names share one namespace",
        ),
        (
            [group("chat", ("east", 1)), group("chat", ("west", 1))],
            "group 'chat': another group has the same name",
        ),
        (
            [group("chat", ("east", 1), ("east", 2))],
            "group 'chat': members lists an endpoint twice; give it one entry and a weight",
        ),
        (
            [group("chat", ("east", 1), fallbacks=["chat2"]), group("chat2", ("west", 1))],
            "group 'chat': fallback 'chat2' is a group",
        ),
        (
            [group("chat", ("east", 1), fallbacks=["east"])],
            "group 'chat': fallbacks lists an endpoint twice or one of the members",
        ),
        ([{"name": "chat", "members": []}], "groups[0] ('chat').members: List should have at least 1 item"),
        (
            [{"name": "chat", "strategy": "fastest", "members": [{"endpoint": "east"}]}],
            "groups[0] ('chat').strategy: Input should be 'weighted', 'least_busy' or 'lowest_latency'",
        ),
    ],
)
def test_groups_that_cannot_work_are_refused_with_the_fix(groups, expected):
    assert expected in refusal(*groups)


def test_a_group_may_be_the_default_model_and_is_listed():
    cfg = config(
        {"name": "east"},
        {"name": "west"},
        groups=[group("chat", ("east", 3), ("west", 1))],
        default_model="chat",
    )
    assert cfg.groups_by_name["chat"].strategy == "weighted"
    assert [m.weight for m in cfg.groups[0].members] == [3, 1]


def test_the_404_lists_groups_too():
    cfg = config({"name": "east"}, groups=[group("chat", ("east", 1))])
    pipe, _, _ = pipeline(cfg, {})
    with pytest.raises(Exception, match="available: east, chat"):
        pipe.endpoint_for("nope")


# --- member choice ------------------------------------------------------------------------


async def test_weighted_3_to_1_over_1000_requests_is_within_5_percent():
    cfg = config({"name": "east"}, {"name": "west"}, groups=[group("chat", ("east", 3), ("west", 1))])
    # A fixed seed: the same 1,000 draws every run, so the bound cannot flake.
    pipe, transport, _ = pipeline(cfg, {"east": ok(1000), "west": ok(1000)}, seed=20261)
    answered = [(await call(pipe, "chat"))[1].name for _ in range(1000)]
    east = answered.count("east")
    assert 700 <= east <= 800 and answered.count("west") == 1000 - east
    assert [r.endpoint for r in transport.sent] == answered  # one try each


async def test_the_answer_names_the_member_that_answered():
    cfg = config({"name": "east"}, {"name": "west"}, groups=[group("chat", ("east", 1), ("west", 1))])
    pipe, _, _ = pipeline(cfg, {"east": ok(5), "west": ok(5)})
    for _ in range(5):
        exchange, endpoint, _ = await call(pipe, "chat")
        assert exchange.endpoint == endpoint.name and endpoint.name in ("east", "west")
        assert exchange.model == "chat"


async def test_a_weight_0_member_takes_requests_only_when_the_others_cannot():
    cfg = config(
        {"name": "dedicated", "max_concurrency": 1},
        {"name": "overflow"},
        groups=[group("chat", ("dedicated", 1), ("overflow", 0))],
    )
    pipe, _, _ = pipeline(cfg, {"dedicated": ok(20), "overflow": ok(1)})
    assert {(await call(pipe, "chat"))[1].name for _ in range(10)} == {"dedicated"}
    with Leases() as leases:  # dedicated at its max_concurrency: the overflow answers
        await pipe.open(Exchange("chat", "chat"), pipe.endpoint_for("chat"), build, leases)
        _, endpoint, _ = await call(pipe, "chat")
    assert endpoint.name == "overflow"


async def test_a_member_at_max_concurrency_is_skipped_without_a_refusal():
    cfg = config(
        {"name": "east", "max_concurrency": 1},
        {"name": "west"},
        groups=[group("chat", ("east", 1000), ("west", 1))],
    )
    pipe, transport, observer = pipeline(cfg, {"east": ok(1), "west": ok(3)}, seed=1)
    with Leases() as leases:
        first, _ = await pipe.open(Exchange("chat", "chat"), pipe.endpoint_for("chat"), build, leases)
        assert first.name == "east"
        answered = [(await call(pipe, "chat"))[1].name for _ in range(3)]
    assert answered == ["west"] * 3
    assert "limit_rejected" not in observer.names()


async def test_when_every_member_is_full_the_request_is_refused_with_429():
    cfg = config(
        {"name": "east", "max_concurrency": 1},
        {"name": "west", "max_concurrency": 1},
        groups=[group("chat", ("east", 1), ("west", 1))],
    )
    pipe, _, observer = pipeline(cfg, {"east": ok(1), "west": ok(1)})
    with Leases() as leases:
        for _ in range(2):
            await pipe.open(Exchange("chat", "chat"), pipe.endpoint_for("chat"), build, leases)
        with pytest.raises(Exception) as caught:
            await call(pipe, "chat")
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "1"
    assert observer.names().count("limit_rejected") == 2


async def test_least_busy_sends_new_requests_to_the_member_with_fewer_in_flight():
    cfg = config(
        {"name": "slow"},
        {"name": "quick"},
        groups=[group("chat", ("slow", 1), ("quick", 1), strategy="least_busy")],
    )
    pipe, _, _ = pipeline(cfg, {"slow": [Scripted(200, completion("s"), delay_s=0.2)] * 2, "quick": ok(10)})
    # Two at once: one each; the slow one is still in flight while five more come one by one.
    first = [asyncio.create_task(call(pipe, "chat")) for _ in range(2)]
    while pipe.in_flight.count("slow") == 0 or pipe.in_flight.count("quick") != 0:
        await asyncio.sleep(0.001)
    later = [(await call(pipe, "chat"))[1].name for _ in range(5)]
    assert later == ["quick"] * 5
    assert sorted([(await task)[1].name for task in first]) == ["quick", "slow"]


async def test_least_busy_ties_take_turns():
    cfg = config(
        {"name": "a"}, {"name": "b"}, groups=[group("chat", ("a", 1), ("b", 1), strategy="least_busy")]
    )
    pipe, _, _ = pipeline(cfg, {"a": ok(3), "b": ok(3)})
    answered = [(await call(pipe, "chat"))[1].name for _ in range(6)]
    assert sorted(answered) == ["a"] * 3 + ["b"] * 3
    assert all(x != y for x, y in zip(answered, answered[1:], strict=False))


async def test_lowest_latency_shifts_when_a_member_slows():
    cfg = config(
        {"name": "a"}, {"name": "b"}, groups=[group("chat", ("a", 1), ("b", 1), strategy="lowest_latency")]
    )
    scripts = {
        "a": [Scripted(200, completion("a"), delay_s=0.005)] * 3
        + [Scripted(200, completion("a"), delay_s=0.6)],
        "b": [Scripted(200, completion("b"), delay_s=0.08)] * 10,
    }
    pipe, _, _ = pipeline(cfg, scripts)
    answered = [(await call(pipe, "chat"))[1].name for _ in range(5)]
    # Each is measured once (unmeasured members go first), then the quicker one keeps the traffic.
    assert sorted(answered[:2]) == ["a", "b"] and answered[2:] == ["a", "a", "a"]
    answered = [(await call(pipe, "chat"))[1].name for _ in range(4)]
    assert answered == ["b"] * 4  # a's last answer took 0.6 s: its average is now above b's


def test_latencies_average_and_forget_old_measurements():
    now = [0.0]
    latencies = Latencies(lambda: now[0], stale_s=30)
    assert latencies.estimate("a", now[0]) == 0.0
    latencies.observe("a", 1.0)
    latencies.observe("a", 2.0)
    assert latencies.estimate("a", now[0]) == pytest.approx(1.3)
    now[0] = 31
    assert latencies.estimate("a", now[0]) == 0.0  # stale: the member gets a request again
    latencies.observe("a", 0.5)
    assert latencies.estimate("a", now[0]) == 0.5  # a fresh start, not blended with the old


async def test_a_failing_member_passes_the_request_on_and_cools_down():
    cfg = config(
        {"name": "east"},
        {"name": "west"},
        groups=[group("chat", ("east", 1), ("west", 0))],
        resilience={"cooldown_failures": 1, "cooldown_s": 10},
    )
    pipe, transport, observer = pipeline(
        cfg, {"east": [Scripted(503), *ok(1, "east")], "west": ok(3, "west")}
    )
    now = [0.0]
    pipe.cooldowns._clock = lambda: now[0]  # the test's clock
    _, endpoint, body = await call(pipe, "chat")
    assert endpoint.name == "west" and body == completion("west")
    assert ("cooldown_opened", "east", 10.0) in observer.events
    assert [e[1:3] for e in observer.events if e[0] == "fallback"] == [("east", "west")]
    _, endpoint, _ = await call(pipe, "chat")  # east cools down: not even tried
    assert endpoint.name == "west" and [r.endpoint for r in transport.sent].count("east") == 1
    now[0] = 11
    _, endpoint, body = await call(pipe, "chat")
    assert endpoint.name == "east" and body == completion("east")


async def test_all_members_down_then_fallbacks_then_503_with_retry_after():
    cfg = config(
        {"name": "east"},
        {"name": "west"},
        {"name": "backup"},
        groups=[group("chat", ("east", 1), ("west", 1), fallbacks=["backup"])],
        resilience={"cooldown_failures": 1, "cooldown_s": 30},
    )
    scripts = {"east": [Scripted(503)], "west": [Scripted(503)], "backup": [*ok(1, "backup"), Scripted(503)]}
    pipe, _, _ = pipeline(cfg, scripts)
    _, endpoint, _ = await call(pipe, "chat")
    assert endpoint.name == "backup"
    with pytest.raises(ServiceUnavailableError) as caught:  # backup fails too
        await call(pipe, "chat")
    assert caught.value.status == 503 and 29 <= int(caught.value.headers["Retry-After"]) <= 30
    with pytest.raises(ServiceUnavailableError) as caught:  # everything cooling down
        await call(pipe, "chat")
    assert caught.value.code == "endpoint_cooling_down" and int(caught.value.headers["Retry-After"]) > 0


async def test_a_request_the_first_member_refuses_is_the_callers_to_fix():
    cfg = config({"name": "east"}, {"name": "west"}, groups=[group("chat", ("east", 1), ("west", 0))])
    pipe, transport, _ = pipeline(
        cfg, {"east": [Scripted(400, b'{"error": {"message": "bad"}}')], "west": ok(1)}
    )
    with pytest.raises(Exception) as caught:
        await call(pipe, "chat")
    assert caught.value.status == 400 and [r.endpoint for r in transport.sent] == ["east"]
