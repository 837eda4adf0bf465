"""The IDE's connection: :func:`serve_stdio` pumps the IDE's lines to the front's MCP server and its answers back.

Each line is parsed once (a line that is no valid JSON-RPC request gets its error here, never a crash), an
``initialize`` answered early is fed to the server and its second answer dropped, the kept ``tools/list`` answer is
spliced in (:meth:`~mcp_bridge.ide.front.Front.wire_message`), and nothing but JSON-RPC reaches stdout. A 2026-07-28
IDE's ordinary ``tools/call`` is handled beside the server (:mod:`mcp_bridge.ide.fastpath`), answered on the same wire.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from mcp_bridge.ide import fastpath
from mcp_bridge.ide.backend import Backend
from mcp_bridge.ide.front import _WIRE_DUMP, Front
from mcp_bridge.ide.handshake import EarlyStart, era_refusal, request_id_ok
from mcp_bridge.ide.stdio import ide_pipes
from mcp_bridge.logs import get_logger

log = get_logger("mcp_bridge.ide.front")

_INVALID_REQUEST: dict[str, Any] = {"code": types.INVALID_REQUEST, "message": "Invalid Request"}

_DRAIN_ON_EOF_SECONDS = 2.0


async def serve_stdio(bridge: Backend, early: EarlyStart | None = None, *, ide_protocol: str = "auto") -> None:
    """Serve the bridge on this process's stdin/stdout until the IDE closes stdin (or the task is cancelled).

    ``early``: what ``serve`` read (and perhaps answered) before the SDK was loaded. Those bytes are read first; an
    ``initialize`` already answered is handled by the server all the same (that is what initializes its session),
    and its answer, sent already, is dropped here. ``ide_protocol`` (``protocol.ide``): ``auto``, or the one era
    the IDE is served in; a request of the other era gets the error a server of this one alone would give.
    """
    front = Front(bridge)
    early = early or EarlyStart()
    if early.version is not None:  # the first line told the era (its lists may have been answered already)
        front.modern = early.modern
    drop_id = early.request_id if early.answered else None
    async with ide_pipes(prefix=early.consumed) as (stdin, stdout):
        send, receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        out_send, out_recv = anyio.create_memory_object_stream[SessionMessage](0)
        write, to_stdout = anyio.create_memory_object_stream[SessionMessage](0)
        pending: set[Any] = set()
        answered = anyio.Event()

        def settled(request_id: Any) -> None:
            pending.discard(request_id)
            answered.set()

        fast = fastpath.FastCalls(front, stdout, settled) if fastpath.enabled() else None

        async def pump_in() -> None:
            """Each line from the IDE, parsed as the SDK's ``stdio_server`` parses it (once: this is the hot path),
            to the server; a line that is no valid request gets its JSON-RPC error here (:func:`_bad_line_error`,
            :func:`_refusal`)."""
            nonlocal answered
            async with send:
                async for line in stdin:
                    try:
                        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                    except ValidationError as exc:
                        await write.send(SessionMessage(_bad_line_error(exc, line)))
                        continue
                    if (
                        ide_protocol != "auto"
                        and isinstance(message, types.JSONRPCRequest)
                        and (shut := era_refusal(message.method, message.params, ide_protocol)) is not None
                    ):
                        error = types.JSONRPCError(jsonrpc="2.0", id=message.id, error=types.ErrorData(**shut))
                        await write.send(SessionMessage(error))
                        continue
                    if fast is not None and isinstance(message, types.JSONRPCRequest) and fast.takes(message):
                        pending.add(message.id)
                        fast.start(message)  # an ordinary 2026-07-28 tools/call: the short way (ide.fastpath)
                        continue
                    if (
                        fast is not None
                        and isinstance(message, types.JSONRPCNotification)
                        and message.method == "notifications/cancelled"
                    ):
                        fast.cancel(message.params)  # (the SDK sees it too: it may name one of its requests)
                    if isinstance(message, types.JSONRPCRequest) and message.method != "subscriptions/listen":
                        pending.add(message.id)  # (a listen stream is never answered: nothing to wait for)
                    elif isinstance(message, types.JSONRPCNotification) and (refusal := _refusal(line)) is not None:
                        await write.send(SessionMessage(refusal))  # a request with an id JSON-RPC does not allow
                        continue
                    await send.send(SessionMessage(message))
                # stdin ended: answer what is already being handled before the server sees EOF (it would cancel it).
                with anyio.move_on_after(_DRAIN_ON_EOF_SECONDS) as drain:
                    while pending:
                        await answered.wait()
                        answered = anyio.Event()
                if drain.cancelled_caught:
                    log.info("front.unanswered_at_eof", requests=len(pending), waited_seconds=_DRAIN_ON_EOF_SECONDS)

        async def pump_out() -> None:
            nonlocal drop_id
            async with out_recv, write:  # the server writes through this relay now: it closes the wire when done
                async for message in out_recv:
                    if isinstance(message.message, types.JSONRPCResponse | types.JSONRPCError):
                        pending.discard(message.message.id)
                        answered.set()
                        if drop_id is not None and message.message.id == drop_id:
                            drop_id = None  # only the first answer with that id: the IDE may reuse ids later
                            _check_early_answer(early, message.message)
                            continue
                    await write.send(front.wire_message(message))

        async def notify(kind: str) -> None:
            method = f"notifications/{kind}/list_changed"
            await write.send(SessionMessage(types.JSONRPCNotification(jsonrpc="2.0", method=method)))

        async def updated(uri: str) -> None:
            params = {"uri": uri}
            method = "notifications/resources/updated"
            await write.send(SessionMessage(types.JSONRPCNotification(jsonrpc="2.0", method=method, params=params)))

        async def write_out() -> None:
            """Every message to stdout, one line each, encoded as the SDK's ``stdio_server`` encodes them."""
            async with to_stdout:
                async for message in to_stdout:
                    await stdout.write(message.message.model_dump_json(**_WIRE_DUMP) + "\n")

        # The writer is outside the task group cancelled below: it ends when pump_out closes ``write``, after the
        # last message, so that no line is cut short.
        async with anyio.create_task_group() as writing:
            writing.start_soon(write_out)
            async with receive, anyio.create_task_group() as tg:
                front.tasks = tg
                tg.start_soon(pump_in)
                tg.start_soon(pump_out)
                tg.start_soon(front.relay_changes, notify)
                tg.start_soon(front.relay_updates, updated)
                if early.lists and early.tools_digest is not None:
                    front.answered_early()
                    tg.start_soon(front.check_early_list, early.tools_digest, notify)
                async with out_send:
                    await front.server.run(receive, out_send, front.initialization_options())
                tg.cancel_scope.cancel()
            write.close()  # pump_out closed it already, unless it never ran
    if fast is not None and fast.served:
        log.info("front.fast_calls", served=fast.served)
    await anyio.to_thread.run_sync(front.keeper.wait)  # the last answer kept: a start soon after can use it


