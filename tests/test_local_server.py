"""The local server as users start it: `uvicorn --factory shared.asgi:create_app`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

from shared.asgi import server_command

from .conftest import emulator_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_uvicorn(env: dict[str, str], port: int) -> subprocess.Popen:
    return subprocess.Popen(
        server_command(port),
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until_serving(process: subprocess.Popen, port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1).close()
            return
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.05)


def test_uvicorn_factory_serves_the_configuration_from_the_environment(emulator, canary_key):
    port = free_port()
    env = {"GATEWAY_CONFIG": json.dumps(emulator_config(emulator[1])), "EMULATOR_KEY": canary_key}
    process = start_uvicorn(env, port)
    try:
        wait_until_serving(process, port)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/chat/completions",
            data=json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Content-Type": "application/json", "x-request-id": "sub-1"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["choices"][0]["message"]["content"] == "You said: hi"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert canary_key not in output
    assert "for local development only" in output


def test_invalid_configuration_stops_start_up_with_a_message_naming_the_field():
    config = emulator_config("http://127.0.0.1:1")
    config["endpoints"][1]["endpoint_url"] = "https://x.westeurope.inference.ml.azure.com"
    process = start_uvicorn({"GATEWAY_CONFIG": json.dumps(config), "EMULATOR_KEY": "k"}, free_port())
    output, _ = process.communicate(timeout=20)
    assert process.returncode != 0
    assert "endpoints[1] ('mistral-large').endpoint_url" in output
    assert "https://x.westeurope.inference.ml.azure.com/v1/chat/completions" in output
