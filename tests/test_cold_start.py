"""Cold start: what the hosts import before they can take a request, and what they warm after.

Each probe runs in a fresh interpreter with the background warm-up switched off, so what it sees
in `sys.modules` is what the start-up itself imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shared.config import load_config
from shared.runtime import warm_up
from shared.service import Gateway

from .conftest import emulator_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = """
import sys
import shared.runtime
shared.runtime.warm_up = lambda modules: None  # what the start-up imports by itself
{import_line}
print(",".join(m for m in {deferred!r} if m in sys.modules) or "none")
"""
#: What no request of the default configuration needs before its first call.
DEFERRED = (
    "aiohttp",
    "jwt",
    "cryptography.x509",
    "shared.openapi",
    "shared.responses",
    "azure.identity",
    "azure.keyvault",
)


def _loaded(import_line: str, config: dict) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(import_line=import_line, deferred=DEFERRED)],
        cwd=ROOT,
        env={**os.environ, "GATEWAY_CONFIG": json.dumps(config), "EMULATOR_KEY": "k"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1].split(",")


@pytest.mark.parametrize(
    "import_line", ["import function_app", "from shared.asgi import create_app; create_app()"]
)
def test_the_start_up_leaves_what_the_first_call_needs_to_the_warm_up(import_line):
    assert _loaded(import_line, emulator_config("http://127.0.0.1:9")) == ["none"]


@pytest.mark.parametrize("refused", [False, True])
def test_function_app_imports_with_the_collector_off_and_leaves_it_on(refused):
    probe = (
        "import gc, shared.runtime; shared.runtime.warm_up = lambda modules: None\n"
        "try:\n    import function_app\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 10_000)"
    )
    config = {"endpoints": []} if refused else emulator_config("http://127.0.0.1:9")
    env = {**os.environ, "GATEWAY_CONFIG": json.dumps(config), "EMULATOR_KEY": "k"}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == (["ConfigError"] if refused else []) + ["True", "True"]


def test_the_warm_up_names_aiohttp_the_configured_credentials_sdks_and_the_responses_models():
    config = emulator_config("http://127.0.0.1:9")
    env = {"GATEWAY_CONFIG": json.dumps(config), "EMULATOR_KEY": "k"}
    assert Gateway(load_config(env)).modules_to_warm() == ["aiohttp", "shared.response_events"]
    config["endpoints"][0]["auth"] = {"type": "key_vault", "secret_name": "endpoint-key"}
    env = {
        "GATEWAY_CONFIG": json.dumps(config),
        "KEY_VAULT_URL": "https://gateway-keys.vault.azure.net/",
        "EMULATOR_KEY": "k",
    }
    assert Gateway(load_config(env)).modules_to_warm() == [
        "aiohttp",
        "azure.keyvault.secrets.aio",
        "azure.identity.aio",
        "shared.response_events",
    ]


def test_the_warm_up_imports_in_the_background_and_survives_a_missing_module():
    name = "xml.dom.minidom"
    assert name not in sys.modules or sys.modules.pop(name)
    thread = warm_up(["no_such_module_here", name], freeze=False)  # not this test process
    thread.join(10)
    assert thread.daemon and not thread.is_alive() and name in sys.modules
