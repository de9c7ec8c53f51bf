"""The harness's Python 3.13 virtual environment: found, or built from requirements.txt.

`azure-functions-runtime` needs Python 3.13 or later, and the gateway's own tests run on the
project's `.venv`, so the worker runs on a second environment, `.venv313/` at the repository
root. It is rebuilt when `requirements.txt` (the app's) or this directory's requirements change.

`python -m tests.functions_runtime.venv` builds it (`make test` does, before pytest); where no
Python 3.13+ can be found it says so and exits 0, except under `CI=true`, where it fails.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv313"
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
STAMP = VENV / ".installed"
BUILD_TIMEOUT_S = 600


class Unavailable(RuntimeError):
    """No Python 3.13+ here, or its environment could not be built: skipped, or failed in CI."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _candidates() -> list[str]:
    found = [os.environ.get("FUNCTIONS_RUNTIME_PYTHON", "")]
    found += [shutil.which(name) or "" for name in ("python3.13", "python3.14")]
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    found += sorted(glob.glob(f"{pyenv_root}/versions/3.1[3-9]*/bin/python"))
    found += ["/usr/bin/python3.13", "/usr/local/bin/python3.13"]
    return [c for c in found if c]


def find_python313() -> str:
    """A Python 3.13+ interpreter that runs (a pyenv shim for an unselected version does not)."""
    for candidate in _candidates():
        try:
            version = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info >= (3, 13))"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if version.returncode == 0 and version.stdout.strip() == "True":
            return candidate
    raise Unavailable("no Python 3.13 or later found (set FUNCTIONS_RUNTIME_PYTHON to one)")


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in (ROOT / "requirements.txt", REQUIREMENTS):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def runtime_python() -> Path:
    """The environment's interpreter, built first if missing or out of date."""
    python = VENV / "bin" / "python"
    if python.exists() and STAMP.exists() and STAMP.read_text() == _fingerprint():
        return python
    interpreter = find_python313()
    steps = [
        [interpreter, "-m", "venv", "--clear", str(VENV)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=ROOT)
        if done.returncode != 0:
            raise Unavailable(f"{' '.join(step[:4])} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    STAMP.write_text(_fingerprint())
    return python


def main() -> int:
    try:
        python = runtime_python()
    except Unavailable as exc:
        print(f"functions runtime harness: {exc}", file=sys.stderr)
        return 1 if in_ci() else 0
    print(f"functions runtime harness: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
