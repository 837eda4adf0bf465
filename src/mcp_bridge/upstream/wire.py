"""The wire under an upstream's session, and the direct ``tools/call`` path through it.

``tools/call`` takes a shorter way than the session's :meth:`~mcp.client.session.ClientSession.send_request`: it is
POSTed with the session's own transport object (:func:`call_direct`), which skips three task hops and two
in-memory streams per call and gives the same bytes on the wire, the same result checks and the same errors. Where
the endpoint allows, the POST goes over the wire's own HTTP/1.1 connections in the caller's task
(:mod:`~mcp_bridge.upstream.lean`, :func:`_by_lean`) rather than through httpx2 in the transport's task group
(:func:`_by_transport`); what comes back is handled by the transport's own code either way.

Copied from the MCP SDK, ``mcp`` 2.3.0, and built on its internals (:data:`DIRECT_CALLS` says whether they are
there): :func:`open_wire` is the body of ``mcp.client.streamable_http.streamable_http_client``, keeping hold of the
transport it builds; :func:`call_direct` does what ``ClientSession.send_request`` and the session's dispatcher do
with one request and its answer (:class:`_Answer`, :func:`_cancel_upstream`; :func:`_answered` is the end of the
transport's ``_handle_post_request``), in either protocol era: a 2026-07-28
session's request carries what the session stamps on each (``_meta`` and the ``Mcp-*`` headers), and a caller that
stops waiting aborts its POST, which is that era's cancellation, as the transport does for its own. Check them
against the SDK's code when the SDK is upgraded (``tests/test_direct_calls.py`` compares the two ways case by case).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import anyio.abc
import anyio.lowlevel
import httpx2
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT, coerce_request_id
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_NAME_HEADER, MCP_PROTOCOL_VERSION_HEADER, encode_header_value
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import methods as _methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import RootModel, ValidationError

from mcp_bridge import telemetry
from mcp_bridge.logs import get_logger
from mcp_bridge.upstream.http_errors import explain_http_error, http_error_to_explain
from mcp_bridge.upstream.inputs import LogSink, complete_by_default
from mcp_bridge.upstream.lean import LeanPool, Lost, NotSent
from mcp_bridge.upstream.own_errors import local_data
from mcp_bridge.upstream.transport import MAX_MESSAGE_BYTES, NOT_SENT, Capped

log = get_logger(__name__)


class _Raw(RootModel[dict[str, Any]]):
    """A result kept as the raw dict the server sent (pass-through: no re-validation against output schemas)."""


async def send_raw(session: ClientSession, request: Any, **kwargs: Any) -> dict[str, Any]:
    return (await session.send_request(request, _Raw, **kwargs)).root


try:  # SDK internals the direct tools/call path (call_direct) is built on; without them calls take the SDK's way
    from mcp.client.session import _clamp_inbound_ttl, _later_revision_fields
    from mcp.client.streamable_http import RequestContext, StreamableHTTPTransport, _InFlightPost
    from mcp.shared._context_streams import create_context_streams

    DIRECT_CALLS = all(
        callable(getattr(StreamableHTTPTransport, name, None))
        for name in (
            "_handle_post_request",
            "_prepare_headers",
            "post_writer",
            "handle_get_stream",
            "_run_request_post",
        )
    )
except ImportError:  # pragma: no cover - another SDK release
    DIRECT_CALLS = False


_FIRST_DIRECT_ID = 1 << 30
"""Request ids of direct calls count up from here: the session's own ids count up from 1, and the two must never
meet on one connection. Below 2**31, for servers that keep ids in 32 bits."""
_ANSWER_HOPS = 5
"""Event-loop rounds a direct call's POST task lets pass after handing over the answer, before the transport cleans
up after it (reads the rest of the stream, returns the connection to the pool, and closes the SSE reader's
generators, each through a loop wake-up and a task of its own; together as long as the answer's own way out).
The answer's way to the IDE takes about as many task hops (the caller, the front's dispatcher, the relay to the
stdio writer, the writer), one loop round each, so it goes first instead of sharing the rounds with the clean-up.
Fewer hops than this cost nothing; more only share some rounds again."""
_COURTESY_CANCEL_SECONDS = 5.0
"""How long the ``notifications/cancelled`` of an abandoned call may take to go out (the SDK's bound too)."""


@dataclass
class Wire:
    """One connection's streamable-HTTP transport, as :func:`open_wire` opened it for the session above it."""

    transport: StreamableHTTPTransport
    http: httpx2.AsyncClient
    inbound: Any
    """What the session reads from: the transport puts every message from the server here."""
    tasks: anyio.abc.TaskGroup
    """The transport's task group: its POSTs run (and fail) here."""
    lean: LeanPool | None = None
    """Direct calls' own HTTP/1.1 connections (:mod:`~mcp_bridge.upstream.lean`), where the endpoint allows them."""
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(_FIRST_DIRECT_ID))


