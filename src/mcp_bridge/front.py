"""The stdio MCP server the IDE talks to.

It answers ``initialize`` at once (the handshake era Cursor and Claude Desktop speak, 2025-11-25 and older), waits
briefly for upstreams on the first ``tools/list``, forwards calls with progress and cancellation, and tells the IDE
when a list changed. stdout carries only JSON-RPC: a line that is not JSON-RPC gets an error response, never a
crash, and nothing else is ever written there.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from mcp_bridge import __version__
from mcp_bridge.bridge import Bridge, error_text
from mcp_bridge.errors import BridgeError, PolicyDenied, UnknownName
from mcp_bridge.handshake import EarlyStart
from mcp_bridge.logs import clean, get_logger
from mcp_bridge.stdio import ide_pipes
from mcp_bridge.upstream import ProgressFn

log = get_logger(__name__)

_DRAIN_ON_EOF_SECONDS = 2.0


class Front:
    """Handlers of the IDE-facing server, bound to one :class:`Bridge`."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self._session: ServerSession | None = None
        self._listed: set[str] = set()
        self._first_list_done = False
        self.server: Server[Any] = Server(
            "mcp-bridge",
            version=__version__,
            instructions=bridge.catalog.allowlist.instructions(bridge.settings.naming.separator),
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource,
        )
        # The SDK installs an OpenTelemetry span middleware on every server; a local gateway exports no traces, and
        # the span costs time on every call. Ours only remembers the IDE's session.
        self.server.middleware[:] = [self._remember_session]

    def initialization_options(self) -> Any:
        return self.server.create_initialization_options(
            NotificationOptions(tools_changed=True, prompts_changed=True, resources_changed=True)
        )

    async def _remember_session(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if self._session is None and ctx.method != "initialize":
            self._session = ctx.session
            params = ctx.session.client_params
            if params is not None:
                self.bridge.client_name = params.client_info.name
                self.bridge.audit.set_client(params.client_info.name, params.client_info.version)
        return await call_next(ctx)

    # ------------------------------------------------------------------ lists

    async def _first_list(self, kind: str) -> None:
        self._listed.add(kind)
        if not self._first_list_done:
            await self.bridge.wait_settled(self.bridge.settings.timeouts.startup_wait)
            self._first_list_done = True

    async def _list_tools(self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        await self._first_list("tools")
        return {"tools": self.bridge.catalog.tools()}

    async def _list_prompts(self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        await self._first_list("prompts")
        return {"prompts": self.bridge.catalog.prompts()}

    async def _list_resources(self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        await self._first_list("resources")
        return {"resources": self.bridge.catalog.resources()}

    async def _list_templates(self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        await self._first_list("resources")
        return {"resourceTemplates": self.bridge.catalog.templates()}

    # ------------------------------------------------------------------ requests

    async def _call_tool(self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        meta = dict(ctx.meta or {})
        token = meta.pop("progress_token", None)
        meta.pop("progressToken", None)
        progress = _relay_progress(ctx) if token is not None else None
        return await _guard(self.bridge.call_tool(params.name, params.arguments, meta=meta or None, progress=progress))

    async def _get_prompt(self, ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams) -> Any:
        return await _guard(self.bridge.get_prompt(params.name, params.arguments))

    async def _read_resource(self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams) -> Any:
        return await _guard(self.bridge.read_resource(str(params.uri)))

    # ------------------------------------------------------------------ notifications

    async def relay_changes(self) -> None:
        """Tell the IDE which lists changed, for the lists it has already fetched."""
        async for kinds in self.bridge.changes:
            session = self._session
            if session is None:
                continue
            try:
                if "tools" in kinds and "tools" in self._listed:
                    await session.send_tool_list_changed()
                if "prompts" in kinds and "prompts" in self._listed:
                    await session.send_prompt_list_changed()
                if "resources" in kinds and "resources" in self._listed:
                    await session.send_resource_list_changed()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the IDE went away
            log.info("front.list_changed", kinds=sorted(kinds))


def _relay_progress(ctx: ServerRequestContext[Any]) -> ProgressFn:
    async def relay(progress: float, total: float | None, message: str | None) -> None:
        await ctx.session.report_progress(progress, total, message)

    return relay


async def _guard(work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Await a bridge request, turning its failures into JSON-RPC errors the IDE understands."""
    try:
        return await work
    except (UnknownName, PolicyDenied) as exc:
        raise MCPError(types.INVALID_PARAMS, clean(str(exc))) from None
    except MCPError as exc:  # the upstream's own JSON-RPC error: pass it on, cleaned
        raise MCPError(exc.error.code, clean(exc.error.message), exc.error.data) from None
    except BridgeError as exc:
        raise MCPError(types.INTERNAL_ERROR, error_text(exc)) from None
    except ValidationError as exc:
        problems = exc.error_count()
        raise MCPError(types.INTERNAL_ERROR, f"the server sent an invalid result ({problems} problem(s))") from None


async def serve_stdio(bridge: Bridge, early: EarlyStart | None = None) -> None:
    """Serve the bridge on this process's stdin/stdout until the IDE closes stdin (or the task is cancelled).

    ``early``: what ``serve`` read (and perhaps answered) before the SDK was loaded. Those bytes are read first; an
    ``initialize`` already answered is handled by the server all the same (that is what initializes its session),
    and its answer, sent already, is dropped here.
    """
    front = Front(bridge)
    early = early or EarlyStart()
    drop_id = early.request_id if early.answered else None
    async with (
        ide_pipes(prefix=early.consumed) as (stdin, stdout),
        stdio_server(stdin=stdin, stdout=stdout) as (read, write),
    ):
        send, receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        out_send, out_recv = anyio.create_memory_object_stream[SessionMessage](0)
        pending: set[Any] = set()
        answered = anyio.Event()

        async def pump_in() -> None:
            nonlocal answered
            async with send:
                async for item in read:
                    if isinstance(item, Exception):
                        await write.send(SessionMessage(_bad_line_error(item)))
                        continue
                    if isinstance(item.message, types.JSONRPCRequest):
                        pending.add(item.message.id)
                    await send.send(item)
                # stdin ended: answer what is already being handled before the server sees EOF (it would cancel it).
                with anyio.move_on_after(_DRAIN_ON_EOF_SECONDS):
                    while pending:
                        await answered.wait()
                        answered = anyio.Event()

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
                    await write.send(message)

        async with receive, anyio.create_task_group() as tg:
            tg.start_soon(pump_in)
            tg.start_soon(pump_out)
            tg.start_soon(front.relay_changes)
            async with out_send:
                await front.server.run(receive, out_send, front.initialization_options())
            tg.cancel_scope.cancel()


def _check_early_answer(early: EarlyStart, message: types.JSONRPCResponse | types.JSONRPCError) -> None:
    """The SDK's answer to the ``initialize`` answered early must be the one sent: say so loudly if it is not."""
    sent = dict(early.result or {})
    if isinstance(message, types.JSONRPCError):
        log.warning("front.early_initialize_differs", sdk_error=message.error.message, sent_keys=sorted(sent))
        return
    if message.result != sent:
        differing = sorted(k for k in set(sent) | set(message.result) if sent.get(k) != message.result.get(k))
        log.warning("front.early_initialize_differs", keys=differing)


def _bad_line_error(exc: Exception) -> types.JSONRPCError:
    """JSON-RPC's answer to a line that is not a valid message: -32700 for bad JSON, -32600 for a bad shape."""
    code, message = types.INVALID_REQUEST, "Invalid Request"
    if isinstance(exc, ValidationError) and any(e["type"] == "json_invalid" for e in exc.errors()):
        code, message = types.PARSE_ERROR, "Parse error"
    log.warning("front.bad_message", code=code)
    return types.JSONRPCError(jsonrpc="2.0", id=None, error=types.ErrorData(code=code, message=message))
