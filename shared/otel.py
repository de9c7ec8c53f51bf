"""Telemetry on: OpenTelemetry traces, metrics and logs, following the GenAI semantic conventions.

Imported only when `shared.telemetry` finds a destination configured. `install` sets up one tracer,
meter and logger provider per process (flushed at exit) with the Application Insights exporter
(Microsoft Entra authentication when `APPLICATIONINSIGHTS_AUTHENTICATION_STRING` says
`Authorization=AAD`) or the OTLP/HTTP one, and returns a `TelemetryObserver`.

What is recorded (docs/telemetry.md): a span per request (`POST /v1/chat/completions`), a client
span per upstream try (`chat <model>`), `gen_ai.client.token.usage` and
`gen_ai.client.operation.duration` per answered call, and the gateway's own counters. Caller ids
go on spans only, never on metric attributes; message text only with `telemetry.capture_content`.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import tracecontext
from .codec import dumps
from .config import EndpointConfig, GatewayConfig
from .errors import GatewayError
from .logs import get_logger
from .observe import Exchange, Observer

log = get_logger("gateway.telemetry")

#: The OpenTelemetry semantic conventions release followed (GenAI spans and metrics).
SEMCONV_VERSION = "1.41.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
#: The instrumentation scope of the gateway's spans and metrics.
SCOPE_NAME = "gateway"
DEFAULT_SERVICE_NAME = "azureml-chat-gateway"
#: `gen_ai.provider.name` of Azure ML online endpoints (and of any host that is not one of
#: Azure's model services): not a well-known value of the conventions, which name none for Azure ML.
AZURE_ML_PROVIDER = "azure.ml"

#: Bucket boundaries the conventions advise for `gen_ai.client.token.usage` ({token}).
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
#: ... and for `gen_ai.client.operation.duration` and time to first chunk (s).
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

#: Where a request's telemetry is kept in `Exchange.state`.
STATE_KEY = "telemetry"
#: The most of the messages' JSON recorded with `capture_content` (attribute values have limits).
MAX_CONTENT_CHARS = 32_768
#: Token counts above this are an endpoint's nonsense, not recorded.
MAX_TOKENS = 1 << 40
#: New traces kept per second and instance when `OTEL_TRACES_SAMPLER` is not set: the default of
#: Microsoft's OpenTelemetry distributions. Metrics count every request whatever is sampled.
DEFAULT_TRACES_PER_SECOND = 5.0

_ROUTES = {"chat": "/v1/chat/completions", "responses": "/v1/responses"}
_PARAMETERS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("max_output_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
)


def provider_name(url: str) -> str:
    """`gen_ai.provider.name` for an endpoint URL: the conventions' names for Azure OpenAI and
    Azure AI model inference, `azure.ml` for everything else (Azure ML online endpoints)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host.endswith(".openai.azure.com") or (
        host.endswith(".services.ai.azure.com") and "/openai/" in parts.path
    ):
        return "azure.ai.openai"
    if host.endswith((".services.ai.azure.com", ".models.ai.azure.com")):
        return "azure.ai.inference"
    return AZURE_ML_PROVIDER


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """What spans and metrics say of one configured endpoint (all from the configuration: a
    bounded set of values, fit for metric attributes)."""

    model: str
    attributes: Mapping[str, Any]
    #: ... with `gen_ai.token.type`, made once: metrics hash their attributes on every record.
    input_attributes: Mapping[str, Any]
    output_attributes: Mapping[str, Any]

    @classmethod
    def of(cls, endpoint: EndpointConfig) -> _Endpoint:
        parts = urlsplit(endpoint.endpoint_url)
        model = endpoint.upstream_model or endpoint.name
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider_name(endpoint.endpoint_url),
            "gen_ai.request.model": model,
            "gen_ai.response.model": model,
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80),
            "gateway.endpoint": endpoint.name,
        }
        return cls(
            model,
            attributes,
            {**attributes, "gen_ai.token.type": "input"},
            {**attributes, "gen_ai.token.type": "output"},
        )


