"""Configuration: validated once, with messages that name the field and say how to fix it."""

import json
import logging

import pytest

from shared.api_type import ApiType
from shared.config import load_config, parse_config
from shared.errors import ConfigError
from shared.formatters import MistralChatContentFormatter

ENV = {"EMULATOR_KEY": "k"}


def endpoint(**overrides):
    base = {
        "name": "llama-chat",
        "endpoint_url": "https://my-endpoint.westeurope.inference.ml.azure.com/score",
        "endpoint_api_type": "dedicated",
        "auth": {"type": "key_vault", "secret_name": "llama-chat-key"},
    }
    return {**base, **overrides}


def document(*endpoints, **top):
    return json.dumps({"endpoints": list(endpoints) or [endpoint()], **top})


def error_of(doc: str) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(doc)
    return str(raised.value)


def test_the_design_example_parses():
    config = parse_config(
        document(
            endpoint(deployment_name="llama-2-7b-chat-1", model_kwargs={"temperature": 0.8}),
            endpoint(
                name="mistral-large",
                endpoint_url="https://mistral.westeurope.models.ai.azure.com/v1/chat/completions",
                endpoint_api_type="serverless",
                content_formatter="MistralChatContentFormatter",
                auth={"type": "entra"},
            ),
            default_model="llama-chat",
        )
    )
    mistral = config.endpoints_by_name["mistral-large"]
    assert mistral.api_type is ApiType.SERVERLESS
    assert isinstance(mistral.formatter, MistralChatContentFormatter)
    assert mistral.auth.scope == "https://ml.azure.com/.default"
    assert config.endpoints_by_name["llama-chat"].timeout_s == 60 and config.endpoints_by_name["llama-chat"].max_retries == 2


def test_realtime_is_a_deprecated_alias_of_dedicated(caplog):
    with caplog.at_level(logging.WARNING):
        config = parse_config(document(endpoint(endpoint_api_type="realtime")))
    assert config.endpoints[0].api_type is ApiType.DEDICATED
    assert [r.getMessage() for r in caplog.records if "realtime" in r.getMessage()] == [
        "endpoint 'llama-chat': endpoint_api_type 'realtime' is deprecated; use 'dedicated'"
    ]


def test_llama_formatter_warns_once_at_load(caplog):
    with caplog.at_level(logging.WARNING):
        parse_config(document(endpoint(content_formatter="LlamaChatContentFormatter")))
    warnings = [r.getMessage() for r in caplog.records if "LlamaChatContentFormatter" in r.getMessage()]
    assert len(warnings) == 1 and "use CustomOpenAIChatContentFormatter" in warnings[0]


def test_unknown_formatter_lists_the_choices():
    message = error_of(document(endpoint(content_formatter="GPT2ContentFormatter")))
    assert "endpoints[0] ('llama-chat').content_formatter: unknown content_formatter" in message
    assert "MistralChatContentFormatter" in message and "package.module:ClassName" in message


def test_user_formatter_is_loaded_by_import_path():
    config = parse_config(document(endpoint(content_formatter="tests.custom_formatter:EchoFormatter")))
    assert type(config.endpoints[0].formatter).__name__ == "EchoFormatter"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("no_such_module_xyz:Fmt", "cannot import module 'no_such_module_xyz'"),
        ("json:JSONDecoder", "must name a subclass of shared.formatters.ContentFormatterBase"),
    ],
)
def test_bad_user_formatter_is_named(name, expected):
    assert expected in error_of(document(endpoint(content_formatter=name)))


def test_formatter_that_does_not_support_the_api_type_is_refused():
    message = error_of(document(endpoint(content_formatter="tests.custom_formatter:ServerlessOnly")))
    assert "does not support endpoint_api_type 'dedicated'; it supports: serverless" in message