def lean_enabled() -> bool:
    """``MCP_BRIDGE_LEAN_HTTP`` (default on): ``0`` sends direct calls through httpx2 as every other request."""
    return os.environ.get("MCP_BRIDGE_LEAN_HTTP", "1") != "0"


@contextlib.asynccontextmanager
async def open_wire(
    url: str, http: httpx2.AsyncClient, *, ssl_context: ssl.SSLContext | None = None, connect_timeout: float = 10.0
) -> AsyncIterator[tuple[Any, Any, Wire | None]]:
    """``streamable_http_client(url, http_client=http)``'s streams, and the transport under them.

    It is that function's body, keeping hold of what it builds (it hands out only the two streams), so that a
    tools/call can be POSTed through the same transport (:func:`call_direct`), or over connections of its own
    (:class:`~mcp_bridge.upstream.lean.LeanPool`, with ``ssl_context`` for TLS, where :func:`lean_enabled` and the
    endpoint allows). Without the SDK internals that needs (:data:`DIRECT_CALLS`), it is that function, and the wire
    is ``None``.
    """
    if not DIRECT_CALLS:
        async with streamable_http_client(url, http_client=http, max_sse_event_size=MAX_MESSAGE_BYTES) as (r, w):
            yield r, w, None
        return
    # The transport hands its URL only to httpx2, which takes a parsed URL as well as a string: parsed once here,
    # not again for every request (a third of the cost of building one).
    parsed = httpx2.URL(url)
    transport = StreamableHTTPTransport(cast(str, parsed), max_sse_event_size=MAX_MESSAGE_BYTES)
    inbound, read = create_context_streams[SessionMessage | Exception](0)
    write, outbound = create_context_streams[SessionMessage](0)
    async with inbound, read, write, outbound, anyio.create_task_group() as tasks:

        def start_get_stream() -> None:
            tasks.start_soon(transport.handle_get_stream, http, inbound)

        lean = None
        if lean_enabled() and LeanPool.usable(parsed, http):
            lean = LeanPool(
                parsed,
                ssl_context=ssl_context,
                connect_timeout=connect_timeout,
                tasks=tasks,
                default_headers=http.headers,
            )
        tasks.start_soon(transport.post_writer, http, outbound, inbound, write, start_get_stream, tasks)
        try:
            yield read, write, Wire(transport, http, inbound, tasks, lean)
        finally:
            if lean is not None:
                await lean.aclose()
            if transport.session_id:
                await transport.terminate_session(http)
            tasks.cancel_scope.cancel()
    await anyio.lowlevel.cancel_shielded_checkpoint()  # as the SDK's does after its task group (a coverage fix)


