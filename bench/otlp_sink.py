"""A local OTLP/HTTP sink for the benchmark: accepts every export and keeps nothing.

    python -m bench.otlp_sink --port 4318

It answers `POST /v1/traces`, `/v1/metrics` and `/v1/logs` with an empty success, so the
gateway's exporters do their whole work (batching, encoding, sending) and nothing else counts.
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/{signal}", accept)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
