"""The official `openai` client, unchanged, pointed at the local server."""

from __future__ import annotations

import openai
import pytest

from emulator import Fault


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/api/v1", api_key="not-checked-locally", max_retries=0)


def test_sync_client_chats_with_a_dedicated_endpoint(gateway):
    completion = client(gateway).chat.completions.create(
        model="llama-chat",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_tokens=64,
        temperature=0.2,
    )
    assert completion.object == "chat.completion" and completion.model == "llama-chat"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "You said: Hello"


async def test_async_client_chats_with_a_serverless_endpoint(gateway, emulator):
    async with openai.AsyncOpenAI(base_url=f"{gateway}/api/v1", api_key="x", max_retries=0) as aclient:
        completion = await aclient.chat.completions.create(
            model="mistral-large", messages=[{"role": "user", "content": "Bonjour"}], seed=3
        )
    assert completion.choices[0].message.content == "You said: Bonjour"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert emulator[0].requests[-1].body["seed"] == 3


def test_extra_body_reaches_the_endpoint_as_a_parameter(gateway, emulator):
    client(gateway).chat.completions.create(
        model="llama-chat",
        messages=[{"role": "user", "content": "x"}],
        extra_body={"do_sample": True, "repetition_penalty": 1.1},
    )
    assert emulator[0].requests[-1].body["input_data"]["parameters"] == {
        "temperature": 0.8,
        "max_new_tokens": 512,
        "do_sample": True,
        "repetition_penalty": 1.1,
    }


def test_client_sees_typed_errors(gateway, emulator):
    with pytest.raises(openai.NotFoundError) as not_found:
        client(gateway).chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client(gateway).chat.completions.create(model="llama-chat", messages=[])
    assert "at least one message" in bad.value.message
    emulator[0].add_fault(Fault(status=429, retry_after="3"))
    with pytest.raises(openai.RateLimitError) as throttled:
        client(gateway).chat.completions.create(
            model="llama-chat", messages=[{"role": "user", "content": "x"}]
        )
    assert throttled.value.response.headers["retry-after"] == "3"
