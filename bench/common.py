"""What every benchmark needs: servers in their own processes, pinned to cores, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.shaped_upstream import UPSTREAM_PATHS  # noqa: E402
from shared.asgi import server_command  # noqa: E402
from tests.redis_server import redis_command  # noqa: E402

#: The committed results, rewritten only when asked (`--update`, `make bench UPDATE=1`).
RESULTS = ROOT / "bench" / "results"
#: Where every other run writes (ignored by git).
LATEST = RESULTS / "latest"
PYTHON = sys.executable
KEY = secrets.token_urlsafe(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(cpu: int | None) -> list[str]:
    """A command prefix that runs on one core (when the machine has more than one)."""
    if cpu is None or (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpu)]


def pin_self(cpu: int | None) -> None:
    if cpu is not None and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {cpu})


class Server:
    """A server process; stopped when the benchmark ends, whatever happens."""

    def __init__(
        self, name: str, command: Sequence[str], port: int, health: str | None, env: dict[str, str]
    ) -> None:
        """Ready once `health` answers over HTTP (or, with no `health`, once the port accepts)."""
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            list(command),
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if health is None:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                else:
                    urllib.request.urlopen(self.url + health, timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"{name} did not start: {self.process.stderr.read()[-2000:]}"
                    ) from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> float:
        return _status_kb(self.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return _status_kb(self.pid, "VmHWM") / 1024

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _status_kb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return 0.0


def start_emulator(cpu: int | None = 0, stream_delay_s: float = 0.0) -> Server:
    port = free_port()
    command = [
        *pin(cpu),
        PYTHON,
        "-m",
        "emulator",
        "--port",
        str(port),
        "--stream-delay",
        str(stream_delay_s),
    ]
    return Server("emulator", command, port, "/_emulator/health", {"EMULATOR_KEY": KEY})


def start_shaped_upstream(cpu: int | None = 0) -> Server:
    """bench/shaped_upstream.py: streams whose shape on the wire is chosen by the path."""
    port = free_port()
    command = [*pin(cpu), PYTHON, "bench/shaped_upstream.py", "--port", str(port)]
    return Server("shaped upstream", command, port, "/health", {"EMULATOR_KEY": KEY})


def start_floor(upstream: str, cpu: int | None = 1, loop: str = "uvloop") -> Server:
    """bench/floor_proxy.py forwarding to `upstream` + /v1/chat/completions, on `loop` (uvloop:
    the gateway's; asyncio: the default loop, for comparison)."""
    port = free_port()
    command = [
        *pin(cpu),
        PYTHON,
        "bench/floor_proxy.py",
        "--port",
        str(port),
        "--upstream",
        upstream,
        "--loop",
        loop,
    ]
    return Server("floor", command, port, "/api/health", {"EMULATOR_KEY": KEY})


def start_otlp_sink(cpu: int | None = 0) -> Server:
    """bench/otlp_sink.py: where a gateway with telemetry on exports (accepted, then dropped)."""
    port = free_port()
    command = [*pin(cpu), PYTHON, "-m", "bench.otlp_sink", "--port", str(port)]
    return Server("otlp sink", command, port, "/health", {})


#: The environment of a gateway with telemetry on (OTLP to the sink at `url`).
def telemetry_env(url: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_SERVICE_NAME": "bench-gateway"}


def start_redis(cpu: int | None = 0) -> Server | None:
    """A `redis-server` (Debian's) on 127.0.0.1 and a free port, nothing saved; None without the
    binary."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    return Server("redis-server", [*pin(cpu), *redis_command(binary, port)], port, None, {})


#: A group of two endpoints on the same upstream (`serverless` and `serverless-b`), equal weights:
#: what the group adds to a call is its member choice, compared with `serverless` alone.
GROUP = "pair"


def gateway_config(
    upstream: str, shaped_upstream: str | None = None, callers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The emulator's two endpoints, a second serverless one and the group `GROUP` of both
    serverless ones, and one serverless endpoint per path of `shaped_upstream` (named for the
    path) when given; `callers` is the configuration's `callers` section."""
    auth = {"type": "env", "variable": "EMULATOR_KEY"}
    shaped = [
        {
            "name": shape,
            "endpoint_url": f"{shaped_upstream}/{shape}/v1/chat/completions",
            "endpoint_api_type": "serverless",
            "auth": auth,
            "max_concurrency": 4096,
        }
        for shape in (UPSTREAM_PATHS if shaped_upstream else ())
    ]
    serverless = {
        "endpoint_url": f"{upstream}/v1/chat/completions",
        "endpoint_api_type": "serverless",
        "auth": auth,
        "model_kwargs": {"temperature": 0.7},
        # The benchmark measures the gateway, not its overload guard.
        "max_concurrency": 4096,
    }
    return {
        "default_model": "dedicated",
        "endpoints": [
            {
                "name": "dedicated",
                "endpoint_url": f"{upstream}/score",
                "endpoint_api_type": "dedicated",
                "auth": auth,
                "model_kwargs": {"temperature": 0.7},
                # The benchmark measures the gateway, not its overload guard.
                "max_concurrency": 4096,
            },
            {"name": "serverless", **serverless},
            {"name": "serverless-b", **serverless},
            *shaped,
        ],
        "groups": [
            {
                "name": GROUP,
                "strategy": "weighted",
                "members": [{"endpoint": "serverless"}, {"endpoint": "serverless-b"}],
            }
        ],
        **({"callers": callers} if callers else {}),
    }


def start_gateway(
    upstream: str,
    cpu: int | None = 1,
    extra_env: dict[str, str] | None = None,
    shaped_upstream: str | None = None,
    callers: dict[str, Any] | None = None,
) -> Server:
    port = free_port()
    command = [
        *pin(cpu),
        *server_command(
            port,
            "--no-access-log",
            "--log-level",
            "warning",
            "--backlog",
            "2048",
            # e.g. "--http h11 --loop asyncio", to measure without httptools / uvloop
            *os.environ.get("BENCH_UVICORN_ARGS", "").split(),
        ),
    ]
    env = {
        "EMULATOR_KEY": KEY,
        "GATEWAY_CONFIG": json.dumps(gateway_config(upstream, shaped_upstream, callers)),
        "GATEWAY_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    return Server("gateway", command, port, "/api/health", env)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, in the values' unit."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "n": len(values),
    }


def paired_overhead(rounds_a: Sequence[Sequence[float]], rounds_b: Sequence[Sequence[float]]) -> float:
    """Median over rounds of (median of b − median of a): robust to drift between rounds."""
    return round(
        statistics.median(
            statistics.median(b) - statistics.median(a) for a, b in zip(rounds_a, rounds_b, strict=True)
        ),
        3,
    )


def machine() -> dict[str, Any]:
    import aiohttp
    import starlette
    import uvicorn

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "starlette": starlette.__version__,
        "uvicorn": uvicorn.__version__,
    }


def results_dir(update: bool) -> Path:
    """The committed results' folder when updating them, else the ignored `latest/` one."""
    folder = RESULTS if update else LATEST
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_results(name: str, result: dict[str, Any], table: str, *, update: bool) -> Path:
    folder = results_dir(update)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / f"{name}.md").write_text(table)
    return folder


class LocalTenant:
    """A stand-in Entra tenant for `callers.auth.type: entra`: its OpenID configuration and key
    set (the tests' RSA key, `tests/entra_issuer.py`) served on 127.0.0.1 from a thread of this
    process, and one token signed with that key (valid for an hour). The gateway fetches the keys
    once and checks the token on every request (a token seen before: its cached verdict)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from tests.entra_issuer import AUDIENCE, TENANT, V2_ISSUER, Tenant

        self._tenant = Tenant()
        self.tenant_id, self.audience = TENANT, AUDIENCE
        documents: dict[str, bytes] = {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                body = documents.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        documents["/v2.0/.well-known/openid-configuration"] = json.dumps(
            {"issuer": V2_ISSUER, "jwks_uri": f"{self.url}/discovery/v2.0/keys"}
        ).encode()
        documents["/discovery/v2.0/keys"] = json.dumps({"keys": [self._tenant.signing.jwk()]}).encode()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.token = self._tenant.token()

    def auth_config(self) -> dict[str, Any]:
        return {
            "type": "entra",
            "tenant_id": self.tenant_id,
            "audience": [self.audience],
            "openid_config_url": f"{self.url}/v2.0/.well-known/openid-configuration",
        }

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
