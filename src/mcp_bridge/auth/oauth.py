"""OAuth for one upstream: the SDK's ``OAuthClientProvider`` with its gaps closed, and a login nobody notices.

What the SDK provider does (discovery, DCR/CIMD, PKCE S256, RFC 8707 ``resource``, ``iss``, scope step-up) is used as
is. Where it falls short, :class:`BridgeOAuthProvider` extends it:

* the token's expiry and the discovered metadata are stored and restored, so a restarted bridge refreshes an expired
  token at the right endpoint instead of sending it and starting a browser login;
* a registration that issued a ``client_secret`` without naming ``token_endpoint_auth_method`` authenticates with
  ``client_secret_post``;
* a stored client the server no longer knows (``invalid_client`` on refresh or code exchange) is dropped, so the next
  attempt registers afresh instead of failing forever;
* the ``resource`` parameter can be turned off per server (Entra ID rejects it).

:class:`Login` owns the interactive part: one browser flow per server across every bridge process (a file lock; the
others wait, then reuse the stored tokens), a cooldown so ``serve`` never reopens a browser on its own within
minutes, an authorization URL that must be https (or http on loopback), ``webbrowser`` (never a shell) with the URL
printed when no browser opens, and a loopback callback listener that takes only the callback carrying the ``state``
of its own authorization request (any local page can send the browser there with an error or a code of its choosing;
such a request gets a neutral page and the login goes on waiting) and shows everything it echoes escaped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import html
import json
import threading
import time
import webbrowser
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import anyio.to_thread
import httpx2
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.auth.oauth2 import OAuthContext
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthMetadata, ProtectedResourceMetadata

from mcp_bridge import __version__, telemetry
from mcp_bridge.auth.store import OAuthState, ServerTokenStorage
from mcp_bridge.config import OAuthAuth, is_loopback_host
from mcp_bridge.errors import AuthRequired
from mcp_bridge.logs import get_logger
from mcp_bridge.terminal import printable

log = get_logger(__name__)

CALLBACK_PATH = "/callback"
_EXPIRY_MARGIN = 30.0


class LoginCompletedElsewhere(Exception):
    """Another process finished the login while we waited for the lock: reconnect with the stored tokens."""


@dataclasses.dataclass
class LoginPolicy:
    """How a login may happen in this process."""

    interactive: bool
    """Open a browser when a login is needed (``serve`` with ``auto_login``, and ``login``)."""
    cooldown: float
    """Seconds during which a browser is not opened again for the same server (0: no cooldown, for ``login``)."""
    timeout: float
    """Seconds to wait for the person to finish in the browser (and for another process's login)."""
    announce: Callable[[str, str], None] | None = None
    """Called with (server, URL) when a browser flow starts: the CLI prints it, ``serve`` logs it."""
    on_waiting: Callable[[float], None] | None = None
    """Called with the seconds the flow may now take, so the caller can extend its own deadline."""
    open_browser: bool = True
    """Open the system browser on the authorization URL (not when the IDE opens it: URL-mode elicitation)."""


class _BridgeContext(OAuthContext):
    """``OAuthContext`` with the token-auth and ``resource`` fixes."""

    send_resource: bool = True

    def prepare_token_auth(
        self, data: dict[str, str], headers: dict[str, str] | None = None
    ) -> tuple[dict[str, str], dict[str, str]]:
        info = self.client_info
        if info is not None and info.client_secret and info.token_endpoint_auth_method is None:
            # A secret with no method named: a registration response that omitted it, or a client configured by
            # hand. Use what the authorization server advertises; with no preference stated, client_secret_post
            # (what servers that omit the method in registration responses expect).
            asm = self.oauth_metadata
            supported = (asm.token_endpoint_auth_methods_supported if asm else None) or []
            basic_only = "client_secret_basic" in supported and "client_secret_post" not in supported
            method = "client_secret_basic" if basic_only else "client_secret_post"
            self.client_info = info.model_copy(update={"token_endpoint_auth_method": method})
            try:
                return super().prepare_token_auth(data, headers)
            finally:
                self.client_info = info
        return super().prepare_token_auth(data, headers)

    def should_include_resource_param(self, protocol_version: str | None = None) -> bool:
        return self.send_resource and super().should_include_resource_param(protocol_version)


class BridgeOAuthProvider(OAuthClientProvider):
    """``OAuthClientProvider`` that keeps expiry and metadata across restarts and recovers from dead clients."""

    def __init__(
        self,
        server_url: str,
        client_metadata: OAuthClientMetadata,
        storage: ServerTokenStorage,
        login: Login,
        *,
        send_resource: bool = True,
        preregistered: OAuthClientInformationFull | None = None,
        client_metadata_url: str | None = None,
    ) -> None:
        super().__init__(
            server_url,
            client_metadata,
            storage,
            redirect_handler=login.redirect,
            callback_handler=login.callback,
            client_metadata_url=client_metadata_url,
        )
        fields = {f.name: getattr(self.context, f.name) for f in dataclasses.fields(OAuthContext)}
        self.context = _BridgeContext(**fields)
        self.context.send_resource = send_resource
        self.store = storage
        self.login = login
        self._preregistered = preregistered

    async def _initialize(self) -> None:
        await super()._initialize()
        if self._preregistered is not None:
            self.context.client_info = self._preregistered
        state = self.store.load_state()
        self.context.token_expiry_time = state.expires_at
        if state.oauth_metadata:
            self.context.oauth_metadata = OAuthMetadata.model_validate(state.oauth_metadata)
        if state.protected_resource_metadata:
            self.context.protected_resource_metadata = ProtectedResourceMetadata.model_validate(
                state.protected_resource_metadata
            )
        self.context.auth_server_url = state.auth_server_url or self.context.auth_server_url
        self.login.started_with(self.context.current_tokens.access_token if self.context.current_tokens else None)

    async def lean_headers(self) -> dict[str, str] | None:
        """The bearer header the flow would put on a request now, when it would put it on without a step of its own
        first (initialized, not busy, the token valid); ``None`` otherwise. For a request sent without httpx2
        (``upstream.lean``): one answered 401 or 403 is sent again through the flow."""
        context = self.context
        tokens = context.current_tokens
        if not self._initialized or context.lock.locked() or not context.is_token_valid() or tokens is None:
            return None
        return {"Authorization": f"Bearer {tokens.access_token}"}

    async def _auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        """The SDK's flow, except that a 401 on the request itself first tries the refresh token.

        The SDK answers every 401 with a full (browser) authorization, even when it holds a refresh token: after a
        server-side revocation, a rotated key, or an expiry it did not know. Refreshing first keeps the browser
        closed; a refresh the server rejects (``invalid_client``: it forgot us) drops the client, so the full flow
        that follows registers afresh instead of sending the person to authorize a client that no longer exists.
        """
        flow = super()._auth_flow(request)
        outgoing = await flow.__anext__()
        refreshed = False
        while True:
            response = yield outgoing
            tokens = self.context.current_tokens
            if (
                outgoing is request
                and response.status_code == 401
                and not refreshed
                and tokens
                and tokens.refresh_token
            ):
                refreshed = True
                if self.context.client_info is not None:
                    refresh_response = yield await self._refresh_token()
                    if await self._handle_refresh_response(refresh_response):
                        self._add_auth_header(request)
                        response = yield request
            try:
                outgoing = await flow.asend(response)
            except StopAsyncIteration:
                return

    def _save_state(self) -> None:
        state = self.store.load_state()
        expiry = self.context.token_expiry_time
        state.expires_at = expiry - _EXPIRY_MARGIN if expiry else None
        ctx = self.context
        state.oauth_metadata = (
            ctx.oauth_metadata.model_dump(mode="json", exclude_none=True) if ctx.oauth_metadata else None
        )
        prm = ctx.protected_resource_metadata
        state.protected_resource_metadata = prm.model_dump(mode="json", exclude_none=True) if prm else None
        state.auth_server_url = ctx.auth_server_url
        state.issuer = str(ctx.oauth_metadata.issuer) if ctx.oauth_metadata else state.issuer
        state.redirect_port = self.login.port or state.redirect_port
        self.store.save_state(state)

    async def _handle_token_response(self, response: httpx2.Response) -> None:
        if response.status_code not in (200, 201) and await _client_rejected(response):
            self._forget_client("the code exchange")
        await super()._handle_token_response(response)
        self._save_state()
        tokens = self.context.current_tokens
        self.login.started_with(tokens.access_token if tokens else None)  # our own login: not "someone else's"
        self.login.finished()

    async def _handle_refresh_response(self, response: httpx2.Response) -> bool:
        if response.status_code != 200:
            if await _client_rejected(response):
                self._forget_client("a token refresh")
            self.store.clear_tokens()  # a refresh token that failed once will fail again: do not reload it
        ok = await super()._handle_refresh_response(response)
        telemetry.hooks.count("mcp_bridge.oauth.token_refreshes", outcome="ok" if ok else "failed")
        if ok:
            log.info("oauth.refreshed", server_url=self.context.server_url)
            self._save_state()
        return ok

    def _forget_client(self, during: str) -> None:
        if self._preregistered is not None:
            raise AuthRequired(
                self.context.server_url,
                f"the authorization server rejected the configured client_id during {during}; check it in the config",
            )
        log.warning("oauth.client_forgotten", server_url=self.context.server_url, during=during)
        self.context.client_info = None
        self.store.clear_client_info()


async def _client_rejected(response: httpx2.Response) -> bool:
    """Whether a token-endpoint error says the client itself is unknown or not allowed."""
    try:
        body = json.loads(await response.aread())
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    return error in ("invalid_client", "unauthorized_client") or (response.status_code == 401 and error is None)


class Login:
    """The interactive half of one server's OAuth flow (see the module docstring)."""

    def __init__(self, name: str, storage: ServerTokenStorage, home: Path, policy: LoginPolicy, port: int) -> None:
        self.name = name
        self.storage = storage
        self.policy = policy
        self.port = port
        digest = hashlib.sha256(storage.server_url.encode("utf-8")).hexdigest()[:24]
        self._lock_path = home / "locks" / f"login-{digest}.lock"
        self._lock: Any = None
        self._initial_access: str | None = None
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None
        self._result: AuthorizationCodeResult | None = None
        self._error = "no reason given"
        self._got_result = anyio.Event()
        self._state: str | None = None
        """The ``state`` of the authorization request in flight: a callback without it is not ours to take."""

    def started_with(self, access_token: str | None) -> None:
        self._initial_access = access_token

    async def redirect(self, url: str) -> None:
        """The SDK asks us to send the person to ``url``."""
        parts = urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback_host(parts.hostname or "")):
            raise AuthRequired(self.name, "the authorization URL is not https; refusing to open it")
        if not self.policy.interactive:
            raise AuthRequired(self.name, f"needs a login: run `mcp-bridge login {self.name}`")
        self._result, self._error, self._got_result = None, "no reason given", anyio.Event()  # a fresh flow
        query = parse_qs(parts.query)
        scope = query.get("scope", [""])[0]
        self._state = query.get("state", [None])[0]  # the SDK puts a fresh random one in every authorization URL
        await self._acquire_lock()
        try:
            tokens = await self.storage.get_tokens()
            if tokens is not None and tokens.access_token != self._initial_access:
                raise LoginCompletedElsewhere()
            state = self.storage.load_state()
            now = time.time()
            same_scope = state.extra.get("last_scope", "") == scope  # a step-up to more scopes is a new question
            if (
                self.policy.cooldown
                and state.last_browser_open
                and now - state.last_browser_open < self.policy.cooldown
                and same_scope
            ):
                raise AuthRequired(
                    self.name,
                    f"needs a login (a browser was opened for it {now - state.last_browser_open:.0f}s ago and is not "
                    f"reopened automatically): run `mcp-bridge login {self.name}`",
                )
            await self._listen()
            state.last_browser_open = now
            state.extra["last_scope"] = scope
            state.redirect_port = self.port
            self.storage.save_state(state)
        except BaseException:
            self.finished()
            raise
        if self.policy.on_waiting:
            self.policy.on_waiting(self.policy.timeout)
        # The URL is always shown (stderr), so a person without a browser here can still log in; the browser is
        # opened beside the flow because a $BROWSER program may only return once the page has loaded, which needs
        # the callback listener below to be serving.
        if self.policy.announce:
            self.policy.announce(self.name, url)
        else:
            self._print_url(url)
        log.info("oauth.browser_login", server=self.name, browser=self.policy.open_browser)
        if self.policy.open_browser:
            threading.Thread(target=_open_browser, args=(self.name, url), name="open-browser", daemon=True).start()

    @staticmethod
    def _print_url(url: str) -> None:
        import sys

        sys.stderr.write(f"mcp-bridge: to log in, open this URL in a browser:\n  {printable(url, newlines=False)}\n")
        sys.stderr.flush()

    async def callback(self) -> AuthorizationCodeResult:
        """Wait for the browser to come back to the loopback listener with the code."""
        listener = self._listener
        assert listener is not None, "redirect() binds the listener first"
        try:
            with anyio.fail_after(self.policy.timeout):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(listener.serve, self._handle)
                    await self._got_result.wait()
                    tg.cancel_scope.cancel()
        except TimeoutError:
            self.finished()
            raise AuthRequired(self.name, f"the browser login did not finish within {self.policy.timeout:g}s") from None
        finally:
            self._listener = None
            await listener.aclose()
        if self._result is None:
            self.finished()
            raise AuthRequired(self.name, f"the login was refused: {self._error}")
        return self._result

    async def _acquire_lock(self) -> None:
        import filelock

        self._lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = filelock.FileLock(str(self._lock_path))
        deadline = anyio.current_time() + self.policy.timeout
        while True:
            try:
                lock.acquire(timeout=0)
                break
            except filelock.Timeout:
                if anyio.current_time() > deadline:
                    raise AuthRequired(
                        self.name, "another mcp-bridge process is logging in; timed out waiting"
                    ) from None
                if self.policy.on_waiting:
                    self.policy.on_waiting(self.policy.timeout)
                await anyio.sleep(0.2)
        self._lock = lock

    def finished(self) -> None:
        """Release the cross-process login lock (once the tokens are stored, or when the flow ends)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    async def _listen(self) -> None:
        try:
            self._listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        except OSError as exc:
            raise AuthRequired(
                self.name, f"cannot listen on 127.0.0.1:{self.port} for the login callback: {exc.strerror}"
            ) from None

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            with anyio.move_on_after(10):
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = await stream.receive()
                    if not chunk:
                        break
                    data += chunk
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            method, _, rest = line.partition(" ")
            target = rest.rpartition(" ")[0]
            parts = urlsplit(target)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if method != "GET" or parts.path != CALLBACK_PATH:
                await _respond(stream, 404, "Not found.")
                return
            if not self._ours(query.get("state")):
                # Any page the browser shows can send it here, with an error or a code of its choosing: neither
                # may end (or finish) the login. It goes on waiting for the authorization server's own redirect.
                log.warning("oauth.callback_ignored", server=self.name, reason="state does not match the login's")
                await _respond(stream, 400, "This request is not part of a login in progress; it was ignored.")
                return
            if "error" in query:
                self._error = _shown(query.get("error_description") or query["error"])
                await _respond(stream, 400, f"Login failed: {self._error}.")
                self._got_result.set()
                return
            if not query.get("code"):
                await _respond(stream, 400, "The login callback is missing its code.")
                return
            self._result = AuthorizationCodeResult(code=query["code"], state=query["state"], iss=query.get("iss"))
            await _respond(stream, 200, f"mcp-bridge is logged in to {self.name}. You can close this tab.")
            self._got_result.set()

    def _ours(self, state: str | None) -> bool:
        """Whether a callback carries the ``state`` of the authorization request this login sent."""
        expected = self._state
        return bool(expected and state) and hmac.compare_digest(str(state).encode(), str(expected).encode())


_SHOWN_CHARS = 300


def _shown(text: str) -> str:
    """An authorization server's (or anyone's) error text as the login reports it: cut short, and safe for a
    terminal (the page escapes it again, as HTML)."""
    if len(text) > _SHOWN_CHARS:
        text = text[:_SHOWN_CHARS] + "…"
    return printable(text, newlines=False)


async def _respond(stream: anyio.abc.SocketStream, status: int, text: str) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
    body = f"<!doctype html><title>mcp-bridge</title><p>{html.escape(text)}</p>".encode()
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
    await stream.send(head.encode() + b"Connection: close\r\n\r\n" + body)


def _open_browser(server: str, url: str) -> None:
    """Open ``url`` with Python's ``webbrowser`` (honours $BROWSER; never a shell)."""
    try:
        opened = webbrowser.open(url, new=2)
    except webbrowser.Error:
        opened = False
    if not opened:
        log.warning("oauth.no_browser", server=server, hint="open the URL printed on stderr")