@dataclass(slots=True)
class _RequestTelemetry:
    span: Span
    context: otel_context.Context
    trying: Span | None = None
    trying_endpoint: str | None = None
    try_started: float = 0.0
    #: The try whose answer is being read: its span ends with the request.
    answered: Span | None = None
    answered_endpoint: str | None = None
    answered_started: float = 0.0
    events: list[str] = field(default_factory=list)


class _Tally:
    """A monotonic counter kept by the gateway (a dict of counts by attribute values) and read by
    the SDK through an observable counter at each collection."""

    def __init__(self, meter: Meter, name: str, unit: str, description: str, names: tuple[str, ...]) -> None:
        self._names = names
        self._counts: dict[tuple[Any, ...], int] = {}
        meter.create_observable_counter(name, [self._observe], unit=unit, description=description)

    def add(self, *values: Any) -> None:
        """One more event with these attribute values (in the order of `names`; None: absent)."""
        self._counts[values] = self._counts.get(values, 0) + 1

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        # list(): one step under the GIL, while the event loop's thread may add a key.
        return [
            Observation(count, {n: v for n, v in zip(self._names, values, strict=True) if v is not None})
            for values, count in list(self._counts.items())
        ]


class _Point:
    """One attribute set's values of a histogram: count, sum, min, max and counts per bucket."""

    __slots__ = ("attributes", "count", "sum", "min", "max", "buckets")

    def __init__(self, attributes: dict[str, Any], buckets: int) -> None:
        self.attributes = attributes
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.buckets = [0] * buckets


class GatewayHistogram:
    """A histogram kept by the gateway: counts per bucket per attribute set, exported with the
    SDK's metrics at each collection (`HistogramsExporter`).

    The SDK's own histogram copies, checks and hashes the attributes of every value it records
    (about 6 µs a value, three values a request: the largest part of telemetry's cost); here a
    value costs a tuple of the attributes, a bisect and a few additions."""

    def __init__(self, name: str, unit: str, description: str, boundaries: Sequence[float]) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self._boundaries = tuple(boundaries)
        self._points: dict[tuple[tuple[str, Any], ...], _Point] = {}
        # Recorded on the event loop's thread, collected on the exporter's.
        self._lock = threading.Lock()
        self._since_ns = time.time_ns()

    def record(self, value: float, attributes: Mapping[str, Any]) -> None:
        key = tuple(attributes.items())
        with self._lock:
            point = self._points.get(key)
            if point is None:
                point = self._points[key] = _Point(dict(attributes), len(self._boundaries) + 1)
            point.count += 1
            point.sum += value
            point.min = min(point.min, value)
            point.max = max(point.max, value)
            # Buckets hold (previous bound, bound]: a value equal to a bound counts in its bucket.
            point.buckets[bisect.bisect_left(self._boundaries, value)] += 1

    def collect(self, *, delta: bool, now_ns: int | None = None) -> Metric | None:
        """The SDK's `Metric` of what was recorded: since the last collection if `delta`, else
        since the start. None if nothing was."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            since_ns = self._since_ns
            points = [
                HistogramDataPoint(
                    attributes=point.attributes,
                    start_time_unix_nano=since_ns,
                    time_unix_nano=now_ns,
                    count=point.count,
                    sum=point.sum,
                    bucket_counts=list(point.buckets),
                    explicit_bounds=self._boundaries,
                    min=point.min,
                    max=point.max,
                )
                for point in self._points.values()
            ]
            if delta:
                self._points = {}
                self._since_ns = now_ns
        if not points:
            return None
        temporality = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
        return Metric(
            name=self.name,
            description=self.description,
            unit=self.unit,
            data=Histogram(data_points=points, aggregation_temporality=temporality),
        )


class GatewayHistograms:
    """The GenAI conventions' histograms, kept by the gateway (`GatewayHistogram`)."""

    def __init__(self) -> None:
        self.token_usage = GatewayHistogram(
            "gen_ai.client.token.usage",
            "{token}",
            "Tokens used by an answered call, by gen_ai.token.type",
            TOKEN_BUCKETS,
        )
        self.duration = GatewayHistogram(
            "gen_ai.client.operation.duration",
            "s",
            "Duration of a call to an endpoint, until its whole answer was read",
            DURATION_BUCKETS,
        )
        self.time_to_first_chunk = GatewayHistogram(
            "gen_ai.client.operation.time_to_first_chunk",
            "s",
            "Time from the request to the first event of a streamed answer",
            DURATION_BUCKETS,
        )

    def collect(self, *, delta: bool) -> list[Metric]:
        now_ns = time.time_ns()
        collected = (h.collect(delta=delta, now_ns=now_ns) for h in self.all())
        return [metric for metric in collected if metric is not None]

    def all(self) -> tuple[GatewayHistogram, ...]:
        return (self.token_usage, self.duration, self.time_to_first_chunk)


