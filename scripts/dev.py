"""`make dev`: the Azure ML endpoint emulator and the gateway in front of it, both on 127.0.0.1.

Ports come from GATEWAY_PORT (default 7071) and EMULATOR_PORT (default 7072), which `make dev
GATEWAY_PORT=8081 EMULATOR_PORT=8082` sets. The emulator's key is made up for this run and
reaches the gateway through the environment (`auth.type: env`), so it is never written to a
file. Ctrl+C stops both.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.asgi import server_command  # noqa: E402

DEFAULT_PORTS = {"GATEWAY_PORT": 7071, "EMULATOR_PORT": 7072}
#: The emulator's address in config/emulator.json, moved when EMULATOR_PORT says otherwise.
CONFIG_EMULATOR_PORT = 7072
EMULATOR_CONFIG = ROOT / "config" / "emulator.json"


def port_from(environ: Mapping[str, str], variable: str) -> int:
    text = environ.get(variable, "").strip() or str(DEFAULT_PORTS[variable])
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        sys.exit(f"dev: {variable}={text!r} is not a port number (1-65535)")
    return int(text)


def check_free(port: int, variable: str) -> None:
    """Fail early, naming the variable to change, rather than let a server die on start-up or,
    worse, let the gateway talk to another run's emulator."""
    with socket.socket() as probe:
        # As the servers do: a port in TIME_WAIT after the last run is free, a listening one not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            sys.exit(
                f"dev: port {port} on 127.0.0.1 is in use; pick another, e.g. make dev {variable}=<port>"
            )


def emulator_config(emulator_port: int) -> str:
    """config/emulator.json with its endpoint URLs pointing at the emulator's port."""
    config = json.loads(EMULATOR_CONFIG.read_text())
    for endpoint in config["endpoints"]:
        url = urlsplit(endpoint["endpoint_url"])
        if url.hostname == "127.0.0.1" and url.port == CONFIG_EMULATOR_PORT:
            endpoint["endpoint_url"] = urlunsplit(url._replace(netloc=f"127.0.0.1:{emulator_port}"))
    return json.dumps(config)


def try_it(gateway_port: int, emulator_port: int, models: list[str]) -> str:
    base = f"http://127.0.0.1:{gateway_port}"
    return f"""
Gateway:  {base}/api  (models: {", ".join(models)}; chat page: {base}/)
Upstream: the Azure ML endpoint emulator on http://127.0.0.1:{emulator_port}
Try it:
  curl -s {base}/api/v1/chat/completions \\
    -H 'Content-Type: application/json' \\
    -d '{{"messages": [{{"role": "user", "content": "Hello!"}}]}}'
Ctrl+C stops both.
"""


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 30.0) -> bytes:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"dev: {url} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.read()
        except OSError:
            time.sleep(0.1)
    sys.exit(f"dev: {url} did not come up within {seconds:g} s")


def main() -> None:
    gateway_port = port_from(os.environ, "GATEWAY_PORT")
    emulator_port = port_from(os.environ, "EMULATOR_PORT")
    if gateway_port == emulator_port:
        sys.exit(f"dev: GATEWAY_PORT and EMULATOR_PORT are both {gateway_port}; they must differ")
    check_free(gateway_port, "GATEWAY_PORT")
    check_free(emulator_port, "EMULATOR_PORT")
    env = dict(os.environ, EMULATOR_KEY=secrets.token_urlsafe(24))
    if not (env.get("GATEWAY_CONFIG") or env.get("GATEWAY_CONFIG_FILE")):
        if emulator_port == CONFIG_EMULATOR_PORT:
            env["GATEWAY_CONFIG_FILE"] = str(EMULATOR_CONFIG)
        else:
            env["GATEWAY_CONFIG"] = emulator_config(emulator_port)
    # Stopped by a signal, stop both servers too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    children: list[subprocess.Popen] = []
    try:
        emulator = subprocess.Popen(
            [sys.executable, "-m", "emulator", "--port", str(emulator_port)], cwd=ROOT, env=env
        )
        children.append(emulator)
        wait_until_up(f"http://127.0.0.1:{emulator_port}/_emulator/health", emulator)
        gateway = subprocess.Popen(server_command(gateway_port, "--no-access-log"), cwd=ROOT, env=env)
        children.append(gateway)
        wait_until_up(f"http://127.0.0.1:{gateway_port}/api/health", gateway)
        listed = wait_until_up(f"http://127.0.0.1:{gateway_port}/api/v1/models", gateway)
        models = [model["id"] for model in json.loads(listed)["data"]]
        print(try_it(gateway_port, emulator_port, models), flush=True)
        sys.exit(gateway.wait())
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=10)


if __name__ == "__main__":
    main()
