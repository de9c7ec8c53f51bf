"""What choosing a group member costs per request, in-process (the budget: 5 µs).

    .venv/bin/python bench/member_choice.py [--update]

Times the pipeline's choice of the first candidate of a two-member and an eight-member group,
for each strategy, exactly as `Pipeline.open` takes it (`GroupDispatch.candidates()`, first
item), with every member healthy and idle. Best of 7 runs of 200,000 choices each. Writes
member_choice.{json,md} to bench/results/latest/ (ignored by git), or to bench/results/ with
--update.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.config import parse_config  # noqa: E402
from shared.groups import GroupDispatch, Latencies  # noqa: E402
from shared.pipeline import InFlight  # noqa: E402

BUDGET_US = 5.0
NUMBER, REPEAT = 200_000, 7


def dispatch(strategy: str, members: int) -> GroupDispatch:
    names = [f"m{i}" for i in range(members)]
    document = {
        "endpoints": [
            {
                "name": name,
                "endpoint_url": f"http://127.0.0.1:9/{name}/v1/chat/completions",
                "endpoint_api_type": "serverless",
                "auth": {"type": "env", "variable": "KEY"},
            }
            for name in names
        ],
        "groups": [
            {
                "name": "g",
                "strategy": strategy,
                "members": [{"endpoint": n, "weight": i + 1} for i, n in enumerate(names)],
            }
        ],
    }
    config = parse_config(json.dumps(document))
    latencies = Latencies()
    for i, name in enumerate(names):
        latencies.observe(name, 0.01 * (i + 1))
    return GroupDispatch(config.groups[0], config, InFlight().counts, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="write to bench/results/ (committed)")
    args = parser.parse_args()
    rows = []
    for members in (2, 8):
        for strategy in ("weighted", "least_busy", "lowest_latency"):
            group = dispatch(strategy, members)
            runs = timeit.repeat(lambda g=group: next(g.candidates()), number=NUMBER, repeat=REPEAT)
            rows.append({"strategy": strategy, "members": members, "us_per_choice": min(runs) / NUMBER * 1e6})
    out = ROOT / "bench" / "results" / ("" if args.update else "latest")
    out.mkdir(parents=True, exist_ok=True)
    result = {"python": platform.python_version(), "budget_us": BUDGET_US, "rows": rows}
    (out / "member_choice.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Choosing a group member",
        "",
        f"Python {result['python']}, best of {REPEAT} runs of {NUMBER:,} choices; budget {BUDGET_US:g} µs.",
        "",
        "| strategy | members | µs per choice |",
        "| --- | --- | --- |",
        *(f"| {r['strategy']} | {r['members']} | {r['us_per_choice']:.2f} |" for r in rows),
        "",
    ]
    (out / "member_choice.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if any(r["us_per_choice"] > BUDGET_US for r in rows):
        sys.exit("over budget")


if __name__ == "__main__":
    main()
