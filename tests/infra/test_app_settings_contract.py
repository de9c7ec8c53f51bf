"""Contract between the code and the templates: the app settings Bicep sets are exactly the ones
the gateway's code reads plus the ones the Functions platform reads.

- Code-read settings: string literals the code looks up in the environment (`environ.get("X")`,
  `environ["X"]`, `os.getenv("X")`, `"X" in environ`, on `os.environ` or any `environ`/`_environ`
  mapping passed around), found with `ast` in `function_app.py` and `shared/**/*.py`. Variables
  named by the configuration (`auth.variable`, e.g. EMULATOR_KEY) are not literals, so not seen:
  they are for local development only.
- NOT_FROM_AZURE: settings the code reads that the templates must not set (documented below).
- PLATFORM_READ: settings only the Functions host / Python worker / Application Insights read.

Adding `environ.get("NEW_SETTING")` to shared/ makes this test fail until the templates set it
(modules/function.bicep, siteConfig.appSettings) or it is added to NOT_FROM_AZURE with a reason.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from .bicep import MODULES, ROOT, app_settings, parse

# Read by the code, deliberately not set in Azure.
NOT_FROM_AZURE = {
    "GATEWAY_CONFIG_FILE": "a path alternative to GATEWAY_CONFIG (local server, containers); Azure sets GATEWAY_CONFIG",
    "GATEWAY_LOG_LEVEL": "the local server's log level; in Azure, host.json and Application Insights rule",
    "IDENTITY_ENDPOINT": "set by the App Service / Functions platform when a managed identity is attached",
    "MSI_ENDPOINT": "legacy name of IDENTITY_ENDPOINT, also set by the platform",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "telemetry to an OTLP collector (local server, containers); Azure uses Application Insights",
    "OTEL_SERVICE_NAME": "the service name on telemetry; in Azure the default names the gateway",
    "OTEL_TRACES_SAMPLER": "trace sampling; the default (about 5 new traces a second) needs no setting",
    "OTEL_TRACES_SAMPLER_ARG": "the sampler's argument, with OTEL_TRACES_SAMPLER",
}

# Read by the Functions platform, not by the gateway's code.
PLATFORM_READ = {
    "AzureWebJobsStorage__credential",  # identity-based host storage (no connection string)
    "AzureWebJobsStorage__clientId",  # ... with the user-assigned identity
    "AzureWebJobsStorage__blobServiceUri",  # blob only: HTTP triggers use no queue or table
    "APPLICATIONINSIGHTS_CONNECTION_STRING",  # where telemetry goes (no key: local auth is off); the gateway's too
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",  # ClientId=<identity>;Authorization=AAD; the gateway's too
    "PYTHON_ENABLE_INIT_INDEXING",  # HTTP streams on Python <= 3.12
}

ENVIRON_NAMES = {"environ", "_environ", "env", "_env"}
ENVIRON_GETTERS = {"get", "pop", "setdefault", "__getitem__", "__contains__"}


def _is_environ(node: ast.AST) -> bool:
    """`os.environ`, `environ`, `self._environ`, ... (a mapping of environment variables)."""
    if isinstance(node, ast.Name):
        return node.id in ENVIRON_NAMES
    if isinstance(node, ast.Attribute):
        return node.attr in ENVIRON_NAMES
    return False


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def settings_read_in(source: str) -> set[str]:
    """Environment variable names the source reads as string literals."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        name = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ENVIRON_GETTERS and _is_environ(func.value):
                name = _literal(node.args[0])  # environ.get("X"), os.environ.get("X", ...)
            elif isinstance(func, ast.Attribute) and func.attr == "getenv":
                name = _literal(node.args[0])  # os.getenv("X")
            elif isinstance(func, ast.Name) and func.id == "getenv":
                name = _literal(node.args[0])  # from os import getenv
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            name = _literal(node.slice)  # environ["X"]
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            if any(_is_environ(comparator) for comparator in node.comparators):
                name = _literal(node.left)  # "X" in environ
        if name:
            found.add(name)
    return found


def code_read_settings(root: Path = ROOT) -> set[str]:
    files = [root / "function_app.py", *sorted((root / "shared").rglob("*.py"))]
    assert files[0].is_file() and len(files) > 1, f"no code found under {root}"
    found: set[str] = set()
    for path in files:
        found |= settings_read_in(path.read_text())
    return found


def template_settings() -> set[str]:
    return set(app_settings(parse(MODULES / "function.bicep")))


def expected_settings(code_read: set[str]) -> set[str]:
    return (code_read - set(NOT_FROM_AZURE)) | PLATFORM_READ


def test_the_templates_set_exactly_what_code_and_platform_read() -> None:
    code_read = code_read_settings()
    templates = template_settings()
    missing = expected_settings(code_read) - templates
    assert missing == set(), (
        f"the code reads {sorted(missing)} but the templates do not set it: add it to siteConfig.appSettings "
        "in infra/modules/function.bicep, or to NOT_FROM_AZURE in this test with the reason"
    )
    unexpected = templates - expected_settings(code_read)
    assert unexpected == set(), (
        f"the templates set {sorted(unexpected)}, which neither the code nor the platform reads: remove it, "
        "or add it to PLATFORM_READ with what reads it"
    )
    # The two sets, as of this version (also a check that the scanner sees the code at all).
    assert code_read - set(NOT_FROM_AZURE) == {
        "AZURE_CLIENT_ID",
        "GATEWAY_CONFIG",
        "KEY_VAULT_URL",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    }


def test_settings_that_azure_must_not_set_are_not_set_and_still_read() -> None:
    code_read = code_read_settings()
    assert template_settings() & set(NOT_FROM_AZURE) == set()
    stale = set(NOT_FROM_AZURE) - code_read
    assert stale == set(), f"the code no longer reads {sorted(stale)}: remove it from NOT_FROM_AZURE"


def test_the_scanner_sees_every_way_of_reading_the_environment() -> None:
    source = """
import os
from os import environ, getenv
a = os.environ.get("A")
b = environ.get("B", "default")
c = self._environ["C"]
d = os.getenv("D")
e = getenv("E")
f = "F" in os.environ
g = environ.pop("G", None)
h = config.get("NOT_ENV")
i = environ.get(auth.variable)
j = {"K": 1}["K"]
"""
    assert settings_read_in(source) == {"A", "B", "C", "D", "E", "F", "G"}


def test_a_new_setting_in_shared_breaks_the_contract(tmp_path: Path) -> None:
    """Copy the code, add `environ.get("NEW_SETTING")` to shared/, and the contract sees it missing."""
    shutil.copy(ROOT / "function_app.py", tmp_path / "function_app.py")
    shutil.copytree(ROOT / "shared", tmp_path / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / "shared" / "config.py").open("a") as module:
        module.write('\n\ndef _new(environ):\n    return environ.get("NEW_SETTING")\n')
    code_read = code_read_settings(tmp_path)
    assert expected_settings(code_read) - template_settings() == {"NEW_SETTING"}
