"""A hostile upstream: a real SDK streamable-HTTP server on 127.0.0.1 whose every answer the test scripts.

It runs in the test's own event loop (uvicorn in a task), so the test changes what it lists between requests and
makes it announce the change: ``await server.announce("tools")`` sends ``notifications/tools/list_changed`` on the
session of the bridge's last request. Every call and read it receives is recorded, so a test can prove what reached
it (and what must not have).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from starlette.types import ASGIApp, Receive, Scope, Send


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
    session: Any = None
    """The server session of the last request: where :meth:`announce` sends."""

    def __post_init__(self) -> None:
        self.port = self.port or _free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def server_config(self, **extra: Any) -> dict[str, Any]:
        return {"url": self.url, "allowed_tools": ["*"], **extra}

    async def announce(self, kind: str) -> None:
        """``notifications/{kind}/list_changed`` to the bridge (kind: tools, prompts, resources)."""
        assert self.session is not None, "the bridge has not sent a request yet"
        send = {
            "tools": self.session.send_tool_list_changed,
            "prompts": self.session.send_prompt_list_changed,
            "resources": self.session.send_resource_list_changed,
        }[kind]
        await send()


def tool(name: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": description, "inputSchema": {"type": "object"}, **extra}


def _build(state: Hostile) -> Server[Any]:
    def seen(ctx: ServerRequestContext[Any]) -> None:
        state.session = ctx.session

    async def list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        seen(ctx)
        return {"tools": list(state.tools)}

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        seen(ctx)
        state.calls.append((params.name, dict(params.arguments or {})))
        state.metas.append(dict(ctx.meta or {}))
        return {"content": [{"type": "text", "text": f"{state.name} ran {params.name}"}]}

    async def list_prompts(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        seen(ctx)
        return {"prompts": list(state.prompts)}

    async def get_prompt(ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams) -> Any:
        seen(ctx)
        text = f"{state.name} prompt {params.name}"
        return {"messages": [{"role": "user", "content": {"type": "text", "text": text}}]}

    async def list_resources(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        seen(ctx)
        return {"resources": list(state.resources)}

    async def list_templates(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        seen(ctx)
        return {"resourceTemplates": list(state.templates)}

    async def read_resource(ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams) -> Any:
        seen(ctx)
        uri = str(params.uri)
        state.reads.append(uri)
        if uri.startswith("missing:"):  # a handshake-era server's "resource not found"
            raise MCPError(-32002, f"no resource {uri}")
        return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": f"{state.name} read {uri}"}]}

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
    )


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
async def serving(*states: Hostile | Canned, body_limit: int | None = None) -> AsyncIterator[None]:
    """Serve each scripted server on its port (chosen when it was made, so a config can name it before it runs, and
    the same server can be served again later). ``body_limit``: scripted servers answer 413 to larger requests."""
    import uvicorn

    async with anyio.create_task_group() as tg:
        servers = []
        for state in states:
            app: ASGIApp = state
            if isinstance(state, Hostile):
                app = _build(state).streamable_http_app(host="127.0.0.1")
                if body_limit is not None:
                    app = LimitBody(app, body_limit)
            lifespan = "on" if isinstance(state, Hostile) else "off"
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
            for web in servers:
                web.should_exit = True
