"""Streaming: the time to first chunk the gateway adds, and what each chunk costs.

    .venv/bin/python bench/streaming.py [--quick] [--update]

The emulator and a shaped upstream (core 0) stream a 25-word answer; the gateway (local server,
one worker, core 1) and the floor proxies (core 1) stand in front of them; this client (core 0)
reads streams one at a time over kept-alive connections, in interleaved rounds, warm-up excluded.
Targets:
- serverless pass-through: the gateway relaying the emulator's SSE, against the emulator
  streaming directly;
- dedicated emulation: the gateway's stream made from a whole /score answer, against the
  emulator's /score answered directly;
- stream shapes (bench/shaped_upstream.py): the whole stream in one read, and a drip of one
  event per millisecond, each through the gateway and through the floor, against the upstream
  called directly.
Writes bench/results/latest/streaming.{json,md} (bench/results/ with --update).
bench/README.md explains the method and the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    KEY,
    ROOT,
    Server,
    machine,
    paired_overhead,
    pin_self,
    start_emulator,
    start_floor,
    start_gateway,
    start_shaped_upstream,
    summary,
    write_results,
)
from bench.shaped_upstream import STREAM_SHAPES, UPSTREAM_PATHS  # noqa: E402

#: Named targets: (url, body, headers).
Targets = dict[str, tuple[str, dict, dict]]

WARMUP, ROUNDS, PER_ROUND = 30, 10, 30
QUESTION = [{"role": "user", "content": " ".join(f"word{i}" for i in range(23))}]


async def timed_stream(
    session: aiohttp.ClientSession, url: str, body: dict, headers: dict
) -> tuple[float, float, int]:
    """(time to first chunk, whole stream, events), in ms."""
    started = time.perf_counter()
    first, events = None, 0
    async with session.post(url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        sse = response.content_type == "text/event-stream"
        async for piece in response.content.iter_any():
            if first is None and (b"data:" in piece or not sse):
                first = time.perf_counter()
            events += piece.count(b"data:")
    done = time.perf_counter()
    return (first - started) * 1000, (done - started) * 1000, events


async def measure(emulator_url: str, gateway_url: str, *, quick: bool = False) -> dict:
    warmup, rounds, per_round = (10, 4, 10) if quick else (WARMUP, ROUNDS, PER_ROUND)
    auth = {"Authorization": f"Bearer {KEY}"}
    targets = {
        "serverless direct": (
            f"{emulator_url}/v1/chat/completions",
            {"messages": QUESTION, "stream": True},
            auth,
        ),
        "serverless via gateway": (
            f"{gateway_url}/api/v1/chat/completions",
            {"model": "serverless", "messages": QUESTION, "stream": True},
            {},
        ),
        "dedicated direct (/score, whole answer)": (
            f"{emulator_url}/score",
            {"input_data": {"input_string": QUESTION, "parameters": {}}},
            auth,
        ),
        "dedicated via gateway (emulated stream)": (
            f"{gateway_url}/api/v1/chat/completions",
            {"model": "dedicated", "messages": QUESTION, "stream": True},
            {},
        ),
    }
    ttfc = {name: [] for name in targets}
    whole = {name: [] for name in targets}
    events = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as session:
        for url, body, headers in targets.values():
            for _ in range(warmup):
                await timed_stream(session, url, body, headers)
        for round_index in range(rounds):
            order = list(targets.items())
            order = order[round_index % len(order) :] + order[: round_index % len(order)]
            for name, (url, body, headers) in order:
                samples = [await timed_stream(session, url, body, headers) for _ in range(per_round)]
                ttfc[name].append([s[0] for s in samples])
                whole[name].append([s[1] for s in samples])
                events[name] = samples[-1][2]

    def flat(rounds: list[list[float]]) -> list[float]:
        return [value for batch in rounds for value in batch]

    serverless_events = events["serverless via gateway"]
    whole_overhead = paired_overhead(whole["serverless direct"], whole["serverless via gateway"])
    first_overhead = paired_overhead(ttfc["serverless direct"], ttfc["serverless via gateway"])
    return {
        "machine": machine(),
        "method": {
            "warmup": warmup,
            "rounds": rounds,
            "per_round": per_round,
            "events_per_stream": serverless_events,
        },
        "ttfc_ms": {name: summary(flat(rounds)) for name, rounds in ttfc.items()},
        "whole_stream_ms": {name: summary(flat(rounds)) for name, rounds in whole.items()},
        "serverless_ttfc_overhead_ms": first_overhead,
        "serverless_whole_stream_overhead_ms": whole_overhead,
        "serverless_per_chunk_overhead_ms": round(
            (whole_overhead - first_overhead) / max(1, serverless_events - 1), 4
        ),
        "dedicated_ttfc_overhead_ms": paired_overhead(
            whole["dedicated direct (/score, whole answer)"], ttfc["dedicated via gateway (emulated stream)"]
        ),
    }


async def sample_streams(
    session: aiohttp.ClientSession, named: Targets, *, warmup: int, rounds: int, per_round: int
) -> tuple[dict[str, list[list[float]]], dict[str, list[list[float]]], dict[str, int]]:
    """Time to first chunk and whole stream of each target, in rounds of `per_round` requests
    per target, request by request in turn (the order rotates each round), so that a slow spell
    of the machine hits every target alike. Also the events of the last stream of the last target."""
    ttfc: dict[str, list[list[float]]] = {name: [] for name in named}
    whole: dict[str, list[list[float]]] = {name: [] for name in named}
    events: dict[str, int] = {}
    for url, body, headers in named.values():
        for _ in range(warmup):
            await timed_stream(session, url, body, headers)
    order = list(named.items())
    for round_index in range(rounds):
        turn = order[round_index % len(order) :] + order[: round_index % len(order)]
        batch: dict[str, list[tuple[float, float, int]]] = {name: [] for name in named}
        for _ in range(per_round):
            for name, (url, body, headers) in turn:
                batch[name].append(await timed_stream(session, url, body, headers))
        for name, samples in batch.items():
            ttfc[name].append([s[0] for s in samples])
            whole[name].append([s[1] for s in samples])
            events[name] = samples[-1][2]
    return ttfc, whole, events


def shape_targets(upstream: Server, floors: dict[str, Server], gateway: Server, shape: str) -> Targets:
    body = {"messages": QUESTION, "stream": True}
    return {
        "direct": (f"{upstream.url}/{shape}/v1/chat/completions", body, {"Authorization": f"Bearer {KEY}"}),
        "floor": (f"{floors[shape].url}/api/v1/chat/completions", {"model": shape, **body}, {}),
        "gateway": (f"{gateway.url}/api/v1/chat/completions", {"model": shape, **body}, {}),
    }


async def shape_figures(
    upstream: Server,
    floors: dict[str, Server],
    gateway: Server,
    *,
    warmup: int = 20,
    rounds: int = 12,
    per_round: int = 25,
) -> dict:
    """For each stream shape: what the floor and the gateway add to the first chunk and to the
    whole stream (paired medians over rounds, ms), and the gateway's first-chunk overhead as a
    ratio of the floor's."""
    figures: dict = {}
    async with aiohttp.ClientSession() as session:
        for shape in STREAM_SHAPES:
            named = shape_targets(upstream, floors, gateway, shape)
            ttfc, whole, events = await sample_streams(
                session, named, warmup=warmup, rounds=rounds, per_round=per_round
            )
            row: dict = {
                "events_per_stream": events["gateway"],
                "samples_per_target": rounds * per_round,
                "direct_ttfc_p50_ms": summary([v for batch in ttfc["direct"] for v in batch])["p50"],
            }
            for name in ("floor", "gateway"):
                row[f"{name}_ttfc_overhead_ms"] = paired_overhead(ttfc["direct"], ttfc[name])
                row[f"{name}_whole_stream_overhead_ms"] = paired_overhead(whole["direct"], whole[name])
            row["ttfc_ratio"] = round(row["gateway_ttfc_overhead_ms"] / row["floor_ttfc_overhead_ms"], 2)
            figures[shape] = row
    return figures


