"""The gateway's benchmark: what it adds to every call, measured against a bare proxy.

    make bench            (or: .venv/bin/python bench/run.py [--quick] [--update])

Starts on 127.0.0.1: the emulator and a shaped upstream (bench/shaped_upstream.py, core 0), the
gateway's local server (one worker, core 1) and the floor — a bare aiohttp forwarding proxy
(bench/floor_proxy.py, core 1, one per upstream) — and measures each against its upstream called
directly, in the same run:
- sequential latency: interleaved rounds, warm-up excluded, p50/p90/p99 and the paired overhead;
- throughput and latency from 1 to 256 connections (wrk on core 0), errors counted;
- streaming: time to first chunk and per-chunk cost at the emulator's pace, and the first chunk
  of a stream that arrives in one read and of one that drips an event per millisecond;
- memory: RSS idle, peak under load, and with 1,000 open streams;
- cold start: importing function_app (and what each dependency costs), and the time from
  starting the server to its first answered chat request;
- Key Vault reads per 1,000 requests at concurrency 50 (bench/vault_reads.py);
- the same gateway with callers on (`entra` auth against a stand-in tenant, limits in memory and
  in a local redis-server) and a two-member `weighted` group: sequential overhead in the same
  interleaved rounds, and the group's throughput against its single endpoint in alternating pairs.
Writes benchmark.{json,md} and latency.png to bench/results/latest/ (ignored by git), or to
bench/results/ with --update. bench/README.md explains the method and the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import profile, streaming, vault_reads  # noqa: E402
from bench.common import (  # noqa: E402
    GROUP,
    KEY,
    PYTHON,
    ROOT,
    LocalTenant,
    Server,
    free_port,
    gateway_config,
    machine,
    paired_overhead,
    pin,
    pin_self,
    results_dir,
    start_emulator,
    start_floor,
    start_gateway,
    start_otlp_sink,
    start_redis,
    start_shaped_upstream,
    summary,
    telemetry_env,
)
from bench.shaped_upstream import STREAM_SHAPES  # noqa: E402
from shared.asgi import server_command  # noqa: E402

BODY = {"model": "serverless", "messages": [{"role": "user", "content": "Hello there, how are you today?"}]}
CONCURRENCY = [1, 8, 32, 128, 256]
#: The concurrencies the throughput targets are set at, measured again in alternating pairs.
TARGET_CONCURRENCY = [32, 256]
#: The group's throughput against its single endpoint, in alternating pairs.
GROUP_CONCURRENCY = [32]
#: Limits no request of the benchmark reaches: every bucket is checked, none refuses.
UNREACHED_LIMITS = {"requests_per_minute": 10**9, "tokens_per_minute": 10**9, "tokens_per_day": 10**12}


def targets(emulator: Server, floor: Server, gateway: Server) -> dict[str, tuple[str, dict, dict]]:
    direct_body = {k: v for k, v in BODY.items() if k != "model"}
    return {
        "direct": (f"{emulator.url}/v1/chat/completions", direct_body, {"Authorization": f"Bearer {KEY}"}),
        "floor": (f"{floor.url}/api/v1/chat/completions", BODY, {}),
        "gateway": (f"{gateway.url}/api/v1/chat/completions", BODY, {}),
    }


def variant_targets(
    gateway: Server, callers_gateways: dict[str, Server], token: str
) -> dict[str, tuple[str, dict, dict]]:
    """The group on the main gateway, and each gateway with callers on (the same token every time)."""
    return {
        "group": (f"{gateway.url}/api/v1/chat/completions", {**BODY, "model": GROUP}, {}),
        **{
            name: (f"{server.url}/api/v1/chat/completions", BODY, {"Authorization": f"Bearer {token}"})
            for name, server in callers_gateways.items()
        },
    }


def callers_section(tenant: LocalTenant, store: dict) -> dict:
    return {"auth": tenant.auth_config(), "limits": {**UNREACHED_LIMITS, "store": store}}


async def sequential(
    named: dict[str, tuple[str, dict, dict]], warmup: int, rounds: int, per_round: int
) -> dict:
    samples: dict[str, list[list[float]]] = {name: [] for name in named}
    async with aiohttp.ClientSession() as session:

        async def once(url: str, body: dict, headers: dict) -> float:
            started = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            return (time.perf_counter() - started) * 1000

        for url, body, headers in named.values():
            for _ in range(warmup):
                await once(url, body, headers)
        order = list(named.items())
        for index in range(rounds):
            for name, (url, body, headers) in order[index % len(order) :] + order[: index % len(order)]:
                samples[name].append([await once(url, body, headers) for _ in range(per_round)])
    result = {name: summary([v for batch in rounds_ for v in batch]) for name, rounds_ in samples.items()}
    for name in (name for name in named if name != "direct"):
        result[name]["overhead_p50"] = round(result[name]["p50"] - result["direct"]["p50"], 3)
        result[name]["overhead_paired"] = paired_overhead(samples["direct"], samples[name])
    return result


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
{auth}
"""


