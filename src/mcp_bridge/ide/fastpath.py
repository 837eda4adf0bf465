"""The short way for a 2026-07-28 IDE's ordinary ``tools/call``: handled beside the SDK's server, not through it.

Every request of a 2026-07-28 IDE goes through the SDK's per-request machinery: the dispatcher's task, the envelope's
ladder and a connection made for the request, the middleware, the handler lookup, the params model, and the result's
shaping. For the one request an IDE sends again and again, a plain ``tools/call``, :class:`FastCalls` does what that
machinery and :meth:`~mcp_bridge.ide.front.Front._call_tool` do with it, in one task: the call is routed, checked,
asked about, forwarded and audited by the bridge as on the SDK's way (the same held call, so that a server's
questions become input rounds), its progress and the servers' log messages (at the level the request asks for) are
relayed before its answer, the IDE's ``notifications/cancelled`` cancels it (and it is never answered), failures get
the errors the SDK would give, and the result is shaped by the SDK's own code for the era.

Only requests the SDK has been seen to accept take it (:meth:`FastCalls.takes`): the IDE's envelope (its client info
and capabilities) the same as on a request the SDK accepted before (``server/discover``, a list, a call), no field
beyond ``name``, ``arguments`` and ``_meta``, no retry (``inputResponses``, ``requestState``), nothing unusual in
``_meta``. Anything else goes the SDK's way, as does every request when ``MCP_BRIDGE_FAST_CALLS=0``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, cast

import anyio
import mcp_types as types
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params, handler_exception_to_error_data

from mcp_bridge import telemetry
from mcp_bridge.era import MODERN_VERSIONS, finish
from mcp_bridge.ide.front import _WIRE_DUMP, Front, _guard
from mcp_bridge.ide.rounds import HeldCall
from mcp_bridge.logs import get_logger
from mcp_bridge.upstream.inputs import ASKING

try:  # SDK internals the result's shaping is taken from; without them every call takes the SDK's way
    from mcp.server.connection import allowed_log_levels
    from mcp.server.runner import ServerRunner, modern_error_data

    AVAILABLE = callable(getattr(ServerRunner, "_serialize", None))
except ImportError:  # pragma: no cover - another SDK release
    AVAILABLE = False

log = get_logger("mcp_bridge.ide.front")

TRACE_CONTEXT = ("traceparent", "tracestate")
"""W3C trace context an IDE may send in ``_meta``: forwarded to the server as the SDK's way forwards it (the
bridge's own span's in its stead when telemetry is on), so a traced IDE keeps the short way."""
_PARAMS = frozenset({"name", "arguments", "_meta"})
_META = frozenset(
    {
        types.PROTOCOL_VERSION_META_KEY,
        types.CLIENT_INFO_META_KEY,
        types.CLIENT_CAPABILITIES_META_KEY,
        types.LOG_LEVEL_META_KEY,
        "progressToken",
        *TRACE_CONTEXT,
    }
)
_LOG_LEVELS = frozenset({"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"})
_SHUTDOWN_WRITE_SECONDS = 2.0


class Writer(Protocol):
    """The IDE's stdout (:class:`mcp_bridge.ide.stdio._Writer`): whole lines, one at a time."""

    async def write(self, text: str) -> None: ...


def enabled() -> bool:
    """``MCP_BRIDGE_FAST_CALLS`` (default on): ``0`` sends every request the SDK's way."""
    return AVAILABLE and os.environ.get("MCP_BRIDGE_FAST_CALLS", "1") != "0"


class _Traced:
    """What the telemetry middleware reads of a request (as of the SDK's request context); ``end_early``: set by the
    middleware, ends the request's span when a round answered it (the call goes on)."""

    method = "tools/call"

    def __init__(self, request_id: Any, params: dict[str, Any]) -> None:
        self.request_id = request_id
        self.params = params
        self.meta = params.get("_meta")
        self.protocol_version = self.meta.get(types.PROTOCOL_VERSION_META_KEY) if isinstance(self.meta, dict) else None
        self.end_early: Callable[[], None] | None = None


class _Request:
    """One IDE request taken the short way: whether the IDE cancelled it, whether it has been answered."""

    __slots__ = ("answered", "cancelled", "id", "key", "traced")

    def __init__(self, request_id: Any) -> None:
        self.id = request_id
        self.key = coerce_request_id(request_id)
        self.cancelled = False
        self.answered = False
        self.traced: _Traced | None = None


_DETACHED: dict[str, Any] = {}
"""``_call``'s result when a round answered the request (the call went on, its outcome for the IDE's retry)."""


