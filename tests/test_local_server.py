"""The local server as users start it: `uvicorn --factory shared.asgi:create_app`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from shared.asgi import server_command
from shared.uvicorn_protocol import HeadWithBody

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


DEV_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "dev.py"


def start_dev(**ports: int) -> tuple[subprocess.Popen, list[str], threading.Event]:
    """scripts/dev.py as `make dev GATEWAY_PORT=... EMULATOR_PORT=...` runs it; its output lines
    are collected, and the event is set once the try-it banner is out."""
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "GATEWAY_CONFIG_FILE")}
    env.update({name: str(port) for name, port in ports.items()})
    process = subprocess.Popen(
        [sys.executable, str(DEV_SCRIPT)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def collect() -> None:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Ctrl+C stops both."):
                ready.set()

    threading.Thread(target=collect, daemon=True).start()
    return process, lines, ready


def chat(port: int, model: str, text: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/chat/completions",
        data=json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)["choices"][0]["message"]["content"]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_make_dev_serves_both_models_on_the_ports_it_is_given():
    gateway_port, emulator_port = free_port(), free_port()
    process, lines, ready = start_dev(GATEWAY_PORT=gateway_port, EMULATOR_PORT=emulator_port)
    try:
        assert ready.wait(30), "".join(lines)
        banner = "".join(lines)
        assert f"Gateway:  http://127.0.0.1:{gateway_port}/api" in banner
        assert f"emulator on http://127.0.0.1:{emulator_port}" in banner
        assert f"curl -s http://127.0.0.1:{gateway_port}/api/v1/chat/completions" in banner
        # Both endpoints of config/emulator.json reach the emulator on its new port.
        assert chat(gateway_port, "llama-chat", "hi") == "You said: hi"
        assert chat(gateway_port, "mistral-large", "hello") == "You said: hello"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    # Stopping dev.py stops both servers.
    deadline = time.monotonic() + 10
    while listening(gateway_port) or listening(emulator_port):
        assert time.monotonic() < deadline, "a server outlived dev.py"
        time.sleep(0.1)


def test_make_dev_names_the_variable_to_change_when_a_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process, lines, _ = start_dev(GATEWAY_PORT=free_port(), EMULATOR_PORT=port)
        process.wait(timeout=20)
    assert process.returncode != 0
    assert f"port {port} on 127.0.0.1 is in use" in "".join(lines)
    assert "EMULATOR_PORT=" in "".join(lines)


class _RecordedTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def test_a_responses_head_leaves_with_its_body_and_nothing_else_is_held():
    transport = _RecordedTransport()
    writes = HeadWithBody(transport, asyncio.get_running_loop())
    writes.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")  # as uvicorn writes them: apart
    assert transport.writes == []
    writes.write(b"body")
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"]
    writes.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    writes.write(b"5\r\nfirst\r\n")
    writes.write(b"6\r\nsecond\r\n")  # a stream's events go out as they are written
    assert transport.writes[1:] == [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        b"6\r\nsecond\r\n",
    ]
    writes.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # no body follows
    await asyncio.sleep(0)  # the loop's next turn
    assert transport.writes[-1] == b"HTTP/1.1 204 No Content\r\n\r\n"
    writes.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    writes.close()  # a refusal, written then closed at once
    assert transport.writes[-1] == b"HTTP/1.1 408 Request Timeout\r\n\r\n" and transport.closed
    writes.write(b"HTTP/1.1 200 OK\r\n\r\n")
    await asyncio.sleep(0)
    assert transport.writes[-1] == b"HTTP/1.1 408 Request Timeout\r\n\r\n"  # closing: not written
