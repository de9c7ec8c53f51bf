"""A caller must not be able to hurt the gateway: requests as an attacker would send them, over
real sockets, to the local server as users start it (`server_command`) and to its app.

Web pages that target the local server (DNS rebinding, cross-site posts), slow and huge
requests, requests that cost more to validate than they are worth, open redirects, errors that
are not OpenAI errors, and configuration that cannot work.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.asgi import server_command
from shared.config import load_config
from shared.errors import ConfigError

from .conftest import emulator_config
from .test_local_server import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
CHAT = "/api/v1/chat/completions"
JSON = {"Content-Type": "application/json"}
HELLO = {"messages": [{"role": "user", "content": "Hello there"}]}


async def call(
    base: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, base + path, data=body, headers=headers or {}, allow_redirects=False
        ) as response:
            return response.status, response.headers, await response.read()


def openai_error(status: int, body: bytes, expected: int, *fragments: str) -> dict[str, Any]:
    assert status == expected, body
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error


# 9. The local server is not an open door.


@pytest.mark.parametrize(
    "host", ["rebind.attacker.example", "rebind.attacker.example:7071", "127.0.0.1.nip.io"]
)
async def test_a_host_that_does_not_name_the_server_is_refused(gateway, emulator, host):
    for method, path, body in [("POST", CHAT, json.dumps(HELLO).encode()), ("GET", "/api/v1/models", None)]:
        status, headers, answer = await call(gateway, method, path, body, {**JSON, "Host": host})
        openai_error(status, answer, 421, repr(host), "allowed_hosts")
        assert headers["x-request-id"]
    assert emulator[0].requests == []


@pytest.mark.parametrize("host", ["localhost:7071", "LOCALHOST", "127.0.0.1", "[::1]:7071"])
async def test_loopback_hosts_are_served(gateway, host):
    status, _, body = await call(gateway, "POST", CHAT, json.dumps(HELLO).encode(), {**JSON, "Host": host})
    assert status == 200, body


async def test_allowed_hosts_names_a_containers_own_names(emulator, start_gateway):
    base = start_gateway(emulator_config(emulator[1], allowed_hosts=["gateway.internal", ".svc.example"]))
    for host in ["gateway.internal:8080", "chat.svc.example", "svc.example"]:
        status, _, body = await call(base, "GET", "/api/v1/models", headers={"Host": host})
        assert status == 200, (host, body)
    status, _, body = await call(base, "GET", "/api/v1/models", headers={"Host": "evilsvc.example"})
    openai_error(status, body, 421)


async def test_health_answers_whatever_the_host_for_container_probes(gateway):
    status, _, body = await call(gateway, "GET", "/api/health", headers={"Host": "10.0.0.5:7071"})
    assert status == 200 and json.loads(body) == {"status": "ok"}


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json"],
)
async def test_a_post_that_is_not_declared_json_is_a_415_showing_the_header_to_add(
    gateway, emulator, content_type
):
    headers = {"Content-Type": content_type} if content_type else {}
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session:
        async with session.post(gateway + CHAT, data=json.dumps(HELLO).encode(), headers=headers) as response:
            status, body = response.status, await response.read()
    error = openai_error(status, body, 415, "Content-Type: application/json")
    assert error["code"] == "unsupported_media_type"
    assert emulator[0].requests == []


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", 'Application/JSON;charset="UTF-8"']
)
async def test_json_with_a_utf8_charset_is_served(gateway, content_type):
    status, _, body = await call(
        gateway, "POST", CHAT, json.dumps(HELLO).encode(), {"Content-Type": content_type}
    )
    assert status == 200, body


async def test_json_in_another_charset_is_a_415(gateway):
    headers = {"Content-Type": "application/json; charset=utf-16"}
    status, _, body = await call(gateway, "POST", CHAT, json.dumps(HELLO).encode("utf-16"), headers)
    openai_error(status, body, 415, "UTF-8")


def shell_blocks(markdown: str) -> Iterator[str]:
    """The fenced code blocks of a Markdown document that are shell commands."""
    for language, block in re.findall(r"^```(\w*)\n(.*?)^```", markdown, re.S | re.M):
        if language in ("sh", "bash", "shell", "console"):
            yield block


def test_every_curl_example_that_posts_to_the_gateway_sends_the_json_header():
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    posts = []
    for document in documents:
        for block in shell_blocks(document.read_text()):
            for command in re.findall(r"curl (?:[^\n]*\\\n)*[^\n]*", block):
                if "/api/" in command and (" -d " in command or "--data" in command):
                    posts.append(command)
                    assert "Content-Type: application/json" in command, (document.name, command)
    assert posts  # the README shows at least one


# 10. Slow and huge requests are bounded (the local server as `server_command` starts it).

LIMITS = {"header_timeout_s": 1, "body_timeout_s": 1, "keepalive_timeout_s": 1, "max_connections": 200}


def start_server(local_server: dict[str, Any]) -> tuple[subprocess.Popen, str]:
    config = emulator_config("http://127.0.0.1:1", local_server=local_server)
    port = free_port()
    process = subprocess.Popen(
        server_command(port, "--log-level", "warning"),
        env={**os.environ, "GATEWAY_CONFIG": json.dumps(config), "EMULATOR_KEY": "k"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until_serving(process, port)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def bounded_server() -> Iterator[str]:
    process, url = start_server(LIMITS)
    yield url
    process.terminate()
    process.communicate(timeout=10)


async def connect(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def answer_of(reader: asyncio.StreamReader, within_s: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    received = b""
    try:
        async with asyncio.timeout(within_s):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        pass
    return received


async def trickle(writer: asyncio.StreamWriter, byte: bytes = b"a", every_s: float = 0.2) -> None:
    """A slowloris: one byte at a time, until the server hangs up."""
    try:
        while not writer.is_closing():
            writer.write(byte)
            await writer.drain()
            await asyncio.sleep(every_s)
    except (ConnectionError, OSError):
        pass


async def assert_healthy(base: str) -> None:
    status, _, body = await call(base, "GET", "/api/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}


async def test_slow_headers_are_cut_off(bounded_server):
    connections = [await connect(bounded_server) for _ in range(50)]
    for _, writer in connections:
        writer.write(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
    trickles = [asyncio.create_task(trickle(writer)) for _, writer in connections]
    answers = await asyncio.gather(*(answer_of(reader) for reader, _ in connections))
    await asyncio.gather(*trickles)
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"header_timeout_s" in answer
    await assert_healthy(bounded_server)


async def test_slow_uploads_are_cut_off(bounded_server):
    head = f"POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    connections = [await connect(bounded_server) for _ in range(50)]
    for _, writer in connections:
        writer.write(head.encode() + b'{"messages": [')
    trickles = [asyncio.create_task(trickle(writer, b" ")) for _, writer in connections]
    answers = await asyncio.gather(*(answer_of(reader) for reader, _ in connections))
    await asyncio.gather(*trickles)
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"body_timeout_s" in answer
    await assert_healthy(bounded_server)


async def test_idle_connections_are_closed(bounded_server):
    fresh = await connect(bounded_server)  # never sends a byte
    kept_alive = await connect(bounded_server)
    kept_alive[1].write(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    answer = await kept_alive[0].readuntil(b'{"status":"ok"}')
    assert answer.startswith(b"HTTP/1.1 200 ")
    # LIMITS: 1 s for the first request's headers, 1 s of idle keep-alive (uvicorn's own: 5 s).
    assert await answer_of(fresh[0], within_s=4) == b""
    assert await answer_of(kept_alive[0], within_s=4) == b""
    await assert_healthy(bounded_server)


async def test_a_busy_kept_alive_connection_stays_open(bounded_server):
    # Requests every 0.4 s for 2.4 s: each answer restarts the 1 s of idle keep-alive, although
    # the connection's one timer was armed for the first.
    reader, writer = await connect(bounded_server)
    for _ in range(6):
        writer.write(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), 5)
        assert answer.startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(0.4)
    assert await answer_of(reader, within_s=4) == b""  # then idle: closed
    writer.close()


async def test_a_kept_alive_connections_next_request_has_its_own_header_deadline(bounded_server):
    reader, writer = await connect(bounded_server)
    writer.write(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), 5)
    await asyncio.sleep(0.6)
    writer.write(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
    # Trickled past the keep-alive's second and the headers' second, counted from its first byte.
    trickling = asyncio.create_task(trickle(writer))
    answer = await answer_of(reader)
    await trickling
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"header_timeout_s" in answer


@pytest.mark.parametrize(
    "headers",
    [b"X-Big: " + b"a" * 2_000_000 + b"\r\n", b"".join(b"X-%d: a\r\n" % i for i in range(150_000))],
    ids=["one 2 MB header", "150,000 small headers"],
)
async def test_huge_headers_are_refused(bounded_server, headers):
    reader, writer = await connect(bounded_server)
    try:
        writer.write(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n")
        await writer.drain()
    except ConnectionError:
        pass  # dropped while sending: refused as well
    answer = await answer_of(reader)
    # The 431 is written before the server hangs up; a client still sending may see a reset.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    if answer:
        openai_error(431, answer.partition(b"\r\n\r\n")[2], 431, "local_server.max_header_bytes")
    await assert_healthy(bounded_server)


async def test_connections_over_the_limit_are_refused_with_a_503():
    process, base = start_server({"max_connections": 10, "header_timeout_s": 60})
    try:
        held = [await connect(base) for _ in range(10)]
        await asyncio.sleep(0.2)
        refused = [await connect(base) for _ in range(5)]
        for reader, _ in refused:
            answer = await answer_of(reader)
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
            openai_error(503, answer.partition(b"\r\n\r\n")[2], 503, "local_server.max_connections")
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.2)
        await assert_healthy(base)
    finally:
        process.terminate()
        process.communicate(timeout=10)


# 11. Validation costs what the request is worth.


async def test_too_many_messages_are_refused_before_any_is_validated(emulator, start_gateway):
    base = start_gateway(emulator_config(emulator[1], max_messages=100))
    # The last message is invalid: validating the messages first would name it instead.
    messages = [{"role": "user", "content": "x"}] * 200 + [{"role": "bogus", "content": "x"}]
    status, _, body = await call(base, "POST", CHAT, json.dumps({"messages": messages}).encode(), JSON)
    error = openai_error(status, body, 400, "max_messages", "100", "201")
    assert error["param"] == "messages"
    assert emulator[0].requests == []


async def test_too_many_content_parts_are_refused(emulator, start_gateway):
    base = start_gateway(emulator_config(emulator[1], max_content_parts=50))
    part = {"type": "text", "text": "x"}
    spread = [{"role": "user", "content": [part] * 30}, {"role": "user", "content": [part] * 30}]
    for messages in ([{"role": "user", "content": [part] * 51}], spread):
        status, _, body = await call(base, "POST", CHAT, json.dumps({"messages": messages}).encode(), JSON)
        openai_error(status, body, 400, "max_content_parts", "50")
    assert emulator[0].requests == []
    status, _, body = await call(
        base,
        "POST",
        CHAT,
        json.dumps({"messages": [{"role": "user", "content": [part] * 50}]}).encode(),
        JSON,
    )
    assert status == 200, body


async def test_content_parts_are_limited_by_default(gateway, emulator):
    # Under max_request_bytes (4 MiB), as compact JSON.
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}] * 140_000}]
    body = json.dumps({"messages": messages}, separators=(",", ":")).encode()
    status, _, body = await call(gateway, "POST", CHAT, body, JSON)
    openai_error(status, body, 400, "at most 1024 content parts")
    assert emulator[0].requests == []


# 13. No open redirect.


@pytest.mark.parametrize("host", ["localhost", "evil.example.net"])
async def test_a_trailing_slash_is_never_redirected(gateway, host):
    status, headers, body = await call(
        gateway, "POST", CHAT + "/", json.dumps(HELLO).encode(), {**JSON, "Host": host}
    )
    assert "Location" not in headers
    openai_error(status, body, 404 if host == "localhost" else 421)


# 14. Every error the gateway can shape is an OpenAI error.


async def test_a_refused_cors_preflight_is_an_openai_error(emulator, start_gateway):
    base = start_gateway(emulator_config(emulator[1], cors={"allowed_origins": ["https://chat.example.com"]}))
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    status, headers, body = await call(
        base, "OPTIONS", CHAT, headers={**preflight, "Origin": "https://evil.example"}
    )
    openai_error(status, body, 400, "'https://evil.example'", "cors.allowed_origins")
    assert headers["Content-Type"] == "application/json" and headers["x-request-id"]
    assert "Access-Control-Allow-Origin" not in headers
    status, headers, _ = await call(
        base, "OPTIONS", CHAT, headers={**preflight, "Origin": "https://chat.example.com"}
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://chat.example.com"


async def test_bytes_that_are_not_http_get_an_openai_error(bounded_server):
    reader, writer = await connect(bounded_server)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    answer = await answer_of(reader)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head
    openai_error(400, body, 400, "not valid HTTP")


# 15. Configuration that cannot work is refused at start-up.


def config_with(**endpoint: Any) -> dict[str, str]:
    config = emulator_config("http://127.0.0.1:1")
    config["endpoints"][0].update(endpoint)
    return {"GATEWAY_CONFIG": json.dumps(config), "EMULATOR_KEY": "k"}


@pytest.mark.parametrize(
    "endpoint, fragments",
    [
        (
            {"endpoint_url": "https://user:s3cr3t-pw@x.westeurope.inference.ml.azure.com/score"},
            ["endpoint_url", "user name or password"],
        ),
        (
            {"endpoint_url": "https://<endpoint>.<region>.inference.ml.azure.com/score"},
            ["endpoint_url", "placeholder <endpoint>"],
        ),
        (
            {"endpoint_url": "https://x.westeurope.inference.ml\n.azure.com/score"},
            ["endpoint_url", "control"],
        ),
        (
            {"deployment_name": "blue\r\nX-Injected: 1"},
            ["deployment_name", "azureml-model-deployment header"],
        ),
        ({"timeout_s": "60"}, ["('llama-chat').timeout_s", "valid number"]),
        ({"max_retries": True}, ["('llama-chat').max_retries", "valid integer"]),
        ({"extra_parameters": "drop"}, ["extra_parameters", "serverless"]),
    ],
    ids=[
        "credentials in the URL",
        "placeholder",
        "newline in the URL",
        "header injection",
        "string",
        "bool",
        "extra",
    ],
)
def test_an_endpoint_that_cannot_work_is_refused_naming_the_field(endpoint, fragments):
    with pytest.raises(ConfigError) as refused:
        load_config(config_with(**endpoint))
    message = str(refused.value)
    assert "endpoints[0] ('llama-chat')" in message
    for fragment in fragments:
        assert fragment in message, message
    assert "s3cr3t" not in message


@pytest.mark.parametrize(
    "top, fragment",
    [
        ({"allowed_hosts": ["*"]}, "allowed_hosts: '*' is not allowed"),
        ({"allowed_hosts": ["http://gateway.internal:8080"]}, "(no scheme, no port)"),
        ({"cors": {"allowed_origins": ["https://app.example.com\r\nX-Injected: 1"]}}, "cors.allowed_origins"),
        ({"max_request_bytes": "4096"}, "max_request_bytes"),
        ({"local_server": {"max_header_bytes": 10}}, "local_server.max_header_bytes"),
    ],
)
def test_gateway_settings_that_cannot_work_are_refused_naming_the_field(top, fragment):
    config = emulator_config("http://127.0.0.1:1", **top)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config({"GATEWAY_CONFIG": json.dumps(config), "EMULATOR_KEY": "k"})


def key_vault_environ(vault_url: str) -> dict[str, str]:
    environ = config_with(auth={"type": "key_vault", "secret_name": "llama-chat-key"})
    return {**environ, "KEY_VAULT_URL": vault_url}


@pytest.mark.parametrize(
    "vault_url",
    [
        "https://kv.example.com/",
        "http://kv-gateway.vault.azure.net/",
        "https://kv-gateway.vault.azure.net/secrets/llama-chat-key",
        "https://<vault>.vault.azure.net/",
        "https://kv.vault.azure.net/",  # 2 characters: vault names have 3 to 24
        "https://user:pw@kv-gateway.vault.azure.net/",
        "kv-gateway",
    ],
)
def test_a_key_vault_url_that_is_not_a_vault_is_refused(vault_url):
    with pytest.raises(ConfigError, match="KEY_VAULT_URL is not a Key Vault URI") as refused:
        load_config(key_vault_environ(vault_url))
    assert "pw@" not in str(refused.value)


@pytest.mark.parametrize(
    "vault_url",
    [
        "https://kv-gateway.vault.azure.net/",
        "https://kv-gateway.vault.azure.net",
        "https://kv-gateway.vault.azure.cn/",
        "https://kv-gateway.vault.usgovcloudapi.net/",
        "https://kv-gateway.vault.microsoftazure.de/",
        "https://127.0.0.1:8443/",
    ],
)
def test_key_vault_urls_of_every_cloud_and_a_local_vault_are_accepted(vault_url):
    assert load_config(key_vault_environ(vault_url))


def test_a_configuration_error_stops_the_local_server_with_the_message_alone():
    environ = config_with(timeout_s="60")
    process = subprocess.run(
        server_command(free_port()),
        env={**os.environ, **environ},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert process.returncode != 0
    output = process.stdout + process.stderr
    assert "endpoints[0] ('llama-chat').timeout_s: Input should be a valid number" in output
    assert "Traceback" not in output, output
