"""Security review, automated: bandit over the gateway's code finds nothing."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bandit_finds_no_issue_in_the_gateway():
    result = subprocess.run(
        [sys.executable, "-m", "bandit", "-q", "-r", "shared", "function_app.py", "-f", "txt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