class HistogramsExporter(MetricExporter):
    """An exporter of the SDK's metrics with the gateway's histograms added to each export, in
    the temporality `exporter` prefers for histograms (OTLP: cumulative by default; Azure
    Monitor: delta)."""

    def __init__(self, exporter: MetricExporter, histograms: GatewayHistograms) -> None:
        # The reader asks its exporter for these; they are the wrapped exporter's.
        super().__init__(
            preferred_temporality=exporter._preferred_temporality,
            preferred_aggregation=exporter._preferred_aggregation,
        )
        self._exporter = exporter
        self._histograms = histograms
        preferred = exporter._preferred_temporality or {}
        self._delta = preferred.get(HistogramInstrument) is AggregationTemporality.DELTA

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        # Collected only into an export that carries a resource: a delta collection forgets
        # what it returns, which must not be dropped (it goes with the next export instead).
        if metrics_data.resource_metrics:
            ours = self._histograms.collect(delta=self._delta)
            if ours:
                metrics_data = _with_metrics(metrics_data, ours)
        return self._exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._exporter.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._exporter.shutdown(timeout_millis=timeout_millis, **kwargs)


def _with_metrics(data: MetricsData, metrics: list[Metric]) -> MetricsData:
    """`data` with `metrics` added to the gateway's scope of its first resource (the process's
    one: every gateway meter shares the provider's resource)."""
    first, *others = data.resource_metrics
    scopes = list(first.scope_metrics)
    for index, scope in enumerate(scopes):
        if scope.scope.name == SCOPE_NAME:
            scopes[index] = ScopeMetrics(scope.scope, [*scope.metrics, *metrics], scope.schema_url)
            break
    else:
        scopes.append(
            ScopeMetrics(InstrumentationScope(SCOPE_NAME, schema_url=SCHEMA_URL), metrics, SCHEMA_URL)
        )
    return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *others])