class FastCalls:
    """Ordinary ``tools/call`` requests of a 2026-07-28 IDE, each in a task of its own, answered on ``stdout`` (the
    IDE's writer, which writes one whole line at a time) as each call's task has its messages ready: its progress and
    log messages, then its answer, in that order, with no hop through the connection's writer task; ``done(request_id)``
    is told when one is settled (answered, or cancelled unanswered)."""

    def __init__(self, front: Front, stdout: Writer, done: Callable[[Any], None]) -> None:
        self._front = front
        self._stdout = stdout
        self._done = done
        self._running: dict[Any, tuple[anyio.CancelScope, _Request]] = {}
        """coerced request id -> (its scope, the request)"""
        self._runner: Any = ServerRunner(front.server, cast(Any, None), None) if AVAILABLE else None
        self.served = 0
        """Requests taken the short way (logged when the IDE's connection ends)."""
        self._traced = telemetry.hooks.front_middleware()
        """With telemetry on: the span the SDK's way would make (the front's middleware), made here too."""

    def takes(self, message: types.JSONRPCRequest) -> bool:
        """Whether ``message`` is an ordinary ``tools/call`` of a 2026-07-28 IDE whose envelope the SDK accepted."""
        envelope = self._front.envelope
        params = message.params
        if envelope is None or message.method != "tools/call" or not self._front.modern or not isinstance(params, dict):
            return False
        if not _PARAMS.issuperset(params) or not isinstance(params.get("name"), str):
            return False
        if "arguments" in params and not isinstance(params["arguments"], dict):
            return False
        meta = params.get("_meta")
        if not isinstance(meta, dict) or not _META.issuperset(meta) or types.CLIENT_CAPABILITIES_META_KEY not in meta:
            return False
        if (
            meta.get(types.PROTOCOL_VERSION_META_KEY) not in MODERN_VERSIONS
            or meta.get(types.CLIENT_INFO_META_KEY) != envelope.client_info
            or meta.get(types.CLIENT_CAPABILITIES_META_KEY) != envelope.capabilities
        ):
            return False
        if types.LOG_LEVEL_META_KEY in meta and meta[types.LOG_LEVEL_META_KEY] not in _LOG_LEVELS:
            return False
        if "progressToken" in meta:
            token = meta["progressToken"]
            if isinstance(token, bool) or not isinstance(token, str | int):
                return False
        if any(not isinstance(meta[key], str) for key in TRACE_CONTEXT if key in meta):
            return False
        return coerce_request_id(message.id) not in self._running

    def start(self, message: types.JSONRPCRequest) -> None:
        tasks = self._front.tasks
        assert tasks is not None, "serve_stdio sets the task group"
        scope = anyio.CancelScope()
        request = _Request(message.id)
        self._running[request.key] = (scope, request)
        self.served += 1
        tasks.start_soon(self._run, message, request, scope)

    def cancel(self, params: Mapping[str, Any] | None) -> None:
        """The IDE's ``notifications/cancelled``: a call of ours it names is cancelled, and never answered."""
        request_id = cancelled_request_id_from_params(params)
        if request_id is None or (running := self._running.get(coerce_request_id(request_id))) is None:
            return
        running[1].cancelled = True
        running[0].cancel()

    async def _run(self, message: types.JSONRPCRequest, request: _Request, scope: anyio.CancelScope) -> None:
        answer: types.JSONRPCResponse | types.JSONRPCError | None = None
        try:
            with scope:
                try:
                    params = cast(dict[str, Any], message.params)
                    if self._traced is None:
                        result = await self._call(request, params)
                    else:
                        request.traced = _Traced(message.id, params)
                        result = await self._traced(request.traced, lambda _ctx: self._call(request, params))
                    if result is not _DETACHED:
                        answer = types.JSONRPCResponse(jsonrpc="2.0", id=message.id, result=result)
                except Exception as exc:
                    answer = types.JSONRPCError(jsonrpc="2.0", id=message.id, error=_error_data(exc))
            if answer is not None and not request.cancelled and not request.answered:
                request.answered = True  # a write cut short may still have delivered it: never a second answer
                await self._send(answer)
        except anyio.get_cancelled_exc_class():
            # The bridge is shutting down: answer so that the IDE is not left waiting (as the SDK does).
            if not request.cancelled and not request.answered:
                request.answered = True
                closed = types.ErrorData(code=types.CONNECTION_CLOSED, message="Connection closed")
                with anyio.move_on_after(_SHUTDOWN_WRITE_SECONDS, shield=True):
                    await self._send(types.JSONRPCError(jsonrpc="2.0", id=message.id, error=closed))
            raise
        finally:
            self._settle(request)

    def _settle(self, request: _Request) -> None:
        """The request is answered (or cancelled unanswered), unless a round answered it (which told so)."""
        if self._release(request):
            self._done(request.id)

    def _release(self, request: _Request) -> bool:
        """Forget the request (the IDE's cancel no longer reaches it), unless it was already; whether it was not."""
        if self._running.get(request.key, (None, None))[1] is not request:
            return False
        del self._running[request.key]
        return True

    async def _answer_round(self, request: _Request, version: str, make: Callable[[], dict[str, Any]]) -> bool:
        """A held call's first question: its request answered with the round (``make``), unless the IDE cancelled
        it or it was answered meanwhile; from then on the call is the retries' (:meth:`HeldCalls.here`)."""
        if request.cancelled or request.answered:
            return False
        request.answered = True
        answer: types.JSONRPCResponse | types.JSONRPCError
        try:
            shaped = self._runner._serialize("tools/call", version, finish(version, make()))
            answer = types.JSONRPCResponse(jsonrpc="2.0", id=request.id, result=dict(shaped))
        except Exception as exc:
            answer = types.JSONRPCError(jsonrpc="2.0", id=request.id, error=_error_data(exc))
        if request.traced is not None and request.traced.end_early is not None:
            request.traced.end_early()
        self._release(request)  # a cancel of this request no longer reaches the call (as with a task of its own)
        try:
            await self._send(answer)
        finally:
            self._done(request.id)
        return True

    async def _send(self, message: types.JSONRPCMessage) -> None:
        try:
            await self._stdout.write(message.model_dump_json(**_WIRE_DUMP) + "\n")  # as the connection's writer does
        except OSError:
            log.debug("front.fast_answer_dropped")  # the IDE's side is closed

    async def _call(self, request: _Request, params: dict[str, Any]) -> dict[str, Any]:
        """What ``Front._call_tool`` (and ``_asking``, for a first request of 2026-07-28) do with the call."""
        front = self._front
        envelope = front.envelope
        assert envelope is not None
        meta: dict[str, Any] = params["_meta"]
        version: str = meta[types.PROTOCOL_VERSION_META_KEY]
        name: str = params["name"]
        arguments = params.get("arguments")
        front.bridge.declare_ide_capabilities(envelope.parsed)
        token = meta.get("progressToken")
        level = meta.get(types.LOG_LEVEL_META_KEY)
        forwarded = {key: meta[key] for key in TRACE_CONTEXT if key in meta}  # as Front._call_tool forwards them
        if level is not None:
            forwarded[types.LOG_LEVEL_META_KEY] = level
        allowed = allowed_log_levels(version, meta)

        async def relay_progress(progress: float, total: float | None, message: str | None) -> None:
            note: dict[str, Any] = {"progressToken": token, "progress": progress}
            if total is not None:
                note["total"] = total
            if message is not None:
                note["message"] = message
            await self._notify("notifications/progress", note)

        async def relay_log(note: types.LoggingMessageNotificationParams) -> None:
            if note.level not in allowed:
                return  # as the SDK drops it: not asked for at that level on this request
            wire = types.LoggingMessageNotification(
                params=types.LoggingMessageNotificationParams(level=note.level, data=note.data, logger=note.logger)
            ).model_dump(by_alias=True, mode="json", exclude_none=True)
            await self._notify(wire["method"], wire.get("params"))

        def work(inputs: dict[str, Any]) -> Awaitable[dict[str, Any]]:
            return front.bridge.call_tool(
                name,
                arguments,
                meta=forwarded or None,
                progress=relay_progress if token is not None else None,
                inputs=inputs,
            )

        async def held(call: HeldCall) -> dict[str, Any]:
            asking = ASKING.set(call)
            try:
                return await _guard(work({}), version)
            finally:
                ASKING.reset(asking)

        assert front.tasks is not None
        # In this task: a call that asks nothing (the usual one) needs no task of its own (HeldCalls.here).
        answered, result = await front.held.here(
            front.tasks,
            "tools/call",
            name,
            held,
            lambda make: self._answer_round(request, version, make),
            relay_log,
        )
        if not answered:
            return _DETACHED
        shaped: dict[str, Any] = self._runner._serialize("tools/call", version, finish(version, result))
        return dict(shaped)

    async def _notify(self, method: str, params: dict[str, Any] | None) -> None:
        await self._send(types.JSONRPCNotification(jsonrpc="2.0", method=method, params=params))


def _error_data(exc: Exception) -> types.ErrorData:
    """The error the SDK's way answers an exception with."""
    return handler_exception_to_error_data(exc) or modern_error_data(exc)
