"""A hostile upstream: a real SDK streamable-HTTP server on 127.0.0.1 whose every answer the test scripts.

It runs in the test's own event loop (uvicorn in a task), so the test changes what it lists between requests and
makes it announce the change: ``await server.announce("tools")`` sends ``notifications/tools/list_changed`` on the
session of the bridge's last handshake-era request, and publishes the change to 2026-07-28 clients' listen streams.
Every call and read it receives is recorded, so a test can prove what reached it (and what must not have), and so is
every POST (method, protocol version, ``Mcp-Param-*`` headers).

``era`` narrows it to one protocol era as ``localservers --era`` does (``both``, ``modern``, ``handshake``);
``listen=False`` makes a 2026-07-28 server that serves no ``subscriptions/listen`` (its lists then say nothing of
changes, and a client re-lists when their ``ttl_ms`` runs out).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_bridge.sandbox.localservers import EraGate


@dataclass(frozen=True)
class Post:
    """One POST the server received: its JSON-RPC method, ``MCP-Protocol-Version`` and ``Mcp-Param-*`` headers, and
    its W3C ``traceparent`` and ``Mcp-Session-Id`` headers."""

    method: str | None
    version: str | None
    params: dict[str, str]
    traceparent: str | None = None
    session: str | None = None


@dataclass
class Hostile:
    """What the server lists (raw camelCase dicts, sent as they are: duplicates and all) and what it received."""

    name: str
    tools: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    templates: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    metas: list[dict[str, Any]] = field(default_factory=list)
    """The ``_meta`` of each call, as it arrived."""
    reads: list[str] = field(default_factory=list)
    port: int = 0
    era: str = "both"
    listen: bool = True
    ttl_ms: int = 0
    """``ttlMs`` of its lists at 2026-07-28."""
    posts: list[Post] = field(default_factory=list)
    fail_calls: list[MCPError] = field(default_factory=list)
    """Errors its next calls raise (the first, then the next...), before they are recorded."""
    session: Any = None
    """The server session of the last handshake-era request: where :meth:`announce` sends."""
    bus: InMemorySubscriptionBus = field(default_factory=InMemorySubscriptionBus)
    listener: ListenHandler = field(init=False)
    """Serves its listen streams; closed (gracefully) when the server stops, so no stream outlives it."""

    def __post_init__(self) -> None:
        self.port = self.port or _free_port()
        self.listener = ListenHandler(self.bus)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def server_config(self, **extra: Any) -> dict[str, Any]:
        return {"url": self.url, "allowed_tools": ["*"], "allowed_prompts": ["*"], "allowed_resources": ["*"], **extra}

    async def announce(self, kind: str) -> None:
        """``notifications/{kind}/list_changed`` to the bridge (kind: tools, prompts, resources), on the last
        handshake-era session and as an event on the 2026-07-28 listen streams."""
        event = {"tools": ToolsListChanged, "prompts": PromptsListChanged, "resources": ResourcesListChanged}[kind]
        await self.bus.publish(event())
        if self.session is None:
            return
        send = {
            "tools": self.session.send_tool_list_changed,
            "prompts": self.session.send_prompt_list_changed,
            "resources": self.session.send_resource_list_changed,
        }[kind]
        await send()

    def methods(self) -> list[str | None]:
        return [p.method for p in self.posts]


def tool(name: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": description, "inputSchema": {"type": "object"}, **extra}


def _build(state: Hostile) -> Server[Any]:
    def seen(ctx: ServerRequestContext[Any]) -> None:
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            state.session = ctx.session

    def complete(ctx: ServerRequestContext[Any], result: dict[str, Any], cacheable: bool = False) -> dict[str, Any]:
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return result
        out = {**result, "resultType": "complete"}
        return {**out, "ttlMs": state.ttl_ms, "cacheScope": "private"} if cacheable else out

    async def list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        seen(ctx)
        return complete(ctx, {"tools": list(state.tools)}, True)

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        seen(ctx)
        if state.fail_calls:
            raise state.fail_calls.pop(0)
        state.calls.append((params.name, dict(params.arguments or {})))
        state.metas.append(dict(ctx.meta or {}))
        return complete(ctx, {"content": [{"type": "text", "text": f"{state.name} ran {params.name}"}]})

    async def list_prompts(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        seen(ctx)
        return complete(ctx, {"prompts": list(state.prompts)}, True)

    async def get_prompt(ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams) -> Any:
        seen(ctx)
        text = f"{state.name} prompt {params.name}"
        return complete(ctx, {"messages": [{"role": "user", "content": {"type": "text", "text": text}}]})

    async def list_resources(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        seen(ctx)
        return complete(ctx, {"resources": list(state.resources)}, True)

    async def list_templates(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        seen(ctx)
        return complete(ctx, {"resourceTemplates": list(state.templates)}, True)

    async def read_resource(ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams) -> Any:
        seen(ctx)
        uri = str(params.uri)
        state.reads.append(uri)
        if uri.startswith("missing:"):  # a handshake-era server's "resource not found"
            raise MCPError(-32002, f"no resource {uri}")
        result = {"contents": [{"uri": uri, "mimeType": "text/plain", "text": f"{state.name} read {uri}"}]}
        return complete(ctx, result, True)

    return Server(
        state.name,
        version="1.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscriptions_listen=state.listener if state.listen else None,
    )


class _Recorder:
    """ASGI middleware: records each POST (:class:`Post`) in the server's state, then serves it."""

    def __init__(self, app: ASGIApp, state: Hostile) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            event: Message = await receive()
            body += bytes(event.get("body", b""))
            if not event.get("more_body"):
                break
        try:
            message = json.loads(body)
        except ValueError:
            message = None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.state.posts.append(
            Post(
                message.get("method") if isinstance(message, dict) else None,
                headers.get("mcp-protocol-version"),
                {k: v for k, v in headers.items() if k.startswith("mcp-param-")},
                headers.get("traceparent"),
                headers.get("mcp-session-id"),
            )
        )
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Canned:
    """A URL that answers every request with the same HTTP response (a web page, an error, JSON that is not MCP)."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    port: int = 0
    requests: int = 0

    def __post_init__(self) -> None:
        self.port = self.port or _free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        headers = [(b"content-type", self.content_type.encode()), (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


MODERN_DISCOVER: dict[str, Any] = {
    "resultType": "complete",
    "supportedVersions": ["2026-07-28"],
    "capabilities": {"tools": {}},
    "serverInfo": {"name": "scripted", "version": "1.0"},
}
"""What a hand-written server that speaks only 2026-07-28 answers ``server/discover`` with."""


async def read_body(receive: Receive) -> bytes:
    """A raw ASGI request's whole body."""
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            return body


