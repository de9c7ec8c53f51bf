"""``python -m emulator``: serve the emulator over HTTP until interrupted."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from .protocols import DEDICATED_SHAPES
from .server import Emulator

DEFAULT_PORT = 7072
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; returns the exit status (2 when the key is missing)."""
    args = _parser().parse_args(argv)
    # The key comes from the environment, never the command line, so it stays out of
    # shell history and process listings.
    key = os.environ.get(args.key_env, "")
    if not key:
        print(
            f"emulator: environment variable {args.key_env} is not set or empty;"
            " set it to the key clients must send",
            file=sys.stderr,
        )
        return EXIT_USAGE
    emulator = Emulator(key, dedicated_shape=args.dedicated_shape, stream_delay_s=args.stream_delay)
    where = f"http://{args.host}:{args.port}"

    def announce(_default_banner: str) -> None:
        # Called by run_app once the socket is listening.
        print(f"emulator listening on {where} (dedicated shape: {args.dedicated_shape})", flush=True)

    web.run_app(emulator.app, host=args.host, port=args.port, backlog=2048, access_log=None, print=announce)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m emulator", description="Azure ML online endpoint emulator."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--dedicated-shape",
        choices=DEDICATED_SHAPES,
        default="output",
        help="answer shape of dedicated /score requests (default: %(default)s)",
    )
    parser.add_argument(
        "--stream-delay",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="pause between streamed SSE events (default: %(default)s)",
    )
    parser.add_argument(
        "--key-env",
        default="EMULATOR_KEY",
        metavar="NAME",
        help="environment variable holding the endpoint key (default: %(default)s)",
    )
    return parser


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value
