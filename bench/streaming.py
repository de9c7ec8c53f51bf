"""Streaming: the time to first chunk the gateway adds, and what each chunk costs.

    .venv/bin/python bench/streaming.py

The emulator (core 0) streams a 25-word answer; the gateway (local server, one worker, core 1)
stands in front of it; this client (core 0) reads streams one at a time over a kept-alive
connection, in interleaved rounds, warm-up excluded. Targets:
- serverless pass-through: the gateway relaying the emulator's SSE, against the emulator
  streaming directly;
- dedicated emulation: the gateway's stream made from a whole /score answer, against the
  emulator's /score answered directly.
Writes bench/results/streaming.{json,md}.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    KEY,
    machine,
    paired_overhead,
    pin_self,
    start_emulator,
    start_gateway,
    summary,
    write_results,
)

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


async def measure(emulator_url: str, gateway_url: str) -> dict:
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
            for _ in range(WARMUP):
                await timed_stream(session, url, body, headers)
        for round_index in range(ROUNDS):
            order = list(targets.items())
            order = order[round_index % len(order) :] + order[: round_index % len(order)]
            for name, (url, body, headers) in order:
                samples = [await timed_stream(session, url, body, headers) for _ in range(PER_ROUND)]
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
            "warmup": WARMUP,
            "rounds": ROUNDS,
            "per_round": PER_ROUND,
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
    ]
    return "\n".join(rows) + "\n"


def main() -> None:
    emulator = start_emulator(cpu=0)
    gateway = start_gateway(emulator.url, cpu=1)
    try:
        pin_self(0)
        result = asyncio.run(measure(emulator.url, gateway.url))
    finally:
        gateway.stop()
        emulator.stop()
    write_results("streaming", result, table(result))
    print(table(result))


if __name__ == "__main__":
    main()