def free_loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_provider(
    name: str, server_url: str, auth: OAuthAuth, storage: ServerTokenStorage, home: Path, policy: LoginPolicy
) -> BridgeOAuthProvider:
    """The provider for one connection attempt, with its :class:`Login`."""
    state: OAuthState = storage.load_state()
    port = auth.redirect_port or state.redirect_port
    if port is None:
        # Kept at once: a client registered now (even by a run that cannot log in, say `status`) is registered with
        # this redirect URI, and a later `login` must use the same one, or the authorization server refuses it.
        port = state.redirect_port = free_loopback_port()
        storage.save_state(state)
    redirect = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
    preregistered = None
    if auth.client_id:
        preregistered = OAuthClientInformationFull(
            client_id=auth.client_id,
            client_secret=auth.client_secret,
            redirect_uris=[redirect],  # type: ignore[list-item]
            token_endpoint_auth_method=None if auth.client_secret else "none",  # with a secret: chosen per the AS
        )
    metadata = OAuthClientMetadata(
        client_name=f"mcp-bridge ({name})",
        redirect_uris=[redirect],  # type: ignore[list-item]
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        scope=" ".join(auth.scopes) if auth.scopes else None,
        software_id="mcp-bridge",
        software_version=__version__,
    )
    login = Login(name, storage, home, policy, port)
    return BridgeOAuthProvider(
        server_url,
        metadata,
        storage,
        login,
        send_resource=auth.resource,
        preregistered=preregistered,
        client_metadata_url=None if preregistered else auth.client_metadata_url,
    )


async def revoke_tokens(storage: ServerTokenStorage, auth: OAuthAuth) -> bool:
    """Revoke the stored tokens where the server supports it (RFC 7009). True when the server confirmed it."""
    state = storage.load_state()
    endpoint = (state.oauth_metadata or {}).get("revocation_endpoint")
    tokens = await storage.get_tokens()
    if not endpoint or tokens is None:
        return False
    client = await storage.get_client_info()
    client_id = auth.client_id or (client.client_id if client else None)
    secret = auth.client_secret or (client.client_secret if client else None)
    if not client_id:
        return False
    confirmed = True
    async with httpx2.AsyncClient(timeout=10) as http:
        for token, hint in ((tokens.refresh_token, "refresh_token"), (tokens.access_token, "access_token")):
            if not token:
                continue
            data = {"token": token, "token_type_hint": hint, "client_id": client_id}
            if secret:
                data["client_secret"] = secret
            try:
                response = await http.post(str(endpoint), data=data)
            except httpx2.HTTPError as exc:
                log.warning("oauth.revoke_failed", server_url=storage.server_url, error=type(exc).__name__)
                return False
            confirmed = confirmed and response.status_code == 200
    return confirmed
