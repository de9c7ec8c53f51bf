"""The gateway over real sockets: the local server in front of the emulator."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import aiohttp
import pytest
from starlette.responses import Response

from emulator import Fault, reply_text
from shared.http import WATCH_AFTER_S, CallerLeft, CallerWatch

from .client import CHAT, HELLO, assert_openai_error, get, post
from .conftest import emulator_config


async def test_dedicated_chat_returns_a_normalized_completion(gateway, emulator):
    emu, _ = emulator
    reply = await post(gateway, {"model": "llama-chat", "messages": HELLO})
    assert reply.status == 200, reply.body
    completion = reply.json()
    assert completion["object"] == "chat.completion" and completion["model"] == "llama-chat"
    assert completion["id"].startswith("chatcmpl-")
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "You said: Hello there"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    [call] = emu.requests
    assert call.path == "/score" and call.authorized and call.deployment == "llama-2-7b-chat-1"
    assert call.body == {
        "input_data": {"input_string": HELLO, "parameters": {"temperature": 0.8, "max_new_tokens": 512}}
    }
    assert reply.headers["x-request-id"]


async def test_serverless_chat_keeps_usage_and_uses_the_gateway_model_name(gateway, emulator):
    emu, _ = emulator
    messages = [{"role": "system", "content": "Be brief."}, *HELLO]
    reply = await post(gateway, {"model": "mistral-large", "messages": messages})
    assert reply.status == 200, reply.body
    completion = reply.json()
    assert completion["model"] == "mistral-large"
    assert completion["choices"][0]["message"]["content"] == "You said: Be brief.\n\nHello there"
    assert completion["usage"]["total_tokens"] == (
        completion["usage"]["prompt_tokens"] + completion["usage"]["completion_tokens"]
    )
    [call] = emu.requests
    assert call.path == "/v1/chat/completions"
    assert call.body == {
        "messages": [{"role": "user", "content": "Be brief.\n\nHello there"}],
        "temperature": 0.7,
    }


async def test_request_without_model_goes_to_the_default_model(gateway, emulator):
    reply = await post(gateway, {"messages": HELLO})
    assert reply.status == 200 and reply.json()["model"] == "llama-chat"


async def test_request_parameters_override_model_kwargs_for_that_request_only(gateway, emulator):
    emu, _ = emulator
    await post(gateway, {"messages": HELLO, "temperature": 0.1, "max_tokens": 2, "top_p": 0.5})
    await post(gateway, {"messages": HELLO})
    await post(gateway, {"model": "mistral-large", "messages": HELLO, "max_tokens": 3, "seed": 7})
    await post(gateway, {"model": "mistral-large", "messages": HELLO})
    first, second, third, fourth = (r.body for r in emu.requests)
    assert first["input_data"]["parameters"] == {"temperature": 0.1, "max_new_tokens": 2, "top_p": 0.5}
    assert second["input_data"]["parameters"] == {"temperature": 0.8, "max_new_tokens": 512}
    assert {k: third[k] for k in ("temperature", "max_tokens", "seed")} == {
        "temperature": 0.7,
        "max_tokens": 3,
        "seed": 7,
    }
    assert "max_tokens" not in fourth and "seed" not in fourth


async def test_numbers_and_text_reach_the_endpoint_exactly_as_sent(gateway, emulator):
    emu, _ = emulator
    # An integer wider than 64 bits and a float JSON writes with an exponent, in a field the
    # gateway does not know: forwarded with every digit, not rounded through a double.
    raw = (
        '{"model": "mistral-large", "messages": [{"role": "user", "content": "Ünï \\u2713"}], '
        '"seed": 123456789012345678901234567890, "x_custom": [1.5e-7, 1e+20]}'
    ).encode()
    reply = await post(gateway, raw=raw)
    assert reply.status == 200, reply.body
    sent = emu.requests[-1].raw_body
    assert b'"seed":123456789012345678901234567890' in sent
    assert json.loads(sent)["x_custom"] == [1.5e-7, 1e20]
    assert json.loads(sent)["messages"][0]["content"] == "Ünï ✓"


async def test_an_answer_with_nan_becomes_valid_json(gateway, emulator):
    emulator[0].add_fault(
        Fault(body='{"choices": [{"message": {"content": "hi"}, "finish_reason": "stop", "logprobs": NaN}]}')
    )
    reply = await post(gateway, {"model": "mistral-large", "messages": HELLO})
    assert reply.status == 200, reply.body
    assert json.loads(reply.body, parse_constant=pytest.fail)["choices"][0]["logprobs"] is None


async def test_length_limit_gives_finish_reason_length_on_serverless(gateway):
    reply = await post(
        gateway,
        {
            "model": "mistral-large",
            "max_tokens": 2,
            "messages": [{"role": "user", "content": "one two three"}],
        },
    )
    choice = reply.json()["choices"][0]
    assert reply.status == 200 and choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "You said:"},
        "finish_reason": "length",
        "logprobs": None,
    }


async def test_dedicated_answers_carry_no_finish_reason_so_stop_is_reported(gateway):
    reply = await post(gateway, {"max_tokens": 2, "messages": [{"role": "user", "content": "one two three"}]})
    choice = reply.json()["choices"][0]
    assert (
        reply.status == 200
        and choice["message"]["content"] == "You said:"
        and choice["finish_reason"] == "stop"
    )


async def test_models_lists_every_endpoint(gateway):
    reply = await get(gateway, "/api/v1/models")
    assert reply.status == 200 and reply.headers["x-request-id"]
    assert [m["id"] for m in reply.json()["data"]] == ["llama-chat", "mistral-large"]
    assert reply.json()["object"] == "list"


async def test_health_touches_no_upstream(gateway, emulator):
    reply = await get(gateway, "/api/health")
    assert reply.status == 200 and reply.json() == {"status": "ok"}
    assert emulator[0].requests == []


async def test_callers_request_id_is_echoed_and_logged(gateway, caplog):
    with caplog.at_level(logging.INFO, logger="gateway"):
        reply = await post(
            gateway, {"model": "nope", "messages": HELLO}, headers={"x-request-id": "front-end-42"}
        )
    assert reply.status == 404 and reply.headers["x-request-id"] == "front-end-42"
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("gateway.")]
    assert lines and all(line.startswith("[front-end-42] ") for line in lines)


async def test_a_request_id_that_is_not_sane_is_replaced(gateway):
    _, headers, _ = await post(gateway, {"messages": HELLO}, headers={"x-request-id": "bad id\twith spaces"})
    assert headers["x-request-id"] != "bad id\twith spaces" and len(headers["x-request-id"]) == 32


async def test_new_request_and_completion_ids_differ_from_call_to_call(gateway):
    answers = [await post(gateway, {"messages": HELLO}) for _ in range(3)]
    request_ids = {headers["x-request-id"] for _, headers, _ in answers}
    completion_ids = {answer.json()["id"] for answer in answers}
    assert len(request_ids) == 3 and all(re.fullmatch("[0-9a-f]{32}", i) for i in request_ids)
    assert len(completion_ids) == 3 and all(re.fullmatch("chatcmpl-[0-9a-f]{32}", i) for i in completion_ids)


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        (b"{not json", ("not valid JSON",)),
        (b"[]", ("must be a JSON object",)),
        (b"{}", ("messages: is required",)),
        (b'{"messages": []}', ("messages: must contain at least one message",)),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', ("messages[0].role", "'user'")),
        (b'{"messages": [{"role": "user", "content": 42}]}', ("messages[0].content: must be a string",)),
        (b'{"messages": [{"role": "user"}]}', ("messages[0]: a user message needs content",)),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', ("temperature",)),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', ("max_tokens",)),
        (b'{"messages": "hello"}', ("messages",)),
        (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', ("model",)),
    ],
)
async def test_bad_input_is_a_400_that_names_the_problem(gateway, emulator, raw, fragments):
    reply = await post(gateway, raw=raw)
    error = assert_openai_error(reply, 400, *fragments)
    assert error["type"] == "invalid_request_error" and reply.headers["x-request-id"]
    assert emulator[0].requests == []


async def test_unknown_model_is_a_404_listing_the_models(gateway):
    reply = await post(gateway, {"model": "gpt-4", "messages": HELLO})
    error = assert_openai_error(reply, 404, "'gpt-4'", "llama-chat, mistral-large")
    assert error["code"] == "model_not_found" and error["param"] == "model"


async def test_mistral_without_user_message_is_a_400(gateway, emulator):
    reply = await post(gateway, {"model": "mistral-large", "messages": [{"role": "system", "content": "x"}]})
    assert_openai_error(reply, 400, "at least one user message")
    assert emulator[0].requests == []


async def test_oversized_body_is_a_413_before_parsing(emulator, start_gateway):
    base = start_gateway(emulator_config(emulator[1], max_request_bytes=2048))
    big = {"messages": [{"role": "user", "content": "x" * 4096}]}
    assert_openai_error(await post(base, big), 413, "2048 bytes")

    async def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(8):
            yield b" " * 1024

    async with aiohttp.ClientSession() as session:
        async with session.post(
            base + CHAT, data=chunks(), headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 413
    assert emulator[0].requests == []


async def test_unknown_route_and_wrong_method_are_openai_errors(gateway):
    reply = await get(gateway, "/api/v1/nothing")
    assert_openai_error(reply, 404, "No route /api/v1/nothing")
    assert reply.headers["x-request-id"]
    reply = await get(gateway, CHAT)
    assert_openai_error(reply, 405, "GET is not allowed")
    assert "POST" in reply.headers["allow"]


@pytest.mark.parametrize(
    ("fault", "status", "fragments"),
    [
        (Fault(status=500), 502, ("answered HTTP 500",)),
        (Fault(status=502), 502, ("answered HTTP 502",)),
        (Fault(status=503, retry_after="7"), 503, ("unavailable",)),
        (Fault(status=504), 504, ("timed out",)),
        (Fault(status=424), 502, ("model container failed",)),
        (Fault(status=404), 502, ("check endpoint_url and deployment_name",)),
        (
            Fault(status=422, body='{"error": {"message": "Extra inputs are not permitted"}}'),
            400,
            ("rejected the request: Extra inputs are not permitted",),
        ),
        (
            Fault(body="<html><body>Bad gateway</body></html>", content_type="text/html"),
            502,
            ("cannot read", "not JSON", "content_formatter and endpoint_api_type"),
        ),
        (Fault(body='{"output": "trunc'), 502, ("not JSON",)),
        (Fault(body='{"result": 1}'), 502, ('expected {"output": "..."}',)),
        (Fault(body=""), 502, ("not JSON",)),
    ],
)
async def test_upstream_failures_map_to_honest_statuses(gateway, emulator, fault, status, fragments):
    emulator[0].add_fault(fault)
    reply = await post(gateway, {"messages": HELLO})
    assert_openai_error(reply, status, "'llama-chat'", *fragments)
    if fault.retry_after:
        assert reply.headers["Retry-After"] == fault.retry_after


async def test_throttling_is_passed_on_with_retry_after(gateway, emulator):
    emulator[0].add_fault(Fault(status=429, retry_after="12"))
    reply = await post(gateway, {"messages": HELLO})
    error = assert_openai_error(reply, 429, "throttling")
    assert reply.headers["Retry-After"] == "12" and error["type"] == "rate_limit_error"


async def test_upstream_hang_is_a_504_within_timeout(emulator, start_gateway):
    config = emulator_config(emulator[1])
    config["endpoints"][0]["timeout_s"] = 0.3
    base = start_gateway(config)
    emulator[0].add_fault(Fault(hang=True))
    reply = await post(base, {"messages": HELLO})
    assert_openai_error(reply, 504, "did not answer within its timeout_s (0.3 s)")


async def test_unreachable_endpoint_is_a_503(emulator, start_gateway):
    config = emulator_config("http://127.0.0.1:9")  # discard port: nothing listens
    base = start_gateway(config)
    reply = await post(base, {"messages": HELLO})
    error = assert_openai_error(reply, 503, "'llama-chat' cannot be reached")
    assert error["code"] == "upstream_unreachable"


async def test_refused_key_is_a_502_that_leaks_no_key(emulator, start_gateway, canary_key, caplog):
    base = start_gateway(emulator_config(emulator[1]), environ={"EMULATOR_KEY": "wrong-" + canary_key})
    with caplog.at_level(logging.DEBUG):
        reply = await post(base, {"messages": HELLO})
    error = assert_openai_error(reply, 502, "refused the gateway's credentials")
    assert error["code"] == "upstream_auth_failed"
    assert not emulator[0].requests[0].authorized
    for text in (reply.text, json.dumps(dict(reply.headers)), caplog.text):
        assert canary_key not in text and "Bearer" not in text


async def test_no_key_in_any_answer_or_log_line(gateway, emulator, canary_key, caplog):
    faults = [
        Fault(status=500, body='{"message": "boom"}'),
        Fault(status=429, retry_after="1"),
        Fault(body="<html>"),
        Fault(status=401),
    ]
    for fault in faults:
        emulator[0].add_fault(fault)
    with caplog.at_level(logging.DEBUG):
        answers = [await post(gateway, {"messages": HELLO}) for _ in range(len(faults) + 1)]
    for answer in answers:
        assert canary_key not in answer.text and canary_key not in json.dumps(dict(answer.headers))
    assert canary_key not in caplog.text and "Authorization" not in caplog.text
    assert reply_text(HELLO) in answers[-1].text


async def test_a_user_formatter_serves_a_custom_score_endpoint(start_gateway, servers, canary_key):
    from aiohttp import web

    from .servers import AiohttpServer

    async def score(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {canary_key}"
        data = await request.json()
        return web.json_response({"reply": data["prompt"].upper(), "seen": data["options"]})

    app = web.Application()
    app.router.add_post("/custom/score", score)
    server = servers.run(AiohttpServer(app).start())
    try:
        base = start_gateway(
            {
                "endpoints": [
                    {
                        "name": "custom",
                        "endpoint_url": f"{server.url}/custom/score",
                        "content_formatter": "tests.custom_formatter:EchoFormatter",
                        "auth": {"type": "env", "variable": "EMULATOR_KEY"},
                    }
                ]
            }
        )
        reply = await post(base, {"model": "custom", "messages": HELLO})
        assert reply.status == 200, reply.body
        assert reply.json()["choices"][0]["message"]["content"] == "HELLO THERE"
    finally:
        servers.run(server.stop())


async def test_another_azure_ml_compatible_endpoint_on_another_port_needs_no_code_change(
    servers, canary_key, start_gateway
):
    from emulator import Emulator

    from .servers import AiohttpServer

    other = Emulator(canary_key, dedicated_shape="list")
    server = servers.run(AiohttpServer(other.app).start())
    try:
        base = start_gateway(emulator_config(server.url))
        reply = await post(base, {"messages": HELLO})
        assert (
            reply.status == 200
            and reply.json()["choices"][0]["message"]["content"] == "You said: Hello there"
        )
        assert other.requests[0].path == "/score"
    finally:
        servers.run(server.stop())


class _Connection:
    """What the caller watch reads of a request: the server's next message."""

    def __init__(self, caller_left: bool) -> None:
        self.caller_left = caller_left

    async def receive(self) -> dict[str, str]:
        if not self.caller_left:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}


