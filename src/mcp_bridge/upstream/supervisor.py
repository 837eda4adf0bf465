"""One remote MCP server: its supervisor task, its session, reconnects, and the requests sent to it.

Each :class:`Upstream` owns a failure domain. Its supervisor (:meth:`Upstream.run`) connects over streamable HTTP,
runs the handshake, lists what the server offers, and keeps the session until it breaks; then it reconnects with
exponential backoff and jitter. The SDK's transport cancels the task that entered it when a POST fails, so only the
supervisor ever enters it: request senders borrow the session and see errors, never cancellation.

A request is retried only when it certainly never reached the server: the TCP connection could not be made
(:class:`~mcp_bridge.upstream.transport.GuardedTransport` turns that into a JSON-RPC error instead of a crash), or
the server rejected the session before looking at the request ("session not found"). A request lost in flight is
reported, not repeated: a tool may not be idempotent.

``tools/call`` takes a shorter way than the session's :meth:`~mcp.client.session.ClientSession.send_request`: it is
POSTed through the session's own transport object (:func:`~mcp_bridge.upstream.wire.call_direct`), which skips three
task hops and two in-memory streams per call and gives the same bytes on the wire, the same result checks and the
same errors.
"""

from __future__ import annotations

import dataclasses
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError

from mcp_bridge import __version__
from mcp_bridge.auth import AuthEnv, auth_for
from mcp_bridge.auth.oauth import LoginCompletedElsewhere
from mcp_bridge.backoff import Backoff
from mcp_bridge.config import OAuthAuth, ServerConfig, TimeoutsConfig
from mcp_bridge.errors import AuthRequired, BridgeError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from mcp_bridge.governance.catalog import Listing
from mcp_bridge.logs import clean, get_logger
from mcp_bridge.upstream.http_errors import HTTP_ERROR, explain_not_mcp
from mcp_bridge.upstream.transport import NOT_SENT, GuardedTransport
from mcp_bridge.upstream.wire import Wire, call_direct, open_wire, send_raw

log = get_logger(__name__)

State = Literal["connecting", "connected", "needs_auth", "error", "stopped"]
ProgressFn = ProgressFnT


_MAX_PAGES = 100
_LOGIN_POLL_SECONDS = 2.0
_E = TypeVar("_E", bound=BaseException)
_KEEPALIVE_SECONDS = 30.0
_RECYCLE, _TOOLS, _PROMPTS, _RESOURCES = "recycle", "tools", "prompts", "resources"


_ssl: ssl.SSLContext | None = None
_ssl_lock = anyio.Lock()


