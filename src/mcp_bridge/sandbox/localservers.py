"""Local MCP servers for the tests and the offline demo: real SDK streamable-HTTP servers on 127.0.0.1.

``python -m mcp_bridge.sandbox.localservers --port N [--name NAME] [--api-key KEY] [--weird-names] [--hostile]
[--era both|modern|handshake]`` runs one
(``--hostile`` adds tools whose names and descriptions hold terminal control characters, ``--hostile-listing`` fails
its tool list with them; ``--era`` picks the protocol eras it speaks, see :data:`ERAS`; ``--oauth``
runs the OAuth-protected variant of ``oauth_server``; ``--extra-tools N`` and ``--echo-delay SECONDS`` are
for the benchmarks: N more tools, and an ``echo`` that answers late). Its tools
cover what a bridge must pass through untouched: plain text, ``structuredContent`` with an output schema,
``isError``, ``_meta``, progress, cancellation (recorded, and reported by the ``stats`` tool), a call that never
ends, a tool that adds another tool at runtime and announces it with ``tools/list_changed``, and one that changes
another tool's description (``redefine``: what a "rug pull" looks like).

Its answers are right for either protocol era: in the 2026-07-28 era every result names its kind (``resultType``) and
the lists and reads say how long they may be cached (``ttlMs``, ``cacheScope``); list changes go out as
``list_changed`` notifications to a handshake-era session and as events on ``subscriptions/listen`` streams.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Era = Literal["both", "modern", "handshake"]
ERAS: tuple[Era, ...] = ("both", "modern", "handshake")
"""Which protocol eras a server speaks: ``both`` (what an SDK 2.x server does: the handshake era, 2025-11-25 and
older, and the stateless 2026-07-28 era), ``modern`` (2026-07-28 only: ``initialize`` is refused with HTTP 400 and
-32022 naming the versions it speaks) or ``handshake`` (as a 2025 server: a 2026-07-28 request, which has no session,
gets HTTP 400 "Bad Request: Missing session ID")."""

LIST_TTL_MS = 60_000
"""How long (ms) a 2026-07-28 client may keep this server's lists (``ttlMs``); changes are announced anyway."""

HOSTILE_TEXT = (
    "\x1b[31mred\x1b[0m \x1b]0;owned\x07 \x1b[2J cleared\x00 nul \x7f del \x9b31m c1 \r overwritten "
    "\u202eevil\u202c \u2066iso\u2069 zero\u200bwidth \U000e0041\U000e0042 tags; ünïcødé ✓"
)
"""Text a hostile server puts in its names, titles, descriptions, results and errors: ANSI escape sequences (SGR,
OSC window title, erase display), BEL, NUL, DEL, a C1 CSI, a carriage return, bidi override and isolate, a
zero-width space, tag characters; and ordinary Unicode, which must come through."""

WEIRD_NAMES = [
    "dots.in.name",
    "slash/name",
    "space name",
    "ünïcødé-tool",
    "very_long_" + "x" * 100,
    "dots_in_name",
]


@dataclass
class _State:
    name: str
    calls: int = 0
    cancelled: list[str] = field(default_factory=list)
    extra_tools: list[str] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=dict)
    """Tool name → the description ``redefine`` gave it at runtime."""
    clients: set[tuple[str, int]] = field(default_factory=set)
    """The (address, port) of every TCP connection that sent a request: how many connections clients opened."""
    protocol_versions: set[str] = field(default_factory=set)
    """The protocol version of every tools/call this server answered."""
    bus: InMemorySubscriptionBus = field(default_factory=InMemorySubscriptionBus)
    """Where list changes are published for 2026-07-28 clients' ``subscriptions/listen`` streams."""


def _complete(ctx: ServerRequestContext[Any], result: dict[str, Any], *, cacheable: bool = False) -> dict[str, Any]:
    """``result`` as the request's era needs it: at 2026-07-28 with ``resultType`` and, when ``cacheable`` (the
    lists and reads), ``ttlMs`` and ``cacheScope``. Handshake-era results are left as they are."""
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return result
    out = {**result, "resultType": "complete"}
    if cacheable:
        out.setdefault("ttlMs", LIST_TTL_MS)
        out.setdefault("cacheScope", "private")
    return out