async def _answer_after(seconds: float) -> Response:
    await asyncio.sleep(seconds)
    return Response(b"answered")


async def test_the_caller_watch_cancels_the_answers_of_callers_who_left_and_keeps_nothing():
    watch = CallerWatch()
    gone = asyncio.create_task(watch.answer(_Connection(True), _answer_after(0.5)))  # type: ignore[arg-type]
    stays = asyncio.create_task(watch.answer(_Connection(False), _answer_after(0.3)))  # type: ignore[arg-type]
    # Answered before it is watched: not cancelled, although its caller is gone too.
    quick = await watch.answer(_Connection(True), _answer_after(WATCH_AFTER_S / 5))  # type: ignore[arg-type]
    assert quick.status_code == 200
    assert (await gone).status_code == 499
    assert (await stays).body == b"answered"
    assert len(watch) == 0


async def test_the_caller_watch_lets_anyone_elses_cancellation_through():
    watch = CallerWatch()
    answering = asyncio.create_task(watch.answer(_Connection(False), _answer_after(5)))  # type: ignore[arg-type]
    await asyncio.sleep(WATCH_AFTER_S * 3)  # watched by now
    answering.cancel()  # a server shutting down, say
    with pytest.raises(asyncio.CancelledError):
        await answering
    assert len(watch) == 0


async def test_the_caller_watch_ends_a_long_stream_whose_caller_left_and_never_watches_a_short_one():
    watch = CallerWatch()
    sent: list[int] = []

    async def stream(events: int) -> None:
        for index in range(events):
            sent.append(index)
            await asyncio.sleep(0.01)

    # Over before the watch looks: never watched, although its caller is gone.
    await watch.watched(_Connection(True).receive, stream(1))
    assert sent == [0] and len(watch) == 0
    sent.clear()
    with pytest.raises(CallerLeft):
        await watch.watched(_Connection(True).receive, stream(1000))
    # Cancelled at the watch's look: after WATCH_AFTER_S, not after the whole stream.
    assert 0 < len(sent) < 50 and len(watch) == 0