async def connection_reuse(
    upstream: Server, floors: dict[str, Server], gateway: Server, streams: int = 50
) -> dict:
    """For each path of the shaped upstream, the connections the floor and the gateway open to
    it over `streams` streams read one after the other (1 or 0 when they reuse one; one per
    stream when they let go of it before the end of the body). Locally a new connection costs a
    TCP handshake; to a real endpoint also a TLS one."""

    def accepted() -> int:
        with urllib.request.urlopen(f"{upstream.url}/connections", timeout=5) as response:
            return int(response.read())

    figures: dict = {}
    async with aiohttp.ClientSession() as session:
        for path in UPSTREAM_PATHS:
            named = shape_targets(upstream, floors, gateway, path)
            row = {}
            for name in ("floor", "gateway"):
                before = accepted()
                for _ in range(streams):
                    await timed_stream(session, *named[name])
                row[name] = accepted() - before - 1  # the count's own request
            figures[path] = row
    return {"streams": streams, "connections_opened": figures}


def shape_rows(shapes: dict) -> list[str]:
    """The shapes' figures as a Markdown table."""
    rows = [
        "| stream shape | direct first chunk p50 (ms) | first chunk added: floor / gateway (ms) "
        "| whole stream added: floor / gateway (ms) | first-chunk ratio gateway / floor |",
        "| --- | --- | --- | --- | --- |",
    ]
    for shape, row in shapes.items():
        rows.append(
            f"| {shape} ({row['events_per_stream']} events) | {row['direct_ttfc_p50_ms']} "
            f"| {row['floor_ttfc_overhead_ms']} / {row['gateway_ttfc_overhead_ms']} "
            f"| {row['floor_whole_stream_overhead_ms']} / {row['gateway_whole_stream_overhead_ms']} "
            f"| {row['ttfc_ratio']} |"
        )
    return rows