async def announce_tools_changed(ctx: ServerRequestContext[Any], state: _State) -> None:
    """Tell clients the tool list changed: a handshake-era session by notification, 2026-07-28 listeners by an event
    on the bus (on a 2026-07-28 request the notification is dropped by the SDK: such clients listen)."""
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        await ctx.session.send_tool_list_changed()
    await state.bus.publish(ToolsListChanged())


def _failure(message: str) -> MCPError:
    """A handler's error that reaches the client with its message in either era (at 2026-07-28 the SDK sends
    only "Internal server error" for an exception that is not an ``MCPError``)."""
    return MCPError(types.INTERNAL_ERROR, message)


def _text(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}]


def extra_tool(i: int, server: str) -> dict[str, Any]:
    """The ``i``-th of ``--extra-tools``: ``tool_0001``, with a realistic description and schema (also the
    distractors of ``bench/search.py``)."""
    return {
        "name": f"tool_{i:04d}",
        "description": f"Tool number {i} of server {server}. Looks up records by query and returns the matching ones "
        "as JSON; results are paged, newest first.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100, "description": "At most this many."},
                "cursor": {"type": "string", "description": "Where the previous page ended."},
            },
        },
        "annotations": {"readOnlyHint": True},
    }


def build_server(
    name: str,
    *,
    weird_names: bool = False,
    state: _State | None = None,
    extra_tools: int = 0,
    echo_delay: float = 0.0,
    hostile: bool = False,
    hostile_listing: bool = False,
) -> Server[Any]:
    """A low-level SDK server with the tools, one prompt and resources described in the module docstring.

    ``extra_tools`` adds that many tools ``tool_0001``, ``tool_0002``, ... (each with a realistic description and
    schema; a call answers with its arguments); ``echo_delay`` makes ``echo`` answer after that many seconds.
    ``hostile`` adds tools whose names, titles and descriptions hold :data:`HOSTILE_TEXT`, one answering with it
    (``hostile_text``) and one failing with it (``hostile_error``); ``hostile_listing`` makes ``tools/list`` fail
    with it."""
    state = state or _State(name)
    obj: dict[str, Any] = {"type": "object"}

    def tool(tool_name: str, description: str, props: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        schema = {**obj, "properties": props or {}}
        return {"name": tool_name, "description": description, "inputSchema": schema, **extra}

    base_tools = [
        tool("echo", f"Echo the text back (server {name}).", {"text": {"type": "string"}}),
        tool(
            "add",
            "Add two numbers; structured result.",
            {"a": {"type": "number"}, "b": {"type": "number"}},
            outputSchema={**obj, "properties": {"sum": {"type": "number"}}, "required": ["sum"]},
        ),
        tool("fail", "Always answers with isError.", {"message": {"type": "string"}}),
        tool("meta", "Answers with a _meta block.", annotations={"readOnlyHint": True}),
        tool("slow", "Reports progress for each step.", {"steps": {"type": "integer"}, "delay": {"type": "number"}}),
        tool("wait_forever", "Never answers (until cancelled)."),
        tool("stats", "How many calls this server saw, and which were cancelled."),
        tool("add_tool", "Adds a tool at runtime and sends tools/list_changed.", {"tool": {"type": "string"}}),
        tool("delete_everything", "A tool nobody should allow."),
        tool(
            "redefine",
            "Changes another tool's description at runtime and sends tools/list_changed (a 'rug pull').",
            {"tool": {"type": "string"}, "description": {"type": "string"}},
        ),
    ]
    weird = [tool(n, f"A tool named {n!r}.") for n in WEIRD_NAMES] if weird_names else []
    if hostile:
        weird += [
            tool(f"hostile\x1b[31m_name\x07\u202e{HOSTILE_TEXT[:12]}", f"First line {HOSTILE_TEXT}\nsecond line."),
            tool("hostile_text", f"Answers with hostile text. {HOSTILE_TEXT}", title=f"Title {HOSTILE_TEXT}"),
            tool("hostile_error", "Fails with a hostile error message."),
        ]
    many = [extra_tool(i, name) for i in range(1, extra_tools + 1)]
    many_names = {t["name"] for t in many}

    async def list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        if hostile_listing:
            raise _failure(f"cannot list: {HOSTILE_TEXT}")
        dynamic = [tool(t, "Added at runtime; echoes its arguments.") for t in state.extra_tools]
        listed = [{**t, "description": state.descriptions.get(t["name"], t["description"])} for t in base_tools]
        return _complete(ctx, {"tools": listed + weird + many + dynamic}, cacheable=True)

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        state.calls += 1
        if ctx.protocol_version:
            state.protocol_versions.add(ctx.protocol_version)
        return _complete(ctx, await call(ctx, params))

    async def call(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> dict[str, Any]:
        args = params.arguments or {}
        handler = handlers.get(params.name)
        if handler is None:
            if hostile and params.name == "hostile_text":
                return {"content": _text(HOSTILE_TEXT), "structuredContent": {"text": HOSTILE_TEXT}}
            if hostile and params.name == "hostile_error":
                raise _failure(f"failed: {HOSTILE_TEXT}")
            if params.name in state.extra_tools or params.name in WEIRD_NAMES or params.name in many_names:
                return {"content": _text(json.dumps({"tool": params.name, "arguments": args}))}
            raise _failure(f"no tool {params.name!r}")
        return await handler(ctx, args)

    async def echo(ctx: ServerRequestContext[Any], args: dict[str, Any]) -> Any:
        if echo_delay > 0:
            await anyio.sleep(echo_delay)
        return {"content": _text(f"{name}: {args.get('text', '')}")}

    async def add(ctx: ServerRequestContext[Any], args: dict[str, Any]) -> Any:
        total = args.get("a", 0) + args.get("b", 0)
        return {"content": _text(json.dumps({"sum": total})), "structuredContent": {"sum": total}}

    async def fail(ctx: ServerRequestContext[Any], args: dict[str, Any]) -> Any:
        return {"content": _text(f"failed: {args.get('message', 'no reason')}"), "isError": True}

    async def meta(ctx: ServerRequestContext[Any], args: dict[str, Any]) -> Any:
        sent = {"example.com/origin": name, "n": 1}
        if isinstance(traced := (ctx.meta or {}).get("traceparent"), str):
            sent["example.com/traceparent"] = traced  # the trace context the call came with
        return {"content": _text("with meta"), "_meta": sent}

    async def slow(ctx: ServerRequestContext[Any], args: dict[str, Any]) -> Any:
        steps, delay = int(args.get("steps", 3)), float(args.get("delay", 0.05))
        try:
            for i in range(1, steps + 1):
                await anyio.sleep(delay)
                await ctx.session.report_progress(i, steps, f"step {i} of {steps}")
        except anyio.get_cancelled_exc_class():
            state.cancelled.append("slow")
            raise
        return {"content": _text(f"done after {steps} steps")}

    async def wait_forever(ctx: ServerRequestContext[Any], args: dict[str, Any]) -> Any:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            state.cancelled.append("wait_forever")
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def stats(ctx: ServerRequestContext[Any], args: dict[str, Any]) -> Any:
        data = {
            "server": name,
            "calls": state.calls,
            "cancelled": list(state.cancelled),
            "connections": len(state.clients),
            "protocol_versions": sorted(state.protocol_versions),
        }
        return {"content": _text(json.dumps(data)), "structuredContent": data}

    async def add_tool(ctx: ServerRequestContext[Any], args: dict[str, Any]) -> Any:
        new = str(args.get("tool") or f"dynamic_{len(state.extra_tools) + 1}")
        state.extra_tools.append(new)
        await announce_tools_changed(ctx, state)
        return {"content": _text(f"added {new}")}

    async def redefine(ctx: ServerRequestContext[Any], args: dict[str, Any]) -> Any:
        target, text = str(args.get("tool") or "echo"), str(args.get("description") or "")
        state.descriptions[target] = text
        await announce_tools_changed(ctx, state)
        return {"content": _text(f"{target} is now described as {text!r}")}

    async def delete_everything(ctx: ServerRequestContext[Any], args: dict[str, Any]) -> Any:
        return {"content": _text("deleted everything (this should never be reachable through the bridge)")}

    handlers: dict[str, Callable[[ServerRequestContext[Any], dict[str, Any]], Awaitable[dict[str, Any]]]] = {
        "echo": echo,
        "add": add,
        "fail": fail,
        "meta": meta,
        "slow": slow,
        "wait_forever": wait_forever,
        "stats": stats,
        "add_tool": add_tool,
        "delete_everything": delete_everything,
        "redefine": redefine,
    }

    async def list_prompts(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        prompts = [{"name": "greet", "description": "Greets someone.", "arguments": [{"name": "who"}]}]
        return _complete(ctx, {"prompts": prompts}, cacheable=True)

    async def get_prompt(ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams) -> Any:
        who = (params.arguments or {}).get("who", "you")
        text = f"Hello {who}, from {name}."
        return _complete(ctx, {"messages": [{"role": "user", "content": {"type": "text", "text": text}}]})

    readme = f"mem://{name}/readme"

    async def complete(ctx: ServerRequestContext[Any], params: types.CompleteRequestParams) -> Any:
        """Completions of the ``greet`` prompt's ``who`` and of the item template's ``id``, by prefix; the answer
        names the server and what it was asked for, so a test sees where a completion went."""
        ref = params.ref
        what = ref.name if isinstance(ref, types.PromptReference) else ref.uri
        choices = {"greet": ["Ada", "Alan", "Grace"], f"mem://{name}/items/{{id}}": ["1", "7", "12"]}.get(what, [])
        values = [v for v in choices if v.startswith(params.argument.value)]
        return _complete(ctx, {"completion": {"values": values, "total": len(values), "hasMore": False}})

    async def list_resources(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        resources = [{"uri": readme, "name": f"{name} readme", "mimeType": "text/plain"}]
        return _complete(ctx, {"resources": resources}, cacheable=True)

    async def list_templates(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        templates = [{"uriTemplate": f"mem://{name}/items/{{id}}", "name": "item"}]
        return _complete(ctx, {"resourceTemplates": templates}, cacheable=True)

    async def read_resource(ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams) -> Any:
        uri = str(params.uri)
        if uri == readme:
            text = f"This is {name}."
        elif uri.startswith(f"mem://{name}/items/"):
            text = f"item {uri.rsplit('/', 1)[-1]} of {name}"
        else:
            raise _failure(f"no resource {uri}")
        return _complete(ctx, {"contents": [{"uri": uri, "mimeType": "text/plain", "text": text}]}, cacheable=True)

    return Server(
        name,
        version="1.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_completion=complete,
        on_subscriptions_listen=ListenHandler(state.bus),
    )


class RequireHeader:
    """ASGI middleware: 401 unless the request carries ``header: value`` (an API-key protected server)."""

    def __init__(self, app: ASGIApp, header: str, value: str) -> None:
        self.app, self.header, self.value = app, header.lower().encode(), value.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(self.header) != self.value:
            body = b'{"error":"invalid_token","error_description":"missing or wrong API key"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class CountConnections:
    """ASGI middleware: records each request's client (address, port) in the server's state."""

    def __init__(self, app: ASGIApp, state: _State) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("client"):
            host, port = scope["client"]
            self.state.clients.add((host, port))
        await self.app(scope, receive, send)


class EraGate:
    """ASGI middleware: narrows an SDK server (which speaks both eras) to one era, answering the other as a server of
    that one era does (see :data:`ERAS`). ``both`` passes everything."""

    def __init__(self, app: ASGIApp, era: Era) -> None:
        self.app, self.era = app, era

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.era == "both":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        version = headers.get("mcp-protocol-version")
        modern = version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS
        if self.era == "handshake" and modern:
            # What a 2025 SDK server answers a POST without a session that is not `initialize`.
            error = {"code": types.INVALID_REQUEST, "message": "Bad Request: Missing session ID"}
            await _json_reply(send, 400, {"jsonrpc": "2.0", "id": "server-error", "error": error})
            return
        if self.era == "modern" and not modern:
            if scope["method"] != "POST":
                await _json_reply(send, 405, {"error": "this server speaks only 2026-07-28: no GET stream"})
                return
            body = await _read_body(receive)
            try:
                decoded = json.loads(body)
            except ValueError:
                decoded = None
            message: dict[str, Any] = decoded if isinstance(decoded, dict) else {}
            params = message.get("params")
            params = params if isinstance(params, dict) else {}
            data = {"supported": list(MODERN_PROTOCOL_VERSIONS), "requested": params.get("protocolVersion", version)}
            error = {
                "code": types.UNSUPPORTED_PROTOCOL_VERSION,
                "message": "Unsupported protocol version: this server speaks only "
                + ", ".join(MODERN_PROTOCOL_VERSIONS),
                "data": data,
            }
            await _json_reply(send, 400, {"jsonrpc": "2.0", "id": message.get("id"), "error": error})
            return
        await self.app(scope, receive, send)


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        event: Message = await receive()
        body += bytes(event.get("body", b""))
        if not event.get("more_body"):
            return body


async def _json_reply(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def without_sdk_spans(server: Server[Any]) -> Server[Any]:
    """``server`` without the OpenTelemetry middleware the SDK puts on every server, which reads each request's trace
    context (``_meta.traceparent``) and opens a span parented by it: the context is then passed over, unread
    (``--untraced``, for ``bench/telemetry.py``: what telemetry costs the bridge, apart from what it costs a server
    that traces)."""
    server.middleware[:] = [m for m in server.middleware if type(m).__name__ != "OpenTelemetryMiddleware"]
    return server


def build_app(
    name: str,
    *,
    api_key: str | None = None,
    weird_names: bool = False,
    extra_tools: int = 0,
    echo_delay: float = 0.0,
    hostile: bool = False,
    hostile_listing: bool = False,
    era: Era = "both",
    untraced: bool = False,
) -> ASGIApp:
    state = _State(name)
    server = build_server(
        name,
        weird_names=weird_names,
        state=state,
        extra_tools=extra_tools,
        echo_delay=echo_delay,
        hostile=hostile,
        hostile_listing=hostile_listing,
    )
    if untraced:
        without_sdk_spans(server)
    app: ASGIApp = server.streamable_http_app(host="127.0.0.1")
    app = EraGate(app, era)
    app = CountConnections(app, state)
    if api_key:
        app = RequireHeader(app, "authorization", f"Bearer {api_key}")
    return app


async def serve(app: ASGIApp, port: int, host: str = "127.0.0.1") -> None:
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one local MCP test server on 127.0.0.1.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="local")
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY`")
    parser.add_argument("--weird-names", action="store_true", help="add tools with awkward names")
    parser.add_argument(
        "--hostile", action="store_true", help="add tools with terminal control characters in names, descriptions..."
    )
    parser.add_argument(
        "--hostile-listing", action="store_true", help="fail tools/list with terminal control characters in the error"
    )
    parser.add_argument(
        "--era",
        choices=ERAS,
        default="both",
        help="the protocol eras it speaks: both (default), modern (2026-07-28 only), handshake (2025-11-25 and older)",
    )
    parser.add_argument("--extra-tools", type=int, default=0, metavar="N", help="add N tools tool_0001.. (benchmarks)")
    parser.add_argument(
        "--echo-delay", type=float, default=0.0, metavar="SECONDS", help="echo answers after SECONDS (benchmarks)"
    )
    parser.add_argument(
        "--untraced",
        action="store_true",
        help="without the SDK's OpenTelemetry middleware: trace context is passed over, not read (benchmarks)",
    )
    oauth = parser.add_argument_group("OAuth", "run the OAuth-protected variant (see mcp_bridge.sandbox.oauth_server)")
    oauth.add_argument("--oauth", action="store_true", help="be an auto-approving OAuth server protecting /mcp")
    oauth.add_argument("--token-lifetime", type=int, default=3600, metavar="SECONDS", help="access token lifetime")
    oauth.add_argument(
        "--no-auth-method-in-registration",
        action="store_true",
        help="registration responses issue a client_secret but omit token_endpoint_auth_method",
    )
    oauth.add_argument("--no-refresh-rotation", action="store_true", help="keep the refresh token on refresh")
    args = parser.parse_args(argv)
    if args.extra_tools < 0 or args.echo_delay < 0:
        parser.error("--extra-tools and --echo-delay must not be negative")
    app: ASGIApp
    if args.oauth:
        if args.api_key:
            parser.error("--oauth and --api-key are exclusive")
        if args.extra_tools or args.echo_delay:
            parser.error("--extra-tools and --echo-delay are for the plain server, not --oauth")
        if args.era != "both":
            parser.error("--era is for the plain server, not --oauth (which speaks both eras)")
        from mcp_bridge.sandbox.oauth_server import build_oauth_app

        app = build_oauth_app(
            build_server(args.name, weird_names=args.weird_names),
            issuer_url=f"http://127.0.0.1:{args.port}",
            access_token_lifetime=args.token_lifetime,
            rotate_refresh_tokens=not args.no_refresh_rotation,
            issue_secret_without_auth_method=args.no_auth_method_in_registration,
        )
    else:
        app = build_app(
            args.name,
            api_key=args.api_key,
            weird_names=args.weird_names,
            extra_tools=args.extra_tools,
            echo_delay=args.echo_delay,
            hostile=args.hostile,
            hostile_listing=args.hostile_listing,
            era=args.era,
            untraced=args.untraced,
        )
    anyio.run(serve, app, args.port)


if __name__ == "__main__":
    main()
