"""The Responses API's gateway overhead against Chat Completions': whole answers and the first
streamed event.

    .venv/bin/python bench/responses.py [--quick] [--update]

The emulator (core 0) answers; the gateway (local server, one worker, core 1) stands in front of
it; this client (core 0) sends one request at a time over kept-alive connections, the targets
taken in interleaved rounds (the order rotating each round), warm-up excluded. The overhead of
each route is the paired median over rounds of (via the gateway − the emulator directly), for
the same question (a 25-word answer from the serverless endpoint; streamed, also the dedicated
endpoint's emulated stream). Wall-clock figures move with the machine's load, so the gateway
process's CPU time per request (from /proc) is measured too, each route in turn. Target:
Responses ≤ 1.2 × chat.
Writes bench/results/latest/responses.{json,md} (bench/results/ with --update).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    KEY,
    Server,
    machine,
    paired_overhead,
    pin_self,
    start_emulator,
    start_gateway,
    write_results,
)
from bench.streaming import timed_stream  # noqa: E402

TEXT = " ".join(f"word{i}" for i in range(23))
QUESTION = [{"role": "user", "content": TEXT}]


async def timed_whole(session: aiohttp.ClientSession, url: str, body: dict, headers: dict) -> float:
    started = time.perf_counter()
    async with session.post(url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        await response.read()
    return (time.perf_counter() - started) * 1000


def targets(emulator: str, gateway: str) -> dict[str, tuple[str, dict, dict, bool]]:
    """name: (url, body, headers, streamed)."""
    auth = {"Authorization": f"Bearer {KEY}"}
    chat, responses = f"{gateway}/api/v1/chat/completions", f"{gateway}/api/v1/responses"
    return {
        "whole: direct": (f"{emulator}/v1/chat/completions", {"messages": QUESTION}, auth, False),
        "whole: chat": (chat, {"model": "serverless", "messages": QUESTION}, {}, False),
        "whole: responses": (responses, {"model": "serverless", "input": TEXT}, {}, False),
        "stream: direct": (
            f"{emulator}/v1/chat/completions",
            {"messages": QUESTION, "stream": True, "stream_options": {"include_usage": True}},
            auth,
            True,
        ),
        "stream: chat": (
            chat,
            {
                "model": "serverless",
                "messages": QUESTION,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            {},
            True,
        ),
        "stream: responses": (responses, {"model": "serverless", "input": TEXT, "stream": True}, {}, True),
        "dedicated stream: direct /score": (
            f"{emulator}/score",
            {"input_data": {"input_string": QUESTION, "parameters": {}}},
            auth,
            False,
        ),
        "dedicated stream: chat": (
            chat,
            {"model": "dedicated", "messages": QUESTION, "stream": True},
            {},
            True,
        ),
        "dedicated stream: responses": (
            responses,
            {"model": "dedicated", "input": TEXT, "stream": True},
            {},
            True,
        ),
    }


async def measure(emulator: str, gateway: Server, *, quick: bool) -> dict:
    warmup, rounds, per_round = (5, 3, 5) if quick else (20, 8, 20)
    named = targets(emulator, gateway.url)
    whole: dict[str, list[list[float]]] = {name: [] for name in named}
    first: dict[str, list[list[float]]] = {name: [] for name in named}

    async def once(url: str, body: dict, headers: dict, streamed: bool) -> tuple[float, float]:
        if not streamed:
            elapsed = await timed_whole(session, url, body, headers)
            return elapsed, elapsed
        to_first, to_end, _ = await timed_stream(session, url, body, headers)
        return to_first, to_end

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as session:
        for target in named.values():
            for _ in range(warmup):
                await once(*target)
        for index in range(rounds):
            order = list(named.items())
            order = order[index % len(order) :] + order[: index % len(order)]
            for name, target in order:
                samples = [await once(*target) for _ in range(per_round)]
                first[name].append([s[0] for s in samples])
                whole[name].append([s[1] for s in samples])
        cpu: dict[str, list[float]] = {name: [] for name in named if "direct" not in name}
        for _ in range(rounds):
            for name in cpu:
                before = gateway.cpu_seconds()
                for _ in range(per_round * 10):  # /proc counts CPU time in 10 ms ticks
                    await once(*named[name])
                cpu[name].append((gateway.cpu_seconds() - before) * 1000 / (per_round * 10))

    def overhead(series: dict[str, list[list[float]]], direct: str, via: str) -> float:
        return paired_overhead(series[direct], series[via])

    figures = {
        "whole answer": (
            overhead(whole, "whole: direct", "whole: chat"),
            overhead(whole, "whole: direct", "whole: responses"),
        ),
        "first streamed event": (
            overhead(first, "stream: direct", "stream: chat"),
            overhead(first, "stream: direct", "stream: responses"),
        ),
        "whole stream": (
            overhead(whole, "stream: direct", "stream: chat"),
            overhead(whole, "stream: direct", "stream: responses"),
        ),
        "dedicated, first streamed event": (
            overhead(first, "dedicated stream: direct /score", "dedicated stream: chat"),
            overhead(first, "dedicated stream: direct /score", "dedicated stream: responses"),
        ),
    }
    cpu_ms = {name: round(statistics.median(values), 3) for name, values in cpu.items()}
    cpu_pairs = {
        "whole answer": ("whole: chat", "whole: responses"),
        "stream": ("stream: chat", "stream: responses"),
        "dedicated stream": ("dedicated stream: chat", "dedicated stream: responses"),
    }
    return {
        "machine": machine(),
        "method": {"warmup": warmup, "rounds": rounds, "per_round": per_round},
        "gateway_cpu_ms_per_request": {
            what: {"chat": cpu_ms[a], "responses": cpu_ms[b], "ratio": round(cpu_ms[b] / cpu_ms[a], 2)}
            for what, (a, b) in cpu_pairs.items()
        },
        "overhead_ms": {
            what: {
                "chat": chat,
                "responses": responses,
                "ratio": round(responses / chat, 2) if chat > 0 else None,
            }
            for what, (chat, responses) in figures.items()
        },
    }


def table(result: dict) -> str:
    lines = [
        "| gateway overhead (paired median, ms) | chat | responses | ratio (target ≤ 1.2) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for what, figures in result["overhead_ms"].items():
        lines.append(f"| {what} | {figures['chat']:.3f} | {figures['responses']:.3f} | {figures['ratio']} |")
    lines += [
        "",
        "| gateway CPU per request (median over rounds, ms) | chat | responses | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for what, figures in result["gateway_cpu_ms_per_request"].items():
        lines.append(f"| {what} | {figures['chat']:.3f} | {figures['responses']:.3f} | {figures['ratio']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    pin_self(0)
    emulator = start_emulator()
    try:
        gateway = start_gateway(emulator.url)
        try:
            result = asyncio.run(measure(emulator.url, gateway, quick=args.quick))
        finally:
            gateway.stop()
    finally:
        emulator.stop()
    text = table(result)
    print(text)
    path = write_results("responses", result, text, update=args.update)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
