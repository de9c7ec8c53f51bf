"""`make dev`: the Azure ML endpoint emulator on :7072 and the gateway on :7071, both on 127.0.0.1.

The emulator's key is made up for this run and reaches the gateway through the environment
(`auth.type: env`), so it is never written to a file. Ctrl+C stops both.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.asgi import server_command  # noqa: E402

GATEWAY_PORT, EMULATOR_PORT = 7071, 7072

TRY_IT = f"""
Gateway: http://127.0.0.1:{GATEWAY_PORT}/api  (upstream: the emulator on :{EMULATOR_PORT})
Try it:
  curl -s http://127.0.0.1:{GATEWAY_PORT}/api/v1/chat/completions \\
    -H 'Content-Type: application/json' \\
    -d '{{"messages": [{{"role": "user", "content": "Hello!"}}]}}'
"""


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"dev: {url} exited with status {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"dev: {url} did not come up within {seconds:g} s")


def main() -> None:
    env = dict(os.environ, EMULATOR_KEY=secrets.token_urlsafe(24))
    if not (env.get("GATEWAY_CONFIG") or env.get("GATEWAY_CONFIG_FILE")):
        env["GATEWAY_CONFIG_FILE"] = str(ROOT / "config" / "emulator.json")
    # Stopped by a signal, stop both servers too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    children: list[subprocess.Popen] = []
    try:
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "emulator", "--port", str(EMULATOR_PORT)], cwd=ROOT, env=env
            )
        )
        wait_until_up(f"http://127.0.0.1:{EMULATOR_PORT}/_emulator/health", children[0])
        print(TRY_IT, flush=True)
        children.append(
            subprocess.Popen(
                server_command(GATEWAY_PORT, "--no-access-log"),
                cwd=ROOT,
                env=env,
            )
        )
        sys.exit(children[1].wait())
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=10)


if __name__ == "__main__":
    main()