def wrk(url: str, body: dict, headers: dict, connections: int, seconds: int, server: Server) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        auth = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
        script.write(WRK_SCRIPT.format(body=json.dumps(body), auth=auth))
    base = [
        *pin(0),
        "wrk",
        "-t1",
        f"-c{connections}",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        script.name,
        url,
    ]
    subprocess.run([*base[:-4], "-d2s", *base[-4:]], capture_output=True, check=True)  # warm-up
    peak = [server.rss_mb()]
    running = True

    def sample() -> None:
        while running:
            peak.append(server.rss_mb())
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    cpu_before = server.cpu_seconds()
    sampler.start()
    output = subprocess.run(
        [*base[:-4], f"-d{seconds}s", *base[-4:]], capture_output=True, text=True, check=True
    ).stdout
    running = False
    sampler.join()
    cpu = server.cpu_seconds() - cpu_before
    os.unlink(script.name)
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    latency = {q: _ms(re.search(rf"^\s+{q}%\s+(\S+)", output, re.M).group(1)) for q in ("50", "90", "99")}
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": latency["50"],
        "p90_ms": latency["90"],
        "p99_ms": latency["99"],
        "errors": (sum(map(int, errors.groups())) if errors else 0)
        + (int(non_2xx.group(1)) if non_2xx else 0),
        "server_cpu_ms_per_request": round(cpu * 1000 / max(requests, 1), 4),
        "server_rss_peak_mb": round(max(peak), 1),
    }


def paired_throughput(
    named: dict[str, tuple[str, dict, dict]],
    server_of: dict[str, Server],
    seconds: int,
    pairs: int,
    base: str = "floor",
    other: str = "gateway",
    concurrency: list[int] = TARGET_CONCURRENCY,
) -> dict:
    """`base` and `other` (floor and gateway) in alternating wrk runs at each concurrency. The
    figure is the median of the pairs' ratios other / base: a slow spell of the machine hits both
    runs of a pair alike."""
    result = {}
    for conns in concurrency:
        runs = []
        for index in range(pairs):
            order = (base, other) if index % 2 == 0 else (other, base)
            runs.append({name: wrk(*named[name], conns, seconds, server_of[name]) for name in order})
        ratios = [run[other]["rps"] / run[base]["rps"] for run in runs]
        result[str(conns)] = {
            f"{base}_rps": [run[base]["rps"] for run in runs],
            f"{other}_rps": [run[other]["rps"] for run in runs],
            "errors": sum(run[name]["errors"] for run in runs for name in run),
            "ratios": [round(ratio, 3) for ratio in ratios],
            "ratio": round(statistics.median(ratios), 2),
        }
    return result


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return round(float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit], 3)


async def open_streams(gateway_url: str, count: int, server: Server) -> float:
    """The gateway's RSS while `count` streams are open at once (the emulator paces them)."""
    long_question = [{"role": "user", "content": " ".join(["word"] * 30)}]
    connector = aiohttp.TCPConnector(limit=0)
    opened = asyncio.Event()
    started = 0

    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=180)
    ) as session:

        async def one() -> None:
            nonlocal started
            body = {"model": "serverless", "messages": long_question, "stream": True}
            async with session.post(f"{gateway_url}/api/v1/chat/completions", json=body) as response:
                await response.content.readline()
                started += 1
                if started == count:
                    opened.set()
                await response.read()

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await asyncio.wait_for(opened.wait(), 60)
        rss = server.rss_mb()
        await asyncio.gather(*tasks)
    return round(rss, 1)


