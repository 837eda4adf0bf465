"""How each upstream authenticates: one ``httpx2.Auth`` per server, chosen from its config.

:func:`auth_for` returns the ``httpx2.Auth`` the upstream's HTTP client uses for every request (``None`` for no
auth), or raises :class:`~mcp_bridge.errors.AuthRequired` when the server cannot be used until someone acts. OAuth
lives in :mod:`mcp_bridge.auth.oauth`, its storage in :mod:`mcp_bridge.auth.store`. Imports only the base modules
(config, errors, logs, files, keyring_store, terminal); never ``governance``, ``upstream``, ``audit``, ``ide``,
``bridge`` or ``cli``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2

from mcp_bridge.config import ApiKeyAuth, NoAuth, OAuthAuth, PortTokenAuth, ServerConfig, Settings
from mcp_bridge.errors import AuthRequired

if TYPE_CHECKING:
    from mcp_bridge.auth.oauth import LoginPolicy
    from mcp_bridge.auth.store import ServerTokenStorage

LOGIN_COOLDOWN = 600.0
"""Seconds during which ``serve`` does not reopen a browser on its own for the same server."""


class HeaderAuth(httpx2.Auth):
    """Sends a static credential in one header (``api_key``). The value never appears in a repr or a log."""

    def __init__(self, header: str, value: str) -> None:
        self._header = header
        self._value = value

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers[self._header] = self._value
        yield request

    async def lean_headers(self) -> dict[str, str]:
        """What :meth:`auth_flow` puts on a request, for a request sent without httpx2 (``upstream.lean``)."""
        return {self._header: self._value}

    def __repr__(self) -> str:
        return f"HeaderAuth(header={self._header!r}, value=***)"


class PortBearer(httpx2.Auth):
    """The bridge's own Port access token as a bearer token (``port_token``): asked of the Port client for each
    request (it keeps and renews it), and renewed once when the server answers 401."""

    def __init__(self, token: Callable[[bool], Awaitable[str]]) -> None:
        self._token = token

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        request.headers["Authorization"] = f"Bearer {await self._token(False)}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {await self._token(True)}"
            yield request

    async def lean_headers(self) -> dict[str, str]:
        """What the flow puts on a request first, for a request sent without httpx2 (``upstream.lean``; a 401 sends
        it again through the flow)."""
        return {"Authorization": f"Bearer {await self._token(False)}"}

    def __repr__(self) -> str:
        return "PortBearer()"


@dataclass(frozen=True)
class AuthEnv:
    """What OAuth needs from the process: where state lives, where secrets go, and how logins may happen."""

    home: Path
    token_store: str
    policy: LoginPolicy
    port_token: Callable[[bool], Awaitable[str]] | None = None
    """The Port client's access token (``renew``: a new one), for ``port_token`` auth; set by a bridge with Port."""

    @classmethod
    def for_serve(
        cls, settings: Settings, home: Path, *, announce: Callable[[str, str], None] | None = None
    ) -> AuthEnv:
        """``serve``'s: a browser login when needed (``auto_login``); its URL goes to stderr unless ``announce``
        takes it (``demo --serve``, whose headless browser does the login: no URL for a person to open)."""
        from mcp_bridge.auth.oauth import LoginPolicy

        policy = LoginPolicy(
            interactive=settings.auto_login,
            cooldown=LOGIN_COOLDOWN,
            timeout=settings.timeouts.login,
            announce=announce,
        )
        return cls(home, settings.token_store, policy)

    def storage_path(self, server_url: str) -> Path:
        """The non-secret state file of one server (it changes whenever tokens are stored)."""
        from mcp_bridge.auth.store import state_path

        return state_path(self.home, server_url)

    def storage(self, server_url: str) -> ServerTokenStorage:
        """The token storage of one server (raises ``KeyringUnavailable`` when no keyring backend exists)."""
        from mcp_bridge.auth.store import ServerTokenStorage, secret_backend

        return ServerTokenStorage(server_url, secret_backend(self.token_store, self.home), self.home)


def auth_for(
    name: str, server: ServerConfig, env: AuthEnv | None, policy: LoginPolicy | None = None
) -> httpx2.Auth | None:
    """The auth to use for ``server``; ``None`` when it needs none."""
    auth = server.auth
    if isinstance(auth, NoAuth):
        return None
    if isinstance(auth, ApiKeyAuth):
        return HeaderAuth(auth.header, auth.value)
    if isinstance(auth, PortTokenAuth):
        if env is None or env.port_token is None:
            raise AuthRequired(
                name, "its auth is port_token, and there are no Port credentials here (port: in the config)"
            )
        return PortBearer(env.port_token)
    if isinstance(auth, OAuthAuth):
        if env is None:
            raise AuthRequired(name, "OAuth is not available here (no token store configured)")
        from mcp_bridge.auth.oauth import build_provider
        from mcp_bridge.keyring_store import KeyringUnavailable

        try:
            storage = env.storage(server.endpoint)
        except KeyringUnavailable as exc:
            raise AuthRequired(name, str(exc)) from None
        return build_provider(name, server.endpoint, auth, storage, env.home, policy or env.policy)
    raise AssertionError(f"unhandled auth type {auth!r}")  # pragma: no cover - the config model is a closed union
