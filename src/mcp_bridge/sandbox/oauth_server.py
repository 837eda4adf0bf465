"""An OAuth-protected local MCP server for the tests and the offline demo (one process, one port, 127.0.0.1).

It is the authorization server *and* the protected resource, built from the SDK's own pieces:
``create_auth_routes`` (metadata, ``/authorize``, ``/token``, ``/register``, ``/revoke``), RFC 9728 protected-resource
metadata at ``/.well-known/oauth-protected-resource/mcp``, and the MCP server the caller passes in (the
``localservers`` tools) at ``/mcp`` behind a bearer token check. ``AutoApproveProvider`` approves every authorization
request at once (no login page): ``/authorize`` redirects straight to the client's ``redirect_uri`` with a code and
the client's ``state``.

Test-only routes (they exist only on this local test server, never on a real one):

- ``GET /_test/stats``: JSON counters, see ``OAuthStats.as_dict``.
- ``POST /_test/forget_clients``: drop every registered client (``?tokens=1`` drops the issued tokens too), so the next
  token or refresh request from an old client fails with HTTP 401 ``{"error": "invalid_client"}``.

``python -m mcp_bridge.sandbox.localservers --oauth --port N [--token-lifetime S] [--no-auth-method-in-registration]``
runs it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    OAuthAuthorizationServerProvider,
    ProviderTokenVerifier,
    RefreshToken,
    construct_redirect_uri,
)
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.server.lowlevel import Server
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_SCOPES = ["mcp"]
CODE_LIFETIME = 300


@dataclass
class OAuthStats:
    """What the server saw, by HTTP request (failed requests count too)."""

    authorize: int = 0
    register: int = 0
    revoke: int = 0
    token: dict[str, int] = field(default_factory=dict)
    """``/token`` requests by ``grant_type``."""
    token_errors: dict[str, int] = field(default_factory=dict)
    """``/token`` answers other than 200, by HTTP status."""
    mcp: int = 0
    mcp_unauthorized: int = 0
    """``/mcp`` requests answered 401 (no, unknown, expired or revoked token)."""
    forget_clients: int = 0

    def as_dict(self, provider: AutoApproveProvider) -> dict[str, Any]:
        return {
            "authorize": self.authorize,
            "register": self.register,
            "revoke": self.revoke,
            "token": dict(self.token),
            "token_errors": dict(self.token_errors),
            "mcp": self.mcp,
            "mcp_unauthorized": self.mcp_unauthorized,
            "forget_clients": self.forget_clients,
            "clients": len(provider.clients),
            "access_tokens": len(provider.access_tokens),
            "refresh_tokens": len(provider.refresh_tokens),
            "revoked_tokens": provider.revoked,
        }


class AutoApproveProvider(OAuthAuthorizationServerProvider[AuthorizationCode, RefreshToken, AccessToken]):
    """An in-memory authorization server that approves every request (dynamic registration, PKCE S256 via the SDK).

    ``issue_secret_without_auth_method``: the registration *response* issues a ``client_secret`` but omits
    ``token_endpoint_auth_method``; the client is still stored with the method the SDK's handler settled on (the one the
    client requested, ``client_secret_post`` when it requested none), so a client that then sends no secret fails.
    """

    def __init__(
        self,
        *,
        access_token_lifetime: int = 3600,
        refresh_token_lifetime: int | None = None,
        rotate_refresh_tokens: bool = True,
        default_scopes: list[str] | None = None,
        issue_secret_without_auth_method: bool = False,
    ) -> None:
        self.access_token_lifetime = access_token_lifetime
        self.refresh_token_lifetime = refresh_token_lifetime
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.default_scopes = list(DEFAULT_SCOPES if default_scopes is None else default_scopes)
        self.issue_secret_without_auth_method = issue_secret_without_auth_method
        self.clients: dict[str, OAuthClientInformationFull] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self._refresh_of: dict[str, str] = {}
        """access token -> the refresh token issued with it (revoking either revokes both)."""
        self.revoked = 0

    # -- clients ---------------------------------------------------------------------------------------------------
    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        self.clients[client_info.client_id] = client_info.model_copy(deep=True)
        if self.issue_secret_without_auth_method:
            # The SDK's RegistrationHandler serializes this very object (exclude_none) as the 201 response, so clearing
            # the field here removes it from the wire while the stored copy keeps it.
            client_info.token_endpoint_auth_method = None

    def forget_clients(self, *, tokens: bool = False) -> int:
        """Drop every registered client (and, with ``tokens``, every code and token); returns how many clients."""
        count = len(self.clients)
        self.clients.clear()
        if tokens:
            self.codes.clear()
            self.access_tokens.clear()
            self.refresh_tokens.clear()
            self._refresh_of.clear()
        return count

    # -- authorization code ----------------------------------------------------------------------------------------
    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        if params.scopes is not None:
            scopes = params.scopes
        elif client.scope:
            scopes = client.scope.split()
        else:
            scopes = list(self.default_scopes)
        if not scopes:
            raise AuthorizeError("invalid_scope", "no scope requested")
        code = AuthorizationCode(
            code=secrets.token_urlsafe(32),
            scopes=scopes,
            expires_at=time.time() + CODE_LIFETIME,
            client_id=client.client_id,
            code_challenge=params.code_challenge,
            redirect_uri=params.redirect_uri,
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            resource=params.resource,
            subject="test-user",
        )
        self.codes[code.code] = code
        return construct_redirect_uri(str(params.redirect_uri), code=code.code, state=params.state)

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        code = self.codes.get(authorization_code)
        return code if code is not None and code.client_id == client.client_id else None

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        self.codes.pop(authorization_code.code, None)  # single use
        refresh = self._new_refresh_token(client.client_id, authorization_code.scopes, authorization_code.resource)
        return self._issue(refresh)

    # -- refresh ---------------------------------------------------------------------------------------------------
    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str) -> RefreshToken | None:
        token = self.refresh_tokens.get(refresh_token)
        return token if token is not None and token.client_id == client.client_id else None

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        if self.rotate_refresh_tokens:
            self.refresh_tokens.pop(refresh_token.token, None)
            refresh_token = self._new_refresh_token(client.client_id, scopes, refresh_token.resource)
        return self._issue(refresh_token, scopes)

    def _new_refresh_token(self, client_id: str, scopes: list[str], resource: str | None) -> RefreshToken:
        lifetime = self.refresh_token_lifetime
        token = RefreshToken(
            token=secrets.token_urlsafe(32),
            client_id=client_id,
            scopes=scopes,
            expires_at=int(time.time()) + lifetime if lifetime is not None else None,
            resource=resource,
            subject="test-user",
        )
        self.refresh_tokens[token.token] = token
        return token

    def _issue(self, refresh: RefreshToken, scopes: list[str] | None = None) -> OAuthToken:
        scopes = refresh.scopes if scopes is None else scopes
        access = AccessToken(
            token=secrets.token_urlsafe(32),
            client_id=refresh.client_id,
            scopes=scopes,
            # The SDK's bearer check accepts the token while int(now) <= expires_at: never before the client's
            # ``now + expires_in`` has passed, so a client that refreshes on time never sees a 401.
            expires_at=int(time.time()) + self.access_token_lifetime,
            resource=refresh.resource,
            subject=refresh.subject,
        )
        self.access_tokens[access.token] = access
        self._refresh_of[access.token] = refresh.token
        return OAuthToken(
            access_token=access.token,
            expires_in=self.access_token_lifetime,
            scope=" ".join(scopes),
            refresh_token=refresh.token,
        )

    # -- verification and revocation -------------------------------------------------------------------------------
    async def load_access_token(self, token: str) -> AccessToken | None:
        return self.access_tokens.get(token)  # the SDK's bearer middleware checks expires_at and the resource

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        refresh = token.token if isinstance(token, RefreshToken) else self._refresh_of.get(token.token)
        doomed = {token.token} | {a for a, r in self._refresh_of.items() if refresh is not None and r == refresh}
        for access in doomed:
            if self.access_tokens.pop(access, None) is not None:
                self.revoked += 1
            self._refresh_of.pop(access, None)
        if refresh is not None and self.refresh_tokens.pop(refresh, None) is not None:
            self.revoked += 1


class _CountRequests:
    """ASGI middleware filling ``OAuthStats``; buffers ``/token`` bodies to read their ``grant_type``."""

    def __init__(self, app: ASGIApp, stats: OAuthStats) -> None:
        self.app, self.stats = app, stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path, stats = scope["path"], self.stats
        if path == "/authorize":
            stats.authorize += 1
        elif path == "/register":
            stats.register += 1
        elif path == "/revoke":
            stats.revoke += 1
        elif path == "/mcp":
            stats.mcp += 1
        elif path == "/token":
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            grant = parse_qs(body.decode("utf-8", "replace")).get("grant_type", ["(none)"])[0]
            stats.token[grant] = stats.token.get(grant, 0) + 1
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            receive = replay

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if path == "/token" and status != 200:
                    stats.token_errors[str(status)] = stats.token_errors.get(str(status), 0) + 1
                elif path == "/mcp" and status == 401:
                    stats.mcp_unauthorized += 1
            await send(message)

        await self.app(scope, receive, watch)


def build_oauth_app(
    server: Server[Any],
    *,
    issuer_url: str,
    resource_url: str | None = None,
    access_token_lifetime: int = 3600,
    refresh_token_lifetime: int | None = None,
    rotate_refresh_tokens: bool = True,
    scopes_supported: list[str] | None = None,
    required_scopes: list[str] | None = None,
    issue_secret_without_auth_method: bool = False,
) -> Starlette:
    """The OAuth-protected server: AS routes, RFC 9728 metadata, ``server`` at ``/mcp`` and the ``/_test`` routes on
    one app.

    ``issuer_url`` is ``http://127.0.0.1:PORT`` (the SDK accepts http for localhost/127.0.0.1/[::1] only);
    ``resource_url`` (the RFC 8707/9728 resource name; the MCP endpoint itself is always ``/mcp``) defaults to
    ``{issuer_url}/mcp``. Tokens are bound to the RFC 8707 ``resource`` the client sent,
    and ``/mcp`` accepts only tokens issued for ``resource_url``. The provider and stats are on ``app.state``.
    """
    issuer_url = issuer_url.rstrip("/")
    scopes = list(DEFAULT_SCOPES if scopes_supported is None else scopes_supported)
    required = list(scopes if required_scopes is None else required_scopes)
    provider = AutoApproveProvider(
        access_token_lifetime=access_token_lifetime,
        refresh_token_lifetime=refresh_token_lifetime,
        rotate_refresh_tokens=rotate_refresh_tokens,
        default_scopes=required,
        issue_secret_without_auth_method=issue_secret_without_auth_method,
    )
    stats = OAuthStats()

    async def get_stats(request: Request) -> JSONResponse:
        return JSONResponse(stats.as_dict(provider))

    async def forget_clients(request: Request) -> JSONResponse:
        stats.forget_clients += 1
        forgotten = provider.forget_clients(tokens=request.query_params.get("tokens") in ("1", "true"))
        return JSONResponse({"forgotten": forgotten})

    auth = AuthSettings.model_validate(
        {
            # Strings, so the URLs keep their canonical form (no trailing slash added to a path-less issuer).
            "issuer_url": issuer_url,
            "resource_server_url": resource_url or f"{issuer_url}/mcp",
            "required_scopes": required,
            "client_registration_options": ClientRegistrationOptions(
                enabled=True, valid_scopes=scopes, default_scopes=required
            ),
            "revocation_options": RevocationOptions(enabled=True),
            "validate_token_resource": True,
        }
    )
    app = server.streamable_http_app(
        host="127.0.0.1",
        auth=auth,
        token_verifier=ProviderTokenVerifier(provider),
        auth_server_provider=provider,
        custom_starlette_routes=[
            Route("/_test/stats", get_stats, methods=["GET"]),
            Route("/_test/forget_clients", forget_clients, methods=["POST"]),
        ],
    )
    app.add_middleware(_CountRequests, stats=stats)
    app.state.provider = provider
    app.state.stats = stats
    return app
