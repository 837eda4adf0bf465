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
more than issue 20's 50 µs a call for two spans and three measurements. So a call records each span as one small
:class:`_Span` (W3C ids made here; its attributes a shared template of its method, target and protocol version plus
what is its own), and nothing else: the measurements of a request (its duration, the call's outcome) are derived
from its span by the export thread, which is also where the span's attributes are put together. A finished span goes
on one queue (with the few loose measurements: state changes, counters, gauges); a daemon thread drains it every
second (or sooner when 2,048 wait), aggregates the measurements (:class:`_Instrument`: cumulative histograms,
counters, gauges) and encodes the spans (:mod:`.otlp`, by hand, each template's attributes encoded once); a second
daemon thread POSTs what the first hands it: the spans in batches of up to 2,048, every 5 seconds or sooner when
2,048 wait, and the metrics every ``telemetry.metrics_interval``. A queue that is full (the process swamped) or a
collector that cannot take what waits drops, and counts (``mcp_bridge.telemetry.dropped``); a collector that cannot be
reached costs the sending thread its timeout, never a call, and the log says so (the 1st, 2nd, 4th, 8th... time).
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
from typing import Any, cast
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
from mcp_bridge.logs import clean, cut, get_logger
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
_MAX_QUEUE = 16384
"""Finished spans and loose measurements waiting for the export thread; past it new ones are dropped and counted."""
_BATCH = 2048
"""Spans a request holds at most; this many waiting wake the export thread before its second is out."""
_SPAN_DELAY_SECONDS = 5.0
"""Between span exports: each POST costs the sending thread a few ms of interpreter time (the exporter's HTTP
client), so few large ones (the SDK's batch processor waits 5 s too)."""
_DRAIN_DELAY_SECONDS = 1.0
_DRAIN_CHUNK = 256
"""Records (spans and measurements) taken between two yields of the interpreter lock (``time.sleep(0)``): a second's
worth of back-to-back calls is some 2,000 spans (a few ms of the thread's time), which the event loop would otherwise
wait for whole."""
_MAX_PAYLOADS = 8
"""Encoded span batches waiting for the sending thread (a collector that does not answer): past it, the oldest is
dropped and counted."""
_HEX = frozenset("0123456789abcdef")
_FED_TO_THE_SDK = ("initialize", "server/discover")
"""Requests ``serve`` answers early and feeds to the SDK all the same (it drops the SDK's second answer)."""

EXPORT_SWITCH = "MCP_BRIDGE_TELEMETRY_EXPORT"
"""``sdk``: export through the exporters' public ``export()`` (the SDK's objects and encoder) instead of their HTTP
clients (a diagnostic; what happens by itself where those clients are not there)."""

_current: contextvars.ContextVar[_Span | None] = contextvars.ContextVar("mcp_bridge_span", default=None)
_clock = time.time_ns
"""The spans' clock, the wall clock as OpenTelemetry dates spans (a monotonic clock stops while a laptop sleeps: its
readings, anchored once, would date every later span that much in the past); a request's duration is its span's
end less its start (never below 0)."""


class _Span:
    """One span as a call records it: ids, times and references to shared attributes; its attributes are put
    together, and its measurements derived, by the export thread (:meth:`Live._drain`)."""

    __slots__ = (
        "call_seconds",
        "end",
        "error",
        "events",
        "extra",
        "header",
        "kind",
        "outcome",
        "parent_id",
        "queued",
        "raised",
        "remote_parent",
        "request_id",
        "sampled",
        "span_id",
        "start",
        "template",
        "trace_id",
        "trace_state",
    )

    def __init__(self, kind: SpanKind, template: _Template, parent: _Parent | None) -> None:
        self.kind, self.template = kind, template
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
        self.extra: dict[str, Any] | None = None
        """Attributes of its own (a session id, arguments, an error's code), beside the template's."""
        self.outcome: dict[str, Any] | None = None
        """The audit's outcome (:func:`_outcome`, shared), once its event ended."""
        self.call_seconds: float | None = None
        """The audit event's duration (``mcp_bridge.call.duration``), with :attr:`outcome`."""
        self.request_id: Any = None
        self.error: str | None = None
        """Its ``error.type`` (and status): what it raised, or the audit's error class."""
        self.raised: str | None = None
        """The ``error.type`` of what it raised (its duration's measurement carries it)."""
        self.header = ""
        self.queued = False
        """On its way to the export thread: nothing of it changes from then on."""
        self.start = _clock()
        self.end = 0

    def own(self) -> dict[str, Any]:
        """:attr:`extra`, made the first time."""
        extra = self.extra
        if extra is None:
            extra = self.extra = {}
        return extra

    def traceparent(self) -> str:
        if not self.header:  # (the request's _meta and its HTTP header both carry it)
            self.header = f"00-{self.trace_id:032x}-{self.span_id:016x}-{'01' if self.sampled else '00'}"
        return self.header


def _end_early(span: _Span) -> None:
    """A request a round answered while its call goes on: its span ends now (and is queued when the call is done)."""
    if not span.end:
        span.end = _clock()


_Parent = tuple[int, int, bool, str] | _Span
"""A span's parent: one of this bridge's, or the IDE's (trace id, span id, sampled, trace state)."""


class _Request:
    """Around one request to a server: its ``CLIENT`` span is the current one (and, on the session's way, the
    OpenTelemetry context the SDK's dispatcher injects into ``_meta``: the direct ``tools/call`` injects its own)."""

    __slots__ = ("_live", "_otel", "_session_way", "_token", "span")

    def __init__(self, live: Live, span: _Span, session_way: bool) -> None:
        self._live, self.span, self._session_way = live, span, session_way
        self._otel: object = None

    def __enter__(self) -> _Span:
        self._token = _current.set(self.span)
        if self._session_way:
            self._otel = otel_context.attach(set_span_in_context(NonRecordingSpan(_span_context(self.span))))
        return self.span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        span = self.span
        if exc is not None:
            span.error = span.raised = _error_type(exc)
        if self._otel is not None:
            otel_context.detach(self._otel)  # type: ignore[arg-type]
        _current.reset(self._token)
        self._live._finish(span)


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


_NAME_TEXT = 256
"""Characters a name or id keeps in a span's name and attributes (a tool's or prompt's name, a session id, a request
id): a hostile server's tool of 100,000 characters would otherwise be sent whole in every span of every call."""
_URI_TEXT = 1024
"""Characters a resource URI keeps (``mcp.resource.uri``)."""
_ARGUMENTS_TEXT = 4096
"""Characters the arguments keep (``gen_ai.tool.call.arguments``, with ``audit.arguments: full``)."""


def _target(method: str, params: Any) -> tuple[str | None, dict[str, Any]]:
    """A request's target (tool or prompt name, resource URI, cut: :data:`_NAME_TEXT`, :data:`_URI_TEXT`) and its
    semantic-convention attributes."""

    def get(key: str) -> Any:
        return params.get(key) if isinstance(params, dict) else getattr(params, key, None)

    if method == "tools/call":
        name = get("name")
        if isinstance(name, str):
            name = cut(name, _NAME_TEXT)
            return name, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}
    elif method == "prompts/get":
        name = get("name")
        if isinstance(name, str):
            name = cut(name, _NAME_TEXT)
            return name, {"gen_ai.prompt.name": name}
    elif method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        uri = get("uri")
        if uri is not None:
            shown = cut(clean(str(uri)), _URI_TEXT)  # a URI may carry a token in its query
            return shown, {"mcp.resource.uri": shown}
    return None, {}


def _target_name(method: str, params: Any) -> str | None:
    """What :func:`_target` names, without its attributes, cut as it is: the key of a request's attribute template
    (the same template for two names that are the same once cut)."""
    key = "name" if method in ("tools/call", "prompts/get") else "uri" if method.startswith("resources/") else None
    if key is None:
        return None
    value = params.get(key) if isinstance(params, dict) else getattr(params, key, None)
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= _NAME_TEXT else cut(text, _NAME_TEXT if key == "name" else _URI_TEXT)


_TEMPLATES = 1024
"""Attribute templates kept per kind (requests of the IDE, requests to servers, audit outcomes); past it, forgotten."""

_Template = tuple[str, dict[str, Any], dict[str, Any] | None]
"""A span's name, its attributes (but its own: :attr:`_Span.extra`), its duration's measurement's attributes (a
request's; ``None``: no measurement, a span of the bridge's own). Shared by every span of one kind of request, never
changed once made."""


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
        "mcp_bridge.server": cut(server, _NAME_TEXT),
        "mcp_bridge.tool": cut(tool, _NAME_TEXT),
        "mcp_bridge.outcome": status,
        "mcp_bridge.kind": kind,
    }
    if error_class:
        attributes["error.type"] = error_class
    return attributes


