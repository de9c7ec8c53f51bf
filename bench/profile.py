"""Where a request's CPU goes: the gateway and the floor under wrk at 32 connections, sampled
with py-spy, each sample given to one part of the stack (server, framework, validation, ...).

    .venv/bin/python -m bench.profile [--seconds 10] [--telemetry] [--callers memory|redis]

Each sample's stack is read from its innermost frame outwards; the first frame that belongs to
a part names it (so JSON work done inside validation counts as JSON). Idle time is not sampled.
CPU per request is the process's CPU time over the requests wrk completed; each part's share of
it is its share of the samples. Prints a table and writes bench/results/latest/profile.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    LATEST,
    Server,
    pin,
    start_emulator,
    start_floor,
    start_gateway,
    start_otlp_sink,
    start_redis,
    telemetry_env,
)

#: Parts of the stack, by the file a frame runs in; the first that matches wins.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("telemetry", ("opentelemetry/", "google/protobuf", "shared/otel.py")),
    ("callers and limits", ("redis/", "jwt/", "shared/callers.py", "shared/limits.py")),
    ("logging and ids", ("logging/", "shared/logs.py", "shared/ids.py", "uuid.py", "secrets.py")),
    ("JSON", ("json/", "shared/codec.py", "orjson")),
    ("validation", ("pydantic", "shared/chat.py", "shared/url_forms.py")),
    ("formatting", ("shared/formatters.py", "shared/routing.py", "shared/responses.py")),
    (
        "upstream client",
        (
            "aiohttp/client",
            "aiohttp/connector",
            "aiohttp/streams",
            "aiohttp/http_parser",
            "aiohttp/helpers",
            "aiohttp/multidict",
            "multidict",
            "yarl/",
            "shared/transport.py",
        ),
    ),
    ("framework (Starlette / aiohttp.web)", ("starlette/", "aiohttp/web")),
    (
        "server (uvicorn / aiohttp's)",
        (
            "uvicorn/",
            "httptools",
            "shared/uvicorn_protocol.py",
            "shared/asgi.py",
            "shared/guard.py",
            "aiohttp/base_protocol",
            "aiohttp/http_writer",
        ),
    ),
    ("gateway pipeline", ("shared/",)),
    ("event loop", ("asyncio/", "uvloop")),
]
FRAME = re.compile(r"\((?P<file>[^:()]+)(?::\d+)?\)$")


def part_of(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        match = FRAME.search(frame)
        filename = match.group("file") if match else frame
        for part, needles in PARTS:
            if any(needle in filename for needle in needles):
                return part
    return "other"


def profile(
    server: Server,
    url: str,
    body: dict,
    headers: dict,
    seconds: int,
    keep_raw: Path | None = None,
    connections: int = 32,
) -> dict:
    """wrk at `connections` against `url` while py-spy samples `server` (its raw samples are
    copied to `keep_raw` when given)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        auth = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
        script.write_text(
            f'wrk.method = "POST"\nwrk.body = [[{json.dumps(body)}]]\n'
            f'wrk.headers["Content-Type"] = "application/json"\n{auth}'
        )
        wrk = [*pin(0), "wrk", "-t1", f"-c{connections}", "-s", str(script), url]
        subprocess.run([*wrk[:4], "-d2s", *wrk[4:]], capture_output=True, check=True)  # warm-up
        raw = Path(tmp) / "profile.txt"
        sampler = subprocess.Popen(
            [
                py_spy,
                "record",
                "--format",
                "raw",
                "--rate",
                "500",
                "--nonblocking",
                "--pid",
                str(server.pid),
                "--output",
                str(raw),
                "--duration",
                str(seconds + 1),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        cpu_before = server.cpu_seconds()
        output = subprocess.run(
            [*wrk[:4], f"-d{seconds}s", *wrk[4:]], capture_output=True, text=True, check=True
        )
        cpu = server.cpu_seconds() - cpu_before
        sampler.wait(timeout=seconds + 30)
        if keep_raw is not None:
            shutil.copy(raw, keep_raw)
        counts: collections.Counter[str] = collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                counts[part_of(stack)] += int(count)
    requests = int(re.search(r"(\d+) requests in", output.stdout).group(1))
    cpu_us = cpu * 1e6 / max(requests, 1)
    total = sum(counts.values()) or 1
    return {
        "requests": requests,
        "cpu_us_per_request": round(cpu_us, 1),
        "parts_us": {part: round(cpu_us * n / total, 1) for part, n in counts.most_common()},
    }


def table(profiles: dict[str, dict]) -> str:
    names = list(profiles)
    parts = [p for p, _ in PARTS] + ["other"]
    lines = [
        "| CPU per request (µs) | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
        "| **total** | " + " | ".join(f"**{profiles[n]['cpu_us_per_request']:.0f}**" for n in names) + " |",
    ]
    for part in parts:
        cells = [profiles[n]["parts_us"].get(part) for n in names]
        if any(cells):
            lines.append(f"| {part} | " + " | ".join(f"{c:.0f}" if c else "—" for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--telemetry", action="store_true", help="also profile a gateway with telemetry on")
    parser.add_argument(
        "--callers", choices=("memory", "redis"), help="also profile one with callers' limits"
    )
    args = parser.parse_args()
    body = {
        "model": "serverless",
        "messages": [{"role": "user", "content": "Hello there, how are you today?"}],
    }
    servers: list[Server] = []
    try:
        emulator = start_emulator(cpu=0)
        servers.append(emulator)
        floor = start_floor(emulator.url, cpu=1)
        gateway = start_gateway(emulator.url, cpu=1)
        servers += [floor, gateway]
        runs = {"floor": (floor, {}), "gateway": (gateway, {})}
        if args.telemetry:
            sink = start_otlp_sink(cpu=0)
            servers.append(sink)
            runs["telemetry on"] = (start_gateway(emulator.url, cpu=1, extra_env=telemetry_env(sink.url)), {})
            servers.append(runs["telemetry on"][0])
        if args.callers:
            limits = {"requests_per_minute": 10**9, "tokens_per_minute": 10**9, "tokens_per_day": 10**12}
            store: dict = {"type": "memory"}
            if args.callers == "redis":
                redis = start_redis(cpu=0)
                if redis is None:
                    raise SystemExit("no redis-server")
                servers.append(redis)
                store = {"type": "redis", "url": f"redis://127.0.0.1:{redis.port}/0"}
            limited = start_gateway(emulator.url, cpu=1, callers={"limits": {**limits, "store": store}})
            servers.append(limited)
            runs[f"limits ({args.callers})"] = (limited, {})
        profiles = {}
        LATEST.mkdir(parents=True, exist_ok=True)
        for name, (server, headers) in runs.items():
            url = f"{server.url}/api/v1/chat/completions"
            raw = LATEST / f"profile-{name.replace(' ', '-')}.txt"
            profiles[name] = profile(
                server, url, body, headers, args.seconds, keep_raw=raw, connections=args.connections
            )
        print(table(profiles))
        LATEST.mkdir(parents=True, exist_ok=True)
        (LATEST / "profile.json").write_text(json.dumps(profiles, indent=2) + "\n")
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
