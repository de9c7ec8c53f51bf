"""Formatters: byte-exact payloads per api type, every answer shape, and no mutation."""

import copy
import json

import pytest

from shared import (
    ApiType,
    ChatResult,
    CustomOpenAIChatContentFormatter,
    InvalidRequestError,
    LlamaChatContentFormatter,
    MistralChatContentFormatter,
    ResponseFormatError,
)

DEDICATED, SERVERLESS = ApiType.DEDICATED, ApiType.SERVERLESS
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": 'Say "hi"\nthen stop. Ünïcode ✓'},
]


def test_custom_openai_dedicated_payload_is_exact():
    body = CustomOpenAIChatContentFormatter().format_messages_request_payload(
        MESSAGES, {"temperature": 0.8, "max_new_tokens": 512}, DEDICATED
    )
    assert (
        body
        == (
            '{"input_data":{"input_string":[{"role":"system","content":"Be brief."},'
            '{"role":"user","content":"Say \\"hi\\"\\nthen stop. Ünïcode ✓"}],'
            '"parameters":{"temperature":0.8,"max_new_tokens":512}}}'
        ).encode()
    )


def test_custom_openai_serverless_payload_is_exact():
    body = CustomOpenAIChatContentFormatter().format_messages_request_payload(
        MESSAGES, {"temperature": 0.7, "max_tokens": 5}, SERVERLESS
    )
    assert (
        body
        == (
            '{"messages":[{"role":"system","content":"Be brief."},'
            '{"role":"user","content":"Say \\"hi\\"\\nthen stop. Ünïcode ✓"}],'
            '"temperature":0.7,"max_tokens":5}'
        ).encode()
    )


def test_message_text_reaches_the_endpoint_exactly_as_sent():
    # LangChain escapes special characters before json.dumps, so the model sees backslashes.
    text = 'line one\nline "two"\\ end'
    body = CustomOpenAIChatContentFormatter().format_messages_request_payload(
        [{"role": "user", "content": text}], {}, SERVERLESS
    )
    assert json.loads(body)["messages"][0]["content"] == text


def test_openai_length_limit_is_sent_to_dedicated_endpoints_as_max_new_tokens():
    formatter = CustomOpenAIChatContentFormatter()
    params = {"max_tokens": 50, "temperature": 0.1}
    assert formatter.format_request_parameters(params, DEDICATED) == {
        "max_new_tokens": 50,
        "temperature": 0.1,
    }
    assert formatter.format_request_parameters(params, SERVERLESS) == params
    assert params == {"max_tokens": 50, "temperature": 0.1}  # not mutated


def test_formatters_do_not_mutate_their_inputs():
    messages, kwargs = copy.deepcopy(MESSAGES), {"temperature": 0.5, "stop": ["x"]}
    for formatter in (CustomOpenAIChatContentFormatter(), MistralChatContentFormatter()):
        for api_type in ApiType:
            formatter.format_messages_request_payload(messages, kwargs, api_type)
    assert messages == MESSAGES and kwargs == {"temperature": 0.5, "stop": ["x"]}


def test_mistral_merges_a_leading_system_message_into_the_first_user_message():
    for api_type in ApiType:
        body = json.loads(
            MistralChatContentFormatter().format_messages_request_payload(MESSAGES, {}, api_type)
        )
        messages = body["input_data"]["input_string"] if api_type is DEDICATED else body["messages"]
        assert messages == [{"role": "user", "content": 'Be brief.\n\nSay "hi"\nthen stop. Ünïcode ✓'}]


def test_mistral_merges_into_the_first_user_message_even_after_an_assistant_turn():
    messages = [
        {"role": "system", "content": "S1"},
        {"role": "system", "content": "S2"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "Q"}]},
    ]
    merged = MistralChatContentFormatter().format_messages(messages)
    assert merged == [
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "S1\n\nS2"}, {"type": "text", "text": "Q"}]},
    ]


@pytest.mark.parametrize(
    "messages",
    [[{"role": "system", "content": "only a system prompt"}], [{"role": "assistant", "content": "hi"}]],
)
def test_mistral_without_a_user_message_is_a_clear_400(messages):
    with pytest.raises(InvalidRequestError, match="at least one user message") as raised:
        MistralChatContentFormatter().format_messages_request_payload(messages, {}, SERVERLESS)
    assert raised.value.status == 400


def test_llama_formatter_behaves_as_custom_openai():
    assert issubclass(LlamaChatContentFormatter, CustomOpenAIChatContentFormatter)
    assert LlamaChatContentFormatter.deprecated_in_favour_of == "CustomOpenAIChatContentFormatter"
    args = (MESSAGES, {"temperature": 1}, DEDICATED)
    assert LlamaChatContentFormatter().format_messages_request_payload(
        *args
    ) == CustomOpenAIChatContentFormatter().format_messages_request_payload(*args)


@pytest.mark.parametrize(
    "answer",
    [
        b'{"output": "Hello there"}',
        b'[{"0": "Hello there"}]',
        b'["Hello there"]',
        b'[{"0": {"generated_text": "Hello there"}}]',
        b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},'
        b' "finish_reason": "stop"}]}',
    ],
)
def test_every_dedicated_answer_shape_normalizes(answer):
    result = CustomOpenAIChatContentFormatter().format_response_payload(answer, DEDICATED)
    assert result.choices[0].message == {"role": "assistant", "content": "Hello there"}
    assert result.choices[0].finish_reason == "stop"


def test_serverless_answer_keeps_tool_calls_finish_reason_and_usage():
    answer = {
        "id": "x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    result = CustomOpenAIChatContentFormatter().format_response_payload(
        json.dumps(answer).encode(), SERVERLESS
    )
    assert result == ChatResult(
        [type(result.choices[0])(answer["choices"][0]["message"], "tool_calls", None)],
        answer["usage"],
    )


@pytest.mark.parametrize(
    ("answer", "api_type", "reason"),
    [
        (b"<html>oops</html>", DEDICATED, "not JSON"),
        (b'{"output": ', DEDICATED, "not JSON"),
        (b"", SERVERLESS, "not JSON"),
        (b'{"result": "x"}', DEDICATED, '"output"'),
        (b'{"output": "x"}', SERVERLESS, '"choices"'),
        (b'{"choices": []}', SERVERLESS, "non-empty"),
        (b'{"choices": [{"text": "x"}]}', SERVERLESS, '"message"'),
    ],
)
def test_unreadable_answers_raise_response_format_error(answer, api_type, reason):
    with pytest.raises(ResponseFormatError, match=reason) as raised:
        CustomOpenAIChatContentFormatter().format_response_payload(answer, api_type)
    assert raised.value.status == 502
