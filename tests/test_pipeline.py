"""The dispatch pipeline on its own: a scripted transport, no sockets, every event observed."""

from __future__ import annotations

import asyncio

import pytest

from shared.credentials import Credential, Credentials, bearer
from shared.errors import ConcurrencyLimitError, ServiceUnavailableError, UpstreamError, UpstreamTimeoutError
from shared.observe import Exchange, Observer, Observers
from shared.pipeline import Leases, Pipeline
from shared.transport import UpstreamRequest

from .fakes import FakeTransport, RecordingObserver, Scripted, completion, config


def build(endpoint, credential: Credential) -> UpstreamRequest:
    return UpstreamRequest(endpoint.name, endpoint.endpoint_url, dict(credential.headers), b"{}")


def pipeline(cfg, scripts, credentials=None):
    transport = FakeTransport(scripts)
    observer = RecordingObserver()
    credentials = credentials or Credentials({"KEY": "the-key"}, cfg.credentials)
    return Pipeline(cfg, credentials, transport, observer), transport, observer


async def call(pipe: Pipeline, model: str, *, stream: bool = False):
    exchange = Exchange("chat", model)
    with Leases() as leases:
        endpoint, answer = await pipe.open(exchange, pipe.endpoint_for(model), build, leases, stream=stream)
        body = (await answer.read()).body
    return exchange, endpoint, body


async def test_retries_then_answers_and_tells_each_try():
    cfg = config({"name": "a", "max_retries": 2})
    pipe, transport, observer = pipeline(
        cfg,
        {
            "a": [
                Scripted(503),
                Scripted(error=UpstreamTimeoutError("slow", transient=True)),
                Scripted(200, completion("hi")),
            ]
        },
    )
    exchange, endpoint, body = await call(pipe, "a")
    assert endpoint.name == "a" and exchange.endpoint == "a" and body == completion("hi")
    assert observer.names() == [
        "try_started", "try_ended", "retry_scheduled",
        "try_started", "try_ended", "retry_scheduled",
        "try_started", "try_ended",
    ]  # fmt: skip
    ended = [e for e in observer.events if e[0] == "try_ended"]
    assert [(e[2], e[3]) for e in ended] == [(0, 503), (1, None), (2, 200)]
    assert ended[1][4].code == "upstream_timeout" and ended[2][4] is None
    retries = [e for e in observer.events if e[0] == "retry_scheduled"]
    assert [r[2] for r in retries] == [1, 2] and all(0 <= r[3] <= 0.002 for r in retries)
    assert transport.sent[0].headers["Authorization"] == "Bearer the-key"


async def test_answers_that_will_not_change_are_not_retried():
    pipe, transport, observer = pipeline(config({"name": "a", "max_retries": 3}), {"a": [Scripted(404)]})
    with pytest.raises(UpstreamError) as caught:
        await call(pipe, "a")
    assert caught.value.code == "upstream_not_found" and len(transport.sent) == 1
    assert "retry_scheduled" not in observer.names()


async def test_fallback_takes_over_and_is_told():
    cfg = config({"name": "a", "fallbacks": ["b"]}, {"name": "b"})
    pipe, _, observer = pipeline(cfg, {"a": [Scripted(500)], "b": [Scripted(200, completion("from b"))]})
    exchange, endpoint, body = await call(pipe, "a")
    assert endpoint.name == "b" and exchange.endpoint == "b"
    (fallback,) = [e for e in observer.events if e[0] == "fallback"]
    assert fallback[1:3] == ("a", "b") and fallback[3].upstream_status == 500


async def test_cooldown_opens_skips_then_one_probe_closes_it():
    now = [0.0]
    cfg = config(
        {"name": "a", "fallbacks": ["b"]},
        {"name": "b"},
        resilience={"cooldown_failures": 2, "cooldown_s": 10},
    )
    pipe, transport, observer = pipeline(
        cfg,
        {
            "a": [Scripted(500), Scripted(500), Scripted(200, completion("a is back"))],
            "b": [Scripted(200, completion("b"))] * 4,
        },
    )
    pipe.cooldowns._clock = lambda: now[0]  # the test's clock
    for _ in range(2):
        await call(pipe, "a")
    assert ("cooldown_opened", "a", 10.0) in observer.events
    _, endpoint, _ = await call(pipe, "a")  # skipped while cooling down: b answers at once
    assert endpoint.name == "b" and [r.endpoint for r in transport.sent].count("a") == 2
    now[0] = 11
    _, endpoint, body = await call(pipe, "a")  # the probe
    assert endpoint.name == "a" and body == completion("a is back")
    assert observer.events[-1] == ("cooldown_closed", "a")


