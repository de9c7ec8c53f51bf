"""Whether telemetry is on, decided from the environment without importing OpenTelemetry.

On when `APPLICATIONINSIGHTS_CONNECTION_STRING` (Application Insights) or
`OTEL_EXPORTER_OTLP_ENDPOINT` (any OTLP/HTTP collector) is set; then `shared.otel` sets up the
exporters and returns the observer that records spans and metrics. Off, nothing of OpenTelemetry
is imported and the gateway's observer is the no-op one (docs/telemetry.md).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping

from .config import GatewayConfig
from .observe import NO_OBSERVER, Observer

#: Set by the Azure Functions entry point: the host records each invocation as a request.
_host_records_requests = False


def host_records_requests() -> None:
    """Called by a host that records requests itself (Azure Functions), before the gateway is
    created: the gateway's span per request is then an internal one under the host's, so
    Application Insights counts each request once, and the host forwards the log records."""
    global _host_records_requests
    _host_records_requests = True


def telemetry_destination(environ: Mapping[str, str]) -> str | None:
    """ "azure_monitor", "otlp", or None when telemetry is off."""
    if environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
        return "azure_monitor"
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return None


def telemetry_observer(environ: Mapping[str, str], config: GatewayConfig) -> Observer:
    """The observer that records telemetry, set up once per process; the no-op one when off."""
    destination = telemetry_destination(environ)
    if destination is None:
        return NO_OBSERVER
    from .otel import install  # the OpenTelemetry SDK and exporters: only when on

    return install(destination, environ, config, host_records_requests=_host_records_requests)


async def flush_telemetry() -> None:
    """Export what telemetry still holds, if it is on (at shutdown)."""
    otel = sys.modules.get("shared.otel")
    if otel is not None:
        await asyncio.to_thread(otel.flush)