class TelemetryObserver(Observer):
    """Spans and metrics from the pipeline's events."""

    def __init__(
        self,
        config: GatewayConfig,
        tracer_provider: TracerProvider,
        meter_provider: MeterProvider,
        *,
        server_kind: SpanKind = SpanKind.SERVER,
        histograms: GatewayHistograms | None = None,
    ) -> None:
        self._tracer: Tracer = tracer_provider.get_tracer(SCOPE_NAME, schema_url=SCHEMA_URL)
        meter: Meter = meter_provider.get_meter(SCOPE_NAME, schema_url=SCHEMA_URL)
        self._server_kind = server_kind
        self._capture_content = config.telemetry.capture_content
        self._endpoints = {e.name: _Endpoint.of(e) for e in config.endpoints}
        self._propagator = TraceContextTextMapPropagator()
        #: The histograms: kept by the gateway, exported by `HistogramsExporter`.
        self.histograms = histograms or GatewayHistograms()
        self._token_usage = self.histograms.token_usage
        self._duration = self.histograms.duration
        self._time_to_first_chunk = self.histograms.time_to_first_chunk
        # The gateway's own counters are kept here and read by the SDK at each export: an event
        # costs a dict increment instead of the SDK's work per call.
        self._requests = _Tally(
            meter,
            "gateway.requests",
            "{request}",
            "Requests answered or failed",
            ("gateway.api", "gateway.stream", "error.type"),
        )
        self._tries = _Tally(
            meter,
            "gateway.upstream.tries",
            "{try}",
            "Calls sent to endpoints",
            ("gateway.endpoint", "error.type"),
        )
        self._retries = _Tally(
            meter,
            "gateway.upstream.retries",
            "{retry}",
            "Tries scheduled again after a failure",
            ("gateway.endpoint",),
        )
        self._fallbacks = _Tally(
            meter,
            "gateway.fallbacks",
            "{fallback}",
            "Requests passed to a fallback endpoint",
            ("gateway.endpoint", "gateway.fallback_to"),
        )
        self._cooldowns = _Tally(
            meter,
            "gateway.cooldowns.opened",
            "{cooldown}",
            "Endpoints put in cooldown",
            ("gateway.endpoint",),
        )
        self._limit_rejections = _Tally(
            meter,
            "gateway.limit.rejections",
            "{request}",
            "Requests refused by a gateway limit",
            ("gateway.limit",),
        )
        self._credential_fetches = _Tally(
            meter,
            "gateway.credential.fetches",
            "{fetch}",
            "Keys read from their source (Key Vault, the environment) or tokens issued",
            ("gateway.auth_type",),
        )
        self._stale_served = _Tally(
            meter,
            "gateway.credential.stale_served",
            "{event}",
            "Cached keys served past their refresh time while the source was down",
            ("gateway.auth_type",),
        )
        self._credential_refusals = _Tally(
            meter,
            "gateway.credential.refusals",
            "{refusal}",
            "Credentials an endpoint refused (401/403)",
            ("gateway.endpoint",),
        )

    # -- requests

    def request_started(self, exchange: Exchange) -> None:
        traceparent, tracestate = tracecontext.caller_trace()
        parent = None
        if traceparent is not None:
            carrier = {"traceparent": traceparent}
            if tracestate is not None:
                carrier["tracestate"] = tracestate
            parent = self._propagator.extract(carrier)
        route = _ROUTES.get(exchange.operation, "/v1/" + exchange.operation)
        span = self._tracer.start_span(f"POST {route}", context=parent, kind=self._server_kind)
        if span.is_recording():  # most requests are not sampled: nothing more to do for those
            span.set_attributes(self._request_attributes(exchange, route))
        context = trace.set_span_in_context(span, parent)
        # The request's log records carry its trace and span ids. Each request runs in a task
        # of its own, whose context ends with it: nothing to detach.
        otel_context.attach(context)
        exchange.state[STATE_KEY] = _RequestTelemetry(span, context)

    def _request_attributes(self, exchange: Exchange, route: str) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": exchange.model,
            "http.request.method": "POST",
            "http.route": route,
            "gateway.api": exchange.operation,
            "gateway.stream": exchange.stream,
        }
        if exchange.request_id:
            attributes["gateway.request_id"] = exchange.request_id
        caller = _caller_id(exchange)
        if caller:
            attributes["enduser.id"] = caller
        request = exchange.request
        parameters = getattr(request, "parameters", None)
        if isinstance(parameters, dict):
            for name, attribute in _PARAMETERS:
                value = parameters.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    attributes[attribute] = value
        if self._capture_content and request is not None:
            attributes["gen_ai.input.messages"] = _bounded_json(getattr(request, "messages", None))
        return attributes

    def request_ended(self, exchange: Exchange, error: BaseException | None) -> None:
        tracked: _RequestTelemetry | None = exchange.state.pop(STATE_KEY, None)
        if tracked is None:
            return
        now = time.monotonic()
        if error is None:
            error = exchange.error
        error_type = _error_type(None, error) if error is not None else None
        input_tokens, output_tokens = _tokens(exchange.usage)
        if tracked.trying is not None:  # the caller left, or the request was cancelled, mid-try
            _end_failed(tracked.trying, error_type or "cancelled")
            tracked.trying = None
        span = tracked.span
        recording = span.is_recording()
        finish_reasons = [str(r)[:64] for r in exchange.finish_reasons[:16]] if recording else []
        answered = tracked.answered
        if answered is not None and tracked.answered_endpoint is not None:
            endpoint = self._endpoints[tracked.answered_endpoint]
            if recording:
                _set_answer(answered, input_tokens, output_tokens, finish_reasons)
                if exchange.response_id and error is None:
                    answered.set_attribute("gen_ai.response.id", exchange.response_id)
            if error_type is not None:
                self._duration.record(
                    now - tracked.answered_started, {**endpoint.attributes, "error.type": error_type}
                )
                _end_failed(answered, error_type)
            else:
                self._duration.record(now - tracked.answered_started, endpoint.attributes)
                answered.end()
            if input_tokens is not None:
                self._token_usage.record(input_tokens, endpoint.input_attributes)
            if output_tokens is not None:
                self._token_usage.record(output_tokens, endpoint.output_attributes)
        if recording:
            attributes: dict[str, Any] = {"http.response.status_code": _status(error)}
            if exchange.response_id and error is None:
                # The id the caller got: an operator searches by what a user reports.
                attributes["gen_ai.response.id"] = exchange.response_id
            if exchange.endpoint:
                attributes["gateway.endpoint"] = exchange.endpoint
                endpoint_model = self._endpoints.get(exchange.endpoint)
                if endpoint_model is not None:
                    attributes["gen_ai.response.model"] = endpoint_model.model
            if self._capture_content and exchange.answer is not None:
                attributes["gen_ai.output.messages"] = _bounded_json(
                    [{**c.message, "finish_reason": c.finish_reason} for c in exchange.answer.choices]
                )
            span.set_attributes(attributes)
            _set_answer(span, input_tokens, output_tokens, finish_reasons)
        self._requests.add(exchange.operation, exchange.stream, error_type)
        if error_type is not None:
            _end_failed(span, error_type)
        else:
            span.end()

    # -- upstream tries

    def try_started(self, exchange: Exchange, endpoint: str, attempt: int) -> None:
        tracked: _RequestTelemetry | None = exchange.state.get(STATE_KEY)
        described = self._endpoints.get(endpoint)
        if tracked is None or described is None:
            return
        span = self._tracer.start_span(
            f"chat {described.model}",
            context=tracked.context,
            kind=SpanKind.CLIENT,
            attributes={**described.attributes, "gateway.attempt": attempt},
        )
        tracked.trying, tracked.trying_endpoint, tracked.try_started = span, endpoint, time.monotonic()
        span_context = span.get_span_context()
        tracecontext.set_upstream_traceparent(
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
        )

    def try_ended(
        self, exchange: Exchange, endpoint: str, attempt: int, status: int | None, error: GatewayError | None
    ) -> None:
        tracecontext.set_upstream_traceparent(None)
        tracked: _RequestTelemetry | None = exchange.state.get(STATE_KEY)
        if tracked is None or tracked.trying is None:
            return
        span, tracked.trying = tracked.trying, None
        described = self._endpoints[endpoint]
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is None:
            self._tries.add(endpoint, None)
            tracked.answered, tracked.answered_endpoint = span, endpoint
            tracked.answered_started = tracked.try_started
            return
        error_type = _error_type(status, error)
        self._tries.add(endpoint, error_type)
        self._duration.record(
            time.monotonic() - tracked.try_started, {**described.attributes, "error.type": error_type}
        )
        _end_failed(span, error_type)

    def retry_scheduled(
        self, exchange: Exchange, endpoint: str, attempt: int, delay_s: float, error: GatewayError
    ) -> None:
        self._retries.add(endpoint)
        tracked: _RequestTelemetry | None = exchange.state.get(STATE_KEY)
        if tracked is not None:
            tracked.span.add_event(
                "gateway.retry",
                {"gateway.endpoint": endpoint, "gateway.attempt": attempt, "gateway.delay_s": delay_s},
            )

    def fallback(self, exchange: Exchange, failed: str, to: str, error: GatewayError) -> None:
        self._fallbacks.add(failed, to)
        tracked: _RequestTelemetry | None = exchange.state.get(STATE_KEY)
        if tracked is not None:
            tracked.span.add_event(
                "gateway.fallback",
                {
                    "gateway.endpoint": failed,
                    "gateway.fallback_to": to,
                    "error.type": _error_type(None, error),
                },
            )

    def cooldown_opened(self, endpoint: str, cooldown_s: float) -> None:
        self._cooldowns.add(endpoint)

    def first_chunk(self, exchange: Exchange) -> None:
        tracked: _RequestTelemetry | None = exchange.state.get(STATE_KEY)
        if tracked is None:
            return
        elapsed = time.monotonic() - exchange.started
        tracked.span.set_attribute("gen_ai.response.time_to_first_chunk", elapsed)
        if tracked.answered is not None and tracked.answered_endpoint is not None:
            tracked.answered.set_attribute(
                "gen_ai.response.time_to_first_chunk", time.monotonic() - tracked.answered_started
            )
            self._time_to_first_chunk.record(elapsed, self._endpoints[tracked.answered_endpoint].attributes)

    def limit_rejected(self, exchange: Exchange, limit: str, error: GatewayError) -> None:
        self._limit_rejections.add(limit)

    # -- credentials

    def credential_fetched(self, auth_type: str, name: str) -> None:
        self._credential_fetches.add(auth_type)

    def credential_served_stale(self, auth_type: str, name: str, error: GatewayError) -> None:
        self._stale_served.add(auth_type)

    def credential_refused(self, exchange: Exchange, endpoint: str, status: int) -> None:
        self._credential_refusals.add(endpoint)


