"""The live hooks: traces and metrics exported over OTLP/HTTP (protobuf), through the OTLP exporters' HTTP clients
(OpenTelemetry's SDK). Imported only with telemetry enabled.

Spans follow OpenTelemetry's semantic conventions for MCP and GenAI tools: one ``SERVER`` span per request of the
IDE, named ``{mcp.method.name} {target}``, parented by the trace context the IDE sent in the request's ``_meta``
(``traceparent``/``tracestate``), with ``mcp.method.name``, ``mcp.protocol.version``, ``jsonrpc.request.id``,
``gen_ai.operation.name``/``gen_ai.tool.name``, ``gen_ai.prompt.name`` or ``mcp.resource.uri``, and ``error.type``;
the audit's outcome, server and tool as ``mcp_bridge.*``. A ``CLIENT`` span per request to a server, its child, with
the retries as events and a wait for a connection as a span of its own; its context goes to the server in the
request's ``_meta`` (both eras) and in the HTTP ``traceparent`` header. Argument values only with
``audit.arguments: full``, masked as the logs are.

The cost on a call is kept to recording: the SDK's own spans, metric instruments and OTLP encoder cost about
60-100 µs a span, 20 µs a measurement and 80 µs a span's encoding on the 2-core machine of ``bench/telemetry.py``,
more than issue 20's 50 µs a call for two spans and three measurements. So a call records its spans as small
:class:`_Span` objects (W3C ids made here) and its measurements as tuples, appended to queues; daemon threads encode
the spans (:mod:`.otlp`, by hand) and export them in batches of up to 512, every second or sooner when 512 wait, and
aggregate the measurements (:class:`_Instrument`: cumulative histograms, counters, gauges) and export them every
``telemetry.metrics_interval``. A queue that is full (a collector down for long) drops, and counts
(``mcp_bridge.telemetry.dropped``); a collector that cannot be reached costs those threads their timeout, never a
call, and the log says so (the 1st, 2nd, 4th, 8th... time).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import contextvars
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
from opentelemetry import context as otel_context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from mcp_bridge.config import Settings
from mcp_bridge.logs import clean, get_logger
from mcp_bridge.telemetry import Hooks, otlp, signal_endpoint

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
_MAX_QUEUE = 8192
"""Spans (and, apart, measurements) waiting for the export threads; past it new ones are dropped and counted."""
_BATCH = 2048
"""Spans a request holds at most; this many waiting wake the span thread before its delay is out."""
_SPAN_DELAY_SECONDS = 5.0
"""Between span exports: each POST costs the thread a few ms of interpreter time (the exporter's HTTP client), so
few large ones (the SDK's batch processor waits 5 s too)."""
_MEASURE_DELAY_SECONDS = 1.0
_CHUNK = 128
"""Spans encoded between two yields of the interpreter lock (``time.sleep(0)``): the event loop never waits for a
whole batch's encoding."""
_MEASURES_CHUNK = 512
"""Measurements aggregated between two yields of the interpreter lock: a second's worth of back-to-back calls is some
3,000 (2-3 ms of the thread's time), which the event loop would otherwise wait for whole."""
_HEX = frozenset("0123456789abcdef")
_FED_TO_THE_SDK = ("initialize", "server/discover")
"""Requests ``serve`` answers early and feeds to the SDK all the same (it drops the SDK's second answer)."""

EXPORT_SWITCH = "MCP_BRIDGE_TELEMETRY_EXPORT"
"""``sdk``: export through the exporters' public ``export()`` (the SDK's objects and encoder) instead of their HTTP
clients (a diagnostic; what happens by itself where those clients are not there)."""

_current: contextvars.ContextVar[_Span | None] = contextvars.ContextVar("mcp_bridge_span", default=None)


class _Span:
    """One span as a call records it; made into the SDK's ``ReadableSpan`` by the export thread."""

    __slots__ = (
        "attributes",
        "end",
        "error",
        "events",
        "header",
        "kind",
        "name",
        "parent_id",
        "remote_parent",
        "sampled",
        "span_id",
        "start",
        "trace_id",
        "trace_state",
    )

    def __init__(self, name: str, kind: SpanKind, attributes: dict[str, Any], parent: _Parent | None) -> None:
        self.name, self.kind, self.attributes = name, kind, attributes
        self.span_id = random.getrandbits(64) or 1
        if parent is None:
            self.trace_id = random.getrandbits(128) or 1
            self.parent_id, self.remote_parent, self.sampled, self.trace_state = 0, False, True, ""
        elif isinstance(parent, _Span):  # a span of this bridge (its ids read as they are: the call's hot path)
            self.trace_id, self.parent_id, self.sampled = parent.trace_id, parent.span_id, parent.sampled
            self.trace_state, self.remote_parent = parent.trace_state, False
        else:
            self.trace_id, self.parent_id, self.sampled, self.trace_state = parent
            self.remote_parent = True
        self.events: Sequence[tuple[int, str, dict[str, Any]]] = ()
        """Its events (a list once it has one: most spans have none)."""
        self.error: str | None = None
        self.header = ""
        self.start = time.time_ns()
        self.end = 0

    def traceparent(self) -> str:
        if not self.header:  # (the request's _meta and its HTTP header both carry it)
            self.header = f"00-{self.trace_id:032x}-{self.span_id:016x}-{'01' if self.sampled else '00'}"
        return self.header


_Parent = tuple[int, int, bool, str] | _Span
"""A span's parent: one of this bridge's, or the IDE's (trace id, span id, sampled, trace state)."""


class _Request:
    """Around one request to a server: its ``CLIENT`` span is the current one (and, on the session's way, the
    OpenTelemetry context the SDK's dispatcher injects into ``_meta``: the direct ``tools/call`` injects its own)."""

    __slots__ = ("_live", "_measured", "_otel", "_session_way", "_start", "_token", "span")

    def __init__(self, live: Live, span: _Span, measured: dict[str, Any], session_way: bool) -> None:
        self._live, self.span, self._measured, self._session_way = live, span, measured, session_way
        self._otel: object = None

    def __enter__(self) -> _Span:
        self._token = _current.set(self.span)
        if self._session_way:
            self._otel = otel_context.attach(set_span_in_context(NonRecordingSpan(_span_context(self.span))))
        self._start = time.perf_counter()
        return self.span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        span = self.span
        if exc is not None:
            span.error = span.attributes["error.type"] = _error_type(exc)
            self._measured = {**self._measured, "error.type": span.error}  # (the template is shared)
        if self._otel is not None:
            otel_context.detach(self._otel)  # type: ignore[arg-type]
        _current.reset(self._token)
        self._live._finish(span)
        self._live._measure(self._live.client_duration, "record", time.perf_counter() - self._start, self._measured)


class _Dropped:
    """What could not be exported (spans and metric batches), counted and logged sparingly."""

    def __init__(self) -> None:
        self.spans = 0
        self.metric_batches = 0
        self.measurements = 0
        self._lock = threading.Lock()
        self._failures = 0

    def failed(self, what: str, n: int, endpoint: str) -> None:
        with self._lock:
            if what == "spans":
                self.spans += n
            elif what == "metrics":
                self.metric_batches += n
            else:
                self.measurements += n
            self._failures += 1
            failures = self._failures
        if failures & (failures - 1) == 0:  # the 1st, 2nd, 4th, 8th... failure: said, never flooding the log
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


def _direct(exporter: Any) -> Any:
    """The exporter's own HTTP client's ``export(bytes)``, or ``None``: the public way is then taken.

    Why a private attribute: the OTLP/HTTP exporters (``opentelemetry-exporter-otlp-proto-http`` 1.45) have no public
    way to send a request that is already encoded. Their public ``export()`` takes the SDK's span or metric objects
    and encodes them with the SDK's encoder, which costs about 80 µs a span on this machine against a few by hand
    (:mod:`.otlp`), in a thread that shares the interpreter lock with the calls. Their ``_client`` is what that
    ``export()`` itself POSTs through, with everything the exporter resolved from its arguments and the
    ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, compression, TLS, timeout, retries); ``export(bytes)``
    returns a result with ``success``. Where it is not there (another release), or ``MCP_BRIDGE_TELEMETRY_EXPORT=sdk``
    asks for it, :meth:`Live._send` and :meth:`Live._export_metrics` build the SDK's objects and call the public
    ``export()`` instead (slower, same result: ``tests/test_telemetry.py`` checks both ways)."""
    if os.environ.get(EXPORT_SWITCH) == "sdk":
        return None
    export = getattr(getattr(exporter, "_client", None), "export", None)
    return export if callable(export) else None


class _Instrument:
    """A metric the bridge aggregates itself (``histogram``, ``counter`` or ``gauge``): the SDK's instruments cost
    about 20 µs a measurement here, this about 2."""

    __slots__ = ("description", "kind", "name", "unit")

    def __init__(self, name: str, kind: str, unit: str = "", description: str = "") -> None:
        self.name, self.kind, self.unit, self.description = name, kind, unit, description


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
            shown = clean(str(uri))  # a URI may carry a token in its query
            return shown, {"mcp.resource.uri": shown}
    return None, {}


def _target_name(method: str, params: Any) -> str | None:
    """What :func:`_target` names, without its attributes: the key of a request's attribute template."""
    key = "name" if method in ("tools/call", "prompts/get") else "uri" if method.startswith("resources/") else None
    if key is None:
        return None
    value = params.get(key) if isinstance(params, dict) else getattr(params, key, None)
    return value if isinstance(value, str) else None if value is None else str(value)


_TEMPLATES = 1024
"""Attribute templates kept per kind (requests of the IDE, requests to servers, audit outcomes); past it, forgotten."""

_Template = tuple[str, dict[str, Any], dict[str, Any]]
"""A request's span name, its span's attributes (but the request id), its measurement's attributes."""


def _kept(cache: dict[Any, Any], key: Any, make: Callable[[], Any], limit: int = _TEMPLATES) -> Any:
    """``cache[key]``, made by ``make`` the first time (the cache forgotten when it holds ``limit``)."""
    found = cache.get(key)
    if found is None:
        if len(cache) >= limit:
            cache.clear()
        found = cache[key] = make()
    return found


def _template(
    method: str, params: Any, version: str | None, shared: dict[str, Any], span_only: dict[str, Any]
) -> _Template:
    """The template of a request (:data:`_Template`): the semantic conventions' attributes of its method and target,
    ``shared`` on both the span and the measurement, ``span_only`` on the span (the measurement leaves out the
    resource URI too: one series per URI would be unbounded)."""
    target, attributes = _target(method, params)
    attributes["mcp.method.name"] = method
    attributes.update(shared)
    if version:
        attributes["mcp.protocol.version"] = version
    measured = dict(attributes)
    measured.pop("mcp.resource.uri", None)
    attributes.update(span_only)
    return f"{method} {target}" if target else method, attributes, measured


def _outcome(server: str, tool: str, status: str, kind: str, error_class: str | None) -> dict[str, Any]:
    """The attributes of an audit event's outcome, on its request's span and on ``mcp_bridge.call.duration``."""
    attributes = {
        "mcp_bridge.server": server,
        "mcp_bridge.tool": tool,
        "mcp_bridge.outcome": status,
        "mcp_bridge.kind": kind,
    }
    if error_class:
        attributes["error.type"] = error_class
    return attributes


_EVENT_TEXT = 1024
"""Characters an event's text attribute keeps (a retry's reason is a server's error message, as long as it likes)."""


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _EVENT_TEXT:
        return value[: _EVENT_TEXT - 1] + "…"
    return value


def _error_type(exc: BaseException) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return str(code) if isinstance(code, int) else type(exc).__qualname__


def _parse(meta: Any) -> tuple[int, int, bool, str] | None:
    """The W3C trace context in a request's ``_meta`` (``traceparent``, ``tracestate``), or ``None``."""
    if not meta:
        return None
    try:
        value = meta.get("traceparent")
    except AttributeError:
        return None
    if not isinstance(value, str) or len(value) < 55:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or (parts[0] == "00" and len(parts) != 4):
        return None
    version, trace, span, flags = parts[:4]
    if len(trace) != 32 or len(span) != 16 or len(flags) != 2 or not _HEX.issuperset(version + trace + span + flags):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    state = meta.get("tracestate")
    # a tracestate goes on as an HTTP header too: one that is not printable ASCII (a line break, a NUL, a tab, a
    # non-ASCII letter) is no W3C tracestate, and is dropped as the spec says of an invalid one (the trace goes on)
    valid = isinstance(state, str) and len(state) <= 512 and state.isascii() and state.isprintable()
    return trace_id, span_id, bool(int(flags, 16) & 1), state if valid else ""


class Live(Hooks):
    active = True

    def __init__(self, settings: Settings, *, version: str) -> None:
        config = settings.telemetry
        self.arguments = settings.audit.arguments == "full"
        self.propagate = settings.telemetry.propagate
        attributes: dict[str, Any] = {"service.version": version, **config.resource_attributes}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = config.service_name
        if settings.user is not None and settings.user.email:
            attributes["user.email"] = settings.user.email  # who, as the audit records it
        self.resource = Resource.create(attributes)
        self.resource_attributes = dict(self.resource.attributes)
        self.version, self.config = version, config
        self.scope = InstrumentationScope("mcp-bridge", version)
        timeout = None if any(os.environ.get(v) for v in _TIMEOUT_VARIABLES) else _EXPORT_TIMEOUT_SECONDS
        self.dropped = _Dropped()
        traces = signal_endpoint(config, "traces")
        metrics = signal_endpoint(config, "metrics")
        logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # failures are counted and logged here
        self.exporter = _SpanExporter(self.dropped, endpoint=traces, timeout=timeout)
        self.metric_exporter = OTLPMetricExporter(endpoint=metrics, timeout=timeout)
        self._post_spans = _direct(self.exporter)
        self._post_metrics = _direct(self.metric_exporter)
        if self._post_spans is None or self._post_metrics is None:
            log.info("telemetry.public_export", reason="the exporters' public export(), with the SDK's encoder")
        self.server_duration = _Instrument(
            "mcp.server.operation.duration", "histogram", "s", "Requests of the IDE, as the bridge served them"
        )
        self.client_duration = _Instrument(
            "mcp.client.operation.duration", "histogram", "s", "Requests of the bridge to the servers"
        )
        self.call_duration = _Instrument(
            "mcp_bridge.call.duration",
            "histogram",
            "s",
            "Calls, reads and prompts by server, tool and outcome (its count is the number of calls)",
        )
        self.state = _Instrument("mcp_bridge.upstream.state", "gauge", "", "1 for each server's current state")
        self.reconnects = _Instrument("mcp_bridge.upstream.reconnects", "counter", "{reconnect}")
        self.spool_pending = _Instrument("mcp_bridge.audit.spool.pending", "gauge", "{event}")
        self.spool_dropped = _Instrument("mcp_bridge.audit.spool.dropped", "gauge", "{event}")
        self.catalog_tools = _Instrument("mcp_bridge.catalog.tools", "gauge", "{tool}")
        self._dropped_metric = _Instrument(
            "mcp_bridge.telemetry.dropped",
            "counter",
            "{item}",
            "Spans, measurements and metric batches that could not be exported (dropped)",
        )
        self._points: dict[_Instrument, dict[tuple[tuple[str, Any], ...], Any]] = {}
        self._points_lock = threading.Lock()
        self._started_ns = time.time_ns()
        self._exported_at = time.monotonic()
        self.interval = config.metrics_interval
        self._counters: dict[str, Any] = {}
        self._early: dict[tuple[str, Any], Any] = {}
        """``initialize``/``server/discover`` answered before the SDK loaded, by (method, id), until the SDK sees it."""
        self._addresses: dict[str, dict[str, Any]] = {}
        self._client_templates: dict[tuple[Any, ...], tuple[str, dict[str, Any], dict[str, Any]]] = {}
        self._outcomes: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._keys: dict[int, tuple[dict[str, Any], tuple[tuple[str, Any], ...]]] = {}
        """A measurement's attributes (most are templates, shared) -> their sorted items, the aggregation's key."""
        self._states: dict[str, str] = {}
        self._spans: collections.deque[_Span] = collections.deque()
        self._measures: collections.deque[tuple[Any, str, float, dict[str, Any]]] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._export_spans, name="telemetry-spans", daemon=True),
            threading.Thread(target=self._apply_measures, name="telemetry-metrics", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info("telemetry.start", traces=traces, metrics=metrics)

    # ------------------------------------------------------------------ recording (on the event loop)

    def _finish(self, span: _Span, end: int = 0) -> None:
        span.end = end or time.time_ns()
        if not span.sampled:
            return
        if len(self._spans) >= _MAX_QUEUE:
            self.dropped.failed("spans", 1, "(queue full)")
            return
        self._spans.append(span)
        if len(self._spans) >= _BATCH:
            self._wake.set()

    def _measure(self, instrument: Any, how: str, value: float, attributes: dict[str, Any]) -> None:
        if len(self._measures) >= _MAX_QUEUE * 2:
            self.dropped.failed("measurements", 1, "(queue full)")
            return
        self._measures.append((instrument, how, value, attributes))

    def front_middleware(self) -> Any:
        finish, measure, duration, early = self._finish, self._measure, self.server_duration, self._early
        templates: dict[tuple[str, str | None, str | None], _Template] = {}
        pipe = {"network.transport": "pipe"}

        async def traced(ctx: Any, call_next: Any) -> Any:
            if ctx.request_id is None:  # notifications are not traced
                return await call_next(ctx)
            method, params, version = ctx.method, ctx.params, ctx.protocol_version
            key = (method, _target_name(method, params), version)
            template = templates.get(key)  # the same for every call of one tool in one protocol version
            if template is None:
                template = _kept(templates, key, lambda: _template(method, params, version, {}, pipe))
            name, base, measured = template
            attributes = {**base, "jsonrpc.request.id": str(ctx.request_id)}
            span = _Span(name, SpanKind.SERVER, attributes, _parse(ctx.meta))
            token = _current.set(span)
            start = time.perf_counter()
            ended = False
            if hasattr(ctx, "end_early"):  # the short way's request: a round may answer it while its call goes on

                def end_early() -> None:
                    nonlocal ended
                    if not ended:
                        ended = True
                        finish(span)
                        measure(duration, "record", time.perf_counter() - start, measured)

                ctx.end_early = end_early
            try:
                return await call_next(ctx)
            except BaseException as exc:  # the JSON-RPC error's code, as the conventions have it
                if not ended:
                    span.error = attributes["error.type"] = _error_type(exc)
                    measured = {**measured, "error.type": span.error}
                    if (code := getattr(getattr(exc, "error", None), "code", None)) is not None:
                        attributes["rpc.response.status_code"] = str(code)
                raise
            finally:
                _current.reset(token)
                if ended:
                    pass
                elif early and (answered := early.pop((method, ctx.request_id), None)) is not None:
                    # answered before the SDK was loaded (and fed to it since): the times it was read and answered at
                    span.start = answered.start_ns
                    attributes["mcp_bridge.answered_early"] = True
                    finish(span, answered.end_ns)
                    measure(duration, "record", max(0, answered.end_ns - answered.start_ns) / 1e9, measured)
                else:
                    finish(span)
                    measure(duration, "record", time.perf_counter() - start, measured)

        return traced

    def answered_early(self, answers: Sequence[Any], version: str | None) -> None:
        for answer in answers:
            if answer.method in _FED_TO_THE_SDK:
                self._early[(answer.method, answer.request_id)] = answer  # the middleware's span takes its times
                continue
            measured: dict[str, Any] = {"mcp.method.name": answer.method}
            if version:
                measured["mcp.protocol.version"] = version
            attributes = {
                **measured,
                "jsonrpc.request.id": str(answer.request_id),
                "network.transport": "pipe",
                "mcp_bridge.answered_early": True,
            }
            span = _Span(answer.method, SpanKind.SERVER, attributes, _parse(answer.trace))
            span.start = answer.start_ns
            self._finish(span, answer.end_ns)
            self._measure(self.server_duration, "record", max(0, answer.end_ns - answer.start_ns) / 1e9, measured)

    def upstream(self, server: str, request: Any, era: str | None, url: str | None) -> _Request:
        method = getattr(request, "method", "request")
        params = getattr(request, "params", None)
        key = (server, method, _target_name(method, params), era, url)
        template = self._client_templates.get(key)  # made once per server, tool and era (as the IDE's requests')
        if template is None:
            template = _kept(
                self._client_templates,
                key,
                lambda: _template(
                    method,
                    params,
                    era,
                    {"mcp_bridge.server": server},
                    {"network.protocol.name": "http", **(self._address(url) if url else {})},
                ),
            )
        name, base, measured = template
        span = _Span(name, SpanKind.CLIENT, dict(base), _current.get())
        return _Request(self, span, measured, self.propagate and method != "tools/call")

    def _address(self, url: str) -> dict[str, Any]:
        found = self._addresses.get(url)
        if found is None:
            found = {}
            parts = urlsplit(url)
            if parts.hostname:
                found["server.address"] = parts.hostname
            with contextlib.suppress(ValueError):
                if parts.port:
                    found["server.port"] = parts.port
            self._addresses[url] = found
        return found

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Any]:
        span = _Span(name, SpanKind.INTERNAL, attributes, _current.get())
        token = _current.set(span)
        try:
            yield span
        finally:
            _current.reset(token)
            self._finish(span)

    def note(self, name: str, **attributes: Any) -> None:
        span = _current.get()
        if span is not None:
            kept = {k: _bounded(v) for k, v in attributes.items() if v is not None}
            span.events = [*span.events, (time.time_ns(), name, kept)]

    def inject(self, meta: MutableMapping[str, Any]) -> None:
        if not self.propagate:  # none goes to the server, not the IDE's either
            meta.pop("traceparent", None)
            meta.pop("tracestate", None)
            return
        span = _current.get()
        if span is not None:
            meta["traceparent"] = span.traceparent()
            if span.trace_state:
                meta["tracestate"] = span.trace_state
            else:
                meta.pop("tracestate", None)

    def headers(self, headers: MutableMapping[str, str]) -> None:
        span = _current.get()
        if span is None:
            return
        session = headers.get("mcp-session-id")
        if session is not None and span.kind is SpanKind.CLIENT:  # a handshake-era session (as in http)
            span.attributes["mcp.session.id"] = session
        if self.propagate and "traceparent" not in headers:
            headers["traceparent"] = span.traceparent()
            if span.trace_state:
                headers["tracestate"] = span.trace_state

    def http(self, request: Any) -> None:
        if request.method != "POST":
            return
        headers = request.headers
        session = headers.get("mcp-session-id")
        if session is not None:  # a handshake-era session: the request's span says which (semantic conventions)
            span = _current.get()
            if span is not None and span.kind is SpanKind.CLIENT:
                span.attributes["mcp.session.id"] = session
        if "traceparent" in headers or not self.propagate:
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
        if event.kind in ("call", "prompt_get", "resource_read", "completion", "resource_subscribe"):
            key = (
                event.server or "",
                event.tool or event.exposed_name or "",
                event.status,
                event.kind,
                event.error_class,
            )
            attributes = self._outcomes.get(key)  # shared: never changed once made
            if attributes is None:
                attributes = _kept(self._outcomes, key, lambda: _outcome(*key))
            span = _current.get()
            if span is not None:
                span.attributes.update(attributes)
                if event.error_class:
                    span.error = span.error or event.error_class
                if self.arguments and event.arguments is not None:
                    span.attributes["gen_ai.tool.call.arguments"] = clean(json.dumps(event.arguments, default=str))
            if event.replied_at is not None:
                self._measure(self.call_duration, "record", max(0.0, event.replied_at - event.asked_at), attributes)

    def upstream_state(self, server: str, state: str) -> None:
        previous = self._states.get(server)
        if previous == state:
            return
        if previous is not None:
            self._measure(self.state, "set", 0, {"mcp_bridge.server": server, "mcp_bridge.state": previous})
            if state == "connecting":
                self._measure(self.reconnects, "add", 1, {"mcp_bridge.server": server})
        self._states[server] = state
        self._measure(self.state, "set", 1, {"mcp_bridge.server": server, "mcp_bridge.state": state})

    def count(self, name: str, **attributes: Any) -> None:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = _Instrument(name, "counter")
        self._measure(counter, "add", 1, {f"mcp_bridge.{k}": v for k, v in attributes.items()})

    async def watch(self, bridge: Any) -> None:
        """Sample the bridge's gauges (audit spool backlog, catalog size) on the event loop, once per export."""
        while True:
            self.sample(bridge)
            await anyio.sleep(self.interval)

    def sample(self, bridge: Any) -> None:
        try:
            spool = bridge.audit.spool
            if spool is not None:
                stats = spool.stats()
                self._measure(self.spool_pending, "set", stats.pending, {})
                self._measure(self.spool_dropped, "set", stats.dropped, {})
        except Exception as exc:  # a spool that cannot be read is the audit's to report
            log.debug("telemetry.spool_unreadable", error=str(exc))
        counts: dict[str, int] = {}
        for entry in bridge.catalog.entries():
            if entry.denial is None and not entry.blocked:
                counts[entry.server] = counts.get(entry.server, 0) + 1
        for server in bridge.upstreams:
            self._measure(self.catalog_tools, "set", counts.get(server, 0), {"mcp_bridge.server": server})

    # ------------------------------------------------------------------ exporting (in the threads)

    def _apply_measures(self) -> None:
        while not self._stopping:
            time.sleep(_MEASURE_DELAY_SECONDS)
            with self._points_lock:
                self._drain_measures()
                if time.monotonic() - self._exported_at >= self.interval:
                    self._export_metrics()

    def _drain_measures(self) -> None:
        bounds = otlp.HISTOGRAM_BOUNDS
        keys = self._keys
        taken = 0
        while self._measures:
            taken += 1
            if taken % _MEASURES_CHUNK == 0:
                time.sleep(0)  # let the event loop have the interpreter lock
            instrument, _how, value, attributes = self._measures.popleft()
            known = keys.get(id(attributes))
            if known is not None and known[0] is attributes:
                key = known[1]
            else:
                key = tuple(sorted(attributes.items()))
                if len(keys) >= _TEMPLATES * 4:
                    keys.clear()
                keys[id(attributes)] = (attributes, key)
            points = self._points.setdefault(instrument, {})
            if instrument.kind == "histogram":
                state = points.get(key)
                if state is None:
                    state = points[key] = [0, 0.0, value, value, [0] * (len(bounds) + 1)]
                state[0] += 1
                state[1] += value
                state[2] = min(state[2], value)
                state[3] = max(state[3], value)
                state[4][bisect.bisect_left(bounds, value)] += 1
            elif instrument.kind == "counter":
                points[key] = points.get(key, 0) + value
            else:
                points[key] = value

    def _export_metrics(self) -> None:
        """Every metric so far (cumulative since the start), in one OTLP request through the exporter's HTTP client
        (or its public ``export()``: :func:`_direct`)."""
        self._exported_at = time.monotonic()
        now = time.time_ns()
        dropped = self.dropped
        self._points[self._dropped_metric] = {
            (("mcp_bridge.signal", "traces"),): dropped.spans,
            (("mcp_bridge.signal", "metrics"),): dropped.measurements + dropped.metric_batches,
        }
        try:
            if self._post_metrics is None:
                ok = self._export_metrics_public(now)
            else:
                ok = bool(self._post_metrics(self._encode_metrics(now)).success)
        except Exception:  # the export thread's boundary: count it
            ok = False
        if not ok:
            self.dropped.failed("metrics", 1, signal_endpoint(self.config, "metrics"))

    def _encode_metrics(self, now: int) -> bytes:
        encoded = []
        for instrument, points in self._points.items():
            if not points:
                continue
            rows = [(dict(key), value) for key, value in points.items()]
            if instrument.kind == "histogram":
                data = otlp.histogram(rows, self._started_ns, now)
            elif instrument.kind == "counter":
                data = otlp.counter(rows, self._started_ns, now)
            else:
                data = otlp.gauge(rows, self._started_ns, now)
            encoded.append(otlp.metric(instrument.name, instrument.unit, instrument.description, data))
        return otlp.metrics_request(self.resource_attributes, ("mcp-bridge", self.version), encoded)

    def _export_metrics_public(self, now: int) -> bool:
        """The same metrics as the SDK's objects, through the exporter's public ``export()``."""
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Gauge,
            Histogram,
            HistogramDataPoint,
            Metric,
            MetricExportResult,
            MetricsData,
            NumberDataPoint,
            ResourceMetrics,
            ScopeMetrics,
            Sum,
        )

        start, cumulative = self._started_ns, AggregationTemporality.CUMULATIVE
        metrics = []
        for instrument, points in self._points.items():
            if not points:
                continue
            data: Any
            if instrument.kind == "histogram":
                rows = [
                    HistogramDataPoint(dict(key), start, now, n, total, buckets, otlp.HISTOGRAM_BOUNDS, low, high)
                    for key, (n, total, low, high, buckets) in points.items()
                ]
                data = Histogram(rows, cumulative)
            else:
                numbers = [NumberDataPoint(dict(key), start, now, value) for key, value in points.items()]
                data = Sum(numbers, cumulative, True) if instrument.kind == "counter" else Gauge(numbers)
            metrics.append(Metric(instrument.name, instrument.description, instrument.unit, data))
        scope = ScopeMetrics(self.scope, metrics, "")
        request = MetricsData([ResourceMetrics(self.resource, [scope], "")])
        return self.metric_exporter.export(request) is MetricExportResult.SUCCESS

    def _export_spans(self) -> None:
        while not self._stopping:
            self._wake.wait(_SPAN_DELAY_SECONDS)
            self._wake.clear()
            self._drain_spans()

    def _drain_spans(self) -> None:
        while self._spans:
            batch: list[_Span] = []
            while self._spans and len(batch) < _BATCH:
                batch.append(self._spans.popleft())
            self._send(batch)

    def _send(self, batch: list[_Span]) -> None:
        """Encode a batch (:mod:`.otlp`) and POST it through the exporter's HTTP client (its headers, compression,
        retries and timeout); or, as the SDK's spans, through its public ``export()`` (:func:`_direct`), which counts
        what fails (:class:`_SpanExporter`)."""
        post = self._post_spans
        if post is None:
            self.exporter.export([self._readable(span) for span in batch])
            return
        encoded = []
        for at in range(0, len(batch), _CHUNK):
            if at:
                time.sleep(0)  # let the event loop have the interpreter lock between chunks
            for span in batch[at : at + _CHUNK]:
                if span.error:
                    span.attributes.setdefault("error.type", span.error)
                encoded.append(
                    otlp.span(
                        trace_id=span.trace_id,
                        span_id=span.span_id,
                        parent_id=span.parent_id,
                        trace_state=span.trace_state,
                        name=span.name,
                        kind=span.kind.value + 1,  # the protobuf's SpanKind counts from UNSPECIFIED
                        start=span.start,
                        end=span.end,
                        attributes=span.attributes,
                        events=span.events,
                        error=span.error is not None,
                    )
                )
        data = otlp.request(self.resource_attributes, ("mcp-bridge", self.version), encoded)
        try:
            ok = bool(post(data).success)
        except Exception:  # the export thread's boundary: drop, count, go on
            ok = False
        if not ok:
            self.dropped.failed("spans", len(batch), signal_endpoint(self.config, "traces"))

    def _readable(self, span: _Span) -> ReadableSpan:
        flags = TraceFlags(TraceFlags.SAMPLED)
        state = _trace_state(span.trace_state)
        parent = None
        if span.parent_id:
            parent = SpanContext(span.trace_id, span.parent_id, span.remote_parent, flags, state)
        status = Status(StatusCode.ERROR) if span.error else Status(StatusCode.UNSET)
        if span.error:
            span.attributes.setdefault("error.type", span.error)
        return ReadableSpan(
            name=span.name,
            context=_span_context(span),
            parent=parent,
            resource=self.resource,
            attributes=span.attributes,
            events=[Event(name, attributes, timestamp=at) for at, name, attributes in span.events],
            kind=span.kind,
            status=status,
            start_time=span.start,
            end_time=span.end,
            instrumentation_scope=self.scope,
        )

    def shutdown(self, within: float) -> None:
        """Export what waits and stop, in a thread, waiting at most ``within`` seconds (the threads are daemons: a
        collector that does not answer never holds the exit)."""
        self._stopping = True
        self._wake.set()

        def stop() -> None:
            with contextlib.suppress(Exception):
                self._drain_spans()
            with contextlib.suppress(Exception), self._points_lock:
                self._drain_measures()
                self._export_metrics()

        thread = threading.Thread(target=stop, name="telemetry-shutdown", daemon=True)
        thread.start()
        thread.join(within)
        if thread.is_alive():
            log.warning("telemetry.flush_incomplete", within=within)


def _trace_state(header: str) -> TraceState | None:
    if not header:
        return None
    try:
        return TraceState.from_header([header])
    except Exception:  # a malformed tracestate is dropped, as the W3C spec says
        return None


def _span_context(span: _Span) -> SpanContext:
    flags = TraceFlags(TraceFlags.SAMPLED if span.sampled else TraceFlags.DEFAULT)
    return SpanContext(span.trace_id, span.span_id, False, flags, _trace_state(span.trace_state))