@dataclass
class Scripted:
    """A 2026-07-28-only server written by hand, not with the SDK (which checks its own answers): each JSON-RPC
    method is answered with the result given for it, exactly as given (``server/discover`` has a default). Every
    request's body is recorded."""

    results: dict[str, dict[str, Any]]
    port: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = self.port or _free_port()
        self.results.setdefault("server/discover", MODERN_DISCOVER)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        request = json.loads(body or b"{}")
        self.received.append(request)
        if "id" not in request:
            await send({"type": "http.response.start", "status": 202, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        result = self.results.get(request.get("method"))
        if result is None:
            answer = {"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "Method not found"}}
        else:
            answer = {"jsonrpc": "2.0", "id": request["id"], "result": result}
        data = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})


class LimitBody:
    """ASGI middleware: 413 for a request body over ``limit`` bytes (a proxy in front of a server)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = int(dict(scope.get("headers") or []).get(b"content-length", b"0") or 0)
        if scope["type"] == "http" and length > self.limit:
            await Canned(413, b"<html>Request Entity Too Large</html>", "text/html")(scope, receive, send)
            return
        await self.app(scope, receive, send)


@asynccontextmanager
async def serving(*states: Any, body_limit: int | None = None) -> AsyncIterator[None]:
    """Serve each scripted server on its port (chosen when it was made, so a config can name it before it runs, and
    the same server can be served again later). ``body_limit``: scripted servers answer 413 to larger requests."""
    import uvicorn

    async with anyio.create_task_group() as tg:
        servers = []
        for state in states:
            app: ASGIApp = state
            if isinstance(state, Hostile):
                app = _build(state).streamable_http_app(host="127.0.0.1")
                app = _Recorder(EraGate(app, state.era), state)
                if body_limit is not None:
                    app = LimitBody(app, body_limit)
            elif hasattr(state, "app"):  # another scripted SDK server (asking.py)
                app = state.app()
            lifespan = "off" if isinstance(state, Canned | Scripted) else "on"
            config = uvicorn.Config(
                app,
                host="127.0.0.1",
                port=state.port,
                log_level="warning",
                lifespan=lifespan,
                timeout_graceful_shutdown=1,
            )
            web = uvicorn.Server(config)
            servers.append(web)
            tg.start_soon(web.serve)
        with anyio.fail_after(15):
            while not all(web.started for web in servers):
                await anyio.sleep(0.01)
        try:
            yield
        finally:
            for state in states:
                if isinstance(state, Hostile):
                    state.listener.close()  # end its listen streams, or they hold their connections open
            for web in servers:
                web.should_exit = True