class _Answer:
    """Where the transport puts what comes back on one direct call's POST, in place of the session's stream.

    The answer to the call goes to the caller; progress under the call's token goes to its callback and, like
    everything else (the server's requests and notifications), on to the session, which handles it as if it had
    come through its own stream. This is what the session's dispatcher does with these messages.
    """

    def __init__(
        self,
        request_id: int,
        answer: MemoryObjectSendStream[dict[str, Any] | types.ErrorData],
        inbound: Any,
        progress: ProgressFnT | None,
        on_log: LogSink | None = None,
        *,
        inline: bool = False,
    ) -> None:
        self.request_id = request_id
        self._inline = inline
        """The POST runs in the caller's own task (:mod:`~mcp_bridge.upstream.lean`): nothing to make way for."""
        self._answer = answer
        self._inbound = inbound
        self.progress = progress
        """The caller's progress callback; ``None`` once the caller stopped waiting (later progress is dropped)."""
        self.on_log = on_log
        """Relays the server's log messages on this POST to the IDE request the call is for, in order with the
        answer (the session would handle them after it); ``None`` once the caller stopped waiting (then the session
        gets them, as everything else)."""

    async def send(self, item: SessionMessage | Exception) -> None:
        message = item.message if isinstance(item, SessionMessage) else None
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and (
            message.id is not None and coerce_request_id(message.id) == self.request_id
        ):
            outcome = message.result if isinstance(message, types.JSONRPCResponse) else message.error
            try:
                self._answer.send_nowait(outcome)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                log.debug("upstream.late_answer_dropped", request_id=self.request_id)  # as the session drops them
                return
            # The answer's way to the IDE first, then the transport's clean-up (none to wait for when inline).
            for _ in range(0 if self._inline else _ANSWER_HOPS):
                await anyio.lowlevel.checkpoint()
            return
        if isinstance(message, types.JSONRPCNotification) and message.method == "notifications/progress":
            await self._relay_progress(message.params)
        if (
            isinstance(message, types.JSONRPCNotification)
            and message.method == "notifications/message"
            and (on_log := self.on_log) is not None
        ):
            try:
                params = types.LoggingMessageNotificationParams.model_validate(message.params or {}, by_name=False)
            except ValidationError:
                pass  # the session's own handling of a malformed one
            else:
                await on_log(params)
                return
        await self._inbound.send(item)

    async def _relay_progress(self, params: Any) -> None:
        """What the session's dispatcher does with a progress notification: the same checks, the same call."""
        progress = self.progress
        match params:
            case {"progressToken": str() | int() as token, "progress": int() | float() as value} if (
                progress is not None
                and not isinstance(token, bool)
                and not isinstance(value, bool)
                and coerce_request_id(token) == self.request_id
            ):
                total, text = params.get("total"), params.get("message")
                try:
                    await progress(
                        float(value),
                        float(total) if isinstance(total, int | float) else None,
                        text if isinstance(text, str) else None,
                    )
                except Exception:  # a failing callback must not break the call (the dispatcher contains it too)
                    log.exception("upstream.progress_callback_failed")
            case _:
                pass


_NO_ANSWER = types.ErrorData(code=types.INTERNAL_ERROR, message="the server's answer named another request")


async def _post(
    transport: StreamableHTTPTransport,
    context: RequestContext,
    answer: MemoryObjectSendStream[dict[str, Any] | types.ErrorData],
) -> None:
    """The transport's own POST of one request, run in the transport's task group as its own POSTs are: a failure
    here ends the connection, as it does for them, and the caller gets "Connection closed".

    The transport answers every request it POSTs (with the server's answer, or an error of its own making) except
    when the server answers with another request's id: the session's caller then waits out its timeout, which is
    of no use; this one gets :data:`_NO_ANSWER` at once.
    """
    with answer:
        await transport._handle_post_request(context)
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):  # answered already
            answer.send_nowait(_NO_ANSWER)