def _caller_id(exchange: Exchange) -> str | None:
    """The caller's id, if the caller-auth layer set one (`Exchange.caller`: an id, or an
    object with an `id`)."""
    caller = getattr(exchange, "caller", None)
    if caller is None:
        return None
    value = caller if isinstance(caller, str) else getattr(caller, "id", None)
    return value[:256] if isinstance(value, str) and value else None


def _error_type(status: int | None, error: BaseException | None) -> str:
    """`error.type`: a low-cardinality name of what went wrong (an endpoint's HTTP status, the
    gateway's error code, or the exception's class)."""
    if status is not None and status >= 400:
        return str(status)
    if isinstance(error, GatewayError):
        return error.code or type(error).__name__
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return type(error).__qualname__ if error is not None else "_OTHER"


def _status(error: BaseException | None) -> int:
    if error is None:
        return 200
    if isinstance(error, GatewayError):
        return error.status
    if isinstance(error, asyncio.CancelledError):
        return 499  # the caller left
    return 500


def _end_failed(span: Span, error_type: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR))
    span.end()


def _tokens(usage: Mapping[str, Any] | None) -> tuple[int | None, int | None]:
    """Input and output token counts of an endpoint's `usage`, when they are sane integers."""
    if not isinstance(usage, Mapping):
        return None, None

    def count(*names: str) -> int | None:
        for name in names:
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
                return value
        return None

    return count("prompt_tokens", "input_tokens"), count("completion_tokens", "output_tokens")


