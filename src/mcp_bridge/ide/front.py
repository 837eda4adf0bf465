"""The MCP server the IDE talks to (:class:`Front`), in both protocol eras.

It answers ``initialize`` (handshake era) or ``server/discover`` (2026-07-28), waits briefly for upstreams on the
first ``tools/list``, forwards calls with progress and cancellation, and tells the IDE when a list changed
(``list_changed`` notifications, or ``subscriptions/listen`` at 2026-07-28). The stdio connection that feeds it is
:mod:`mcp_bridge.ide.connection`.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ResourceUpdated, ToolsListChanged
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import PrivateAttr, ValidationError

from mcp_bridge import __version__, telemetry
from mcp_bridge.era import finish, forwarded_meta, is_modern
from mcp_bridge.errors import BridgeError, PolicyDenied, UnknownName
from mcp_bridge.ide.backend import Backend
from mcp_bridge.ide.rounds import STATE_PREFIX, HeldCall, HeldCalls
from mcp_bridge.ide.warmstart import AnswerKeeper, tools_digest
from mcp_bridge.logs import clean, get_logger
from mcp_bridge.upstream.inputs import ASKING, STANDALONE, InputRequest, InputResult
from mcp_bridge.upstream.supervisor import ProgressFn, error_text

log = get_logger(__name__)

Notify = Callable[[str], Awaitable[None]]
"""Sends the IDE ``notifications/{kind}/list_changed`` (kind: tools, prompts or resources)."""

_WIRE_DUMP: dict[str, Any] = {"by_alias": True, "exclude_unset": True}
"""How every message is encoded on stdout (:func:`serve_stdio`'s writer), as the SDK's ``stdio_server`` encodes
them: ``model_dump_json(by_alias=True, exclude_unset=True)``."""

_RESOURCE_NOT_FOUND = -32002
"""A handshake-era server's "resource not found" (retired in 2026-07-28, where it is -32602)."""

_EVENTS: dict[str, ToolsListChanged | PromptsListChanged | ResourcesListChanged] = {
    "tools": ToolsListChanged(),
    "prompts": PromptsListChanged(),
    "resources": ResourcesListChanged(),
}

_MARKER = f"mcp-bridge-tools-{uuid.uuid4().hex}"
"""Stands in for the tools while a response's envelope is encoded; the tools' JSON replaces it."""


@dataclass
class _ToolsAnswer:
    """``tools/list``'s tools as the SDK shapes them for one catalog version and protocol version (:class:`_Shapes`),
    and their wire form; kept until either changes, so that the next lists are neither shaped nor encoded again."""

    key: tuple[Any, str]
    """(catalog version, protocol version)"""
    tools: list[Any]
    """``result["tools"]`` as the SDK shapes it (validated, sieved, dumped); never changed in place."""
    source: list[Any]
    """The catalog's tools it was made from (never changed in place either)."""
    encoded: str | None = None
    """``tools`` as the SDK's stdio writer encodes it, made on the first stdio answer that carries them."""
    kept: bool = False
    """Handed to the :class:`~mcp_bridge.ide.warmstart.AnswerKeeper` (for the next start's early answer)."""


class _PreEncoded(types.JSONRPCResponse):
    """A response whose wire form is already made: the SDK's stdio writer, which calls ``model_dump_json`` with
    :data:`_WIRE_DUMP`, gets that line; any other call dumps the fields as usual."""

    _line: str = PrivateAttr(default="")

    def model_dump_json(self, *args: Any, **kwargs: Any) -> str:
        if not args and kwargs == _WIRE_DUMP:
            return self._line
        return super().model_dump_json(*args, **kwargs)


@dataclass(frozen=True, slots=True)
class Envelope:
    """The envelope of the last 2026-07-28 request the SDK accepted (for :mod:`mcp_bridge.ide.fastpath`): the
    raw client info and capabilities, and the capabilities as the SDK parsed them."""

    client_info: Any
    capabilities: Any
    parsed: types.ClientCapabilities | None


class Front:
    """Handlers of the IDE-facing server, bound to one :class:`Bridge`."""

    def __init__(self, bridge: Backend) -> None:
        self.bridge = bridge
        self._client_known = False
        self._listed: set[str] = set()
        self._first_list_done = False
        self._tools_answer: _ToolsAnswer | None = None
        self._reusing: set[int] = set()  # id() of the contexts of tools/list requests answered from _tools_answer
        self.keeper = AnswerKeeper()
        self._shapes = _Shapes()
        self.modern: bool | None = None
        """The IDE's era, from its first request (None until then): the SDK serves one era per connection too."""
        self.held = HeldCalls(ttl=min(bridge.settings.timeouts.call, 600.0))
        """Calls of a 2026-07-28 IDE held across the rounds of a server's questions."""
        self.tasks: anyio.abc.TaskGroup | None = None
        """Where held calls run (set by :func:`~mcp_bridge.ide.connection.serve_stdio`)."""
        self._bus = InMemorySubscriptionBus()
        """List changes and resource updates for a modern IDE, delivered on its ``subscriptions/listen`` streams."""
        self._listener = ListenHandler(self._bus)
        self.server: Server[Any] = Server(
            "mcp-bridge",
            version=__version__,
            instructions=bridge.instructions(),
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource,
            on_completion=self._complete,
            on_subscribe_resource=self._subscribe,
            on_unsubscribe_resource=self._unsubscribe,
            on_subscriptions_listen=self._listen,
        )
        # logging/setLevel: a handshake-era IDE's level for the servers' log messages (the SDK warns that the
        # capability is deprecated at 2026-07-28, where the level comes with each request; both eras are served).
        self.server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self._set_level)
        self.server.add_request_handler("server/discover", types.RequestParams, self._discover)
        # The SDK installs an OpenTelemetry span middleware on every server; it costs time on every call, and with
        # telemetry on the bridge's own takes its place (mcp_bridge.telemetry). Ours refuse requests before
        # initialize saying so, remember the IDE's session and reuse the last tools/list answer.
        self.server.middleware[:] = [
            self._note_era,
            self._require_initialize,
            self._remember_client,
            self._reuse_tools_answer,
        ]
        if (traced := telemetry.hooks.front_middleware()) is not None:  # a span per request (telemetry on)
            self.server.middleware.insert(0, traced)
        self._initialized = False
        self.log_level = LogLevel()
        self.envelope: Envelope | None = None
        """The IDE's envelope as the SDK last accepted it on a 2026-07-28 request."""

    def initialization_options(self) -> Any:
        return self.server.create_initialization_options(
            NotificationOptions(tools_changed=True, prompts_changed=True, resources_changed=True)
        )

    async def _note_era(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if self.modern is None and ctx.request_id is not None:
            self.modern = is_modern(ctx.protocol_version)
        if (
            ctx.request_id is not None
            and is_modern(ctx.protocol_version)
            and isinstance(params := ctx.params, Mapping)
            and isinstance(raw := params.get("_meta"), dict)
        ):  # the envelope the SDK accepted (its ladder ran before any middleware): the short way's (ide.fastpath)
            info, capabilities = raw.get(types.CLIENT_INFO_META_KEY), raw.get(types.CLIENT_CAPABILITIES_META_KEY)
            if (known := self.envelope) is None or (known.client_info, known.capabilities) != (info, capabilities):
                self.envelope = Envelope(info, capabilities, ctx.session.client_capabilities)
        return await call_next(ctx)

    async def _discover(self, ctx: ServerRequestContext[Any], params: types.RequestParams | None) -> Any:
        """``server/discover``: the SDK's answer (list changes and resource subscriptions on the listen stream)."""
        return types.DiscoverResult(
            supported_versions=list(MODERN_PROTOCOL_VERSIONS),
            capabilities=self.server.get_capabilities(protocol_version=ctx.protocol_version),
            instructions=self.server.instructions,
        )

    async def _require_initialize(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """A request before ``initialize`` is refused saying so (-32600, "Server not initialized"), where the SDK
        answers "Invalid request parameters" (-32602), which sends an IDE looking for a fault in its params.

        The same gate as the SDK's (which stays behind it): ``ping`` and ``initialize`` itself pass, a method nobody
        serves stays "Method not found", notifications are the SDK's to drop, the gate opens with a successful
        ``initialize`` (or a bare ``notifications/initialized``), and the stateless 2026-07-28 era has none.
        """
        if self._initialized or ctx.method in ("initialize", "ping"):
            result = await call_next(ctx)
            self._initialized = self._initialized or ctx.method == "initialize"  # it did not raise: accepted
            return result
        if ctx.request_id is None:  # a notification
            if ctx.method == "notifications/initialized":
                self._initialized = True
            return await call_next(ctx)
        if ctx.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS and self.server.get_request_handler(ctx.method):
            raise MCPError(types.INVALID_REQUEST, "Server not initialized: send initialize first")
        return await call_next(ctx)

    async def _remember_client(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if not self._client_known and ctx.method != "initialize":
            self._client_known = True
            self.bridge.declare_ide_capabilities(ctx.session.client_capabilities)
            if not is_modern(ctx.protocol_version):  # roots may be asked outside a call (upstream.inputs)
                STANDALONE[:] = [_IdeAsker(ctx, "roots", self.log_level, standalone=True)]
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
        if id(ctx) in self._reusing:  # the SDK checks and shapes the rest of the answer; _reuse_tools_answer adds them
            return finish(ctx.protocol_version, {"tools": []}, cacheable=True)
        return finish(ctx.protocol_version, {"tools": self.bridge.listed_tools()}, cacheable=True)

    async def _reuse_tools_answer(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """``tools/list`` without the SDK validating the whole catalog on every list: the request still goes
        through the SDK (params checks, the initialization gate, the first list's wait, the result's shape, with an
        empty list), and the catalog's tools go in as the SDK shapes them, each tool shaped once
        (:class:`_Shapes`) and the whole list kept while the catalog and the protocol version stay the same.

        The SDK shapes ``tools`` independently of the result's other fields, so the answer is the one the SDK would
        give (``tests/test_list_cache.py`` compares them).
        """
        if ctx.method != "tools/list":
            return await call_next(ctx)
        self._reusing.add(id(ctx))
        try:
            result = await call_next(ctx)  # the first list waits for the servers in there
        finally:
            self._reusing.discard(id(ctx))
        if not isinstance(result, dict) or result.get("tools") != []:
            return result  # not the SDK's shape of our empty list (an error): never guess
        version = ctx.protocol_version
        key = (self.bridge.listed_version, version)  # no await from here on: the catalog stays as read
        answer = self._tools_answer
        if answer is None or answer.key != key:
            source = self.bridge.listed_tools()
            shaped = self._shapes.shape(source, version)
            if shaped is None:  # a tool the SDK refuses: its own path, and its own error
                return await call_next(ctx)
            answer = self._tools_answer = _ToolsAnswer(key, shaped, source)
        return {**result, "tools": answer.tools}

    def wire_message(self, message: SessionMessage) -> SessionMessage:
        """``message`` as the stdio writer should get it: a ``tools/list`` answer carrying the kept tools comes with
        its line encoded already, the kept tools' JSON spliced into the envelope's (both as the writer encodes);
        anything else is returned as is."""
        answer = self._tools_answer
        response = message.message
        if (
            answer is None
            or not isinstance(response, types.JSONRPCResponse)
            or isinstance(response, _PreEncoded)
            or response.result.get("tools") is not answer.tools
        ):
            return message
        if answer.encoded is None:
            answer.encoded = self._shapes.encode(answer.tools)
        envelope = response.model_copy(update={"result": {**response.result, "tools": _MARKER}})
        head, sep, tail = envelope.model_dump_json(by_alias=True, exclude_unset=True).partition(f'"{_MARKER}"')
        if not sep or _MARKER in tail:
            return message
        wire = _PreEncoded.model_construct(response.model_fields_set, **dict(response))
        wire._line = head + answer.encoded + tail
        if not answer.kept:
            answer.kept = True
            self._keep(answer, response.id, wire._line)
        return SessionMessage(wire, metadata=message.metadata)

    def _keep(self, answer: _ToolsAnswer, request_id: Any, line: str) -> None:
        """Keep the answer's ``result`` on disk, for the next start to answer its first list from
        (:mod:`mcp_bridge.ide.warmstart`), cut out of the line exactly as the SDK's writer made it."""
        head = '{"jsonrpc":"2.0","id":' + json.dumps(request_id, ensure_ascii=False, separators=(",", ":"))
        head += ',"result":'
        if line.startswith(head) and line.endswith("}"):
            self.keeper.keep(self.bridge.home, answer.key[1], answer.source, line[len(head) : -1])

    async def _list_prompts(self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        await self._first_list("prompts")
        return finish(ctx.protocol_version, {"prompts": self.bridge.catalog.prompts()}, cacheable=True)

    async def _list_resources(self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        await self._first_list("resources")
        return finish(ctx.protocol_version, {"resources": self.bridge.catalog.resources()}, cacheable=True)

    async def _list_templates(self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        await self._first_list("resources")
        return finish(ctx.protocol_version, {"resourceTemplates": self.bridge.catalog.templates()}, cacheable=True)

    # ------------------------------------------------------------------ requests

    async def _call_tool(self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        meta = ctx.meta or {}
        token = meta.get("progress_token", meta.get("progressToken"))
        progress = _relay_progress(ctx) if token is not None else None

        forwarded = forwarded_meta(meta) or {}
        level = meta.get(types.LOG_LEVEL_META_KEY) if is_modern(ctx.protocol_version) else self.log_level.level
        if level is not None:  # the IDE's level, for a 2026-07-28 server (which sends no log without it)
            forwarded[types.LOG_LEVEL_META_KEY] = level

        def work(inputs: dict[str, Any]) -> Awaitable[dict[str, Any]]:
            return self.bridge.call_tool(
                params.name, params.arguments, meta=forwarded or None, progress=progress, inputs=inputs
            )

        return finish(ctx.protocol_version, await self._asking(ctx, params, params.name, work))

    async def _get_prompt(self, ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams) -> Any:
        def work(inputs: dict[str, Any]) -> Awaitable[dict[str, Any]]:
            return self.bridge.get_prompt(params.name, params.arguments, inputs=inputs)

        return finish(ctx.protocol_version, await self._asking(ctx, params, params.name, work))

    async def _read_resource(self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams) -> Any:
        def work(inputs: dict[str, Any]) -> Awaitable[dict[str, Any]]:
            return self.bridge.read_resource(str(params.uri), inputs=inputs)

        return finish(ctx.protocol_version, await self._asking(ctx, params, str(params.uri), work), cacheable=True)

    async def _set_level(self, ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams) -> Any:
        self.log_level.level = params.level
        log.info("front.log_level", level=params.level)
        return types.EmptyResult()

    async def _complete(self, ctx: ServerRequestContext[Any], params: types.CompleteRequestParams) -> Any:
        return finish(ctx.protocol_version, await _guard(self.bridge.complete(params), ctx.protocol_version))

    async def _subscribe(self, ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams) -> Any:
        """``resources/subscribe`` (handshake era): routed and allowed as a read is; updates come as
        ``notifications/resources/updated`` (:meth:`relay_updates`)."""
        await _guard(self.bridge.subscribe(str(params.uri)), ctx.protocol_version)
        return types.EmptyResult()

    async def _unsubscribe(self, ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams) -> Any:
        await self.bridge.unsubscribe(str(params.uri))
        return types.EmptyResult()

    async def _listen(self, ctx: ServerRequestContext[Any], params: types.SubscriptionsListenRequestParams) -> Any:
        """``subscriptions/listen`` (2026-07-28): the SDK's listen stream, with the stream's resource subscriptions
        made on the servers for as long as it is open. A URI that is denied, unknown or on a server without
        subscriptions is left out of the acknowledgement (the spec's way of saying it is not honoured; the denial
        is audited)."""
        wanted = list(params.notifications.resource_subscriptions or ())
        held: list[str] = []
        for uri in dict.fromkeys(wanted):
            try:
                await self.bridge.subscribe(uri)
            except (BridgeError, MCPError) as exc:  # denied, unknown, or not offered by the server
                log.info("front.subscription_refused", uri=clean(uri), reason=clean(str(exc)))
                continue
            held.append(uri)
        if wanted:
            notifications = params.notifications.model_copy(update={"resource_subscriptions": held or None})
            params = params.model_copy(update={"notifications": notifications})
        try:
            return await self._listener(ctx, params)
        finally:
            with anyio.CancelScope(shield=True):
                for uri in held:
                    await self.bridge.unsubscribe(uri)

    async def _asking(
        self,
        ctx: ServerRequestContext[Any],
        params: types.InputResponseRequestParams,
        subject: str,
        work: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    ) -> Any:
        """Forward one IDE request; a server's request for input meanwhile is asked of the IDE in its era.

        A handshake-era IDE is asked on this request's stream (:class:`_IdeAsker`). A 2026-07-28 IDE is asked by
        answering with the question, and answers by retrying (:mod:`mcp_bridge.ide.rounds`); a retry that carries a
        server's own ``requestState`` goes to the server as it is."""
        if not is_modern(ctx.protocol_version):
            asking = ASKING.set(_IdeAsker(ctx, subject, self.log_level))
            try:
                return await _guard(work({}), ctx.protocol_version)
            finally:
                ASKING.reset(asking)
        self.bridge.declare_ide_capabilities(ctx.session.client_capabilities)
        state = params.request_state
        responses = _dumped(params.input_responses)

        async def relay_log(params: types.LoggingMessageNotificationParams) -> None:  # the SDK applies the level
            await ctx.session.send_log_message(params.level, params.data, params.logger, ctx.request_id)

        if state is not None and state.startswith(STATE_PREFIX):
            return await self.held.resume(state, ctx.method, subject, responses, relay_log)
        inputs: dict[str, Any] = {}
        if responses is not None:
            inputs["inputResponses"] = responses
        if state is not None:
            inputs["requestState"] = state

        async def held(call: HeldCall) -> dict[str, Any]:
            asking = ASKING.set(call)
            try:
                return await _guard(work(inputs), ctx.protocol_version)
            finally:
                ASKING.reset(asking)

        assert self.tasks is not None, "serve_stdio sets the task group"
        return await self.held.start(self.tasks, ctx.method, subject, held, relay_log)

    # ------------------------------------------------------------------ notifications

    async def relay_changes(self, notify: Notify) -> None:
        """Tell the IDE which lists changed, for the lists it has already fetched (a modern IDE: on its listen
        streams, which say themselves which kinds they want)."""
        async for kinds in self.bridge.changes:
            if self.modern:
                await self._publish(kinds)
                continue
            told = [kind for kind in ("tools", "prompts", "resources") if kind in kinds and kind in self._listed]
            answer = self._tools_answer
            if "tools" in told and answer is not None and answer.key[0] == self.bridge.listed_version:
                told.remove("tools")  # its last list was made after the change (a read rebuilds a stale catalog)
            try:
                for kind in told:
                    await notify(kind)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the IDE went away
            if told:
                log.info("front.list_changed", kinds=told)

    async def relay_updates(self, notify: Notify) -> None:
        """Tell the IDE of updates to the resources it subscribed to: ``notifications/resources/updated`` in the
        handshake era, on the listen streams that asked for the URI at 2026-07-28."""
        async for uri in self.bridge.resource_updates:
            if self.modern:
                await self._bus.publish(ResourceUpdated(uri=uri))
                continue
            try:
                await notify(uri)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the IDE went away

    def answered_early(self) -> None:
        """The IDE's first ``tools/list`` was answered from the warm cache: it has a whole list, so a later list (or
        another kind's) answers with the catalog as it is, without the first list's wait for the servers."""
        self._first_list_done = True

    async def check_early_list(self, digest: str, notify: Notify) -> None:
        """The IDE's first ``tools/list`` was answered from the warm cache (:mod:`mcp_bridge.ide.warmstart`). Once the
        servers are back (or the startup wait is over), the catalog's tools are compared with the ones it got; when
        they differ, it is told to list again. From then on it hears of every change, as after any list."""
        await self.bridge.wait_settled(self.bridge.settings.timeouts.startup_wait)
        self._listed.add("tools")  # not before: the changes up to now (the cache loaded, servers back) are compared
        now = await anyio.to_thread.run_sync(tools_digest, self.bridge.listed_tools())
        if now == digest:
            return
        log.info("front.early_list_differs")
        if self.modern:
            await self._publish({"tools"})
            return
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await notify("tools")

    async def _publish(self, kinds: set[str]) -> None:
        for kind in ("tools", "prompts", "resources"):
            if kind in kinds:
                await self._bus.publish(_EVENTS[kind])
        log.info("front.list_changed", kinds=sorted(kinds), via="subscriptions/listen")


class _Shapes:
    """Each catalog tool as the SDK shapes it for one protocol version, and as its stdio writer encodes that: kept per
    tool, so that a list after a change validates and encodes only the tools that are new (a catalog keeps the same
    definition object for a tool while its server's listing and its exposed name stay the same).

    The SDK validates a ``tools/list`` result against the version's model and dumps it (``serialize_server_result``):
    a list's items are shaped one by one, so a tool's shape does not depend on the others; and its writer encodes the
    result's ``Any`` values with pydantic's own JSON serializer, which is ``pydantic_core.to_json``, item by item
    joined with commas. ``tests/test_list_cache.py`` compares the bytes with the SDK's path for every version."""

    def __init__(self) -> None:
        # (id(definition), version) -> (definition, shaped); id(shaped) -> (shaped, its JSON). Refs keep ids valid.
        self._shaped: dict[tuple[int, str], tuple[Any, Any]] = {}
        self._encoded: dict[int, tuple[Any, str]] = {}

    def shape(self, tools: list[Any], version: str) -> list[Any] | None:
        """``tools`` as the SDK shapes them (``None`` when it refuses one of them)."""
        from mcp_types.methods import serialize_server_result

        new = [t for t in tools if (hit := self._shaped.get((id(t), version))) is None or hit[0] is not t]
        if new:
            try:
                result = finish(version, {"tools": new}, cacheable=True)  # a modern result's own fields too
                shaped_new = serialize_server_result("tools/list", version, result)["tools"]
            except (ValidationError, KeyError, ValueError) as exc:
                log.warning("front.tools_unshapeable", error=f"{type(exc).__name__}")
                return None
            if not isinstance(shaped_new, list) or len(shaped_new) != len(new):
                return None
            for tool, shaped in zip(new, shaped_new, strict=True):
                self._shaped[(id(tool), version)] = (tool, shaped)
        out = [self._shaped[(id(t), version)][1] for t in tools]
        if new:  # forget what this version no longer lists
            current = {(id(t), version) for t in tools}
            self._shaped = {k: v for k, v in self._shaped.items() if k[1] != version or k in current}
        return out

    def encode(self, shaped: list[Any]) -> str:
        """The JSON of a shaped list, as the SDK's stdio writer encodes it inside a response."""
        from pydantic_core import to_json

        parts: list[str] = []
        fresh = 0
        for tool in shaped:
            hit = self._encoded.get(id(tool))
            if hit is None or hit[0] is not tool:
                hit = (tool, to_json(tool).decode("utf-8"))
                self._encoded[id(tool)] = hit
                fresh += 1
            parts.append(hit[1])
        if fresh and len(self._encoded) > 2 * len(shaped):
            current = {id(t) for t in shaped}
            self._encoded = {k: v for k, v in self._encoded.items() if k in current}
        return "[" + ",".join(parts) + "]"


_LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


@dataclass
class LogLevel:
    """The level a handshake-era IDE asked for with ``logging/setLevel`` (``None``: it did not; every message the
    servers send is relayed)."""

    level: str | None = None

    def admits(self, level: str) -> bool:
        if self.level not in _LOG_LEVELS or level not in _LOG_LEVELS:
            return True
        return _LOG_LEVELS.index(level) >= _LOG_LEVELS.index(self.level)


class _IdeAsker:
    """Asks the IDE for a server's input on the stream of one IDE request: a handshake-era IDE gets a request of the
    bridge's own, tied to that request (as the server's was tied to the bridge's); a 2026-07-28 IDE answers input
    requests by retrying (see :mod:`mcp_bridge.upstream.inputs`)."""

    def __init__(
        self, ctx: ServerRequestContext[Any], subject: str, log_level: LogLevel, *, standalone: bool = False
    ) -> None:
        self._ctx = ctx
        self._log_level = log_level
        self.subject = subject
        self.modern = is_modern(ctx.protocol_version)
        self._standalone = standalone
        """Asks on the session's own channel, not tied to a request (``roots/list`` outside a call)."""

    async def ask(self, request: InputRequest) -> InputResult:
        if self.modern:
            raise MCPError(types.INVALID_REQUEST, "a 2026-07-28 IDE cannot be asked in the middle of a request")
        related = None if self._standalone else ServerMessageMetadata(related_request_id=self._ctx.request_id)
        if isinstance(request, types.ElicitRequest):
            return await self._ctx.session.send_request(request, types.ElicitResult, metadata=related)
        if isinstance(request, types.ListRootsRequest):
            return await self._ctx.session.send_request(request, types.ListRootsResult, metadata=related)
        if request.params.tools:
            return await self._ctx.session.send_request(request, types.CreateMessageResultWithTools, metadata=related)
        return await self._ctx.session.send_request(request, types.CreateMessageResult, metadata=related)

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        """At the level the IDE asked for: ``logging/setLevel`` in the handshake era; at 2026-07-28 the SDK sends
        it only at or above the level this request's envelope asked for."""
        if not self.modern and not self._log_level.admits(params.level):
            return
        related = None if self._standalone else self._ctx.request_id
        await self._ctx.session.send_log_message(params.level, params.data, params.logger, related_request_id=related)


def _dumped(responses: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A retry's ``inputResponses`` as JSON (the SDK parsed them into models)."""
    if responses is None:
        return None
    return {
        key: value.model_dump(by_alias=True, mode="json", exclude_none=True) if hasattr(value, "model_dump") else value
        for key, value in responses.items()
    }


def _relay_progress(ctx: ServerRequestContext[Any]) -> ProgressFn:
    async def relay(progress: float, total: float | None, message: str | None) -> None:
        await ctx.session.report_progress(progress, total, message)

    return relay


async def _guard(work: Awaitable[dict[str, Any]], version: str | None = None) -> dict[str, Any]:
    """Await a bridge request, turning its failures into JSON-RPC errors the IDE understands (in its era)."""
    try:
        return await work
    except (UnknownName, PolicyDenied) as exc:
        raise MCPError(types.INVALID_PARAMS, clean(str(exc))) from None
    except MCPError as exc:  # the upstream's own JSON-RPC error: pass it on, cleaned
        code = exc.error.code
        if code == _RESOURCE_NOT_FOUND and is_modern(version):  # 2026-07-28 says "not found" with -32602
            code = types.INVALID_PARAMS
        raise MCPError(code, clean(exc.error.message), exc.error.data) from None
    except BridgeError as exc:
        raise MCPError(types.INTERNAL_ERROR, error_text(exc)) from None
    except ValidationError as exc:
        problems = exc.error_count()
        raise MCPError(types.INTERNAL_ERROR, f"the server sent an invalid result ({problems} problem(s))") from None