@pytest.mark.parametrize(
    ("url", "api_type", "expected"),
    [
        (
            "https://x.westeurope.inference.ml.azure.com",
            "dedicated",
            "has no path; a dedicated endpoint URL ends in /score: use https://x.westeurope.inference.ml.azure.com/score",
        ),
        (
            "https://x.westeurope.inference.ml.azure.com/",
            "dedicated",
            "use https://x.westeurope.inference.ml.azure.com/score",
        ),
        ("https://x.westeurope.models.ai.azure.com", "serverless", "ends in /v1/chat/completions"),
        (
            "https://x.westeurope.inference.ml.azure.com/v1/chat/completions",
            "dedicated",
            "set endpoint_api_type to 'serverless'",
        ),
        (
            "https://x.westeurope.inference.ml.azure.com/score",
            "serverless",
            "set endpoint_api_type to 'dedicated'",
        ),
        (
            "https://x.westeurope.models.ai.azure.com/v1/embeddings",
            "serverless",
            "ends in /v1/chat/completions",
        ),
        ("http://x.westeurope.inference.ml.azure.com/score", "dedicated", "plain http"),
        ("ftp://x/score", "dedicated", "not an absolute http(s) URL"),
    ],
)
def test_url_must_fit_the_api_type(url, api_type, expected):
    message = error_of(document(endpoint(endpoint_url=url, endpoint_api_type=api_type)))
    assert "endpoints[0] ('llama-chat').endpoint_url" in message and expected in message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:7072/score",
        "http://localhost:9000/prefix/score/",
        "https://x.westeurope.inference.ml.azure.com/score",
    ],
)
def test_accepted_dedicated_urls(url):
    assert parse_config(document(endpoint(endpoint_url=url))).endpoints[0].endpoint_url == url.rstrip("/")


def test_foundry_unified_url_is_accepted_for_serverless():
    url = "https://res.services.ai.azure.com/models/chat/completions?api-version=2025-04-01"
    config = parse_config(
        document(endpoint(endpoint_url=url, endpoint_api_type="serverless", upstream_model="Mistral-large"))
    )
    assert config.endpoints[0].endpoint_url == url


def test_duplicate_names_are_refused():
    assert "two endpoints are named 'llama-chat'" in error_of(document(endpoint(), endpoint()))


def test_unknown_default_model_is_refused():
    message = error_of(document(endpoint(), default_model="gpt-4"))
    assert "default_model 'gpt-4' is not the name of an endpoint or a group (names: llama-chat)" in message


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"type": "password"}, "auth: unknown auth type; use 'key_vault', 'entra' or 'env'"),
        ({"secret_name": "x"}, "auth: missing 'type'"),
        ({"type": "key_vault"}, "auth.secret_name: is required"),
        ({"type": "key_vault", "secret_name": "bad name!"}, "auth.secret_name"),
    ],
)
def test_auth_errors_name_the_field(auth, expected):
    message = error_of(document(endpoint(auth=auth)))
    assert expected.replace("is required", "Field required") in message


def test_unknown_fields_are_refused_so_typos_do_not_pass_silently():
    message = error_of(document(endpoint(modelkwargs={"temperature": 1})))
    assert "endpoints[0] ('llama-chat').modelkwargs: unknown field (check its spelling)" in message


def test_every_problem_is_listed_at_once():
    message = error_of(document(endpoint(timeout_s=0, max_retries=-1, content_formatter="Nope")))
    assert "timeout_s" in message and "max_retries" in message and "content_formatter" in message


def test_not_json_and_empty_documents():
    assert "is not valid JSON" in error_of("{")
    assert "endpoints: Field required" in error_of("{}")


def test_load_needs_a_source_and_only_one():
    with pytest.raises(ConfigError, match="set GATEWAY_CONFIG .* or GATEWAY_CONFIG_FILE"):
        load_config({})
    with pytest.raises(ConfigError, match="not both"):
        load_config({"GATEWAY_CONFIG": document(), "GATEWAY_CONFIG_FILE": "/x"})


def test_load_from_a_file(tmp_path):
    path = tmp_path / "gateway.json"
    path.write_text(document(endpoint(auth={"type": "env", "variable": "EMULATOR_KEY"})))
    assert load_config({"GATEWAY_CONFIG_FILE": str(path), **ENV}).endpoints[0].name == "llama-chat"
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config({"GATEWAY_CONFIG_FILE": str(tmp_path / "missing.json")})


def test_key_vault_auth_needs_key_vault_url():
    with pytest.raises(ConfigError, match="type 'key_vault' needs the app setting KEY_VAULT_URL"):
        load_config({"GATEWAY_CONFIG": document()})
    assert load_config({"GATEWAY_CONFIG": document(), "KEY_VAULT_URL": "https://kv-example.vault.azure.net/"})


def test_env_auth_needs_its_variable_and_is_logged_as_local_only(caplog):
    doc = document(endpoint(auth={"type": "env", "variable": "LLAMA_KEY"}))
    with pytest.raises(ConfigError, match="the environment variable LLAMA_KEY is not set"):
        load_config({"GATEWAY_CONFIG": doc})
    with caplog.at_level(logging.WARNING):
        load_config({"GATEWAY_CONFIG": doc, "LLAMA_KEY": "secret-value"})
    assert "for local development only" in caplog.text and "secret-value" not in caplog.text
