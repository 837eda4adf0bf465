"""How each upstream authenticates: one ``httpx2.Auth`` per server, chosen from its config.

This is the seam the OAuth flow plugs into: :func:`auth_for` returns the ``httpx2.Auth`` that the upstream's HTTP
client uses for every request, or raises :class:`~mcp_bridge.errors.AuthRequired` when the server cannot be used
until someone logs in.
"""

from __future__ import annotations

from collections.abc import Generator

import httpx2

from mcp_bridge.config import ApiKeyAuth, NoAuth, OAuthAuth, ServerConfig
from mcp_bridge.errors import AuthRequired


class HeaderAuth(httpx2.Auth):
    """Sends a static credential in one header (``api_key``). The value never appears in a repr or a log."""

    def __init__(self, header: str, value: str) -> None:
        self._header = header
        self._value = value

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers[self._header] = self._value
        yield request

    def __repr__(self) -> str:
        return f"HeaderAuth(header={self._header!r}, value=***)"


def auth_for(name: str, server: ServerConfig) -> httpx2.Auth | None:
    """The auth to use for ``server``; ``None`` when it needs none."""
    auth = server.auth
    if isinstance(auth, NoAuth):
        return None
    if isinstance(auth, ApiKeyAuth):
        return HeaderAuth(auth.header, auth.value)
    if isinstance(auth, OAuthAuth):
        raise AuthRequired(name, "OAuth login is not available in this version of mcp-bridge yet")
    raise AssertionError(f"unhandled auth type {auth!r}")  # pragma: no cover - the config model is a closed union