def _set_answer(
    span: Span, input_tokens: int | None, output_tokens: int | None, finish_reasons: list[str]
) -> None:
    if input_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    if output_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if finish_reasons:
        span.set_attribute("gen_ai.response.finish_reasons", finish_reasons)


def _bounded_json(value: Any) -> str:
    try:
        text = dumps(value).decode("utf-8", "replace")
    except Exception:
        return ""
    return text if len(text) <= MAX_CONTENT_CHARS else text[:MAX_CONTENT_CHARS] + "…"


# -- sampling


class RateLimitedSampler(Sampler):
    """Keeps at most `per_second` new traces a second (a second's worth in a burst), by a GCRA
    over the monotonic clock. A caller's `traceparent` continues its trace but does not decide
    what is kept here: else any caller could have every request recorded."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not per_second >= 0:
            raise ValueError("traces per second must be a number >= 0")
        self._interval = 1.0 / per_second if per_second > 0 else float("inf")
        #: How far ahead of now the next allowed time may run: a second's worth, less one (and a
        #: hair, so that five fifths of a second make a second).
        self._tolerance = max(1.0 - self._interval, 0.0) + 1e-9
        self._next = 0.0
        self._clock = clock
        self._description = f"RateLimitedSampler{{{per_second}}}"

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        now = self._clock()
        allowed_at = max(self._next, now)
        keep = allowed_at - now <= self._tolerance
        if keep:
            self._next = allowed_at + self._interval
        parent = trace.get_current_span(parent_context).get_span_context()
        return SamplingResult(
            Decision.RECORD_AND_SAMPLE if keep else Decision.DROP,
            attributes if keep else None,
            parent.trace_state if parent.is_valid else None,
        )

    def get_description(self) -> str:
        return self._description


def sampler(destination: str, environ: Mapping[str, str]) -> Sampler | None:
    """The trace sampler: None leaves it to the SDK (any standard `OTEL_TRACES_SAMPLER`).
    Unset, or `microsoft.rate_limited` with `OTEL_TRACES_SAMPLER_ARG` traces per second, keeps
    at most that many new traces a second (default 5); `microsoft.fixed_percentage` keeps that
    fraction (0 to 1). Application Insights gets its exporter's own samplers, which tell it the
    rate so that its counts are scaled back up. Either way a request's tries follow its span."""
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if name not in ("", "microsoft.rate_limited", "microsoft.fixed_percentage"):
        return None
    default = DEFAULT_TRACES_PER_SECOND if name != "microsoft.fixed_percentage" else 1.0
    try:
        value = float(environ.get("OTEL_TRACES_SAMPLER_ARG") or default) if name else default
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf") or (name == "microsoft.fixed_percentage" and value > 1):
        log.warning("OTEL_TRACES_SAMPLER_ARG is not valid for %s: using %s", name, default)
        value = default
    if destination == "azure_monitor":
        from azure.monitor.opentelemetry.exporter import ApplicationInsightsSampler
        from azure.monitor.opentelemetry.exporter import RateLimitedSampler as AzureRateLimited

        if name == "microsoft.fixed_percentage":
            return ApplicationInsightsSampler(value)
        return AzureRateLimited(value)
    root: Sampler = (
        TraceIdRatioBased(value) if name == "microsoft.fixed_percentage" else RateLimitedSampler(value)
    )
    return ParentBased(root, remote_parent_sampled=root, remote_parent_not_sampled=root)