async def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every upstream, built once, off the event loop (it takes ~50 ms of CPU that
    would otherwise delay the IDE's ``initialize`` once per server)."""
    global _ssl
    async with _ssl_lock:
        if _ssl is None:
            _ssl = await anyio.to_thread.run_sync(httpx2.create_ssl_context)
        return _ssl


def _session_gone(exc: MCPError) -> bool:
    """The server no longer knows our session (it restarted): it rejected the request without running it."""
    msg = exc.error.message.lower()
    return exc.error.code == types.INVALID_REQUEST and ("session not found" in msg or "session terminated" in msg)


class Upstream:
    """One remote server under its own supervisor."""

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        timeouts: TimeoutsConfig,
        on_listing: Callable[[str, Listing], None],
        *,
        problem: str | None = None,
        auth_env: AuthEnv | None = None,
        on_auth_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self._on_auth_failure = on_auth_failure
        self.name = name
        self.problem = problem
        self.auth_env = auth_env
        """Why this approved server cannot be used yet (say, a missing API key): it goes to ``needs_auth``."""
        self.config = config
        self.timeouts = timeouts
        self._on_listing = on_listing
        self.state: State = "connecting"
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self.server_info: dict[str, Any] | None = None
        self.listing: Listing | None = None
        self.settled = anyio.Event()
        """Set once the first connection attempt has an outcome (connected, error or needs_auth)."""
        self._session: ClientSession | None = None
        self._wire: Wire | None = None
        """The transport under ``_session`` (set and cleared with it), for :func:`call_direct`."""
        self._connected = anyio.Event()
        self._attempts_ended = 0
        self._attempt_ended = anyio.Event()
        """Set (and replaced) each time a connection attempt ends, connected or failed."""
        self._retry_now = anyio.Event()
        """Set to cut a backoff wait short: someone wants the server now."""
        self._pending: set[str] = set()
        """Work for the supervisor: re-list tools/prompts/resources, or recycle the session. Never dropped."""
        self._wake = anyio.Event()
        self._stopped = False

    # ----------------------------------------------------------------- supervisor

    async def run(self) -> None:
        """Connect, serve, reconnect; forever, until cancelled. Never raises (one server's failure stays local)."""
        backoff = Backoff()
        try:
            while True:
                self._set_state("connecting")
                try:
                    await self._connect_and_serve(backoff)
                    delay = 0.0  # recycled on purpose: reconnect at once
                except Exception as exc:  # supervisor boundary: anything from the transport or the server
                    if _find(exc, LoginCompletedElsewhere) is not None:
                        log.info("upstream.login_completed_elsewhere", server=self.name)
                        delay = 0.0
                    elif (needs := _find(exc, AuthRequired)) is not None:
                        self._fail("needs_auth", needs)
                        if self._on_auth_failure is not None:
                            self._on_auth_failure(self.name, self.last_error or "needs a login")
                        self._end_attempt()
                        if not isinstance(self.config.auth, OAuthAuth) or self.auth_env is None:
                            return  # nothing to retry until the config changes
                        await self._wait_for_login_elsewhere()
                        delay = 0.0
                    else:
                        self._fail("error", exc)
                        self._end_attempt()
                        delay = backoff.next()
                finally:
                    self._withdraw()
                if delay:
                    log.info("upstream.reconnect_scheduled", server=self.name, in_seconds=round(delay, 2))
                    with anyio.move_on_after(delay):
                        await self._retry_now.wait()  # a caller who needs the server now cuts the wait short
                self._retry_now = anyio.Event()
        finally:
            self._stopped = True
            self._set_state("stopped")

    async def _connect_and_serve(self, backoff: Backoff) -> None:
        if self.problem:
            raise AuthRequired(self.name, self.problem)
        t = self.timeouts
        connect_scope = anyio.CancelScope(deadline=anyio.current_time() + t.connect)
        policy = None
        if self.auth_env is not None:

            def on_waiting(seconds: float) -> None:  # a person is logging in: give them the login's time
                connect_scope.deadline = anyio.current_time() + seconds
                self.state, self.last_error = "needs_auth", "waiting for the browser login"

            policy = dataclasses.replace(self.auth_env.policy, on_waiting=on_waiting)
        auth = auth_for(self.name, self.config, self.auth_env, policy)
        try:
            await self._connect_with(auth, connect_scope, backoff)
        finally:
            login = getattr(auth, "login", None)
            if login is not None:
                login.finished()

    async def _connect_with(self, auth: httpx2.Auth | None, connect_scope: anyio.CancelScope, backoff: Backoff) -> None:
        t = self.timeouts
        timeout = httpx2.Timeout(t.connect, read=t.call + 5, write=t.connect, pool=t.connect)
        transport = GuardedTransport(httpx2.AsyncHTTPTransport(verify=await _ssl_context()))
        async with (
            httpx2.AsyncClient(auth=auth, timeout=timeout, transport=transport) as http,
            open_wire(self.config.endpoint, http) as (read, write, wire),
            ClientSession(
                read,
                write,
                message_handler=self._on_message,
                client_info=types.Implementation(name="mcp-bridge", version=__version__),
            ) as session,
        ):
            with connect_scope:
                init = await session.initialize()
                listing = await self._fetch_listing(session, _TOOLS, _PROMPTS, _RESOURCES, current=None)
            if connect_scope.cancelled_caught:
                raise TimeoutError
            self.server_info = init.server_info.model_dump(mode="json", exclude_none=True)
            self._session, self._wire = session, wire
            self.listing = listing
            self.connected_since = time.time()
            backoff.reset()
            self._set_state("connected")
            self._connected.set()
            self._end_attempt()
            self._on_listing(self.name, listing)
            try:
                await self._serve(session)
            finally:
                self._withdraw()  # before the transport closes (which takes a round trip): see _withdraw

    async def _serve(self, session: ClientSession) -> None:
        """Wait for signals: re-list on upstream ``list_changed``, return on recycle; ping when idle."""
        self._pending.discard(_RECYCLE)  # a recycle asked of an earlier session is done
        while True:
            if not self._pending:
                with anyio.move_on_after(_KEEPALIVE_SECONDS) as idle:
                    await self._wake.wait()
                self._wake = anyio.Event()
                if idle.cancelled_caught:
                    await self._keepalive(session)
                    continue
            kinds, self._pending = self._pending, set()  # a burst of notifications becomes one re-list
            if _RECYCLE in kinds:
                log.info("upstream.recycle", server=self.name)
                return
            assert self.listing is not None
            with anyio.fail_after(self.timeouts.connect):
                self.listing = await self._fetch_listing(session, *kinds, current=self.listing)
            log.info("upstream.relisted", server=self.name, kinds=sorted(kinds), tools=len(self.listing.tools))
            self._on_listing(self.name, self.listing)

    async def _keepalive(self, session: ClientSession) -> None:
        try:
            with anyio.fail_after(self.timeouts.connect):
                await send_raw(session, types.PingRequest())
        except MCPError as exc:
            if exc.error.code in (NOT_SENT, types.CONNECTION_CLOSED) or _session_gone(exc):
                raise UpstreamUnavailable(self.name, f"keepalive failed: {exc.error.message}") from None
            # Any other JSON-RPC error (say, ping not implemented) still proves the server is alive.
        except TimeoutError:
            raise UpstreamUnavailable(self.name, "keepalive ping timed out") from None

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            log.debug("upstream.transport_event", server=self.name, error=f"{type(message).__name__}: {message}")
            return
        root = getattr(message, "root", message)
        if isinstance(root, types.ToolListChangedNotification):
            self._signal(_TOOLS)
        elif isinstance(root, types.PromptListChangedNotification):
            self._signal(_PROMPTS)
        elif isinstance(root, types.ResourceListChangedNotification):
            self._signal(_RESOURCES)

    def _signal(self, kind: str) -> None:
        self._pending.add(kind)
        self._wake.set()

    async def _fetch_listing(self, session: ClientSession, *kinds: str, current: Listing | None) -> Listing:
        caps = session.server_capabilities
        out = dataclasses.replace(current) if current else Listing()
        if _TOOLS in kinds:
            out.tools = await self._paged(session, "tools/list", "tools") if caps and caps.tools else []
        if _PROMPTS in kinds:
            out.prompts = await self._paged(session, "prompts/list", "prompts") if caps and caps.prompts else []
        if _RESOURCES in kinds:
            has = bool(caps and caps.resources)
            out.resources = await self._paged(session, "resources/list", "resources") if has else []
            out.templates = await self._paged(session, "resources/templates/list", "resourceTemplates") if has else []
        return out

    async def _paged(self, session: ClientSession, method: str, key: str) -> list[dict[str, Any]]:
        request_type: Any = {
            "tools/list": types.ListToolsRequest,
            "prompts/list": types.ListPromptsRequest,
            "resources/list": types.ListResourcesRequest,
            "resources/templates/list": types.ListResourceTemplatesRequest,
        }[method]
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            params = {"cursor": cursor} if cursor else None
            raw = await send_raw(session, request_type.model_validate({"method": method, "params": params}))
            items.extend(x for x in raw.get(key) or [] if isinstance(x, dict))
            cursor = raw.get("nextCursor")
            if not cursor:
                return items
        log.warning("upstream.pagination_capped", server=self.name, method=method, pages=_MAX_PAGES)
        return items

    def _set_state(self, state: State) -> None:
        if state != self.state:
            log.info("upstream.state", server=self.name, state=state)
        self.state = state
        if state == "connected":
            self.last_error = None
            self.settled.set()

    async def _wait_for_login_elsewhere(self) -> None:
        """In ``needs_auth``: wait until a login (``mcp-bridge login``, another window) stores new tokens."""
        assert self.auth_env is not None
        state_path = self.auth_env.storage_path(self.config.endpoint)
        seen = _mtime(state_path)
        while _mtime(state_path) == seen:
            with anyio.move_on_after(_LOGIN_POLL_SECONDS):
                await self._retry_now.wait()
            if self._retry_now.is_set():
                self._retry_now = anyio.Event()
                return

    def token_expires_at(self) -> float | None:
        if self.auth_env is None or not isinstance(self.config.auth, OAuthAuth):
            return None
        try:
            return self.auth_env.storage(self.config.endpoint).load_state().expires_at
        except Exception:  # no keyring backend: there are no tokens to report
            return None

    def _needs_auth(self) -> bool:
        return self.state == "needs_auth"

    def _end_attempt(self) -> None:
        self._attempts_ended += 1
        self._attempt_ended.set()
        self._attempt_ended = anyio.Event()

    def _fail(self, state: State, exc: BaseException) -> None:
        self.last_error = describe_error(exc)
        self.state = state
        self.connected_since = None
        log.warning("upstream.failed", server=self.name, state=state, error=self.last_error)
        self.settled.set()

    # ----------------------------------------------------------------- requests

    def request_recycle(self, session: ClientSession | None = None) -> None:
        """Ask the supervisor to drop the session and reconnect (only if ``session`` is still the current one).

        The session is withdrawn at once: a request from now on waits for the new one (:meth:`_wait_session`)
        instead of going out on a connection that is about to close under it."""
        if session is None or session is self._session:
            self._withdraw()
            self._signal(_RECYCLE)

    def _withdraw(self) -> None:
        """No new request goes to the current session: it is being dropped. Requests already sent on it keep it
        until the supervisor closes the transport; new ones wait, like requests to a server still connecting, for
        the supervisor's next connection attempt."""
        self._session = self._wire = None
        if self._connected.is_set():
            self._connected = anyio.Event()

    async def _wait_session(self) -> ClientSession:
        """The live session; if there is none, the outcome of the next connection attempt (bounded)."""
        if self._needs_auth():
            raise AuthRequired(self.name, f"needs a login: {self.last_error}; run `mcp-bridge login {self.name}`")
        if self._stopped:
            raise UpstreamUnavailable(self.name, "not connected: the server was removed or the bridge is stopping")
        session = self._session
        if session is not None and self._connected.is_set():
            return session
        # Connecting now (also reconnecting: a session being dropped is withdrawn at once): wait for that attempt.
        # Waiting out a backoff: try again at once instead, and report that attempt's outcome rather than making the
        # caller sit through the whole delay.
        seen = self._attempts_ended
        if self.state == "error":
            self._retry_now.set()
        wait = self.timeouts.connect
        with anyio.move_on_after(wait):
            while self._attempts_ended == seen and not self._stopped:
                await self._attempt_ended.wait()
        session = self._session
        if session is not None:
            return session
        if self._needs_auth():
            raise AuthRequired(self.name, f"needs a login: {self.last_error}; run `mcp-bridge login {self.name}`")
        if self._attempts_ended == seen:
            raise UpstreamUnavailable(self.name, f"not connected; timed out after {wait:g}s waiting for a connection")
        raise UpstreamUnavailable(self.name, f"not reachable: {self.last_error or 'could not connect'}")

    def retry_soon(self) -> None:
        """Someone needs this server: if it is waiting out a backoff after a failed attempt, try again now."""
        if self.state == "error":
            self._retry_now.set()

    async def next_outcome(self) -> None:
        """Wait until the connection attempt under way (or the next one) has ended, connected or not."""
        seen = self._attempts_ended
        while self._attempts_ended == seen and not self._stopped:
            await self._attempt_ended.wait()

    def unavailable(self) -> UpstreamError:
        """The error for a request to this server while it is not connected: why, and what to do."""
        if self._needs_auth():
            return AuthRequired(self.name, f"needs a login: {self.last_error}; run `mcp-bridge login {self.name}`")
        return UpstreamUnavailable(self.name, f"not reachable: {self.last_error or 'could not connect'}")

    async def request(
        self,
        request: Any,
        *,
        call_timeout: float | None = None,
        progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Send one request and return the raw result dict.

        Raises ``MCPError`` for the server's own JSON-RPC errors, :class:`UpstreamUnavailable` when the request could
        not be delivered (or was lost in flight), and :class:`UpstreamTimeout` when no answer came in ``timeout``.
        """
        timeout = self.timeouts.call if call_timeout is None else call_timeout
        for attempt in range(3):
            session = await self._wait_session()
            wire = self._wire if self._session is session else None
            try:
                if wire is not None and isinstance(request, types.CallToolRequest):
                    return await call_direct(wire, session, request, read_timeout=timeout, progress=progress)
                return await send_raw(
                    session, request, request_read_timeout_seconds=timeout, progress_callback=progress
                )
            except MCPError as exc:
                code = exc.error.code
                if code == NOT_SENT or _session_gone(exc):
                    # Never reached the server (no connection), or the server rejected the session before running
                    # the request: reconnect and try again.
                    log.info("upstream.retry_unsent", server=self.name, attempt=attempt + 1, reason=exc.error.message)
                    self.request_recycle(session)  # withdrawn: the next round waits for the new session
                    continue
                if code == types.REQUEST_TIMEOUT:
                    raise UpstreamTimeout(self.name, f"timed out: no answer within {timeout:g}s") from None
                if code == types.CONNECTION_CLOSED:
                    self.request_recycle(session)
                    raise UpstreamUnavailable(
                        self.name, "connection lost while the request was in flight (it may have run; not retried)"
                    ) from None
                if code == HTTP_ERROR:  # an HTTP failure, not the server's JSON-RPC answer (http_errors)
                    raise UpstreamError(self.name, exc.error.message) from None
                if (not_mcp := explain_not_mcp(code, exc.error.message)) is not None:
                    raise UpstreamError(self.name, not_mcp) from None
                raise
        raise UpstreamUnavailable(self.name, f"not reachable: {self.last_error or 'could not connect'}")

    def status(self) -> dict[str, Any]:
        return {
            "server": self.name,
            "url": self.config.url,
            "state": self.state,
            "last_error": self.last_error,
            "connected_since": self.connected_since,
            "server_info": self.server_info,
            "token_expires_at": self.token_expires_at(),
        }


def _find(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first ``kind`` inside ``exc`` (exception groups from the transport's task group are searched)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _find(inner, kind)) is not None:
                return found
    return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def describe_error(exc: BaseException) -> str:
    """A one-line, secret-free description of an exception (unwrapping exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = _find(exc, BridgeError) or exc.exceptions[0]
    if isinstance(exc, UpstreamError):
        text = str(exc).split(": ", 1)[-1]
    elif isinstance(exc, MCPError) and exc.error.code in (NOT_SENT, HTTP_ERROR):
        text = exc.error.message
    elif isinstance(exc, MCPError) and (not_mcp := explain_not_mcp(exc.error.code, exc.error.message)):
        text = not_mcp
    elif isinstance(exc, MCPError):
        text = f"server error {exc.error.code}: {exc.error.message}"
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    elif isinstance(exc, httpx2.HTTPStatusError):
        text = f"HTTP {exc.response.status_code} from {exc.request.url.copy_with(query=None)}"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return clean(text)


def error_text(exc: BaseException) -> str:
    """A user-facing, secret-free message for any failure of a request."""
    if isinstance(exc, UpstreamError | BridgeError):
        return clean(str(exc))
    return describe_error(exc)
