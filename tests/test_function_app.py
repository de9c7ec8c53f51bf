"""The Azure Functions adapter on the azure-functions 1.x line, and the `func start` guide.

Serving is tested on Microsoft's own runtime in test_functions_runtime.py, which needs Python
3.13 (there `azure-functions` resolves to 2.x). Python 3.11 and 3.12 apps, this environment
included, get azure-functions 1.x, whose decorators build the bindings the older Python worker
reads; that worker is not on PyPI, so only the indexing itself is checked here, through
`FunctionApp.get_functions()` (the call the worker makes). It may run once per app object, so it
runs once per module, in the `indexed` fixture.

docs/functions-local.md's commands are checked against local.settings.example.json, the
Makefile and `make dev`'s ports, since Core Tools cannot be installed here.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import emulator_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def indexed() -> Iterator[dict[str, Any]]:
    """`function_app` imported with a valid configuration, and its functions indexed (once)."""
    saved = dict(os.environ)
    # Importing builds the gateway but opens no connection: any address will do.
    os.environ.update(GATEWAY_CONFIG=json.dumps(emulator_config("http://127.0.0.1:9")), EMULATOR_KEY="k")
    try:
        import function_app

        module = importlib.reload(function_app)  # a fresh FunctionApp: get_functions() runs once per app
        yield {f.get_function_name(): f for f in module.app.get_functions()}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_function_app_indexes_exactly_the_routes(indexed):
    bindings = {
        name: json.loads(function.get_function_json())["bindings"] for name, function in indexed.items()
    }
    assert bindings == {
        "chat_completions": [
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["POST"],
                "authLevel": "FUNCTION",
                "route": "v1/chat/completions",
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        ],
        "responses": [
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["POST"],
                "authLevel": "FUNCTION",
                "route": "v1/responses",
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        ],
        "models": [
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["GET"],
                "authLevel": "FUNCTION",
                "route": "v1/models",
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        ],
        "retrieve_model": [
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["GET"],
                "authLevel": "FUNCTION",
                "route": "v1/models/{id}",
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        ],
        "openapi": [
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["GET"],
                "authLevel": "FUNCTION",
                "route": "openapi.json",
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        ],
        "health": [
            {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["GET"],
                "authLevel": "ANONYMOUS",
                "route": "health",
            },
            {"direction": "OUT", "type": "http", "name": "$return"},
        ],
    }


def test_with_entra_callers_every_route_is_anonymous_for_the_host():
    """The gateway checks each caller's token itself (docs/callers.md): the host lets requests
    through without a function key."""
    saved = dict(os.environ)
    callers = {
        "auth": {"type": "entra", "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "audience": "api://x"}
    }
    os.environ.update(
        GATEWAY_CONFIG=json.dumps(emulator_config("http://127.0.0.1:9", callers=callers)), EMULATOR_KEY="k"
    )
    try:
        import function_app

        module = importlib.reload(function_app)
        levels = {
            f.get_function_name(): json.loads(f.get_function_json())["bindings"][0]["authLevel"]
            for f in module.app.get_functions()
        }
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert levels == dict.fromkeys(levels, "ANONYMOUS")
    assert "chat_completions" in levels


def test_every_route_takes_the_http_streams_request_type(indexed):
    from azurefunctions.extensions.http.fastapi import Request as StreamsRequest

    for function in indexed.values():
        annotation = function.get_user_function().__annotations__["req"]
        assert annotation in (StreamsRequest, "Request")


def test_host_json_keeps_the_api_route_prefix():
    with open("host.json") as f:
        assert json.load(f)["extensions"]["http"]["routePrefix"] == "api"


# --- docs/functions-local.md, checked against the files its commands rely on ----------------

GUIDE = ROOT / "docs" / "functions-local.md"


@pytest.fixture(scope="module")
def guide_commands() -> list[str]:
    """The lines of the guide's `sh` blocks, comments dropped."""
    blocks = re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), flags=re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def example_settings() -> dict[str, Any]:
    return json.loads((ROOT / "local.settings.example.json").read_text())


def test_guide_builds_and_activates_the_makefiles_environment(guide_commands):
    makefile = (ROOT / "Makefile").read_text()
    venv = re.search(r"^VENV := (\S+)$", makefile, flags=re.M).group(1)
    assert f"make {venv}/.installed" in guide_commands
    assert "$(VENV)/.installed:" in makefile
    assert f"source {venv}/bin/activate" in guide_commands
    assert "cp local.settings.example.json local.settings.json" in guide_commands
    assert "local.settings.json" in (ROOT / ".gitignore").read_text().split()


def test_guide_starts_the_emulator_the_example_settings_point_at(guide_commands, example_settings):
    values = example_settings["Values"]
    (emulator,) = [c for c in guide_commands if "-m emulator" in c]
    found = re.fullmatch(r"EMULATOR_KEY=(\S+) python -m emulator --port (\d+) &", emulator)
    assert found, emulator
    assert found.group(1) == values["EMULATOR_KEY"]
    config = json.loads(values["GATEWAY_CONFIG"])
    assert {e["endpoint_url"].split("/")[2] for e in config["endpoints"]} == {f"127.0.0.1:{found.group(2)}"}
    assert {e["auth"]["variable"] for e in config["endpoints"]} == {"EMULATOR_KEY"}


def test_example_settings_serve_make_devs_configuration(example_settings):
    """`func start` and `make dev` answer alike because they configure the same endpoints."""
    values = example_settings["Values"]
    assert json.loads(values["GATEWAY_CONFIG"]) == json.loads((ROOT / "config" / "emulator.json").read_text())
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["PYTHON_ENABLE_INIT_INDEXING"] == "1"  # the streams extension on Python <= 3.12


def test_func_start_has_its_own_port_and_the_guides_urls_use_it(guide_commands, example_settings):
    port = example_settings["Host"]["LocalHttpPort"]
    dev = (ROOT / "scripts" / "dev.py").read_text()
    defaults = re.search(r'DEFAULT_PORTS = \{"GATEWAY_PORT": (\d+), "EMULATOR_PORT": (\d+)\}', dev)
    make_dev_ports = {int(p) for p in defaults.groups()}
    assert port not in make_dev_ports
    assert "func start" in guide_commands
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)/api", "\n".join(guide_commands))
    assert urls and {int(u) for u in urls} == {port}
    assert f"| `func start` | {port} |" in GUIDE.read_text()
