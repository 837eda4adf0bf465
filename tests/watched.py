"""An upstream whose resources change, for resource subscriptions: ``doc://watched/a``, ``doc://watched/b`` and
``doc://watched/private``, each read as its name and version; the ``touch`` tool bumps a document's version and
tells the subscribers.

In the handshake era a client subscribes with ``resources/subscribe`` and is told by ``notifications/resources/updated``
on its standalone stream (as a 2025-11-25 server does: the update belongs to no request); at 2026-07-28 a client names
the URIs on its ``subscriptions/listen`` stream and is told by an event on it. What clients asked for is recorded, so
a test sees what the bridge subscribed to and when it let go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp

from hostile import _free_port

DOCS = ("doc://watched/a", "doc://watched/b", "doc://watched/private")


@dataclass
class Watched:
    name: str = "watched"
    port: int = field(default_factory=_free_port)
    versions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DOCS, 1))
    subscribed: list[str] = field(default_factory=list)
    """Every ``resources/subscribe`` received (handshake era), in order."""
    unsubscribed: list[str] = field(default_factory=list)
    listens: list[list[str]] = field(default_factory=list)
    """The resource URIs of every ``subscriptions/listen`` stream opened (2026-07-28), in order."""
    session: Any = None
    """The handshake-era session that subscribed last (updates go to it: one client, the bridge)."""
    bus: InMemorySubscriptionBus = field(default_factory=InMemorySubscriptionBus)
    sent: list[str] = field(default_factory=list)
    """The handshake-era updates sent, in order."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def current(self) -> set[str]:
        """The URIs subscribed now in the handshake era (subscribed and not unsubscribed since)."""
        now: set[str] = set()
        for uri in self.subscribed:
            now.add(uri)
        for uri in self.unsubscribed:
            now.discard(uri)
        return now

    def app(self) -> ASGIApp:
        return _build(self).streamable_http_app(host="127.0.0.1")


def _build(state: Watched) -> Server[Any]:
    listener = ListenHandler(state.bus)

    def done(ctx: ServerRequestContext[Any], result: dict[str, Any]) -> dict[str, Any]:
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return result
        return {**result, "resultType": "complete", "ttlMs": 60_000, "cacheScope": "private"}

    async def list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        schema = {"type": "object", "properties": {"uri": {"type": "string"}}, "required": ["uri"]}
        return types.ListToolsResult(tools=[types.Tool(name="touch", description="Edit a doc.", input_schema=schema)])

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        uri = str((params.arguments or {}).get("uri"))
        state.versions[uri] = state.versions.get(uri, 0) + 1
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            await state.bus.publish(ResourceUpdated(uri=uri))
        elif uri in state.current and state.session is not None:  # on the standalone stream: it is of no request
            state.sent.append(uri)
            await state.session.send_resource_updated(uri)
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"{uri} v{state.versions[uri]}")])

    async def list_resources(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        resources = [{"uri": uri, "name": uri.rsplit("/", 1)[-1], "mimeType": "text/plain"} for uri in DOCS]
        return done(ctx, {"resources": resources})

    async def read_resource(ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams) -> Any:
        uri = str(params.uri)
        text = f"{uri} v{state.versions.get(uri, 0)}"
        return done(ctx, {"contents": [{"uri": uri, "mimeType": "text/plain", "text": text}]})

    async def subscribe(ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams) -> Any:
        state.subscribed.append(str(params.uri))
        state.session = ctx.session
        return types.EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams) -> Any:
        state.unsubscribed.append(str(params.uri))
        return types.EmptyResult()

    async def listen(ctx: ServerRequestContext[Any], params: types.SubscriptionsListenRequestParams) -> Any:
        state.listens.append(list(params.notifications.resource_subscriptions or ()))
        return await listener(ctx, params)

    return Server(
        state.name,
        version="1.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_subscriptions_listen=listen,
    )
