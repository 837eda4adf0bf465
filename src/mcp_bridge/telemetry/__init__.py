"""Telemetry of the bridge itself: OpenTelemetry traces and metrics, off by default (``telemetry: {enabled: true}``).

The rest of the bridge calls the small hooks of :data:`hooks` at a few places (a request of the IDE, a request to a
server, an audit event's end, a state change); while telemetry is off, :data:`hooks` is :class:`Hooks`, whose every
method does nothing, and nothing of OpenTelemetry's SDK or exporter is imported. :func:`start` (``serve``, with
telemetry enabled) imports :mod:`mcp_bridge.telemetry.live` and puts its hooks in place; :func:`stop` flushes what
is left, within a bound, and puts the no-op hooks back.

A base module: it imports only ``config`` and ``logs`` (and :mod:`.live` what it needs of OpenTelemetry).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mcp_bridge.config import Settings, TelemetryConfig

_NULL = contextlib.nullcontext()


class Hooks:
    """What the bridge tells telemetry; this base does nothing (telemetry off)."""

    active = False
    propagate = True
    """Whether trace context goes to the servers (``telemetry.propagate``): an IDE's own with telemetry off."""

    def front_middleware(self) -> Callable[..., Any] | None:
        """A middleware for the IDE-facing server (a span per IDE request), or ``None``."""
        return None

    def upstream(
        self, server: str, request: Any, era: str | None, url: str | None
    ) -> contextlib.AbstractContextManager[Any]:
        """Around one request to a server (the child span, with its retries and waits)."""
        return _NULL

    def span(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
        """A span of its own, inside the current one (a wait for a server's connection)."""
        return _NULL

    def note(self, name: str, **attributes: Any) -> None:
        """An event on the current span (a retry, a wait for a connection)."""

    def inject(self, meta: MutableMapping[str, Any]) -> None:
        """The current trace context into a request's ``_meta`` (W3C ``traceparent``/``tracestate``)."""

    def http(self, request: Any) -> None:
        """An HTTP request to a server: its ``traceparent`` header from the one its JSON-RPC body carries."""

    def headers(self, headers: MutableMapping[str, str]) -> None:
        """The headers of a request to a server that the bridge writes itself (the direct ``tools/call``): its
        ``traceparent`` (and ``tracestate``) header, the current span's, as :meth:`inject` put it in the body."""

    def finished(self, event: Any) -> None:
        """An audit event of an IDE request ended (outcome, server, tool): the span's attributes and the metrics."""

    def upstream_state(self, server: str, state: str) -> None:
        """A server's supervisor changed state (``connecting`` again after the first is a reconnect)."""

    def count(self, name: str, **attributes: Any) -> None:
        """Add one to a counter (token refreshes, audit shipping failures)."""

    async def watch(self, bridge: Any) -> None:
        """Sample the running bridge's gauges (audit spool backlog, catalog size) until cancelled."""

    def answered_early(self, answers: Sequence[Any], version: str | None) -> None:
        """Requests ``serve`` answered before the SDK and telemetry were loaded
        (:class:`mcp_bridge.ide.handshake.Answered`: method, id, start and end times, trace context), in a
        connection of protocol ``version``: their spans, with the times they were read and answered at. The
        ``initialize`` or ``server/discover`` among them is fed to the SDK too: its span is the one the front's
        middleware makes then, given these times."""


hooks: Hooks = Hooks()
"""The hooks in effect: no-ops unless :func:`start` ran with telemetry enabled."""


def enabled(settings: Settings) -> bool:
    return settings.telemetry.enabled


def start(settings: Settings, *, version: str) -> Hooks:
    """Start exporting (when ``telemetry.enabled``), and put the live hooks in place. Without the ``otel`` extra the
    bridge serves on without telemetry, and the log says so (an error, with the command that installs it)."""
    global hooks
    if not settings.telemetry.enabled or hooks.active:
        return hooks
    try:
        from mcp_bridge.telemetry.live import Live
    except ImportError as exc:  # pragma: no cover - depends on what is installed
        from mcp_bridge.logs import get_logger

        get_logger(__name__).error(
            "telemetry.unavailable", error=str(exc), fix="pip install 'mcp-bridge[otel]' (the OpenTelemetry SDK)"
        )
        return hooks
    hooks = Live(settings, version=version)
    return hooks


def stop(within: float = 3.0) -> None:
    """Flush what is left (at most ``within`` seconds: an unreachable collector never holds the exit) and go back to
    the no-op hooks."""
    global hooks
    live, hooks = hooks, Hooks()
    if live.active:
        live.shutdown(within)  # type: ignore[attr-defined]


@contextlib.contextmanager
def started(settings: Settings, *, version: str) -> Iterator[Hooks]:
    try:
        yield start(settings, version=version)
    finally:
        stop()


def signal_endpoint(config: TelemetryConfig, signal: str, env: Mapping[str, str] | None = None) -> str:
    """Where a signal (``traces`` or ``metrics``) goes: the config's base URL, else the variables the OpenTelemetry
    exporter reads (``OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT``, as is; ``OTEL_EXPORTER_OTLP_ENDPOINT`` + the path),
    else the OTLP/HTTP default."""
    env = os.environ if env is None else env
    if config.endpoint:
        return _under(config.endpoint, signal)
    own = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if own:
        return own
    return _under(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318", signal)


def _under(base: str, signal: str) -> str:
    """``base`` with the signal's path (``/v1/traces``) after its own path: a query stays a query (appended to the
    string, the path would land inside it), a fragment is dropped."""
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + f"/v1/{signal}", parts.query, ""))


def shown(url: str) -> str:
    """A URL without its user info or query (they may hold credentials), for status and doctor."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def describe(settings: Settings, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What is exported, where to (for ``status`` and ``doctor``); never a header or credential."""
    config = settings.telemetry
    env = os.environ if env is None else env
    if not config.enabled:
        return {"enabled": False}
    from_env = sorted(k for k in env if k.startswith("OTEL_EXPORTER_OTLP_"))
    return {
        "enabled": True,
        "protocol": "http/protobuf",
        "traces": shown(signal_endpoint(config, "traces", env)),
        "metrics": shown(signal_endpoint(config, "metrics", env)),
        "service_name": env.get("OTEL_SERVICE_NAME") or config.service_name,
        "metrics_interval": config.metrics_interval,
        "environment": from_env,
    }
