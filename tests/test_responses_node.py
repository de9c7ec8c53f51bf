"""The Vercel AI SDK's default OpenAI provider (`@ai-sdk/openai`, which speaks the Responses API)
against the local server: tests/node/responses.test.mjs, run by Node's test runner.

The npm packages are installed with `npm ci` from tests/node/package-lock.json. Without `node`
and `npm` the test is skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_TESTS = Path(__file__).parent / "node"


def _tools_or_skip() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm:
        return node, npm
    if os.environ.get("CI") == "true":
        pytest.fail("node and npm are needed for the Node client tests (.ci/run installs them)")
    pytest.skip("node or npm is not installed")


def _install(npm: str) -> None:
    """`npm ci`, unless node_modules already holds what the lock file says."""
    installed = NODE_TESTS / "node_modules" / ".package-lock.json"
    lock = NODE_TESTS / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"],
        cwd=NODE_TESTS,
        check=True,
        timeout=300,
        capture_output=True,
    )


def test_vercel_ai_sdk_against_the_gateway(gateway):
    node, npm = _tools_or_skip()
    _install(npm)
    run = subprocess.run(
        [node, "--test", "--test-reporter=spec", "responses.test.mjs"],
        cwd=NODE_TESTS,
        env={**os.environ, "GATEWAY_URL": gateway, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "fail 0" in run.stdout and "pass 6" in run.stdout, run.stdout
