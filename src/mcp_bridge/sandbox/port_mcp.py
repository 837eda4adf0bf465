"""The Port stand-in's MCP endpoint (``/mcp``): a few tools shaped like Port's own MCP server's, over the stand-in's
data, so the demo and the tests can use Port's native tools offline (``port.native_tools``).

* ``list_blueprints``: the blueprints the stand-in holds;
* ``search_entities``: a blueprint's entities the caller may see, optionally those whose identifier or title contains
  ``query``;
* ``run_action``: runs a self-service action (recorded in :attr:`PortMcpState.runs`, answered with a run id).

It accepts the stand-in's own access tokens (``POST /v1/auth/access_token``) as bearer tokens, the way the bridge
signs in with ``port.mcp_auth: port_token``; anything else is answered 401.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from starlette.types import ASGIApp, Receive, Scope, Send

_READ = {"readOnlyHint": True, "openWorldHint": False}


@dataclass
class PortMcpState:
    """What the endpoint was asked to do."""

    runs: list[dict[str, Any]] = field(default_factory=list)


def build_port_mcp(
    blueprints: Callable[[], list[str]],
    entities: Callable[[str, str | None], list[dict[str, Any]] | None],
    token_ok: Callable[[str | None], str | None],
    state: PortMcpState,
) -> ASGIApp:
    """The endpoint's ASGI app (a new one per start: an SDK session manager runs once). ``entities(blueprint,
    client_id)``: what that client may see (``None``: no such blueprint); ``token_ok(token)``: the client id a token
    belongs to, or ``None``."""

    async def list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        return types.ListToolsResult(
            tools=[
                types.Tool(
                    name="list_blueprints",
                    description="List the blueprints of your Port catalog.",
                    input_schema={"type": "object", "properties": {}},
                    annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
                ),
                types.Tool(
                    name="search_entities",
                    description="Search the entities of one blueprint of your Port catalog.",
                    input_schema={
                        "type": "object",
                        "properties": {
                            "blueprint": {"type": "string", "description": "The blueprint's identifier."},
                            "query": {"type": "string", "description": "Text the identifier or title contains."},
                        },
                        "required": ["blueprint"],
                    },
                    annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
                ),
                types.Tool(
                    name="run_action",
                    description="Run a self-service action of your Port catalog.",
                    input_schema={
                        "type": "object",
                        "properties": {
                            "action": {"type": "string", "description": "The action's identifier."},
                            "entity": {"type": "string", "description": "The entity it runs on, if any."},
                        },
                        "required": ["action"],
                    },
                    annotations=types.ToolAnnotations(destructive_hint=False, open_world_hint=True),
                ),
            ]
        )

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        args = params.arguments or {}
        request: Any = ctx.request
        client = request.headers.get("x-port-client") if request is not None else None
        if params.name == "list_blueprints":
            return _text({"blueprints": blueprints()})
        if params.name == "search_entities":
            found = entities(str(args.get("blueprint", "")), client)
            if found is None:
                return _text({"error": f"no blueprint {args.get('blueprint')!r}"}, error=True)
            query = str(args.get("query") or "").lower()
            hits = [
                {"identifier": e.get("identifier"), "title": e.get("title")}
                for e in found
                if not query
                or query in str(e.get("identifier", "")).lower()
                or query in str(e.get("title", "")).lower()
            ]
            return _text({"entities": hits})
        if params.name == "run_action":
            run = {"id": f"r_{uuid.uuid4().hex[:12]}", "action": args.get("action"), "entity": args.get("entity")}
            state.runs.append(run)
            return _text({"run": run, "status": "IN_PROGRESS"})
        return _text({"error": f"no tool {params.name!r}"}, error=True)

    server: Server[Any] = Server("port", version="stand-in", on_list_tools=list_tools, on_call_tool=call_tool)
    app = server.streamable_http_app(host="127.0.0.1")
    return _RequirePortToken(app, token_ok)


def _text(data: Any, *, error: bool = False) -> types.CallToolResult:
    text = json.dumps(data, sort_keys=True)
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=error)


class _RequirePortToken:
    """401 unless the request carries a valid stand-in access token as its bearer token; the client id it belongs
    to goes to the server in ``x-port-client`` (for what it may see)."""

    def __init__(self, app: ASGIApp, token_ok: Callable[[str | None], str | None]) -> None:
        self.app, self.token_ok = app, token_ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        client = self.token_ok(token)
        if client is None:
            body = json.dumps({"ok": False, "error": "unauthorized", "message": "a Port access token is required"})
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                }
            )
            await send({"type": "http.response.body", "body": body.encode()})
            return
        kept = [(k, v) for k, v in scope["headers"] if k.lower() != b"x-port-client"]  # never the caller's own
        scope = {**scope, "headers": [*kept, (b"x-port-client", client.encode())]}
        await self.app(scope, receive, send)