async def call_direct(
    wire: Wire,
    session: ClientSession,
    request: types.CallToolRequest,
    *,
    read_timeout: float,
    progress: ProgressFnT | None,
    on_log: LogSink | None = None,
) -> dict[str, Any]:
    """What ``send_raw(session, request, request_read_timeout_seconds=read_timeout, progress_callback=progress)``
    does, without the session's dispatcher and the transport's writer task in between.

    What goes on the wire is what the session would send (the request as ``send_request`` dumps and stamps it, an
    id of its own, the same headers, through the transport's own POST handling: redirects, error statuses, JSON or
    SSE answers, resumption); what comes back is checked as ``send_request`` checks it (validated against the
    negotiated protocol version, fields of later revisions dropped; at 2026-07-28 a result without ``resultType``
    is a complete one, as :class:`~mcp_bridge.upstream.inputs.OfferingSession` takes it); a timeout and a cancelled
    caller send the same ``notifications/cancelled`` (at 2026-07-28: abort the POST) and raise the same errors
    (``tests/test_direct_calls.py`` compares the two ways). Not done: the dispatcher's OpenTelemetry span (the
    bridge's own, :meth:`mcp_bridge.telemetry.Hooks.upstream`, is around it; the trace context goes into ``_meta``
    here as the dispatcher puts it). A session of neither era known here takes the session's way.
    """
    version = session.protocol_version
    modern = version in MODERN_PROTOCOL_VERSIONS
    stamp = getattr(session, "_stamp", None)
    if not (version in HANDSHAKE_PROTOCOL_VERSIONS or (modern and callable(stamp))):
        return await send_raw(session, request, request_read_timeout_seconds=read_timeout, progress_callback=progress)
    assert version is not None
    data = request.model_dump(by_alias=True, mode="json", exclude_none=True)
    method: str = data["method"]
    request_id = next(wire.ids)
    params: dict[str, Any] = dict(data.get("params") or {})
    meta = dict(params.get("_meta") or {})
    headers: dict[str, str]
    if modern:
        assert stamp is not None
        params["_meta"] = meta
        opts: dict[str, Any] = {}
        stamp({"method": method, "params": params}, opts)  # the era's _meta (version, client, capabilities), headers
        headers = dict(opts.get("headers") or {})
    else:
        headers = {MCP_PROTOCOL_VERSION_HEADER: version}
    if progress is not None:
        meta["progressToken"] = request_id  # the request id is the progress token, as the session makes it
    telemetry.hooks.inject(meta)  # the trace context (telemetry on), as the session's dispatcher injects it
    if meta:
        params["_meta"] = meta
    else:
        params.pop("_meta", None)
    if (key := type(request).name_param) is not None and isinstance(name := params.get(key), str):
        headers.setdefault(MCP_NAME_HEADER, encode_header_value(name))
    if params:
        message = types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params=params)
    else:  # no "params": null on the wire
        message = types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method)
    metadata = ClientMessageMetadata(headers=headers)
    outcome: dict[str, Any] | types.ErrorData | None = None
    if wire.lean is not None and (credentials := await _lean_credentials(wire.http)) is not None:
        outcome = await _by_lean(
            wire, wire.lean, session, message, metadata, credentials, progress, on_log, read_timeout, modern
        )
    if outcome is None:  # the transport's own way (or the lean way's answer means: send it again that way)
        outcome = await _by_transport(wire, session, message, metadata, progress, on_log, read_timeout, modern)
    if isinstance(outcome, types.ErrorData):
        raise MCPError(code=outcome.code, message=outcome.message, data=outcome.data)
    # What send_request does with a result before it returns it.
    complete_by_default(outcome, version)
    _clamp_inbound_ttl(outcome)
    with contextlib.suppress(KeyError):
        _methods.validate_server_result(method, version, outcome)
    if not (foreign := _later_revision_fields(method, version)).isdisjoint(outcome):
        outcome = {k: v for k, v in outcome.items() if k not in foreign}
    # send_request would validate it as _Raw (a dict with string keys): the transport's JSON-RPC response model did.
    return outcome


_AnswerSend = MemoryObjectSendStream[dict[str, Any] | types.ErrorData]
_AnswerReceive = MemoryObjectReceiveStream[dict[str, Any] | types.ErrorData]


def _exchange(
    wire: Wire,
    message: types.JSONRPCRequest,
    metadata: ClientMessageMetadata,
    progress: ProgressFnT | None,
    on_log: LogSink | None,
    *,
    inline: bool = False,
) -> tuple[_AnswerSend, _AnswerReceive, _Answer, RequestContext]:
    """What one POST of ``message`` reports to: the answer's stream (send, receive), the :class:`_Answer` the
    transport's code writes to in the session's stead, and the transport's request context around it."""
    send, receive = anyio.create_memory_object_stream[dict[str, Any] | types.ErrorData](1)
    answer = _Answer(cast(int, message.id), send, wire.inbound, progress, on_log, inline=inline)
    context = RequestContext(
        client=wire.http,
        session_id=wire.transport.session_id,
        session_message=SessionMessage(message, metadata=metadata),
        metadata=metadata,
        read_stream_writer=cast(Any, answer),  # it takes what the transport sends: see _Answer.send
    )
    return send, receive, answer, context


async def _given_up(
    session: ClientSession, request_id: int, reason: str, *, modern: bool, post: _InFlightPost | None, shield: bool
) -> None:
    """A call the caller stopped waiting for (cancelled, or timed out): at 2026-07-28 its POST is aborted (the lean
    way's connection is closed with the caller's scope already), in the handshake era the server is told."""
    if not modern:
        await _cancel_upstream(session, request_id, reason, shield=shield)
    elif post is not None:
        post.scope.cancel()


