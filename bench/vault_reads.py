"""Key Vault reads per 1,000 requests at concurrency 50, and what the secret cache costs.

    .venv/bin/python bench/vault_reads.py [--update]

Everything runs on 127.0.0.1 in one process: a managed-identity endpoint and an HTTPS Key Vault
(the test fakes, driven by the real azure-identity and azure-keyvault-secrets), the emulator,
and the gateway under uvicorn. Writes vault_reads.{json,md} to bench/results/latest/ (ignored by
git), or to bench/results/ with --update.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulator import Emulator  # noqa: E402
from shared.asgi import build_app  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.credentials import Credentials  # noqa: E402
from shared.http import GatewayApi  # noqa: E402
from shared.service import Gateway  # noqa: E402
from tests.azure_fakes import FakeIdentityEndpoint, FakeKeyVault  # noqa: E402
from tests.servers import AiohttpServer, UvicornServer  # noqa: E402

REQUESTS, CONCURRENCY, SEQUENTIAL_ROUNDS, ROUND_SIZE = 1000, 50, 10, 50
KEY = "bench-key"
BODY = {"messages": [{"role": "user", "content": "Hello there"}]}


async def main() -> dict:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = Path(tempfile.mkdtemp()) / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    identity = FakeIdentityEndpoint()
    identity_server = await AiohttpServer(identity.app).start()
    vault = FakeKeyVault(identity, secrets={"bench-key": KEY})
    vault_server = await AiohttpServer(vault.app, server_context).start()
    vault.port = vault_server.port
    upstream = await AiohttpServer(Emulator(KEY).app).start()

    env = {
        "IDENTITY_ENDPOINT": f"{identity_server.url}/msi/token",
        "IDENTITY_HEADER": identity.header_secret,
        "KEY_VAULT_URL": vault_server.url + "/",
        "BENCH_KEY": KEY,
    }
    os.environ.update(env)
    config = {
        "endpoints": [
            {
                "name": "vault",
                "endpoint_url": f"{upstream.url}/score",
                "auth": {"type": "key_vault", "secret_name": "bench-key"},
            },
            {
                "name": "env",
                "endpoint_url": f"{upstream.url}/score",
                "auth": {"type": "env", "variable": "BENCH_KEY"},
            },
        ]
    }
    env["GATEWAY_CONFIG"] = json.dumps(config)
    loaded = load_config(env)
    credentials = Credentials(
        env, loaded.credentials, secret_client_options={"connection_verify": str(ca_file)}
    )
    gateway = await UvicornServer(build_app(GatewayApi(Gateway(loaded, credentials=credentials)))).start()
    url = gateway.url + "/api/v1/chat/completions"

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:

        async def call(model: str) -> float:
            started = time.perf_counter()
            async with session.post(url, json={**BODY, "model": model}) as response:
                await response.read()
                assert response.status == 200, response.status
            return (time.perf_counter() - started) * 1000

        # 1,000 requests at concurrency 50, starting cold.
        queue = iter(range(REQUESTS))

        async def worker() -> None:
            for _ in queue:
                await call("vault")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        burst_s = time.perf_counter() - started
        reads, tokens = vault.reads, len(identity.token_requests)

        # Warm sequential latency, key from the cache vs key from the environment, interleaved.
        latencies: dict[str, list[float]] = {"vault": [], "env": []}
        for _ in range(SEQUENTIAL_ROUNDS):
            for model in ("vault", "env"):
                latencies[model] += [await call(model) for _ in range(ROUND_SIZE)]

    await gateway.stop()
    for server in (upstream, vault_server, identity_server):
        await server.stop()

    def p(values: list[float], q: int) -> float:
        return round(statistics.quantiles(values, n=100)[q - 1], 3)

    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "requests": REQUESTS,
        "concurrency": CONCURRENCY,
        "seconds": round(burst_s, 2),
        "vault_reads": reads,
        "token_requests": tokens,
        "vault_reads_per_1000_requests": round(reads * 1000 / REQUESTS, 2),
        "warm_latency_ms": {m: {"p50": p(v, 50), "p90": p(v, 90), "n": len(v)} for m, v in latencies.items()},
    }


def markdown(result: dict) -> str:
    warm = result["warm_latency_ms"]
    return (
        "\n".join(
            [
                "| measure | value |",
                "| --- | --- |",
                f"| requests, concurrency | {result['requests']}, {result['concurrency']} (cold start) |",
                f"| Key Vault reads | {result['vault_reads']} ({result['vault_reads_per_1000_requests']} per 1,000 requests) |",
                f"| identity token requests | {result['token_requests']} |",
                f"| warm latency p50 / p90, key from the cache (ms) | {warm['vault']['p50']} / {warm['vault']['p90']} |",
                f"| warm latency p50 / p90, key from the environment (ms) | {warm['env']['p50']} / {warm['env']['p90']} |",
                f"| machine | {result['machine']['cpus']} CPUs, Python {result['machine']['python']} |",
            ]
        )
        + "\n"
    )


if __name__ == "__main__":
    from bench.common import write_results

    parser = argparse.ArgumentParser()
    parser.add_argument("--update", action="store_true", help="rewrite the committed bench/results/")
    args = parser.parse_args()
    result = asyncio.run(main())
    folder = write_results("vault_reads", result, markdown(result), update=args.update)
    print(markdown(result))
    print(f"written to {folder.relative_to(ROOT)}/vault_reads.{{json,md}}")
