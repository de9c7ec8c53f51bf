"""scripts/smoke_test.py against the local gateway (the same handlers as in Azure) and the emulator."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from ..conftest import emulator_config
from .bicep import ROOT

pytest.importorskip("requests")


def _load_smoke_test():
    spec = importlib.util.spec_from_file_location("smoke_test", ROOT / "scripts" / "smoke_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("smoke_test", module)
    spec.loader.exec_module(module)
    return module


smoke_test = _load_smoke_test()


def _run(*argv: str) -> tuple[int, str]:
    lines: list[str] = []
    status = smoke_test.main(list(argv), out=lines.append)
    return status, "\n".join(lines)


@pytest.mark.parametrize("model", ["llama-chat", "mistral-large"])
def test_smoke_test_passes_against_a_working_gateway(gateway: str, model: str) -> None:
    status, output = _run(
        "--base-url", gateway, "--function-key", "not-a-real-key-7f3c", "--model", model, "--no-auth-check"
    )
    assert status == 0, output
    assert "smoke test passed" in output and f"streamed chat ({model}" in output
    assert "not-a-real-key-7f3c" not in output


def test_smoke_test_of_the_local_server_needs_no_key_with_no_auth_check(gateway: str) -> None:
    """As docs/operations.md runs it against `make dev`."""
    status, output = _run("--base-url", gateway, "--no-auth-check")
    assert status == 0, output
    assert "ok   GET /v1/models: llama-chat, mistral-large" in output and "smoke test passed" in output


def test_smoke_test_fails_on_an_unknown_model(gateway: str) -> None:
    status, output = _run("--base-url", gateway, "--function-key", "k", "--model", "nope", "--no-auth-check")
    assert status == 1 and "model 'nope' is not configured" in output


def test_smoke_test_fails_when_anonymous_calls_are_not_refused(gateway: str) -> None:
    """The local server checks no caller: the 401 check must notice."""
    status, output = _run("--base-url", gateway, "--function-key", "k")
    assert status == 1 and "expected 401" in output


def test_smoke_test_fails_when_the_upstream_breaks(emulator, start_gateway) -> None:
    config = emulator_config(emulator[1])
    config["endpoints"][1]["endpoint_url"] = "http://127.0.0.1:9/v1/chat/completions"  # nothing listens
    config["endpoints"][1]["timeout_s"] = 2
    url = start_gateway(config)
    status, output = _run(
        "--base-url", url, "--function-key", "k", "--model", "mistral-large", "--no-auth-check"
    )
    assert status == 1 and "FAIL" in output


def test_base_url_forms_and_sse_parsing() -> None:
    assert smoke_test.normalize_base_url("https://a.azurewebsites.net") == "https://a.azurewebsites.net/api"
    assert (
        smoke_test.normalize_base_url("https://a.azurewebsites.net/api/") == "https://a.azurewebsites.net/api"
    )
    with pytest.raises(smoke_test.SmokeFailure):
        smoke_test.normalize_base_url("a.azurewebsites.net")
    lines = [": keep-alive", "", 'data: {"a": 1}', "", "data: [DONE]", ""]
    assert list(smoke_test.iter_sse_data(iter(lines))) == ['{"a": 1}', "[DONE]"]