async def _by_transport(
    wire: Wire,
    session: ClientSession,
    message: types.JSONRPCRequest,
    metadata: ClientMessageMetadata,
    progress: ProgressFnT | None,
    on_log: LogSink | None,
    read_timeout: float,
    modern: bool,
) -> dict[str, Any] | types.ErrorData:
    """The call POSTed by the session's transport, in its task group, as its own POSTs are."""
    request_id = cast(int, message.id)
    send, receive, answer, context = _exchange(wire, message, metadata, progress, on_log)
    # The POST runs in an abort scope the transport knows by the request id, as its own POSTs do: at 2026-07-28
    # aborting it is the request's cancellation (and a cancel the session sends for this id aborts it too).
    post = _InFlightPost(scope=anyio.CancelScope(), modern=modern)
    try:
        wire.transport._in_flight_posts[request_id] = post
        wire.tasks.start_soon(
            wire.transport._run_request_post, functools.partial(_post, wire.transport, context, send), post, request_id
        )
    except RuntimeError:  # the transport's task group has ended: the connection is closing
        wire.transport._in_flight_posts.pop(request_id, None)
        send.close()
        receive.close()
        raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed") from None
    try:
        with receive, anyio.move_on_after(read_timeout) as clock:
            try:
                return await receive.receive()
            except anyio.EndOfStream:  # the POST failed, or the connection is closing
                raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed") from None
    except anyio.get_cancelled_exc_class():
        await _given_up(session, request_id, "caller cancelled", modern=modern, post=post, shield=True)
        raise
    finally:
        answer.progress = answer.on_log = None
    assert clock.cancelled_caught
    await _given_up(session, request_id, f"timed out after {read_timeout}s", modern=modern, post=post, shield=False)
    raise MCPError(code=types.REQUEST_TIMEOUT, message=f"Request {message.method!r} timed out")


async def _lean_credentials(http: httpx2.AsyncClient) -> dict[str, str] | None:
    """The headers the client's auth puts on a request now, when it can say so in advance (``lean_headers``);
    ``None`` when it cannot (the call takes the transport's way, through the auth flow)."""
    auth = http.auth
    if auth is None:
        return {}
    lean_headers = getattr(auth, "lean_headers", None)
    return await lean_headers() if callable(lean_headers) else None


async def _by_lean(
    wire: Wire,
    pool: LeanPool,
    session: ClientSession,
    message: types.JSONRPCRequest,
    metadata: ClientMessageMetadata,
    credentials: dict[str, str],
    progress: ProgressFnT | None,
    on_log: LogSink | None,
    read_timeout: float,
    modern: bool,
) -> dict[str, Any] | types.ErrorData | None:
    """The call POSTed over the lean pool's own connection, in this task (:mod:`~mcp_bridge.upstream.lean`); what
    comes back is handled by the transport's own code, as on its way. ``None``: not sent, or answered with a status
    that means the transport's way must send it (a redirect, or an auth challenge for the auth flow to answer)."""
    request_id = cast(int, message.id)
    send, receive, answer, context = _exchange(wire, message, metadata, progress, on_log, inline=True)
    try:
        with send, receive, anyio.move_on_after(read_timeout) as clock:
            try:
                if not await _lean_post(wire.transport, pool, context, credentials):
                    return None
            except (Lost, httpx2.TransportError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                # As on the transport's way, where the POST's failure ends the connection: the call's outcome is
                # unknown, and the session is not trusted further.
                log.info("upstream.lean_post_failed", error=type(exc).__name__, detail=str(exc)[:200])
                raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed") from None
            try:
                return receive.receive_nowait()
            except anyio.WouldBlock:
                return _NO_ANSWER  # the answer named another request (the transport's way says the same)
    except anyio.get_cancelled_exc_class():
        await _given_up(session, request_id, "caller cancelled", modern=modern, post=None, shield=True)
        raise
    finally:
        answer.progress = answer.on_log = None
    assert clock.cancelled_caught
    await _given_up(session, request_id, f"timed out after {read_timeout}s", modern=modern, post=None, shield=False)
    raise MCPError(code=types.REQUEST_TIMEOUT, message=f"Request {message.method!r} timed out")


async def _lean_post(
    transport: StreamableHTTPTransport, pool: LeanPool, ctx: RequestContext, credentials: dict[str, str]
) -> bool:
    """``transport._handle_post_request(ctx)`` over the lean pool: the same headers and body, and the same handling of
    the answer (with the bridge's transport's: :class:`~mcp_bridge.upstream.transport.GuardedTransport`). ``False``
    when the transport's way must send it: the lean way could not, or the answer was a redirect (the transport
    follows those within the origin) or 401/403 (the auth flow answers those); none of them ran the request."""
    message = ctx.session_message.message
    assert isinstance(message, types.JSONRPCRequest)
    headers = transport._prepare_headers()
    if ctx.metadata is not None and ctx.metadata.headers is not None:
        headers.update(ctx.metadata.headers)
    headers.update(credentials)
    data = message.model_dump(by_alias=True, mode="json", exclude_unset=True)
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()  # as httpx2's json=
    telemetry.hooks.headers(headers)  # the traceparent header (telemetry on), as the transport adds it
    try:
        response = await pool.post(headers, body, ctx.client)
    except NotSent as exc:
        error = types.ErrorData(code=NOT_SENT, message=f"could not connect: {exc}", data=local_data())
        await ctx.read_stream_writer.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=message.id, error=error)))
        return True
    if response is None:
        return False
    try:
        status = response.status_code
        if 300 <= status < 400 or status in (401, 403):
            return False
        if status >= 400 or "set-cookie" in response.headers:
            request = response.request = httpx2.Request("POST", pool.url, headers=headers)
            if "set-cookie" in response.headers:
                ctx.client.cookies.extract_cookies(response)  # (the next calls take the transport's way, with them)
            if status >= 400 and http_error_to_explain(request, response):
                response = await explain_http_error(request, response)
        await _answered(transport, ctx, message, response)
    finally:
        await response.aclose()
    return True


