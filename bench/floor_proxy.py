"""The floor: the least a Python gateway can do, to measure ours against.

An aiohttp server with one pooled client session: read the body, parse the JSON, check it has
messages, serialize it again, forward it with the key, and return the answer (a stream is copied
chunk by chunk). No configuration, no formatters, no errors worth the name.

A fair floor: the gateway's event loop (uvloop, which uvicorn picks when it is installed, as it is
with requirements.txt), an llhttp-based parser on both sides (aiohttp's C parser; httptools in
uvicorn), and the gateway's upstream pool (one session, no pool-wide cap, DNS cached 300 s, no
cookie jar). `--loop asyncio` runs it on asyncio's default loop, for comparison only.

    EMULATOR_KEY=... python bench/floor_proxy.py --port 7073 --upstream http://127.0.0.1:7072
"""

from __future__ import annotations

import argparse
import json
import os

import aiohttp
from aiohttp import web


def build_app(upstream: str, key: str) -> web.Application:
    url = upstream.rstrip("/") + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    app = web.Application()

    async def session_context(app: web.Application):
        # The gateway's pool (shared/transport.py): no pool-wide cap, DNS cached, no cookie jar.
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300), cookie_jar=aiohttp.DummyCookieJar()
        )
        yield
        await app["session"].close()

    async def chat(request: web.Request) -> web.StreamResponse:
        data = json.loads(await request.read())
        if not isinstance(data.get("messages"), list):
            return web.json_response({"error": "messages"}, status=400)
        data.pop("model", None)
        async with app["session"].post(url, data=json.dumps(data), headers=headers) as upstream_response:
            if not data.get("stream"):
                return web.Response(
                    body=await upstream_response.read(),
                    status=upstream_response.status,
                    content_type=upstream_response.content_type,
                )
            response = web.StreamResponse(
                status=upstream_response.status, headers={"Content-Type": "text/event-stream"}
            )
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.cleanup_ctx.append(session_context)
    app.router.add_post("/api/v1/chat/completions", chat)
    app.router.add_get("/api/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=7073)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    loop = None
    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(
        build_app(args.upstream, os.environ["EMULATOR_KEY"]),
        loop=loop,
        host="127.0.0.1",
        port=args.port,
        backlog=2048,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
