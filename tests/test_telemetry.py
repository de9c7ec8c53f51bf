"""Telemetry: spans recorded through the SDK's in-memory exporter and metrics as the gateway
exports them, from a real gateway on 127.0.0.1 in front of the emulator; and "off" imports nothing of OpenTelemetry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.trace import SpanKind, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from emulator import Fault
from shared import otel, tracecontext
from shared.asgi import build_app
from shared.config import load_config
from shared.credentials import Credentials
from shared.http import GatewayApi
from shared.otel import (
    AZURE_ML_PROVIDER,
    GatewayHistogram,
    GatewayHistograms,
    HistogramsExporter,
    TelemetryObserver,
    provider_name,
)
from shared.service import Gateway

from .client import HELLO, post, stream
from .conftest import emulator_config
from .servers import UvicornServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_PARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


class Collected(MetricExporter):
    """What the last export carried: with cumulative temporality, everything recorded so far."""

    def __init__(self, preferred_temporality: dict[type, AggregationTemporality] | None = None) -> None:
        super().__init__(preferred_temporality=preferred_temporality)
        self.last: MetricsData | None = None

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.last = metrics_data
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


class Recorded:
    """Spans in memory, and metrics as the gateway exports them (the SDK's and its own
    histograms), exported when `points` asks."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.histograms = GatewayHistograms()
        self.exported = Collected()
        self.metrics = PeriodicExportingMetricReader(
            HistogramsExporter(self.exported, self.histograms), export_interval_millis=3_600_000
        )
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.meter_provider = MeterProvider(metric_readers=[self.metrics])

    def finished(self) -> list[Any]:
        return list(self.spans.get_finished_spans())

    def server(self) -> Any:
        (span,) = [s for s in self.finished() if s.kind is SpanKind.SERVER]
        return span

    def clients(self) -> list[Any]:
        return sorted((s for s in self.finished() if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time)

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        self.metrics.force_flush()
        data = self.exported.last
        found = []
        for resource_metrics in data.resource_metrics if data else []:
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend((dict(p.attributes), p) for p in metric.data.data_points)
        return found


@pytest.fixture
def telemetry(servers, canary_key) -> Iterator[Any]:
    """Start a gateway whose observer records into memory; returns (base URL, Recorded)."""
    tracecontext.enable()
    started = []
    made: list[Recorded] = []

    def start(config: dict[str, Any]) -> tuple[str, Recorded]:
        recorded = Recorded()
        made.append(recorded)
        env = {"GATEWAY_CONFIG": json.dumps(config), "EMULATOR_KEY": canary_key}
        loaded = load_config(env)
        observer = TelemetryObserver(
            loaded, recorded.tracer_provider, recorded.meter_provider, histograms=recorded.histograms
        )
        gateway = Gateway(loaded, credentials=Credentials(env, loaded.credentials), observer=observer)
        server = servers.run(UvicornServer(build_app(GatewayApi(gateway))).start())
        started.append(server)
        return server.url, recorded

    yield start
    for server in started:
        servers.run(server.stop())
    for recorded in made:
        recorded.meter_provider.shutdown()


def _config(url: str, retries: int = 0, **top: Any) -> dict[str, Any]:
    config = emulator_config(url, resilience={"backoff_s": 0.01, "max_backoff_s": 0.05}, **top)
    for endpoint in config["endpoints"]:
        endpoint["max_retries"] = retries
    return config


async def test_a_completion_has_a_server_span_a_client_span_and_token_metrics(emulator, telemetry, caplog):
    base, recorded = telemetry(_config(emulator[1]))
    body = {"model": "mistral-large", "messages": HELLO, "max_tokens": 50, "temperature": 0.2, "top_p": 0.9}
    reply = await post(base, body)
    assert reply.status == 200
    usage = reply.json()["usage"]
    server = recorded.server()
    assert server.name == "POST /v1/chat/completions"
    assert server.attributes["gen_ai.operation.name"] == "chat"
    assert server.attributes["gen_ai.request.model"] == "mistral-large"
    assert server.attributes["gen_ai.request.max_tokens"] == 50
    assert server.attributes["gen_ai.request.temperature"] == 0.2
    assert server.attributes["gen_ai.request.top_p"] == 0.9
    assert server.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert server.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["gateway.request_id"] == reply.headers["x-request-id"]
    assert server.attributes["gen_ai.response.id"] == reply.json()["id"]  # the id the caller got
    (client,) = recorded.clients()
    assert client.name == "chat mistral-large"
    assert client.parent.span_id == server.context.span_id
    assert client.attributes["gen_ai.provider.name"] == AZURE_ML_PROVIDER
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert client.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert "error.type" not in client.attributes
    tokens = {
        attrs["gen_ai.token.type"]: point.sum for attrs, point in recorded.points("gen_ai.client.token.usage")
    }
    assert tokens == {"input": usage["prompt_tokens"], "output": usage["completion_tokens"]}
    ((attrs, point),) = recorded.points("gen_ai.client.operation.duration")
    assert attrs["gateway.endpoint"] == "mistral-large" and point.count == 1
    assert list(point.explicit_bounds)[:3] == [0.01, 0.02, 0.04]
    assert "ended span" not in caplog.text  # every attribute set while its span was open
    # No message text by default, anywhere.
    for span in recorded.finished():
        assert "Hello there" not in json.dumps({k: str(v) for k, v in span.attributes.items()})
        assert "gen_ai.output.messages" not in span.attributes


async def test_content_is_recorded_only_when_asked(emulator, telemetry):
    base, recorded = telemetry(_config(emulator[1], telemetry={"capture_content": True}))
    assert (await post(base)).status == 200
    server = recorded.server()
    assert "Hello there" in server.attributes["gen_ai.input.messages"]
    (answer,) = json.loads(server.attributes["gen_ai.output.messages"])
    assert answer["role"] == "assistant" and answer["content"] and answer["finish_reason"] == "stop"


async def test_a_stream_records_time_to_first_chunk_and_usage(emulator, telemetry):
    base, recorded = telemetry(_config(emulator[1]))
    reply = await stream(
        base, {"model": "mistral-large", "messages": HELLO, "stream_options": {"include_usage": True}}
    )
    assert reply.status == 200
    server = recorded.server()
    assert server.attributes["gateway.stream"] is True
    ids = {json.loads(line[6:])["id"] for line in reply.lines if line.startswith("data: {")}
    assert ids == {server.attributes["gen_ai.response.id"]}
    assert server.attributes["gen_ai.response.time_to_first_chunk"] > 0
    assert server.attributes["gen_ai.usage.output_tokens"] > 0
    assert len(recorded.points("gen_ai.client.operation.time_to_first_chunk")) == 1


async def test_a_retry_then_success_has_two_client_spans(emulator, telemetry):
    base, recorded = telemetry(_config(emulator[1], retries=2))
    emulator[0].add_fault(Fault(status=503))
    assert (await post(base)).status == 200
    first, second = recorded.clients()
    assert first.attributes["error.type"] == "503" and first.attributes["http.response.status_code"] == 503
    assert "error.type" not in second.attributes and second.attributes["gateway.attempt"] == 1
    assert [p.value for _, p in recorded.points("gateway.upstream.retries")] == [1]
    tries = {attrs.get("error.type"): p.value for attrs, p in recorded.points("gateway.upstream.tries")}
    assert tries == {"503": 1, None: 1}
    assert [e.name for e in recorded.server().events] == ["gateway.retry"]


async def test_a_fallback_is_counted_and_spans_name_both_endpoints(emulator, telemetry):
    config = _config(emulator[1])
    config["endpoints"][1]["fallbacks"] = ["llama-chat"]
    base, recorded = telemetry(config)
    emulator[0].add_fault(Fault(status=500, path="/v1/chat/completions"))
    assert (await post(base, {"model": "mistral-large", "messages": HELLO})).status == 200
    failed, answered = recorded.clients()
    assert (failed.name, answered.name) == ("chat mistral-large", "chat llama-chat")
    ((attrs, point),) = recorded.points("gateway.fallbacks")
    assert (
        attrs == {"gateway.endpoint": "mistral-large", "gateway.fallback_to": "llama-chat"}
        and point.value == 1
    )
    assert recorded.server().attributes["gateway.endpoint"] == "llama-chat"


async def test_a_callers_limit_refusal_is_counted(emulator, telemetry):
    limits = {"requests_per_minute": 1}
    base, recorded = telemetry(_config(emulator[1], callers={"limits": limits}))
    assert (await post(base)).status == 200
    assert (await post(base)).status == 429
    rejections = recorded.points("gateway.limit.rejections")
    assert [(attrs, p.value) for attrs, p in rejections] == [({"gateway.limit": "requests_per_minute"}, 1)]


async def test_a_429_sets_error_type_on_both_spans(emulator, telemetry):
    base, recorded = telemetry(_config(emulator[1]))
    emulator[0].add_fault(Fault(status=429, retry_after="1"))
    assert (await post(base)).status == 429
    server = recorded.server()
    assert server.attributes["error.type"] == "429" or server.attributes["http.response.status_code"] == 429
    assert server.attributes["http.response.status_code"] == 429
    (client,) = recorded.clients()
    assert client.attributes["error.type"] == "429"


async def test_a_stream_broken_mid_way_ends_its_spans_with_an_error(emulator, telemetry):
    base, recorded = telemetry(_config(emulator[1]))
    emulator[0].add_fault(Fault(break_stream_after=2))
    await stream(base, {"model": "mistral-large", "messages": HELLO})
    server = recorded.server()
    assert "error.type" in server.attributes
    (client,) = recorded.clients()
    assert client.attributes["error.type"] == server.attributes["error.type"]


async def test_the_callers_traceparent_is_continued_and_sent_upstream(emulator, telemetry):
    base, recorded = telemetry(_config(emulator[1]))
    assert (await post(base, headers={"traceparent": CALLER_PARENT})).status == 200
    server = recorded.server()
    assert f"{server.context.trace_id:032x}" == CALLER_TRACE
    assert f"{server.parent.span_id:016x}" == "00f067aa0ba902b7"
    (client,) = recorded.clients()
    sent = emulator[0].requests[-1].headers["traceparent"]
    assert sent == f"00-{CALLER_TRACE}-{client.context.span_id:016x}-01"


async def test_a_malformed_traceparent_starts_a_new_trace(emulator, telemetry):
    base, recorded = telemetry(_config(emulator[1]))
    assert (await post(base, headers={"traceparent": "00-zz-" + "f" * 600 + "-01"})).status == 200
    server = recorded.server()
    assert server.parent is None and f"{server.context.trace_id:032x}" != CALLER_TRACE


def test_provider_names():
    assert provider_name("https://x.westeurope.inference.ml.azure.com/score") == "azure.ml"
    assert provider_name("https://r.openai.azure.com/openai/v1/chat/completions") == "azure.ai.openai"
    assert provider_name("https://r.services.ai.azure.com/models/chat/completions") == "azure.ai.inference"
    assert provider_name("https://m.eastus2.models.ai.azure.com/v1/chat/completions") == "azure.ai.inference"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _kept(sampler: Any, count: int, parent: Any = None) -> int:
    tracer = TracerProvider(sampler=sampler).get_tracer("test")
    return sum(tracer.start_span("request", context=parent).is_recording() for _ in range(count))


def test_the_default_sampler_keeps_five_new_traces_a_second():
    clock = Clock()
    sampler = otel.sampler("otlp", {})
    assert "RateLimitedSampler{5.0}" in sampler.get_description()
    limited = otel.RateLimitedSampler(5, clock)
    both = ParentBased(limited, remote_parent_sampled=limited, remote_parent_not_sampled=limited)
    assert _kept(both, 100) == 5  # a second's worth at once
    clock.now += 0.2
    assert _kept(both, 100) == 1  # then one every 0.2 s
    clock.now += 10
    assert _kept(both, 100) == 5  # no more than a second's worth after a quiet spell


def test_a_callers_sampled_flag_does_not_force_recording_but_a_kept_requests_tries_follow_it():
    clock = Clock()
    limited = otel.RateLimitedSampler(2, clock)
    sampler = ParentBased(limited, remote_parent_sampled=limited, remote_parent_not_sampled=limited)
    caller = TraceContextTextMapPropagator().extract({"traceparent": CALLER_PARENT})
    tracer = TracerProvider(sampler=sampler).get_tracer("test")
    requests = [tracer.start_span("request", context=caller) for _ in range(10)]
    kept = [r for r in requests if r.is_recording()]
    assert len(kept) == 2 and all(f"{r.get_span_context().trace_id:032x}" == CALLER_TRACE for r in requests)
    for request in requests:  # the budget is spent, but a kept request's tries are kept with it
        child = tracer.start_span("chat", context=set_span_in_context(request))
        assert child.is_recording() is request.is_recording()


def test_the_sampler_settings():
    assert otel.sampler("otlp", {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}) is None  # the SDK's
    assert otel.sampler("otlp", {"OTEL_TRACES_SAMPLER": "traceidratio"}) is None
    two = otel.sampler("otlp", {"OTEL_TRACES_SAMPLER": "microsoft.rate_limited", "OTEL_TRACES_SAMPLER_ARG": "2"})
    assert _kept(two, 50) == 2
    none = otel.sampler("otlp", {"OTEL_TRACES_SAMPLER": "microsoft.fixed_percentage", "OTEL_TRACES_SAMPLER_ARG": "0"})
    assert _kept(none, 50) == 0
    every = otel.sampler("otlp", {"OTEL_TRACES_SAMPLER": "microsoft.fixed_percentage"})
    assert _kept(every, 50) == 50
    bad = otel.sampler("otlp", {"OTEL_TRACES_SAMPLER": "microsoft.rate_limited", "OTEL_TRACES_SAMPLER_ARG": "-3"})
    assert "RateLimitedSampler{5.0}" in bad.get_description()
    # Application Insights: its exporter's samplers, which record the rate for its counts.
    azure = otel.sampler("azure_monitor", {})
    assert type(azure).__name__ == "RateLimitedSampler" and type(azure).__module__.startswith("azure.monitor")
    ratio = otel.sampler(
        "azure_monitor", {"OTEL_TRACES_SAMPLER": "microsoft.fixed_percentage", "OTEL_TRACES_SAMPLER_ARG": "0.5"}
    )
    assert type(ratio).__name__ == "ApplicationInsightsSampler"


OFF_PROBE = """
import sys
{import_line}
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "azure.monitor", "shared.otel")))
print(",".join(loaded) or "none")
"""
LOCAL_SERVER = "from shared.asgi import create_app; create_app()"
FUNCTIONS = "import function_app"
#: What telemetry brings in when on; fastapi (under the Functions HTTP extension) imports the
#: OpenTelemetry API by itself, whatever the gateway does, so only these are telemetry's own.
TELEMETRY_MODULES = ("opentelemetry.sdk", "opentelemetry.exporter", "azure.monitor", "shared.otel")


def _probe(import_line: str, env: dict[str, str]) -> list[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))}
    config = emulator_config("http://127.0.0.1:9")
    out = subprocess.run(
        [sys.executable, "-c", OFF_PROBE.format(import_line=import_line)],
        cwd=ROOT,
        env={**base, "GATEWAY_CONFIG": json.dumps(config), "EMULATOR_KEY": "k", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1].split(",")


def test_off_the_local_server_imports_no_opentelemetry_module():
    assert _probe(LOCAL_SERVER, {}) == ["none"]


def test_off_the_functions_app_imports_none_of_telemetrys_modules():
    loaded = _probe(FUNCTIONS, {})
    assert not [m for m in loaded if m.startswith(TELEMETRY_MODULES)]


@pytest.mark.parametrize("import_line", [LOCAL_SERVER, FUNCTIONS])
def test_on_the_probe_sees_the_sdk(import_line):
    # The same probe with OTLP on: it can tell (else the tests above prove nothing).
    loaded = _probe(
        import_line,
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_METRIC_EXPORT_INTERVAL": "600000"},
    )
    assert "opentelemetry.sdk.trace" in loaded and "shared.otel" in loaded


KIND_PROBE = """
{import_line}
from shared.otel import TelemetryObserver
observers = api.gateway._observer._observers  # the gateway wraps its observers in Observers
print(next(o for o in observers if isinstance(o, TelemetryObserver))._server_kind.name)
"""


@pytest.mark.parametrize(
    ("import_line", "kind"),
    [
        ("from shared.http import GatewayApi; api = GatewayApi.from_environ()", "SERVER"),
        ("from function_app import api", "INTERNAL"),
    ],
)
def test_under_functions_the_request_span_is_internal(import_line, kind):
    # The Functions host records each invocation as a request: the gateway must not count it again.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))}
    env = {
        **base,
        "GATEWAY_CONFIG": json.dumps(emulator_config("http://127.0.0.1:9")),
        "EMULATOR_KEY": "k",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
    }
    out = subprocess.run(
        [sys.executable, "-c", KIND_PROBE.format(import_line=import_line)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == kind


def test_the_gateways_histograms_count_each_value_in_its_bucket():
    histogram = GatewayHistogram("h", "s", "a histogram", (1, 4))
    for value in (0.5, 1, 3, 4, 5):
        histogram.record(value, {"endpoint": "x"})
    histogram.record(2, {"endpoint": "y"})
    x, y = histogram.collect(delta=False).data.data_points
    # Buckets (-inf, 1], (1, 4], (4, +inf): a value equal to a bound counts in the bucket it ends.
    assert (x.bucket_counts, x.count, x.sum, x.min, x.max) == ([2, 2, 1], 5, 13.5, 0.5, 5)
    assert (dict(y.attributes), y.bucket_counts, tuple(y.explicit_bounds)) == ({"endpoint": "y"}, [0, 1, 0], (1, 4))


@pytest.mark.parametrize("temporality", [AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE])
def test_the_histograms_are_exported_in_the_temporality_the_exporter_prefers(temporality):
    collected = Collected({HistogramInstrument: temporality})
    histograms = GatewayHistograms()
    reader = PeriodicExportingMetricReader(
        HistogramsExporter(collected, histograms), export_interval_millis=3_600_000
    )
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("gateway").create_counter("gateway.requests").add(1)

    def exported_counts() -> list[int]:
        provider.force_flush()
        assert collected.last is not None
        metrics = {m.name: m for r in collected.last.resource_metrics for s in r.scope_metrics for m in s.metrics}
        assert "gateway.requests" in metrics  # the SDK's own metrics still go
        duration = metrics.get("gen_ai.client.operation.duration")
        if duration is None:
            return []
        assert duration.data.aggregation_temporality is temporality
        return [point.count for point in duration.data.data_points]

    histograms.duration.record(0.5, {"gen_ai.operation.name": "chat"})
    histograms.duration.record(0.7, {"gen_ai.operation.name": "chat"})
    assert exported_counts() == [2]
    histograms.duration.record(0.1, {"gen_ai.operation.name": "chat"})
    # Delta: what came since the last export; cumulative: everything since the start.
    assert exported_counts() == ([1] if temporality is AggregationTemporality.DELTA else [3])
    assert exported_counts() == ([] if temporality is AggregationTemporality.DELTA else [3])
    provider.shutdown()


def test_an_export_without_a_resource_keeps_the_histograms_for_the_next_one():
    collected = Collected({HistogramInstrument: AggregationTemporality.DELTA})
    histograms = GatewayHistograms()
    exporter = HistogramsExporter(collected, histograms)
    histograms.duration.record(0.5, {"gen_ai.operation.name": "chat"})
    exporter.export(MetricsData(resource_metrics=[]))  # nothing of the SDK's to go with
    exporter.export(MetricsData([ResourceMetrics(Resource.create({}), [], "")]))
    assert collected.last is not None
    (scope,) = collected.last.resource_metrics[0].scope_metrics
    assert [(m.name, m.data.data_points[0].count) for m in scope.metrics] == [("gen_ai.client.operation.duration", 1)]
