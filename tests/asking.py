"""An upstream that asks for input in the middle of its calls: elicitation (form and URL), sampling (with and without
tools) and roots, in whichever era the bridge speaks to it.

In the handshake era it pushes the request on the call's own stream (``elicitation/create`` ...), as a 2025-11-25
server does; at 2026-07-28 it answers ``InputRequiredResult`` and reads the answer from the retry, as an MRTR server
does. ``chatty`` logs at debug, info and warning during its call (logger ``worker`` with a control sequence).
Each tool returns what the client answered, so a test sees what crossed the bridge; ``capabilities`` returns
what the client declared (the capabilities the bridge offered on the IDE's behalf).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp

from hostile import _free_port

FORM = types.ElicitRequest(
    params=types.ElicitRequestFormParams(
        message="Which name?",
        requested_schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    )
)
DEFAULTS = types.ElicitRequest(
    params=types.ElicitRequestFormParams(
        message="Settings?",
        requested_schema={
            "type": "object",
            "properties": {
                "name": {"type": "string", "default": "John Doe"},
                "age": {"type": "integer", "default": 30},
                "verified": {"type": "boolean", "default": True},
                "status": {"type": "string", "enum": ["active", "inactive"], "default": "active"},
            },
        },
    )
)
URL = types.ElicitRequest(
    params=types.ElicitRequestURLParams(message="Open this", url="https://example.test/consent", elicitation_id="e-1")
)
SAMPLE = types.CreateMessageRequest(
    params=types.CreateMessageRequestParams(
        messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text="Say hi"))],
        max_tokens=20,
    )
)
ROOTS = types.ListRootsRequest()
REQUESTS: dict[str, types.ElicitRequest | types.CreateMessageRequest | types.ListRootsRequest] = {
    "ask": FORM,
    "ask_defaults": DEFAULTS,
    "ask_unrelated": FORM,
    "ask_url": URL,
    "sample": SAMPLE,
    "roots": ROOTS,
}
RESULTS: dict[str, type[Any]] = {
    "ask": types.ElicitResult,
    "ask_defaults": types.ElicitResult,
    "ask_unrelated": types.ElicitResult,
    "ask_url": types.ElicitResult,
    "sample": types.CreateMessageResult,
    "roots": types.ListRootsResult,
}


@dataclass
class Asking:
    name: str = "asking"
    port: int = field(default_factory=_free_port)
    declared: list[dict[str, Any] | None] = field(default_factory=list)
    """The client capabilities of each call received."""
    eras: list[str] = field(default_factory=list)
    metas: list[dict[str, Any]] = field(default_factory=list)
    """The ``_meta`` of each call received (the trace context the bridge sent, say)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def app(self) -> ASGIApp:
        return _build(self).streamable_http_app(host="127.0.0.1")


def _text(data: Any) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(data, sort_keys=True))])


def _build(state: Asking) -> Server[Any]:
    async def list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        names = [*REQUESTS, "capabilities", "chatty"]
        return types.ListToolsResult(
            tools=[types.Tool(name=n, description=f"asks: {n}", input_schema={"type": "object"}) for n in names]
        )

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        caps = ctx.session.client_capabilities
        state.declared.append(caps.model_dump(by_alias=True, mode="json", exclude_none=True) if caps else None)
        state.eras.append(ctx.protocol_version)
        state.metas.append(dict(ctx.meta or {}))
        if params.name == "capabilities":
            return _text(state.declared[-1])
        if params.name == "chatty":  # logs at three levels during the call (2026-07-28: only what the _meta asked)
            for level in ("debug", "info", "warning"):
                data = {"level": level, "from": state.name}
                await ctx.session.send_log_message(level, data, "worker\x1b[31m", related_request_id=ctx.request_id)
            return _text("done")
        request = REQUESTS[params.name]
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            if params.input_responses is None:
                return types.InputRequiredResult(input_requests={"q": request}, request_state=f"{params.name}-1")
            answer = params.input_responses["q"]
            return _text(
                {
                    "answer": answer.model_dump(by_alias=True, mode="json", exclude_none=True)
                    if hasattr(answer, "model_dump")
                    else answer,
                    "state": params.request_state,
                }
            )
        # ``ask_unrelated`` does not say which request it belongs to (it goes on the standalone stream), as a server
        # built on the TypeScript SDK's ``server.request`` does.
        related = None if params.name == "ask_unrelated" else ServerMessageMetadata(related_request_id=ctx.request_id)
        try:
            answer = await ctx.session.send_request(request, RESULTS[params.name], metadata=related)
        except MCPError as exc:
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=f"refused: {exc.error.code} {exc.error.message}")],
                is_error=True,
            )
        return _text({"answer": answer.model_dump(by_alias=True, mode="json", exclude_none=True)})

    return Server(state.name, version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)
