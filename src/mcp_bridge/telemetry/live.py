"""The live hooks: OpenTelemetry's SDK, exporting over OTLP/HTTP (protobuf). Imported only with telemetry enabled.

Spans follow OpenTelemetry's semantic conventions for MCP and GenAI tools: one ``SERVER`` span per request of the
IDE, named ``{mcp.method.name} {target}``, parented by the trace context the IDE sent in the request's ``_meta``
(``traceparent``/``tracestate``), with ``mcp.method.name``, ``mcp.protocol.version``, ``jsonrpc.request.id``,
``gen_ai.operation.name``/``gen_ai.tool.name``, ``gen_ai.prompt.name`` or ``mcp.resource.uri``, and ``error.type``;
the audit's outcome, server and tool as ``mcp_bridge.*``. A ``CLIENT`` span per request to a server, its child, with
the retries as events and a wait for a connection as a span of its own; its context goes to the server in the
request's ``_meta`` (both eras) and in the HTTP ``traceparent`` header. Argument values only with
``audit.arguments: full``, masked as the logs are.

Spans go through a batch processor: a call only hands its span to a queue. A collector that cannot be reached costs
the export thread its timeout, never a call: what cannot be exported is dropped and counted
(``mcp_bridge.telemetry.dropped``), and the log says so (once, then every 100th time).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

import anyio
from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExportResult, MetricsData, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode, get_current_span

from mcp_bridge.config import Settings
from mcp_bridge.logs import clean, get_logger
from mcp_bridge.telemetry import Hooks, signal_endpoint

log = get_logger(__name__)

_EXPORT_TIMEOUT_SECONDS = 5.0
"""Each export's bound, unless ``OTEL_EXPORTER_OTLP[_<SIGNAL>]_TIMEOUT`` says otherwise (the SDK's default is 10)."""
_TIMEOUT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
)
_TRACEPARENT = b'"traceparent":"'
_TRACESTATE = b'"tracestate":"'


class _Dropped:
    """What could not be exported (spans and metric batches), counted and logged sparingly."""

    def __init__(self) -> None:
        self.spans = 0
        self.metric_batches = 0
        self._lock = threading.Lock()
        self._failures = 0

    def failed(self, what: str, n: int, endpoint: str) -> None:
        with self._lock:
            if what == "spans":
                self.spans += n
            else:
                self.metric_batches += n
            self._failures += 1
            failures = self._failures
        if failures == 1 or failures % 100 == 0:
            log.warning("telemetry.export_failed", dropped=what, count=n, failures=failures, endpoint=endpoint)


class _SpanExporter(OTLPSpanExporter):
    def __init__(self, dropped: _Dropped, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._dropped = dropped

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = super().export(spans)
        except Exception:  # the export thread's boundary: drop, count, go on
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._dropped.failed("spans", len(spans), self._endpoint)
        return result


class _MetricExporter(OTLPMetricExporter):
    def __init__(self, dropped: _Dropped, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._dropped = dropped

    def export(
        self, metrics_data: MetricsData, timeout_millis: float | None = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        try:
            result = super().export(metrics_data, timeout_millis, **kwargs)
        except Exception:  # the export thread's boundary: drop, count, go on
            result = MetricExportResult.FAILURE
        if result is not MetricExportResult.SUCCESS:
            self._dropped.failed("metrics", 1, self._endpoint)
        return result


def _target(method: str, params: Any) -> tuple[str | None, dict[str, Any]]:
    """A request's target (tool or prompt name, resource URI) and its semantic-convention attributes."""

    def get(key: str) -> Any:
        return params.get(key) if isinstance(params, dict) else getattr(params, key, None)

    if method == "tools/call":
        name = get("name")
        if isinstance(name, str):
            return name, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}
    elif method == "prompts/get":
        name = get("name")
        if isinstance(name, str):
            return name, {"gen_ai.prompt.name": name}
    elif method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        uri = get("uri")
        if uri is not None:
            return str(uri), {"mcp.resource.uri": str(uri)}
    return None, {}


def _error_type(exc: BaseException) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return str(code) if isinstance(code, int) else type(exc).__qualname__