async def test_a_refused_credential_is_fetched_again_once():
    class RotatingKeys:
        def __init__(self) -> None:
            self.values = ["old-key", "new-key"]
            self.refused: list[str] = []

        async def get(self, auth) -> Credential:
            return bearer(self.values[0])

        def cached(self, auth) -> Credential | None:
            return None  # nothing cached: every call asks `get`

        def refreshable(self, auth) -> bool:
            return True

        def invalidate(self, auth, refused: Credential) -> None:
            self.refused.append(refused.value)
            self.values.pop(0)

    keys = RotatingKeys()
    pipe, transport, observer = pipeline(
        config({"name": "a"}), {"a": [Scripted(401), Scripted(200, completion("ok"))]}, keys
    )
    await call(pipe, "a")
    assert keys.refused == ["old-key"]
    assert [r.headers["Authorization"] for r in transport.sent] == ["Bearer old-key", "Bearer new-key"]
    assert ("credential_refused", "a", 401) in observer.events


async def test_a_key_the_endpoint_echoes_is_not_in_the_error():
    echo = b'{"error": {"message": "bad key the-key"}}'
    pipe, _, _ = pipeline(config({"name": "a"}), {"a": [Scripted(400, echo)]})
    with pytest.raises(Exception) as caught:
        await call(pipe, "a")
    assert "the-key" not in str(caught.value.message)


async def test_slots_are_held_until_the_leases_end_then_given_back():
    cfg = config({"name": "a", "max_concurrency": 1})
    pipe, transport, observer = pipeline(
        cfg, {"a": [Scripted(200, completion("1")), Scripted(200, completion("2"))]}
    )
    exchange = Exchange("chat", "a")
    with Leases() as leases:
        await pipe.open(exchange, pipe.endpoint_for("a"), build, leases)
        assert pipe.in_flight.count("a") == 1
        with pytest.raises(ConcurrencyLimitError):
            await pipe.open(Exchange("chat", "a"), pipe.endpoint_for("a"), build, Leases())
        assert observer.events[-1][0:2] == ("limit_rejected", "max_concurrency")
    assert pipe.in_flight.count("a") == 0 and transport.released == ["a"]
    await call(pipe, "a")  # the slot serves the next request


async def test_a_failed_try_gives_its_slot_back():
    pipe, transport, _ = pipeline(config({"name": "a"}), {"a": [Scripted(502)]})
    with pytest.raises(UpstreamError):
        await call(pipe, "a")
    assert pipe.in_flight.count("a") == 0 and transport.released == ["a"]


async def test_a_cancelled_call_gives_its_slot_back():
    pipe, _, _ = pipeline(config({"name": "a"}), {"a": [Scripted(200, delay_s=10)]})
    task = asyncio.create_task(call(pipe, "a"))
    while pipe.in_flight.count("a") == 0:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pipe.in_flight.count("a") == 0


async def test_the_request_deadline_bounds_retries():
    cfg = config({"name": "a", "max_retries": 5, "timeout_s": 5}, resilience={"request_timeout_s": 0.05})
    pipe, transport, _ = pipeline(cfg, {"a": [Scripted(503, delay_s=0.03)] * 6})
    with pytest.raises((UpstreamTimeoutError, ServiceUnavailableError)):
        await call(pipe, "a")
    assert len(transport.sent) < 6


def test_observers_tell_each_one_and_survive_one_that_raises(caplog):
    class Broken(Observer):
        def cooldown_opened(self, endpoint: str, cooldown_s: float) -> None:
            raise RuntimeError("observer bug")

    recording = RecordingObserver()
    Observers([Broken(), recording]).cooldown_opened("a", 1.0)
    assert recording.events == [("cooldown_opened", "a", 1.0)]
    assert "observer Broken failed on cooldown_opened" in caplog.text