async def _answered(
    transport: StreamableHTTPTransport, ctx: RequestContext, message: types.JSONRPCRequest, response: httpx2.Response
) -> None:
    """What ``transport._handle_post_request`` does with a request's answer (its redirect and session-id branches
    aside: a redirect is sent the transport's way, and a tools/call starts no session)."""
    writer = ctx.read_stream_writer
    if response.status_code == 202:
        reason = "server answered a request with 202 Accepted"
        await transport._resolve_abandoned_request(writer, message.id, reason, code=types.INVALID_REQUEST)
        return
    if response.status_code >= 400:
        # A spec-correct server may return the JSON-RPC error in the body at a non-2xx status.
        if response.headers.get("content-type", "").lower().startswith("application/json"):
            try:
                parsed = types.jsonrpc_message_adapter.validate_json(await response.aread(), by_name=False)
                if isinstance(parsed, types.JSONRPCError):
                    reply = types.JSONRPCError(jsonrpc="2.0", id=message.id, error=parsed.error)
                    await writer.send(SessionMessage(reply))
                    return
            except (httpx2.StreamError, ValidationError):
                pass
        if response.status_code == 404:
            if transport.session_id is None:
                error = types.ErrorData(code=types.METHOD_NOT_FOUND, message="Not Found")
            else:
                error = types.ErrorData(code=types.INVALID_REQUEST, message="Session terminated")
        else:
            error = types.ErrorData(code=types.INTERNAL_ERROR, message="Server returned an error response")
        await writer.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=message.id, error=error)))
        return
    content_type = response.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        response.stream = Capped(response.stream, MAX_MESSAGE_BYTES)
        await transport._handle_json_response(response, writer, request_id=message.id)
    elif content_type.startswith("text/event-stream"):
        await transport._handle_sse_response(response, ctx)
    else:
        error = types.ErrorData(code=types.INVALID_REQUEST, message=f"Unexpected content type: {content_type}")
        await writer.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=message.id, error=error)))


async def _cancel_upstream(session: ClientSession, request_id: int, reason: str, *, shield: bool) -> None:
    """The courtesy ``notifications/cancelled`` the session sends for a request it stops waiting for."""
    params = types.CancelledNotificationParams(request_id=request_id, reason=reason)
    with anyio.move_on_after(_COURTESY_CANCEL_SECONDS, shield=shield) as bound:
        await session.send_notification(types.CancelledNotification(params=params))
    if bound.cancelled_caught:
        log.warning("upstream.cancel_not_sent", request_id=request_id, reason=reason)