# -- set-up, once per process

_installed: tuple[Any, Any, GatewayHistograms] | None = None
#: Each provider set up, for `flush`.
_providers_installed: list[Any] = []


def flush(timeout_ms: int = 10_000) -> None:
    """Export what the providers still hold (blocking: call it off the event loop). Hosts call
    it on shutdown: uvicorn ends the process by re-raising SIGTERM, so the SDK's `atexit`
    shutdown does not run there."""
    for provider in _providers_installed:
        try:
            provider.force_flush(timeout_ms)
        except Exception:
            log.warning("telemetry could not be flushed: %s", type(provider).__name__)


def install(
    destination: str,
    environ: Mapping[str, str],
    config: GatewayConfig,
    *,
    host_records_requests: bool = False,
) -> TelemetryObserver:
    """Set up the providers and exporters for `destination` ("azure_monitor" or "otlp") once per
    process, and return an observer over them. Where the host records requests and forwards log
    records to Application Insights itself (Azure Functions), the gateway's span per request is
    an internal one and its log records are not exported a second time."""
    global _installed
    if _installed is None:
        export_logs = not (host_records_requests and destination == "azure_monitor")
        _installed = _providers(destination, environ, export_logs=export_logs)
        tracecontext.enable()
        log.info(
            "telemetry on: exporting to %s",
            "Application Insights" if destination == "azure_monitor" else "OTLP",
        )
    tracer_provider, meter_provider, histograms = _installed
    kind = SpanKind.INTERNAL if host_records_requests else SpanKind.SERVER
    return TelemetryObserver(config, tracer_provider, meter_provider, server_kind=kind, histograms=histograms)


