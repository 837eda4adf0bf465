"""The local backends of ``mcp-bridge demo``: :class:`DemoBackends` runs, in this process, the demo's three MCP
servers (``localservers``: one with no auth, one behind an API key, one behind OAuth with an authorization server that
approves at once, from ``oauth_server``) and a Port stand-in (``port_standin``) holding their ``_mcp_server``
entities. The OAuth login is done by the demo's headless browser (``browser``)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from mcp_bridge.sandbox.browser import BROWSER
from mcp_bridge.sandbox.loopback import LoopbackServer
from mcp_bridge.sandbox.port_shapes import AUDIT_BLUEPRINT, MCP_SERVER_BLUEPRINT, mcp_server_entity
from mcp_bridge.sandbox.port_standin import PortStandIn

DEMO_PORT_CLIENT_ID = "mcp-bridge-demo"
ENV_PORT_SECRET = "MCP_BRIDGE_DEMO_PORT_SECRET"  # noqa: S105 (the variable's name, not its value)
ENV_API_KEY = "MCP_BRIDGE_DEMO_API_KEY"


@dataclass
class DemoServer:
    """One of the demo's MCP servers as Port lists it."""

    name: str
    auth: str  # "none" | "api_key" | "oauth"
    allowed_tools: list[str]
    description: str
    http: LoopbackServer
    rules: dict[str, Any] = field(default_factory=dict)
    """The entity's other governance properties (``allowed_prompts``, ``allowed_resources``, ``confirm``)."""

    @property
    def url(self) -> str:
        return f"{self.http.url}/mcp"


class DemoBackends:
    """Everything ``mcp-bridge demo`` talks to, on 127.0.0.1 in this process (each server on its own thread):

    * ``open``: an MCP server with no auth;
    * ``keyed``: the same tools behind ``Authorization: Bearer <a random key>``;
    * ``oauth``: the same tools behind OAuth 2.1, with its authorization server on the same port (dynamic client
      registration, PKCE, refresh tokens; it approves every authorization request at once);
    * a :class:`PortStandIn` holding one ``_mcp_server`` entity per server (which tools, prompts and resources are
      allowed; ``keyed`` asks the user before a destructive call) and receiving the audit events (blueprint
      ``mcp_tool_invocation``).

    The Port client secret and the API key are fresh random values, handed to the bridge in the environment
    (:meth:`env`), never written into the config.
    """

    def __init__(self, progress: Callable[[str], None] | None = None) -> None:
        self._progress = progress or (lambda _message: None)
        self.port_secret = secrets.token_urlsafe(24)
        self.api_key = secrets.token_urlsafe(24)
        self.port = PortStandIn()
        self.port.add_client(DEMO_PORT_CLIENT_ID, self.port_secret)
        self.servers: list[DemoServer] = []

    def start(self) -> Self:
        from mcp_bridge.sandbox.localservers import build_app, build_server
        from mcp_bridge.sandbox.oauth_server import build_oauth_app

        try:
            self.port.start()
            self._progress(f"Port stand-in listening on {self.port.base_url}")
            specs: list[tuple[str, str, list[str], str, Callable[[int], Any], dict[str, Any]]] = [
                (
                    "open",
                    "none",
                    ["echo", "add", "slow"],
                    "Everyday helpers; no login needed.",
                    lambda _: build_app("open"),
                    # its items may be read, its readme may not; its greet prompt is allowed
                    {"allowed_prompts": ["greet"], "allowed_resources": ["mem://open/items/*"]},
                ),
                (
                    "keyed",
                    "api_key",
                    ["echo", "meta"],
                    "A service behind an API key.",
                    lambda _: build_app("keyed", api_key=self.api_key),
                    {"confirm": "destructive"},  # echo has no annotations, so it counts as destructive
                ),
                (
                    "oauth",
                    "oauth",
                    ["echo", "add"],
                    "A service behind OAuth 2.1 (single sign-on).",
                    lambda port: build_oauth_app(build_server("oauth"), issuer_url=f"http://127.0.0.1:{port}"),
                    {},
                ),
            ]
            for name, auth, allowed, description, app_for_port, rules in specs:
                http = LoopbackServer(app_for_port, name=f"demo-{name}").start()
                server = DemoServer(name, auth, allowed, description, http, rules)
                self.servers.append(server)
                self.port.upsert_entity(
                    MCP_SERVER_BLUEPRINT,
                    mcp_server_entity(
                        name,
                        server.url,
                        allowed,
                        title=f"Demo: {name}",
                        description=description,
                        auth_type=auth,
                        **rules,
                    ),
                )
                self._progress(f"MCP server {name!r} ({_AUTH_WORDS[auth]}) listening on {server.url}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.http.stop()
        self.servers = []
        self.port.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def config(self, home: str, *, connect_in_ide: bool = True) -> dict[str, Any]:
        """The bridge's config: Port (the stand-in) is the allowlist; only the API key's reference is local.
        ``connect_in_ide``: `oauth` waits to be connected from the IDE (its connect tool); otherwise the headless
        browser logs in at startup (``demo --serve``, for an IDE that may not declare URL elicitation)."""
        return {
            "port": {
                "base_url": self.port.base_url,
                "client_id": DEMO_PORT_CLIENT_ID,
                "client_secret": "${env:" + ENV_PORT_SECRET + "}",
                "refresh_interval": 30,
                # Port's own tools: the stand-in's MCP endpoint, signed in with the bridge's Port token.
                "mcp_url": f"{self.port.base_url}/mcp",
                "mcp_auth": "port_token",
            },
            # No browser opens by itself: the IDE connects `oauth` (its connect tool), as a user does.
            "auto_login": not connect_in_ide,
            "servers": {"keyed": {"auth": {"type": "api_key", "value": "Bearer ${env:" + ENV_API_KEY + "}"}}},
            # A demo runs where there may be no keyring: the OAuth tokens go to a 0600 file in the demo's home.
            "token_store": "file",
            "audit": {"arguments": "redacted", "jsonl": f"{home}/audit.jsonl"},
        }

    def env(self) -> dict[str, str]:
        """The bridge's environment additions: the two secrets, and the headless browser as ``$BROWSER``."""
        return {ENV_PORT_SECRET: self.port_secret, ENV_API_KEY: self.api_key, "BROWSER": BROWSER}

    def oauth_stats(self) -> dict[str, Any]:
        """What the OAuth server saw: registrations, authorizations, token requests by grant (see ``OAuthStats``)."""
        for server in self.servers:
            if server.auth == "oauth":
                app = server.http.app
                return dict(app.state.stats.as_dict(app.state.provider))
        return {}

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit entities Port holds now (one per event: a retried event overwrites itself)."""
        return sorted(self.port.entities(AUDIT_BLUEPRINT).values(), key=lambda e: e["identifier"])


_AUTH_WORDS = {"none": "no auth", "api_key": "API key", "oauth": "OAuth"}