class Live(Hooks):
    active = True

    def __init__(self, settings: Settings, *, version: str) -> None:
        config = settings.telemetry
        self.arguments = settings.audit.arguments == "full"
        attributes: dict[str, Any] = {"service.version": version, **config.resource_attributes}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = config.service_name
        if settings.user is not None and settings.user.email:
            attributes["user.email"] = settings.user.email  # who, as the audit records it
        resource = Resource.create(attributes)
        timeout = None if any(os.environ.get(v) for v in _TIMEOUT_VARIABLES) else _EXPORT_TIMEOUT_SECONDS
        self.dropped = _Dropped()
        traces = signal_endpoint(config, "traces")
        metrics = signal_endpoint(config, "metrics")
        logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # failures are counted and logged below
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(
            BatchSpanProcessor(_SpanExporter(self.dropped, endpoint=traces, timeout=timeout))
        )
        reader = PeriodicExportingMetricReader(
            _MetricExporter(self.dropped, endpoint=metrics, timeout=timeout),
            export_interval_millis=config.metrics_interval * 1000,
        )
        self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
        self.tracer = self.tracer_provider.get_tracer("mcp-bridge", version)
        meter = self.meter_provider.get_meter("mcp-bridge", version)
        self._meter = meter
        self.server_duration = meter.create_histogram(
            "mcp.server.operation.duration", unit="s", description="Requests of the IDE, as the bridge served them"
        )
        self.client_duration = meter.create_histogram(
            "mcp.client.operation.duration", unit="s", description="Requests of the bridge to the servers"
        )
        self.calls = meter.create_counter(
            "mcp_bridge.calls", unit="{call}", description="Calls, reads and prompts by server, tool and outcome"
        )
        self.call_duration = meter.create_histogram(
            "mcp_bridge.call.duration", unit="s", description="Calls, reads and prompts by server, tool and outcome"
        )
        self.state = meter.create_gauge("mcp_bridge.upstream.state", description="1 for each server's current state")
        self.reconnects = meter.create_counter("mcp_bridge.upstream.reconnects", unit="{reconnect}")
        self.spool_pending = meter.create_gauge("mcp_bridge.audit.spool.pending", unit="{event}")
        self.spool_dropped = meter.create_gauge("mcp_bridge.audit.spool.dropped", unit="{event}")
        self.catalog_tools = meter.create_gauge("mcp_bridge.catalog.tools", unit="{tool}")
        meter.create_observable_counter(
            "mcp_bridge.telemetry.dropped",
            callbacks=[self._observe_dropped],
            unit="{item}",
            description="Spans and metric batches that could not be exported (dropped)",
        )
        self.interval = config.metrics_interval
        self._counters: dict[str, Any] = {}
        self._states: dict[str, str] = {}
        log.info("telemetry.start", traces=traces, metrics=metrics)

    # ------------------------------------------------------------------ spans

    def front_middleware(self) -> Any:
        tracer, duration = self.tracer, self.server_duration

        async def traced(ctx: Any, call_next: Any) -> Any:
            if ctx.request_id is None:  # notifications are not traced
                return await call_next(ctx)
            method = ctx.method
            target, attributes = _target(method, ctx.params)
            attributes["mcp.method.name"] = method
            attributes["jsonrpc.request.id"] = str(ctx.request_id)
            attributes["network.transport"] = "pipe"
            if ctx.protocol_version:
                attributes["mcp.protocol.version"] = ctx.protocol_version
            parent = _extract(ctx.meta)
            start = time.perf_counter()
            error: str | None = None
            with tracer.start_as_current_span(
                f"{method} {target}" if target else method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    return await call_next(ctx)
                except BaseException as exc:
                    error = _error_type(exc)
                    span.set_attribute("error.type", error)
                    if (code := getattr(getattr(exc, "error", None), "code", None)) is not None:
                        span.set_attribute("rpc.response.status_code", str(code))
                    span.set_status(StatusCode.ERROR)
                    raise
                finally:
                    measured = {
                        k: v for k, v in attributes.items() if k not in ("jsonrpc.request.id", "mcp.resource.uri")
                    }
                    if error is not None:
                        measured["error.type"] = error
                    duration.record(time.perf_counter() - start, measured)

        return traced

    @contextlib.contextmanager
    def upstream(self, server: str, request: Any, era: str | None, url: str | None) -> Iterator[Any]:
        method = getattr(request, "method", "request")
        target, attributes = _target(method, getattr(request, "params", None))
        attributes["mcp.method.name"] = method
        attributes["mcp_bridge.server"] = server
        attributes["network.protocol.name"] = "http"
        if era:
            attributes["mcp.protocol.version"] = era
        if url:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            if parts.hostname:
                attributes["server.address"] = parts.hostname
            with contextlib.suppress(ValueError):
                if parts.port:
                    attributes["server.port"] = parts.port
        start = time.perf_counter()
        error: str | None = None
        with self.tracer.start_as_current_span(
            f"{method} {target}" if target else method,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                error = _error_type(exc)
                span.set_attribute("error.type", error)
                span.set_status(StatusCode.ERROR)
                raise
            finally:
                measured = {k: v for k, v in attributes.items() if k != "mcp.resource.uri"}
                if error is not None:
                    measured["error.type"] = error
                self.client_duration.record(time.perf_counter() - start, measured)

    def span(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
        return self.tracer.start_as_current_span(name, attributes=attributes)

    def note(self, name: str, **attributes: Any) -> None:
        span = get_current_span()
        if span.is_recording():
            span.add_event(name, {k: v for k, v in attributes.items() if v is not None})

    def inject(self, meta: MutableMapping[str, Any]) -> None:
        propagate.inject(meta)

    def http(self, request: Any) -> None:
        if request.method != "POST" or "traceparent" in request.headers:
            return
        try:
            body: bytes = request.content
        except Exception:  # a streamed body: nothing to mirror
            return
        for key, header in ((_TRACEPARENT, "traceparent"), (_TRACESTATE, "tracestate")):
            at = body.find(key)
            if at < 0:
                continue
            start = at + len(key)
            end = body.find(b'"', start)
            if 0 < end - start <= 512:
                request.headers[header] = body[start:end].decode("ascii", "replace")

    def finished(self, event: Any) -> None:
        if event.kind == "call" or event.kind in ("prompt_get", "resource_read", "completion", "resource_subscribe"):
            attributes = {
                "mcp_bridge.server": event.server or "",
                "mcp_bridge.tool": event.tool or event.exposed_name or "",
                "mcp_bridge.outcome": event.status,
                "mcp_bridge.kind": event.kind,
            }
            if event.error_class:
                attributes["error.type"] = event.error_class
            span = get_current_span()
            if span.is_recording():
                span.set_attributes(attributes)
                if self.arguments and event.arguments is not None:
                    span.set_attribute("gen_ai.tool.call.arguments", clean(json.dumps(event.arguments, default=str)))
            self.calls.add(1, attributes)
            if event.replied_at is not None:
                self.call_duration.record(max(0.0, event.replied_at - event.asked_at), attributes)

    # ------------------------------------------------------------------ metrics

    def upstream_state(self, server: str, state: str) -> None:
        previous = self._states.get(server)
        if previous == state:
            return
        if previous is not None:
            self.state.set(0, {"mcp_bridge.server": server, "mcp_bridge.state": previous})
            if state == "connecting":
                self.reconnects.add(1, {"mcp_bridge.server": server})
        self._states[server] = state
        self.state.set(1, {"mcp_bridge.server": server, "mcp_bridge.state": state})

    def count(self, name: str, **attributes: Any) -> None:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = self._meter.create_counter(name)
        counter.add(1, {f"mcp_bridge.{k}": v for k, v in attributes.items()})

    def _observe_dropped(self, options: Any) -> Any:
        from opentelemetry.metrics import Observation

        return [
            Observation(self.dropped.spans, {"mcp_bridge.signal": "traces"}),
            Observation(self.dropped.metric_batches, {"mcp_bridge.signal": "metrics"}),
        ]

    async def watch(self, bridge: Any) -> None:
        """Sample the bridge's gauges (audit spool backlog, catalog size) on the event loop, before each export."""
        while True:
            self.sample(bridge)
            await anyio.sleep(self.interval)

    def sample(self, bridge: Any) -> None:
        try:
            spool = bridge.audit.spool
            if spool is not None:
                stats = spool.stats()
                self.spool_pending.set(stats.pending)
                self.spool_dropped.set(stats.dropped)
        except Exception as exc:  # a spool that cannot be read is the audit's to report
            log.debug("telemetry.spool_unreadable", error=str(exc))
        counts: dict[str, int] = {}
        for entry in bridge.catalog.entries():
            if entry.denial is None and not entry.blocked:
                counts[entry.server] = counts.get(entry.server, 0) + 1
        for server in bridge.upstreams:
            self.catalog_tools.set(counts.get(server, 0), {"mcp_bridge.server": server})

    def shutdown(self, within: float) -> None:
        """Flush and stop both providers in a thread, waiting at most ``within`` seconds (the export threads are
        daemons: a collector that does not answer never holds the exit)."""

        def stop() -> None:
            for provider in (self.tracer_provider, self.meter_provider):
                with contextlib.suppress(Exception):
                    provider.shutdown()

        thread = threading.Thread(target=stop, name="telemetry-shutdown", daemon=True)
        thread.start()
        thread.join(within)
        if thread.is_alive():
            log.warning("telemetry.flush_incomplete", within=within)


def _extract(meta: Any) -> Any:
    """The IDE's trace context from a request's ``_meta``; ``None`` (the current context) when it carries none."""
    if not meta:
        return None
    try:
        carrier = dict(meta)
        if "traceparent" not in carrier:
            return None
        context = propagate.extract(carrier)
    except (TypeError, ValueError):
        return None
    return context if get_current_span(context).get_span_context().is_valid else None