def reuse_rows(reuse: dict) -> list[str]:
    rows = [
        f"| upstream connections opened over {reuse['streams']} streams | floor | gateway |",
        "| --- | --- | --- |",
    ]
    rows += [
        f"| {path} | {row['floor']} | {row['gateway']} |" for path, row in reuse["connections_opened"].items()
    ]
    return rows


def table(result: dict) -> str:
    rows = ["| target | TTFC p50 | TTFC p99 | whole stream p50 |", "| --- | --- | --- | --- |"]
    for name, ttfc in result["ttfc_ms"].items():
        rows.append(f"| {name} | {ttfc['p50']} | {ttfc['p99']} | {result['whole_stream_ms'][name]['p50']} |")
    rows += [
        "",
        f"- serverless: first chunk +{result['serverless_ttfc_overhead_ms']} ms, whole stream "
        f"+{result['serverless_whole_stream_overhead_ms']} ms for {result['method']['events_per_stream']} events, "
        f"**{result['serverless_per_chunk_overhead_ms']} ms per chunk** (paired medians over rounds)",
        f"- dedicated: the gateway's first chunk comes {result['dedicated_ttfc_overhead_ms']} ms after a direct "
        "/score call would have answered",
        f"- machine: {result['machine']['cpus']} × {result['machine']['cpu_model']}, Python {result['machine']['python']}",
        "",
        *shape_rows(result["shapes"]),
        "",
        f"Stream shapes: {result['shapes_method']['rounds']} rounds of {result['shapes_method']['per_round']} "
        "streams per target, request by request in turn; overheads are paired medians over rounds.",
        "",
        *reuse_rows(result["upstream_connections"]),
    ]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke check")
    parser.add_argument("--update", action="store_true", help="rewrite the committed bench/results/")
    args = parser.parse_args()
    shapes_method = {"warmup": 10, "rounds": 4, "per_round": 10} if args.quick else {}
    emulator = start_emulator(cpu=0)
    upstream = start_shaped_upstream(cpu=0)
    servers = [emulator, upstream]
    try:
        gateway = start_gateway(emulator.url, cpu=1, shaped_upstream=upstream.url)
        servers.append(gateway)
        floors = {path: start_floor(f"{upstream.url}/{path}", cpu=1) for path in UPSTREAM_PATHS}
        servers += floors.values()
        pin_self(0)
        result = asyncio.run(measure(emulator.url, gateway.url, quick=args.quick))
        result["shapes"] = asyncio.run(shape_figures(upstream, floors, gateway, **shapes_method))
        result["shapes_method"] = {"warmup": 20, "rounds": 12, "per_round": 25, **shapes_method}
        result["upstream_connections"] = asyncio.run(connection_reuse(upstream, floors, gateway))
    finally:
        for server in servers:
            server.stop()
    folder = write_results("streaming", result, table(result), update=args.update)
    print(table(result))
    print(f"written to {folder.relative_to(ROOT)}/streaming.{{json,md}}")


if __name__ == "__main__":
    main()
