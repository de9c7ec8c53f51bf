"""Telemetry exported for real by a gateway subprocess: to a local OTLP/HTTP collector (protobuf
decoded with opentelemetry-proto), and to a local Application Insights ingestion endpoint over
HTTPS with a Microsoft Entra token from the local managed-identity endpoint."""

from __future__ import annotations

import gzip
import json
import time
import urllib.request
import zlib
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from emulator import Fault

from .azure_fakes import FakeIdentityEndpoint
from .conftest import emulator_config
from .servers import AiohttpServer, local_tls
from .test_local_server import free_port, start_uvicorn, wait_until_serving

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_PARENT = f"00-{CALLER_TRACE}-b7ad6b7169203331-01"
#: Short export intervals, so a test waits a fraction of a second for its telemetry.
FAST_EXPORT = {
    "OTEL_BSP_SCHEDULE_DELAY": "50",
    "OTEL_BLRP_SCHEDULE_DELAY": "50",
    "OTEL_METRIC_EXPORT_INTERVAL": "200",
    # Every trace kept (the default keeps about 5 a second, and maybe not a process's very first).
    "OTEL_TRACES_SAMPLER": "parentbased_always_on",
}


def _body(request_body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(request_body)
    if encoding == "deflate":
        return zlib.decompress(request_body)
    return request_body


class Collector:
    """An OTLP/HTTP collector: what each signal's exports held, decoded."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.metrics: list[str] = []
        self.logs: list[Any] = []
        self.raw: list[bytes] = []

    @property
    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        app.router.add_post("/v1/logs", self._logs)
        return app

    async def _read(self, request: web.Request) -> bytes:
        body = _body(await request.read(), request.headers.get("Content-Encoding"))
        self.raw.append(body)
        return body

    async def _traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await self._read(request))
        self.spans.extend(s for r in export.resource_spans for scope in r.scope_spans for s in scope.spans)
        return web.Response(content_type="application/x-protobuf")

    async def _metrics(self, request: web.Request) -> web.Response:
        export = ExportMetricsServiceRequest.FromString(await self._read(request))
        self.metrics.extend(
            m.name for r in export.resource_metrics for scope in r.scope_metrics for m in scope.metrics
        )
        return web.Response(content_type="application/x-protobuf")

    async def _logs(self, request: web.Request) -> web.Response:
        export = ExportLogsServiceRequest.FromString(await self._read(request))
        self.logs.extend(
            rec for r in export.resource_logs for scope in r.scope_logs for rec in scope.log_records
        )
        return web.Response(content_type="application/x-protobuf")


def _attributes(span: Any) -> dict[str, Any]:
    values = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        values[kv.key] = getattr(kv.value, kind) if kind else None
    return values


def _chat(port: int, headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/chat/completions",
        data=json.dumps(
            {"model": "mistral-large", "messages": [{"role": "user", "content": "secret plan"}]}
        ).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _wait_for(condition: Any, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "telemetry did not arrive"
        time.sleep(0.05)


def test_otlp_export_from_a_gateway_process(servers, emulator, canary_key):
    collector = Collector()
    sink = servers.run(AiohttpServer(collector.app).start())
    config = emulator_config(emulator[1], resilience={"backoff_s": 0.01, "max_backoff_s": 0.02})
    config["endpoints"][1]["max_retries"] = 1
    emulator[0].add_fault(Fault(status=503))
    port = free_port()
    env = {
        "GATEWAY_CONFIG": json.dumps(config),
        "EMULATOR_KEY": canary_key,
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
        # Nothing is exported on a schedule during the test: all of it comes with the flush at
        # shutdown (uvicorn's lifespan), which this checks too.
        **{name: "60000" for name in FAST_EXPORT},
    }
    process = start_uvicorn(env, port)
    try:
        wait_until_serving(process, port)
        answer = _chat(port, {"traceparent": CALLER_PARENT})
        assert collector.spans == [] and collector.metrics == []
    finally:
        process.terminate()
        process.communicate(timeout=20)
        servers.run(sink.stop())
    assert any(r.trace_id.hex() == CALLER_TRACE for r in collector.logs)
    server = next(s for s in collector.spans if s.name == "POST /v1/chat/completions")
    tries = [s for s in collector.spans if s.name == "chat mistral-large"]
    assert server.trace_id.hex() == CALLER_TRACE and server.parent_span_id.hex() == "b7ad6b7169203331"
    assert len(tries) == 2 and all(t.parent_span_id == server.span_id for t in tries)
    attributes = _attributes(server)
    assert attributes["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    assert {_attributes(t).get("error.type") for t in tries} == {"503", None}
    # The upstream calls carried the tries' own span ids.
    sent = [r.headers["traceparent"] for r in emulator[0].requests]
    assert sent == [
        f"00-{CALLER_TRACE}-{t.span_id.hex()}-01" for t in sorted(tries, key=lambda t: t.start_time_unix_nano)
    ]
    assert {"gen_ai.client.operation.duration", "gateway.upstream.tries", "gateway.upstream.retries"} <= set(
        collector.metrics
    )
    everything = b"".join(collector.raw)
    assert b"secret plan" not in everything and canary_key.encode() not in everything


class Ingestion:
    """Application Insights' ingestion endpoint (`/v2.1/track`): the envelopes and the
    Authorization headers it was sent."""

    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.raw: list[bytes] = []

    @property
    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        # Connection strings end their IngestionEndpoint with "/", and the exporter adds "/v2.1/track".
        app.router.add_post("/v2.1/track", self._track)
        app.router.add_post("//v2.1/track", self._track)
        return app

    async def _track(self, request: web.Request) -> web.Response:
        body = _body(await request.read(), request.headers.get("Content-Encoding"))
        self.raw.append(body)
        self.authorizations.append(request.headers.get("Authorization"))
        text = body.decode()
        items = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line]
        )
        self.envelopes.extend(items)
        return web.json_response({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_application_insights_export_with_the_apps_identity(servers, emulator, canary_key, tmp_path):
    server_context, ca_file = local_tls(tmp_path)
    identity = FakeIdentityEndpoint()
    identity_server = servers.run(AiohttpServer(identity.app).start())
    ingestion = Ingestion()
    ingestion_server = servers.run(AiohttpServer(ingestion.app, server_context).start())
    port = free_port()
    env = {
        "GATEWAY_CONFIG": json.dumps(emulator_config(emulator[1])),
        "EMULATOR_KEY": canary_key,
        "APPLICATIONINSIGHTS_CONNECTION_STRING": (
            f"InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint={ingestion_server.url}/"
        ),
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Authorization=AAD",
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        "IDENTITY_ENDPOINT": f"{identity_server.url}/msi/token",
        "IDENTITY_HEADER": identity.header_secret,
        "REQUESTS_CA_BUNDLE": str(ca_file),
        "TMPDIR": str(tmp_path),
        **FAST_EXPORT,
    }
    process = start_uvicorn(env, port)
    try:
        wait_until_serving(process, port)
        _chat(port, {"traceparent": CALLER_PARENT})

        def arrived() -> bool:
            names = {e.get("data", {}).get("baseData", {}).get("name") for e in ingestion.envelopes}
            return "chat mistral-large" in names and any(
                m.get("name") == "gen_ai.client.token.usage"
                for e in ingestion.envelopes
                for m in e.get("data", {}).get("baseData", {}).get("metrics", [])
            )

        _wait_for(arrived, 20)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
        servers.run(ingestion_server.stop())
        servers.run(identity_server.stop())
    tokens = {f"Bearer {identity.token_for(r)}" for r in identity.token_requests}
    assert identity.token_requests and all(a in tokens for a in ingestion.authorizations)
    client = next(e for e in ingestion.envelopes if e["data"]["baseData"].get("name") == "chat mistral-large")
    properties = client["data"]["baseData"]["properties"]
    assert (
        properties["gen_ai.provider.name"] == "azure.ml" and properties["gateway.endpoint"] == "mistral-large"
    )
    assert client["tags"]["ai.operation.id"] == CALLER_TRACE
    everything = b"".join(ingestion.raw)
    assert canary_key.encode() not in everything and b"secret plan" not in everything
    assert all(t.encode() not in everything for t in tokens)
    assert canary_key not in output