_EVENT_TEXT = 1024
"""Characters an event's text attribute keeps (a retry's reason is a server's error message, as long as it likes)."""


def _bounded(value: Any) -> Any:
    return cut(value, _EVENT_TEXT) if isinstance(value, str) else value


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
        """Held by the export thread while it drains and encodes (and by :meth:`shutdown`)."""
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
        self._queue: collections.deque[_Span | tuple[Any, float, dict[str, Any]]] = collections.deque()
        """Finished spans and loose measurements, for the export thread."""
        self._encoded: list[bytes | ReadableSpan] = []
        """Spans drained and encoded (or, the public way, made the SDK's), until their batch is handed on."""
        self._blocks: dict[tuple[int, int, str | None], tuple[Any, Any, bytes]] = {}
        """(template's attributes, outcome, error) -> their encoded attributes (the dicts kept, so that their ids stay
        theirs)."""
        self._spans_at = time.monotonic()
        self._payloads: collections.deque[tuple[str, Any, int]] = collections.deque()
        """What waits for the sending thread: (``spans`` or ``metrics``, the encoded request or the SDK's objects,
        the spans it holds)."""
        self._wake = threading.Event()
        self._send_wake = threading.Event()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._export, name="telemetry-export", daemon=True),
            threading.Thread(target=self._sender, name="telemetry-send", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info("telemetry.start", traces=traces, metrics=metrics)

    # ------------------------------------------------------------------ recording (on the event loop)

    def _finish(self, span: _Span, end: int = 0) -> None:
        span.end = end or _clock()
        span.queued = True
        queue = self._queue
        if len(queue) >= _MAX_QUEUE:
            self.dropped.failed("spans", 1, "(queue full)")
            return
        queue.append(span)
        if len(queue) >= _BATCH:
            self._wake.set()

    def _measure(self, instrument: Any, value: float, attributes: dict[str, Any]) -> None:
        if len(self._queue) >= _MAX_QUEUE:
            self.dropped.failed("measurements", 1, "(queue full)")
            return
        self._queue.append((instrument, value, attributes))

    def front_middleware(self) -> Any:
        finish, early = self._finish, self._early
        templates: dict[tuple[str, str | None, str | None], _Template] = {}
        pipe = {"network.transport": "pipe"}
        server = SpanKind.SERVER

        async def traced(ctx: Any, call_next: Any) -> Any:
            if ctx.request_id is None:  # notifications are not traced
                return await call_next(ctx)
            method, params, version = ctx.method, ctx.params, ctx.protocol_version
            key = (method, _target_name(method, params), version)
            template = templates.get(key)  # the same for every call of one tool in one protocol version
            if template is None:
                template = _kept(templates, key, lambda: _template(method, params, version, {}, pipe))
            meta = ctx.meta
            span = _Span(server, template, _parse(meta) if meta else None)
            span.request_id = ctx.request_id
            token = _current.set(span)
            if hasattr(ctx, "end_early"):  # the short way's request: a round may answer it while its call goes on
                ctx.end_early = lambda: _end_early(span)
            try:
                return await call_next(ctx)
            except BaseException as exc:  # the JSON-RPC error's code, as the conventions have it
                if not span.end:
                    span.error = span.raised = _error_type(exc)
                    if (code := getattr(getattr(exc, "error", None), "code", None)) is not None:
                        span.own()["rpc.response.status_code"] = str(code)
                raise
            finally:
                _current.reset(token)
                if span.end:  # a round answered it: it ended then, and goes now, with the call's outcome
                    finish(span, span.end)
                elif early and (answered := early.pop((method, ctx.request_id), None)) is not None:
                    # answered before the SDK was loaded (and fed to it since): the times it was read and answered at
                    span.start = answered.start_ns
                    span.own()["mcp_bridge.answered_early"] = True
                    finish(span, max(answered.end_ns, span.start))
                else:
                    finish(span)

        return traced

    def answered_early(self, answers: Sequence[Any], version: str | None) -> None:
        for answer in answers:
            if answer.method in _FED_TO_THE_SDK:
                self._early[(answer.method, answer.request_id)] = answer  # the middleware's span takes its times
                continue
            measured: dict[str, Any] = {"mcp.method.name": answer.method}
            if version:
                measured["mcp.protocol.version"] = version
            attributes = {**measured, "network.transport": "pipe", "mcp_bridge.answered_early": True}
            span = _Span(SpanKind.SERVER, (answer.method, attributes, measured), _parse(answer.trace))
            span.request_id = answer.request_id
            span.start = answer.start_ns
            self._finish(span, max(answer.end_ns, span.start))

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
        span = _Span(SpanKind.CLIENT, template, _current.get())
        return _Request(self, span, self.propagate and method != "tools/call")

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
        span = _Span(SpanKind.INTERNAL, (name, attributes, None), _current.get())
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
            span.events = [*span.events, (_clock(), name, kept)]

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
            span.own()["mcp.session.id"] = cut(session, _NAME_TEXT)
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
                span.own()["mcp.session.id"] = cut(session, _NAME_TEXT)
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
            seconds = None if event.replied_at is None else max(0.0, event.replied_at - event.asked_at)
            span = _current.get()
            if span is not None and not span.queued:
                if span.call_seconds is not None and span.outcome is not None:  # a second event: the first's
                    self._measure(self.call_duration, span.call_seconds, span.outcome)
                span.outcome = attributes
                span.call_seconds = seconds
                if event.error_class:
                    span.error = span.error or event.error_class
                if self.arguments and event.arguments is not None:
                    arguments = clean(json.dumps(event.arguments, default=str))
                    span.own()["gen_ai.tool.call.arguments"] = cut(arguments, _ARGUMENTS_TEXT)
            elif seconds is not None:
                self._measure(self.call_duration, seconds, attributes)

    def upstream_state(self, server: str, state: str) -> None:
        previous = self._states.get(server)
        if previous == state:
            return
        if previous is not None:
            self._measure(self.state, 0, {"mcp_bridge.server": server, "mcp_bridge.state": previous})
            if state == "connecting":
                self._measure(self.reconnects, 1, {"mcp_bridge.server": server})
        self._states[server] = state
        self._measure(self.state, 1, {"mcp_bridge.server": server, "mcp_bridge.state": state})

    def count(self, name: str, **attributes: Any) -> None:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = _Instrument(name, "counter")
        self._measure(counter, 1, {f"mcp_bridge.{k}": v for k, v in attributes.items()})

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
                self._measure(self.spool_pending, stats.pending, {})
                self._measure(self.spool_dropped, stats.dropped, {})
        except Exception as exc:  # a spool that cannot be read is the audit's to report
            log.debug("telemetry.spool_unreadable", error=str(exc))
        counts: dict[str, int] = {}
        for entry in bridge.catalog.entries():
            if entry.denial is None and not entry.blocked:
                counts[entry.server] = counts.get(entry.server, 0) + 1
        for server in bridge.upstreams:
            self._measure(self.catalog_tools, counts.get(server, 0), {"mcp_bridge.server": server})

    # ------------------------------------------------------------------ exporting (in the threads)

    def _export(self) -> None:
        """The export thread: every second (or when 2,048 wait), drain the queue; hand the spans on every 5 s (or
        when 2,048 are encoded) and the metrics every ``telemetry.metrics_interval``."""
        while not self._stopping:
            self._wake.wait(_DRAIN_DELAY_SECONDS)
            self._wake.clear()
            try:
                with self._points_lock:
                    self._drain()
                    now = time.monotonic()
                    if len(self._encoded) >= _BATCH or (self._encoded and now - self._spans_at >= _SPAN_DELAY_SECONDS):
                        self._hand_spans()
                    if now - self._exported_at >= self.interval:
                        self._hand_metrics()
            except Exception as exc:  # the thread's boundary: a record it cannot take is lost, never the thread
                log.warning("telemetry.export_error", error=str(exc))  # (the log masks and cuts it)

    def _drain(self) -> None:
        """Take what the calls queued: each span's measurements aggregated and, if sampled, the span encoded."""
        queue, taken = self._queue, 0
        direct = self._post_spans is not None
        while queue:
            taken += 1
            if taken % _DRAIN_CHUNK == 0:
                time.sleep(0)  # let the event loop have the interpreter lock
            item = queue.popleft()
            if type(item) is not _Span:
                self._aggregate(*item)  # type: ignore[misc]
                continue
            span = item
            measured = span.template[2]
            if measured is not None:
                if span.raised:
                    measured = {**measured, "error.type": span.raised}
                instrument = self.server_duration if span.kind is SpanKind.SERVER else self.client_duration
                self._aggregate(instrument, max(0, span.end - span.start) / 1e9, measured)
            if span.call_seconds is not None and span.outcome is not None:
                self._aggregate(self.call_duration, span.call_seconds, span.outcome)
            if span.sampled:
                self._encoded.append(self._encode(span) if direct else self._readable(span))
                if len(self._encoded) >= _BATCH:
                    self._hand_spans()

    def _aggregate(self, instrument: _Instrument, value: float, attributes: dict[str, Any]) -> None:
        """One measurement into its instrument's points (recorded, added or set, by the instrument's kind)."""
        keys = self._keys
        known = keys.get(id(attributes))  # (most attributes are templates, shared: sorted once)
        if known is not None and known[0] is attributes:
            key = known[1]
        else:
            key = tuple(sorted(attributes.items()))
            if len(keys) >= _TEMPLATES * 4:
                keys.clear()
            keys[id(attributes)] = (attributes, key)
        points = self._points.get(instrument)
        if points is None:
            points = self._points[instrument] = {}
        if instrument.kind == "histogram":
            state = points.get(key)
            if state is None:
                state = points[key] = [0, 0.0, value, value, [0] * (len(otlp.HISTOGRAM_BOUNDS) + 1)]
            state[0] += 1
            state[1] += value
            if value < state[2]:
                state[2] = value
            if value > state[3]:
                state[3] = value
            state[4][bisect.bisect_left(otlp.HISTOGRAM_BOUNDS, value)] += 1
        elif instrument.kind == "counter":
            points[key] = points.get(key, 0) + value
        else:
            points[key] = value

    def attributes(self, span: _Span) -> dict[str, Any]:
        """A span's attributes: its template's, the outcome's, its own, its error's type."""
        attributes = {**span.template[1]}
        if span.outcome:
            attributes.update(span.outcome)
        if span.request_id is not None:
            attributes["jsonrpc.request.id"] = cut(str(span.request_id), _NAME_TEXT)
        if span.extra:
            attributes.update(span.extra)
        if span.error:
            attributes["error.type"] = span.error
        return attributes

    def _encode(self, span: _Span) -> bytes:
        """A span in OTLP's protobuf (:mod:`.otlp`); the attributes of its template, outcome and error encoded once
        for all the spans that share them."""
        template, outcome, error = span.template[1], span.outcome, span.error
        if span.kind is SpanKind.INTERNAL:  # its attributes are its own (a wait for a connection): none shared
            block = otlp.key_values(9, self.attributes(span))
        else:
            key = (id(template), id(outcome), error)
            known = self._blocks.get(key)
            if known is not None and known[0] is template and known[1] is outcome:
                block = known[2]
            else:
                merged = {**template, **(outcome or {})}
                if error:
                    merged["error.type"] = error
                block = otlp.key_values(9, merged)
                if len(self._blocks) >= _TEMPLATES * 4:
                    self._blocks.clear()
                self._blocks[key] = (template, outcome, block)
            if span.request_id is not None:
                block += otlp.key_values(9, {"jsonrpc.request.id": cut(str(span.request_id), _NAME_TEXT)})
            if span.extra:
                block += otlp.key_values(9, span.extra)
        return otlp.span(
            trace_id=span.trace_id,
            span_id=span.span_id,
            parent_id=span.parent_id,
            trace_state=span.trace_state,
            name=span.template[0],
            kind=span.kind.value + 1,  # the protobuf's SpanKind counts from UNSPECIFIED
            start=span.start,
            end=max(span.end, span.start),  # (a wall clock set back during the request)
            attributes=block,
            events=span.events,
            error=error is not None,
        )

    def _hand_spans(self) -> None:
        """The spans encoded so far, as one request, to the sending thread."""
        batch, self._encoded = self._encoded, []
        self._spans_at = time.monotonic()
        if not batch:
            return
        if self._post_spans is None:
            self._hand(("spans", batch, len(batch)))
        else:
            data = otlp.request(self.resource_attributes, ("mcp-bridge", self.version), cast(list[bytes], batch))
            self._hand(("spans", data, len(batch)))

    def _hand_metrics(self) -> None:
        """Every metric so far (cumulative since the start), encoded (or the SDK's objects), to the sending thread;
        a batch of metrics still waiting there is replaced (this one holds it all)."""
        self._exported_at = time.monotonic()
        now = time.time_ns()
        dropped = self.dropped
        self._points[self._dropped_metric] = {
            (("mcp_bridge.signal", "traces"),): dropped.spans,
            (("mcp_bridge.signal", "metrics"),): dropped.measurements + dropped.metric_batches,
        }
        try:
            data = self._metrics_public(now) if self._post_metrics is None else self._encode_metrics(now)
        except Exception:  # the export thread's boundary: count it
            self.dropped.failed("metrics", 1, signal_endpoint(self.config, "metrics"))
            return
        waiting = next((p for p in self._payloads if p[0] == "metrics"), None)
        if waiting is not None:
            with contextlib.suppress(ValueError):  # (the sending thread took it meanwhile)
                self._payloads.remove(waiting)
        self._hand(("metrics", data, 0))

    def _hand(self, payload: tuple[str, Any, int]) -> None:
        payloads = self._payloads
        if len(payloads) >= _MAX_PAYLOADS:
            oldest = next((p for p in payloads if p[0] == "spans"), None)
            if oldest is not None:
                with contextlib.suppress(ValueError):  # (the sending thread took it meanwhile)
                    payloads.remove(oldest)
                    self.dropped.failed("spans", oldest[2], "(send queue full)")
        payloads.append(payload)
        self._send_wake.set()

    def _sender(self) -> None:
        """The sending thread: POST what the export thread handed on, in order."""
        while not self._stopping:
            self._send_wake.wait(_DRAIN_DELAY_SECONDS)
            self._send_wake.clear()
            self._send_all()

    def _send_all(self) -> None:
        while self._payloads:
            try:
                what, data, n = self._payloads.popleft()
            except IndexError:  # (the shutdown's thread took it)
                return
            self._post(what, data, n)

    def _post(self, what: str, data: Any, n: int) -> None:
        """POST one request through the exporter's HTTP client (its headers, compression, retries and timeout), or
        the SDK's objects through its public ``export()`` (:func:`_direct`), counting what fails."""
        if what == "spans" and self._post_spans is None:
            self.exporter.export(data)  # (it counts what fails: _SpanExporter)
            return
        try:
            if what == "spans":
                ok = bool(self._post_spans(data).success)
            elif self._post_metrics is None:
                from opentelemetry.sdk.metrics.export import MetricExportResult

                ok = self.metric_exporter.export(data) is MetricExportResult.SUCCESS
            else:
                ok = bool(self._post_metrics(data).success)
        except Exception:  # the sending thread's boundary: drop, count, go on
            ok = False
        if not ok:
            self.dropped.failed(what, n or 1, signal_endpoint(self.config, "traces" if what == "spans" else what))

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

    def _metrics_public(self, now: int) -> Any:
        """The same metrics as the SDK's objects (``MetricsData``), for the exporter's public ``export()``."""
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Gauge,
            Histogram,
            HistogramDataPoint,
            Metric,
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
        return MetricsData([ResourceMetrics(self.resource, [scope], "")])

    def _readable(self, span: _Span) -> ReadableSpan:
        flags = TraceFlags(TraceFlags.SAMPLED)
        state = _trace_state(span.trace_state)
        parent = None
        if span.parent_id:
            parent = SpanContext(span.trace_id, span.parent_id, span.remote_parent, flags, state)
        status = Status(StatusCode.ERROR) if span.error else Status(StatusCode.UNSET)
        return ReadableSpan(
            name=span.template[0],
            context=_span_context(span),
            parent=parent,
            resource=self.resource,
            attributes=self.attributes(span),
            events=[Event(name, attributes, timestamp=at) for at, name, attributes in span.events],
            kind=span.kind,
            status=status,
            start_time=span.start,
            end_time=max(span.end, span.start),
            instrumentation_scope=self.scope,
        )

    def shutdown(self, within: float) -> None:
        """Export what waits and stop, in a thread, waiting at most ``within`` seconds (the threads are daemons: a
        collector that does not answer never holds the exit)."""
        self._stopping = True
        self._wake.set()
        self._send_wake.set()

        def stop() -> None:
            with contextlib.suppress(Exception), self._points_lock:
                self._drain()
                self._hand_spans()
                self._hand_metrics()
            with contextlib.suppress(Exception):
                self._send_all()

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