def import_costs(extra_env: dict[str, str] | None = None, only: list[str] | None = None) -> dict:
    env = {
        **os.environ,
        "GATEWAY_CONFIG": json.dumps(gateway_config("http://127.0.0.1:9")),
        "EMULATOR_KEY": "k",
        **(extra_env or {}),
    }

    def wall(statement: str, runs: int = 5) -> float:
        times = []
        for _ in range(runs + 1):
            started = time.perf_counter()
            subprocess.run(
                [*pin(1), PYTHON, "-c", statement], cwd=ROOT, env=env, check=True, capture_output=True
            )
            times.append(time.perf_counter() - started)
        return statistics.median(times[1:]) * 1000

    bare = wall("pass")
    modules = [
        "azure.functions",
        "azurefunctions.extensions.http.fastapi",
        "starlette.applications",
        "pydantic",
        "aiohttp",
        "azure.identity.aio",
        "azure.keyvault.secrets.aio",
        "shared.asgi",
        "function_app",
    ]
    if only is not None:
        modules = only
    return {
        "bare_python_ms": round(bare, 1),
        **{module: round(wall(f"import {module}") - bare, 1) for module in modules},
    }


def time_to_first_answer(emulator: Server) -> float:
    port = free_port()
    env = {**os.environ, "EMULATOR_KEY": KEY, "GATEWAY_CONFIG": json.dumps(gateway_config(emulator.url))}
    started = time.perf_counter()
    process = subprocess.Popen(
        [*pin(1), *server_command(port, "--log-level", "warning")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/chat/completions",
            data=json.dumps(BODY).encode(),
            headers={"Content-Type": "application/json"},
        )
        while True:
            try:
                urllib.request.urlopen(request, timeout=2).close()
                return round((time.perf_counter() - started) * 1000, 1)
            except OSError:
                time.sleep(0.01)
    finally:
        process.terminate()
        process.wait()


def chart(throughput: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, levels in throughput.items():
        conns = sorted(int(c) for c in levels)
        left.plot(conns, [levels[str(c)]["p50_ms"] for c in conns], marker="o", label=name)
        right.plot(conns, [levels[str(c)]["rps"] for c in conns], marker="o", label=name)
    for axis, title in ((left, "latency p50 (ms)"), (right, "throughput (req/s)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent connections")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def capacity(idle_mb: float, kb_per_stream: float, instance_mb: int) -> int:
    """Open streams an instance of `instance_mb` holds by memory, keeping a quarter for the rest."""
    return int((instance_mb * 0.75 - idle_mb) * 1024 / max(kb_per_stream, 1))


def table(result: dict) -> str:
    seq, thr, stream, mem = (
        result["sequential_ms"],
        result["throughput"],
        result["streaming"],
        result["memory_mb"],
    )
    ratios = result["ratios"]
    lines = [
        f"Machine: {result['machine']['cpus']} × {result['machine']['cpu_model']}, Python {result['machine']['python']}, "
        f"aiohttp {result['machine']['aiohttp']}, starlette {result['machine']['starlette']}, "
        f"uvicorn {result['machine']['uvicorn']}",
        "",
        "| sequential (ms) | p50 | p90 | p99 | added p50 | added, paired |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in seq.items():
        lines.append(
            f"| {name} | {row['p50']} | {row['p90']} | {row['p99']} | {row.get('overhead_p50', '—')} "
            f"| {row.get('overhead_paired', '—')} |"
        )
    lines += [
        "",
        "| connections | " + " | ".join(f"{n} req/s (p50 ms)" for n in thr) + " |",
        "| --- |" + " --- |" * len(thr),
    ]
    for conns in thr["direct"]:
        cells = [
            f"{thr[n][conns]['rps']:.0f} ({thr[n][conns]['p50_ms']}), {thr[n][conns]['errors']} err"
            for n in thr
        ]
        lines.append(f"| {conns} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| streaming | first chunk added (ms) | per chunk (ms) |",
        "| --- | --- | --- |",
        f"| floor | {stream['floor_ttfc_overhead_ms']} | {stream['floor_per_chunk_ms']} |",
        f"| gateway, serverless relay | {stream['gateway_ttfc_overhead_ms']} | {stream['gateway_per_chunk_ms']} |",
        f"| gateway, dedicated emulation | {stream['dedicated_ttfc_overhead_ms']} | — |",
        "",
        *streaming.shape_rows(stream["shapes"]),
        "",
        "| memory (MB) | idle | peak at 256 connections | 100 open streams | 1,000 open streams |",
        "| --- | --- | --- | --- | --- |",
        f"| floor | {mem['floor']['idle']} | {mem['floor']['peak_load']} | — | — |",
        f"| gateway | {mem['gateway']['idle']} | {mem['gateway']['peak_load']} | {mem['gateway']['open_streams_100']} "
        f"| {mem['gateway']['open_streams_1000']} |",
        "",
        f"Open streams: {ratios['rss_kb_per_open_stream']} KB of RSS each (from 100 to 1,000 open). By memory, "
        f"an instance of 2 GB would hold about {capacity(mem['gateway']['idle'], ratios['rss_kb_per_open_stream'], 2048):,} "
        f"open streams and one of 4 GB about {capacity(mem['gateway']['idle'], ratios['rss_kb_per_open_stream'], 4096):,}; "
        "the default limits stop well before: `max_concurrency` 128 per endpoint, `local_server.max_connections` 2,048.",
        "",
        "CPU per request at 32 connections, by part of the stack (py-spy samples; bench/profile.py):",
        "",
        profile.table(result["profile_32"]),
        "",
        f"Cold start: `import function_app` {result['cold_start']['imports']['function_app']} ms above a bare "
        f"interpreter; first answered request {result['cold_start']['first_answer_ms']} ms after starting the server.",
        f"Key Vault: {result['vault']['vault_reads_per_1000_requests']} reads per 1,000 requests at concurrency 50.",
        "",
        "| target (ratio gateway / floor) | measured | goal |",
        "| --- | --- | --- |",
        f"| sequential overhead p50 | {ratios['sequential_overhead']} | ≤ 1.2 |",
        *(
            f"| throughput at {conns} (median of {len(pair['ratios'])} alternating pairs: "
            f"{', '.join(str(r) for r in pair['ratios'])}; {pair['errors']} errors) | {pair['ratio']} | ≥ 0.8 |"
            for conns, pair in result["throughput_paired"].items()
        ),
        *(
            f"| against the asyncio-loop floor (the former one): throughput at {conns} (median of "
            f"{len(pair['ratios'])} alternating pairs: {', '.join(str(r) for r in pair['ratios'])}) | {pair['ratio']} | — |"
            for conns, pair in result["asyncio_floor_throughput_paired"].items()
        ),
        f"| against the asyncio-loop floor: sequential overhead | {ratios['sequential_overhead_vs_asyncio_floor']} | — |",
        f"| stream first-chunk overhead, emulator's pace | {ratios['stream_ttfc_overhead']} | ≤ 1.3 |",
        *(
            f"| stream first-chunk overhead, {shape} | {ratios[f'stream_ttfc_overhead_{shape}']} | ≤ 1.3 |"
            for shape in stream["shapes"]
        ),
        f"| peak RSS under load | {ratios['peak_rss']} | ≤ 2 |",
        f"| cold import of function_app (s) | {result['cold_start']['imports']['function_app'] / 1000:.2f} | ≤ 0.6 |",
        *variant_rows(result),
    ]
    return "\n".join(lines) + "\n"


def variant_rows(result: dict) -> list[str]:
    """The targets of callers (entra auth and limits) and of a two-member group."""
    seq, ratios = result["sequential_ms"], result["ratios"]
    rows = [
        "",
        "| callers and groups | measured | goal |",
        "| --- | --- | --- |",
    ]
    for name, label in (
        ("entra_only", "entra alone"),
        ("limits_memory_only", "limits alone, memory store"),
    ):
        rows.append(
            f"| {label}: sequential overhead / floor's ({seq[name]['overhead_paired']} ms) "
            f"| {ratios[f'sequential_overhead_{name}']} | — |"
        )
    for name, label in (("callers_memory", "memory"), ("callers_redis", "redis")):
        if name not in seq:
            rows.append(
                f"| entra + limits, {label} store: sequential overhead / floor's | {result['redis_store']} | ≤ 1.5 |"
            )
            continue
        rows.append(
            f"| entra + limits, {label} store: sequential overhead / floor's "
            f"({seq[name]['overhead_paired']} ms against {seq['floor']['overhead_paired']} ms; "
            f"the gateway without callers: {seq['gateway']['overhead_paired']} ms) "
            f"| {ratios[f'sequential_overhead_{name}']} | ≤ 1.5 |"
        )
    if ratios["redis_admission_ms"] is not None:
        rows.append(
            f"| a Redis admission as a caller sees it: entra + limits, redis − memory (ms) "
            f"| {ratios['redis_admission_ms']} | — |"
        )
    rows.append(
        f"| group of two, sequential overhead / single endpoint's ({seq['group']['overhead_paired']} ms "
        f"against {seq['gateway']['overhead_paired']} ms) | {ratios['group_sequential_overhead_vs_single']} | ≤ 1.1 |"
    )
    for name, label, goal in (
        ("telemetry", "telemetry on (OTLP to a local sink, default sampling)", "≤ 1.5"),
        ("telemetry_every_trace", "telemetry on, every trace kept (parentbased_always_on)", "—"),
    ):
        rows.append(
            f"| {label}: sequential overhead / floor's "
            f"({seq[name]['overhead_paired']} ms) | {ratios[f'sequential_overhead_{name}']} | {goal} |"
        )
        for conns, pair in result[f"{name}_throughput_paired"].items():
            rows.append(
                f"| {label}: throughput at {conns} / floor's (median of {len(pair['ratios'])} alternating "
                f"pairs: {', '.join(str(r) for r in pair['ratios'])}; {pair['errors']} errors) | {pair['ratio']} "
                f"| {'≥ 0.6' if goal != '—' else '—'} |"
            )
    rows.append(
        f"| cold import of function_app with telemetry on (s; off: "
        f"{result['cold_start']['imports']['function_app'] / 1000:.2f}) "
        f"| {result['cold_start']['function_app_telemetry_on_ms'] / 1000:.2f} | — |"
    )
    for conns, pair in result["group_throughput_paired"].items():
        rows.append(
            f"| group of two, throughput at {conns} / single endpoint's (median of {len(pair['ratios'])} "
            f"alternating pairs: {', '.join(str(r) for r in pair['ratios'])}; {pair['errors']} errors) "
            f"| {pair['ratio']} | ≥ 0.9 |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke check")
    parser.add_argument(
        "--update", action="store_true", help="rewrite the committed bench/results/ (else results/latest/)"
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench: needs wrk (apt-get install wrk)")
    seconds, rounds, pairs = (3, 4, 1) if args.quick else (8, 30, 5)
    shape_sampling = {"warmup": 10, "rounds": 4, "per_round": 10} if args.quick else {}

    servers: list[Server] = []
    tenant: LocalTenant | None = None
    try:
        emulator = start_emulator(cpu=0)
        servers.append(emulator)
        slow_emulator = start_emulator(cpu=0, stream_delay_s=0.5)
        servers.append(slow_emulator)
        shaped = start_shaped_upstream(cpu=0)
        servers.append(shaped)
        gateway = start_gateway(emulator.url, cpu=1, shaped_upstream=shaped.url)
        servers.append(gateway)
        floor = start_floor(emulator.url, cpu=1)
        # The floor on asyncio's default loop: the former floor, a labelled comparison only.
        floor_asyncio = start_floor(emulator.url, cpu=1, loop="asyncio")
        servers += [floor, floor_asyncio]
        shape_floors = {shape: start_floor(f"{shaped.url}/{shape}", cpu=1) for shape in STREAM_SHAPES}
        servers += shape_floors.values()
        slow_gateway = start_gateway(slow_emulator.url, cpu=1)
        servers.append(slow_gateway)
        tenant = LocalTenant()
        # Each on its own, then both: where the cost of callers comes from.
        callers_gateways = {
            "entra_only": start_gateway(emulator.url, cpu=1, callers={"auth": tenant.auth_config()}),
            "limits_memory_only": start_gateway(emulator.url, cpu=1, callers={"limits": UNREACHED_LIMITS}),
            "callers_memory": start_gateway(
                emulator.url, cpu=1, callers=callers_section(tenant, {"type": "memory"})
            ),
        }
        servers += callers_gateways.values()
        sink = start_otlp_sink(cpu=0)
        servers.append(sink)
        telemetry_gateway = start_gateway(emulator.url, cpu=1, extra_env=telemetry_env(sink.url))
        # The same with every trace kept (the SDK's own default), for what tracing each request costs.
        every_trace_gateway = start_gateway(
            emulator.url,
            cpu=1,
            extra_env={**telemetry_env(sink.url), "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
        )
        servers += [telemetry_gateway, every_trace_gateway]
        redis = start_redis(cpu=0)
        if redis is not None:
            servers.append(redis)
            store = {"type": "redis", "url": f"redis://127.0.0.1:{redis.port}/0"}
            callers_gateways["callers_redis"] = start_gateway(
                emulator.url, cpu=1, callers=callers_section(tenant, store)
            )
            servers.append(callers_gateways["callers_redis"])
        else:
            print("bench: no redis-server (apt-get install redis-server): the Redis store's run is skipped")
        pin_self(0)
        named = targets(emulator, floor, gateway)
        variants = variant_targets(gateway, callers_gateways, tenant.token)
        variants["floor_asyncio"] = (f"{floor_asyncio.url}/api/v1/chat/completions", BODY, {})
        variants["telemetry"] = (f"{telemetry_gateway.url}/api/v1/chat/completions", BODY, {})
        variants["telemetry_every_trace"] = (f"{every_trace_gateway.url}/api/v1/chat/completions", BODY, {})
        seq = asyncio.run(sequential({**named, **variants}, 30, rounds, 30))
        memory = {
            "floor": {"idle": round(floor.rss_mb(), 1)},
            "gateway": {"idle": round(gateway.rss_mb(), 1)},
        }
        throughput = {name: {} for name in named}
        server_of = {"direct": emulator, "floor": floor, "gateway": gateway}
        for conns in CONCURRENCY:
            for name, (url, body, headers) in named.items():
                throughput[name][str(conns)] = wrk(url, body, headers, conns, seconds, server_of[name])
        for name in ("floor", "gateway"):
            memory[name]["peak_load"] = max(
                level["server_rss_peak_mb"] for level in throughput[name].values()
            )
        paired = paired_throughput(named, server_of, seconds, pairs)
        # Other pairs at 32 connections: (base, other) -> the server each name runs on.
        more_servers = {
            "group": gateway,
            "telemetry": telemetry_gateway,
            "floor_asyncio": floor_asyncio,
            "telemetry_every_trace": every_trace_gateway,
        }
        group_paired, telemetry_paired, asyncio_floor_paired, every_trace_paired = (
            paired_throughput(
                {**named, **variants},
                {**server_of, **more_servers},
                seconds,
                pairs,
                base=base,
                other=other,
                concurrency=GROUP_CONCURRENCY,
            )
            for base, other in (
                ("gateway", "group"),
                ("floor", "telemetry"),
                ("floor_asyncio", "gateway"),
                ("floor", "telemetry_every_trace"),
            )
        )
        stream = asyncio.run(stream_figures(emulator, floor, gateway))
        stream["shapes"] = asyncio.run(
            streaming.shape_figures(shaped, shape_floors, gateway, **shape_sampling)
        )
        memory["gateway"]["open_streams_100"] = asyncio.run(open_streams(slow_gateway.url, 100, slow_gateway))
        memory["gateway"]["open_streams_1000"] = asyncio.run(
            open_streams(slow_gateway.url, 1000, slow_gateway)
        )
        cpu_profile = {
            name: profile.profile(server, f"{server.url}/api/v1/chat/completions", BODY, {}, seconds)
            for name, server in (("floor", floor), ("gateway", gateway))
        }
    finally:
        for server in servers:
            server.stop()
        if tenant is not None:
            tenant.stop()
    cold = {"imports": import_costs(), "first_answer_ms": None}
    cold["function_app_telemetry_on_ms"] = import_costs(
        telemetry_env("http://127.0.0.1:9"), ["function_app"]
    )["function_app"]
    emulator = start_emulator(cpu=0)
    try:
        cold["first_answer_ms"] = time_to_first_answer(emulator)
    finally:
        emulator.stop()
    vault = asyncio.run(vault_reads.main())

    result = {
        "machine": machine(),
        "sequential_ms": seq,
        "throughput": throughput,
        "throughput_paired": paired,
        "group_throughput_paired": group_paired,
        "telemetry_throughput_paired": telemetry_paired,
        "asyncio_floor_throughput_paired": asyncio_floor_paired,
        "profile_32": cpu_profile,
        "telemetry_every_trace_throughput_paired": every_trace_paired,
        "redis_store": "measured" if "callers_redis" in seq else "skipped: no redis-server",
        "streaming": stream,
        "memory_mb": memory,
        "cold_start": cold,
        "vault": {k: vault[k] for k in ("vault_reads", "token_requests", "vault_reads_per_1000_requests")},
    }
    result["ratios"] = {
        "sequential_overhead": round(seq["gateway"]["overhead_paired"] / seq["floor"]["overhead_paired"], 2),
        "sequential_overhead_vs_asyncio_floor": round(
            seq["gateway"]["overhead_paired"] / seq["floor_asyncio"]["overhead_paired"], 2
        ),
        "throughput_32": paired["32"]["ratio"],
        "throughput_256": paired["256"]["ratio"],
        "stream_ttfc_overhead": round(
            stream["gateway_ttfc_overhead_ms"] / stream["floor_ttfc_overhead_ms"], 2
        ),
        **{f"stream_ttfc_overhead_{shape}": row["ttfc_ratio"] for shape, row in stream["shapes"].items()},
        "peak_rss": round(memory["gateway"]["peak_load"] / memory["floor"]["peak_load"], 2),
        "rss_kb_per_open_stream": round(
            (memory["gateway"]["open_streams_1000"] - memory["gateway"]["open_streams_100"]) * 1024 / 900, 1
        ),
        **{
            f"sequential_overhead_{name}": round(
                seq[name]["overhead_paired"] / seq["floor"]["overhead_paired"], 2
            )
            for name in variants
        },
        "redis_admission_ms": (
            round(seq["callers_redis"]["overhead_paired"] - seq["callers_memory"]["overhead_paired"], 3)
            if "callers_redis" in seq
            else None
        ),
        "group_sequential_overhead_vs_single": round(
            seq["group"]["overhead_paired"] / seq["gateway"]["overhead_paired"], 2
        ),
        **{f"group_throughput_{c}_vs_single": row["ratio"] for c, row in group_paired.items()},
        **{f"telemetry_throughput_{c}": row["ratio"] for c, row in telemetry_paired.items()},
        **{f"telemetry_every_trace_throughput_{c}": row["ratio"] for c, row in every_trace_paired.items()},
    }
    folder = results_dir(args.update)
    (folder / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "benchmark.md").write_text(table(result))
    chart(throughput, folder / "latency.png")
    print(table(result))
    print(f"written to {folder.relative_to(ROOT)}/")


async def stream_figures(emulator: Server, floor: Server, gateway: Server) -> dict:
    question = streaming.QUESTION
    named = {
        "direct": (
            f"{emulator.url}/v1/chat/completions",
            {"messages": question, "stream": True},
            {"Authorization": f"Bearer {KEY}"},
        ),
        "floor": (
            f"{floor.url}/api/v1/chat/completions",
            {"model": "serverless", "messages": question, "stream": True},
            {},
        ),
        "gateway": (
            f"{gateway.url}/api/v1/chat/completions",
            {"model": "serverless", "messages": question, "stream": True},
            {},
        ),
        "score direct": (
            f"{emulator.url}/score",
            {"input_data": {"input_string": question, "parameters": {}}},
            {"Authorization": f"Bearer {KEY}"},
        ),
        "dedicated": (
            f"{gateway.url}/api/v1/chat/completions",
            {"model": "dedicated", "messages": question, "stream": True},
            {},
        ),
    }
    async with aiohttp.ClientSession() as session:
        ttfc, whole, events_of = await streaming.sample_streams(
            session, named, warmup=20, rounds=12, per_round=25
        )
    events = events_of["gateway"]
    figures = {"events_per_stream": events}
    for name in ("floor", "gateway"):
        first = paired_overhead(ttfc["direct"], ttfc[name])
        total = paired_overhead(whole["direct"], whole[name])
        figures[f"{name}_ttfc_overhead_ms"] = first
        figures[f"{name}_per_chunk_ms"] = round((total - first) / max(1, events - 1), 4)
    figures["dedicated_ttfc_overhead_ms"] = paired_overhead(whole["score direct"], ttfc["dedicated"])
    return figures


if __name__ == "__main__":
    main()