def _providers(
    destination: str, environ: Mapping[str, str], *, export_logs: bool
) -> tuple[Any, Any, GatewayHistograms]:
    from opentelemetry import metrics
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME})
    if destination == "azure_monitor":
        span_exporter, metric_exporter, log_exporter = _azure_monitor_exporters(environ)
    else:
        span_exporter, metric_exporter, log_exporter = _otlp_exporters(environ)
    tracer_provider = SdkTracerProvider(resource=resource, sampler=sampler(destination, environ))
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    histograms = GatewayHistograms()
    meter_provider = SdkMeterProvider(
        resource=resource,
        metric_readers=[PeriodicExportingMetricReader(HistogramsExporter(metric_exporter, histograms))],
    )
    if export_logs:
        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
        # The gateway's own log records, with the trace and span ids of the request they belong to.
        handler = LoggingHandler(level=logging.INFO, logger_provider=logger_provider)
        logging.getLogger("gateway").addHandler(handler)
    _providers_installed.extend([tracer_provider, meter_provider])
    if export_logs:
        _providers_installed.append(logger_provider)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return tracer_provider, meter_provider, histograms


def _otlp_exporters(environ: Mapping[str, str]) -> tuple[Any, Any, Any]:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    base = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/")
    return (
        OTLPSpanExporter(endpoint=f"{base}/v1/traces"),
        OTLPMetricExporter(endpoint=f"{base}/v1/metrics"),
        OTLPLogExporter(endpoint=f"{base}/v1/logs"),
    )


def _azure_monitor_exporters(environ: Mapping[str, str]) -> tuple[Any, Any, Any]:
    from azure.monitor.opentelemetry.exporter import (
        AzureMonitorLogExporter,
        AzureMonitorMetricExporter,
        AzureMonitorTraceExporter,
    )

    # azure-core logs every export's request and response at INFO: once per second or so.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    options: dict[str, Any] = {"connection_string": environ["APPLICATIONINSIGHTS_CONNECTION_STRING"]}
    authentication = _settings(environ.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", ""))
    if authentication.get("authorization", "").upper() == "AAD":
        options["credential"] = _exporter_credential(
            environ, authentication.get("clientid") or environ.get("AZURE_CLIENT_ID") or None
        )
    return (
        AzureMonitorTraceExporter(**options),
        AzureMonitorMetricExporter(**options),
        AzureMonitorLogExporter(**options),
    )


def _settings(text: str) -> dict[str, str]:
    """`Key=value;Key=value` (a connection or authentication string), keys lower-cased."""
    pairs = (part.partition("=") for part in text.split(";") if "=" in part)
    return {key.strip().lower(): value.strip() for key, _, value in pairs}


def _exporter_credential(environ: Mapping[str, str], client_id: str | None) -> Any:
    """The app's identity, as the gateway's own credential chooses it (shared.credentials), in
    the synchronous form the exporters call from their own thread."""
    if environ.get("IDENTITY_ENDPOINT") or environ.get("MSI_ENDPOINT"):
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=client_id)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=client_id)
