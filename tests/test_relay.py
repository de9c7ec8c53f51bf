"""The stream relay on its own: scripted answers, no sockets."""

from __future__ import annotations

import asyncio
import json

import pytest

from shared.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from shared.observe import Exchange
from shared.relay import Pacing, relay_chat
from shared.service import read_result
from shared.sse import DONE, KEEPALIVE

from .fakes import FakeAnswer, RecordingObserver, Scripted, config

CONFIG = config(
    {"name": "a"}, {"name": "d", "endpoint_api_type": "dedicated", "endpoint_url": "http://127.0.0.1:9/score"}
)


def event(delta: dict, finish: str | None = None, **extra) -> bytes:
    chunk = {"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "up", **extra}
    chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def relay(
    scripted: Scripted,
    *,
    endpoint: str = "a",
    include_usage: bool = False,
    keepalive_s: float = 5,
    opening_s: float = 0,
):
    """The writes the caller gets, the exchange and the observer."""
    exchange, observer, released = Exchange("chat", endpoint, stream=True), RecordingObserver(), []

    async def opening():
        await asyncio.sleep(opening_s)
        return CONFIG.endpoints_by_name[endpoint], FakeAnswer(scripted, released, endpoint)

    pacing = Pacing(keepalive_s=keepalive_s, max_duration_s=10, on_timeout=UpstreamTimeoutError("too long"))
    writes = [
        w
        async for w in relay_chat(
            opening(),
            pacing=pacing,
            read_result=read_result,
            exchange=exchange,
            observer=observer,
            include_usage=include_usage,
        )
    ]
    return writes, exchange, observer


def datas(writes: list[bytes]) -> list[str]:
    return [line[6:] for line in b"".join(writes).decode().split("\n") if line.startswith("data: ")]


async def test_the_first_event_goes_alone_then_each_read_in_one_write():
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    read_one = event({"role": "assistant", "content": "a"}) + event({"content": "b"})
    read_two = event({"content": "c"}, "stop") + event({}, usage=usage) + DONE
    writes, exchange, observer = await relay(
        Scripted(content_type="text/event-stream", pieces=[read_one, read_two]), include_usage=True
    )
    assert len(writes) == 3 and writes[-1].endswith(DONE)
    assert writes[0].count(b"data: ") == 1 and writes[1].count(b"data: ") == 1
    chunks = [json.loads(d) for d in datas(writes)[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["model"] for c in chunks} == {"a"}
    assert exchange.usage == usage and exchange.finish_reasons == ["stop"]
    assert chunks[-1]["usage"] == usage
    assert observer.names() == ["first_chunk"]


async def test_usage_is_noted_but_not_passed_on_unless_asked():
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    stream = event({"content": "x"}, "stop") + event({}, usage=usage) + DONE
    writes, exchange, _ = await relay(Scripted(content_type="text/event-stream", pieces=[stream]))
    assert exchange.usage == usage
    assert all("usage" not in json.loads(d) for d in datas(writes)[:-1])


async def test_a_whole_dedicated_answer_becomes_the_chunks_of_a_stream():
    body = json.dumps({"output": "Hello"}).encode()
    writes, exchange, _ = await relay(Scripted(body=body), endpoint="d")
    chunks = [json.loads(d) for d in datas(writes)[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and datas(writes)[-1] == "[DONE]"
    assert exchange.finish_reasons == ["stop"]


async def test_keepalives_while_the_answer_is_awaited():
    writes, _, _ = await relay(
        Scripted(content_type="text/event-stream", pieces=[event({"content": "x"}, "stop") + DONE]),
        keepalive_s=0.02,
        opening_s=0.15,
    )
    assert writes[0] == KEEPALIVE and 2 <= writes.count(KEEPALIVE) <= 8


async def test_a_stream_cut_short_ends_with_an_error_event_and_no_done():
    writes, exchange, _ = await relay(
        Scripted(content_type="text/event-stream", pieces=[event({"content": "half"})])
    )
    last = json.loads(datas(writes)[-1])
    assert last["error"]["code"] == "upstream_stream_truncated" and b"[DONE]" not in b"".join(writes)


async def test_a_failure_before_the_first_event_is_raised_for_a_status_code():
    with pytest.raises(UpstreamError) as caught:
        await relay(Scripted(content_type="text/event-stream", pieces=[b"data: not json\n\n"]))
    assert caught.value.code == "bad_upstream_response"


async def test_a_bad_event_after_good_ones_delivers_them_then_the_error():
    stream = event({"content": "ok"}) + event({"content": "also ok"}) + b"data: [1, 2\n\n"
    writes, _, _ = await relay(Scripted(content_type="text/event-stream", pieces=[stream]))
    items = datas(writes)
    assert [json.loads(d)["choices"][0]["delta"]["content"] for d in items[:2]] == ["ok", "also ok"]
    assert json.loads(items[-1])["error"]["code"] == "bad_upstream_response"


async def test_an_opening_failure_is_raised_before_any_event():
    async def failing():
        raise GatewayError("nope")

    pacing = Pacing(keepalive_s=5, max_duration_s=10, on_timeout=UpstreamTimeoutError("x"))
    events = relay_chat(
        failing(),
        pacing=pacing,
        read_result=read_result,
        exchange=Exchange("chat", "a"),
        observer=RecordingObserver(),
        include_usage=False,
    )
    with pytest.raises(GatewayError, match="nope"):
        await anext(events)


async def test_a_whole_answer_keeps_its_reasoning_when_made_into_chunks():
    body = json.dumps(
        {
            "choices": [
                {
                    "message": {"role": "assistant", "content": "42", "reasoning_content": "6 x 7"},
                    "finish_reason": "stop",
                }
            ]
        }
    ).encode()
    writes, _, _ = await relay(Scripted(body=body))
    deltas = [json.loads(d)["choices"][0]["delta"] for d in datas(writes)[:-1]]
    assert {"reasoning_content": "6 x 7"} in deltas and {"content": "42"} in deltas


async def test_fields_an_endpoint_adds_to_a_chunk_are_left_out():
    extra = {"error": {"message": "key abcdefgh12345678 refused"}, "system_fingerprint": "fp"}
    stream = event({"content": "hi"}, "stop", **extra) + DONE
    writes, _, _ = await relay(Scripted(content_type="text/event-stream", pieces=[stream]))
    (chunk,) = [json.loads(d) for d in datas(writes)[:-1]]
    assert "error" not in chunk and chunk["system_fingerprint"] == "fp"
    assert b"abcdefgh" not in b"".join(writes)