def _check_early_answer(early: EarlyStart, message: types.JSONRPCResponse | types.JSONRPCError) -> None:
    """The SDK's answer to the ``initialize`` answered early must be the one sent: say so loudly if it is not."""
    sent = dict(early.result or {})
    if isinstance(message, types.JSONRPCError):
        log.warning("front.early_initialize_differs", sdk_error=message.error.message, sent_keys=sorted(sent))
        return
    if message.result != sent:
        differing = sorted(k for k in set(sent) | set(message.result) if sent.get(k) != message.result.get(k))
        log.warning("front.early_initialize_differs", keys=differing)


def _bad_line_error(exc: ValidationError, line: str) -> types.JSONRPCError:
    """JSON-RPC's answer to a line that is not a valid message: -32700 for bad JSON, -32600 for a bad shape.

    A malformed request whose id can be read (say ``"jsonrpc": "1.0"``, or ``"params": "x"``, beside ``"id": 8``) is
    answered under that id, so that the IDE's request resolves; anything else (no ``method``: a broken response,
    which gets no answer of its own; not an object; an id of the wrong type) under ``id: null``, as JSON-RPC asks.
    Only lines that failed get parsed a second time.
    """
    if any(e["type"] == "json_invalid" for e in exc.errors()):
        log.warning("front.bad_message", code=types.PARSE_ERROR)
        return types.JSONRPCError(
            jsonrpc="2.0", id=None, error=types.ErrorData(code=types.PARSE_ERROR, message="Parse error")
        )
    request_id: int | str | None = None
    with contextlib.suppress(ValueError, RecursionError):
        message = json.loads(line)
        if isinstance(message, dict) and "method" in message and request_id_ok(message.get("id")):
            request_id = message["id"]
    log.warning("front.bad_message", code=types.INVALID_REQUEST, answered_id=request_id is not None)
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(**_INVALID_REQUEST))


def _refusal(line: str) -> types.JSONRPCError | None:
    """The answer to a line the SDK read as a notification although it carries an ``id``: a request whose id is
    an object, an array, a float, a boolean or ``null``. JSON-RPC calls it invalid (-32600) and, its id being
    unusable, answers it under ``id: null``; it is not handled as a notification. ``None`` for real notifications.

    A float without a fraction (``1.0``) is refused too, not answered as ``1``: the SDK (and the early
    ``initialize`` reader) take integers and strings only, and an answer under an id the IDE did not send might
    resolve the wrong request in a client that keeps ``1`` and ``1.0`` apart.

    The SDK drops unknown keys, so the line itself is looked at; only when it may hold an ``id`` key (spelled out,
    or behind an escape) is it parsed again, which leaves the common notifications their single parse.
    """
    if '"id"' not in line and "\\u" not in line:
        return None
    with contextlib.suppress(ValueError, RecursionError):
        message = json.loads(line)
        if isinstance(message, dict) and "id" in message:
            log.warning("front.bad_message", code=types.INVALID_REQUEST, reason="id of a type JSON-RPC does not allow")
            error = types.ErrorData(**_INVALID_REQUEST, data="the id must be a string or an integer")
            return types.JSONRPCError(jsonrpc="2.0", id=None, error=error)
    return None
