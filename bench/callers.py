"""In-process costs of callers' auth and limits (docs/callers.md, "Costs"):

    .venv/bin/python -m bench.callers

An `entra` token check (a token seen before, and a new one with the key set cached), one `memory` admission, and one `redis`
admission round trip against a `redis-server` this script starts on 127.0.0.1 (skipped without
the binary). Median of many runs, in microseconds.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from collections.abc import Awaitable, Callable

from shared.callers import Caller, EntraAuth, EntraCallers, LimitsSettings, StoreSettings
from shared.limits import CallerLimits, MemoryStore, RedisStore
from tests.entra_issuer import Tenant
from tests.redis_server import RedisServer
from tests.servers import AiohttpServer


async def median_us(step: Callable[[int], Awaitable[object]], runs: int = 2000) -> float:
    for i in range(100):
        await step(i)
    times = []
    for i in range(runs):
        started = time.perf_counter()
        await step(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


async def main() -> None:
    tenant = Tenant()
    server = await AiohttpServer(tenant.app).start()
    tenant.url = server.url
    auth = EntraAuth(EntraCallers(**tenant.callers_config(key_refetch_s=60)["auth"]))
    headers = {"authorization": f"Bearer {tenant.token()}"}
    print(
        f"entra token check, a token seen before: {await median_us(lambda i: auth.authenticate(headers)):.1f} µs"
    )
    fresh = [{"authorization": f"Bearer {tenant.token(oid=f'caller-{i}')}"} for i in range(600)]
    first = await median_us(lambda i: auth.authenticate(fresh[i]), runs=500)
    print(f"entra token check, a new token (keys cached): {first:.0f} µs")
    await auth.aclose()
    await server.stop()

    settings = LimitsSettings(requests_per_minute=10**9, tokens_per_minute=10**9)
    memory = CallerLimits(settings, MemoryStore())
    print(f"memory admission: {await median_us(lambda i: memory.admit(Caller(f'c{i % 100}'), 100)):.1f} µs")

    if shutil.which("redis-server") is None:
        print("redis admission: skipped (no redis-server)")
        return
    redis = RedisServer().start()
    try:
        store_settings = StoreSettings(type="redis", url=redis.url, timeout_s=1)
        shared = CallerLimits(
            settings.model_copy(update={"store": store_settings}), RedisStore(store_settings)
        )
        print(
            f"redis admission (one round trip, same machine): "
            f"{await median_us(lambda i: shared.admit(Caller(f'c{i % 100}'), 100)):.0f} µs"
        )
        await shared.aclose()
    finally:
        redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
