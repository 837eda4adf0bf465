"""One remote MCP server: its supervisor task, its session, reconnects, and the requests sent to it.

Each :class:`Upstream` owns a failure domain. Its supervisor (:meth:`Upstream.run`) connects over streamable HTTP,
runs the handshake, lists what the server offers, and keeps the session until it breaks; then it reconnects with
exponential backoff and jitter. The SDK's transport cancels the task that entered it when a POST fails, so only the
supervisor ever enters it: request senders borrow the session and see errors, never cancellation.

A request is retried only when it certainly never reached the server: the TCP connection could not be made
(:class:`_GuardedTransport` turns that into a JSON-RPC error instead of a crash), or the server rejected the session
before looking at the request ("session not found"). A request lost in flight is reported, not repeated: a tool may
not be idempotent.

``tools/call`` takes a shorter way than the session's :meth:`~mcp.client.session.ClientSession.send_request`: it is
POSTed through the session's own transport object (:func:`_call_direct`), which skips three task hops and two
in-memory streams per call and gives the same bytes on the wire, the same result checks and the same errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import httpx2
import mcp_types as types
from anyio.streams.memory import MemoryObjectSendStream
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT, coerce_request_id
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_NAME_HEADER, MCP_PROTOCOL_VERSION_HEADER, encode_header_value
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import methods as _methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import RootModel

from mcp_bridge import __version__
from mcp_bridge.auth import AuthEnv, auth_for
from mcp_bridge.auth.oauth import LoginCompletedElsewhere
from mcp_bridge.backoff import Backoff
from mcp_bridge.config import OAuthAuth, ServerConfig, TimeoutsConfig
from mcp_bridge.errors import AuthRequired, BridgeError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from mcp_bridge.governance.catalog import Listing
from mcp_bridge.http_errors import (
    HTTP_ERROR,
    AnswerTooLarge,
    explain_http_error,
    explain_not_mcp,
    http_error_to_explain,
)
from mcp_bridge.logs import clean, get_logger

log = get_logger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest message (one SSE event) taken from a server. The SDK's default, 1 MiB, is a tools/list of about 2,000
tools; a bound still stops a runaway server from filling memory."""

State = Literal["connecting", "connected", "needs_auth", "error", "stopped"]
ProgressFn = ProgressFnT


class _Raw(RootModel[dict[str, Any]]):
    """A result kept as the raw dict the server sent (pass-through: no re-validation against output schemas)."""


async def _send(session: ClientSession, request: Any, **kwargs: Any) -> dict[str, Any]:
    return (await session.send_request(request, _Raw, **kwargs)).root


try:  # SDK internals the direct tools/call path (_call_direct) is built on; without them calls take the SDK's way
    from mcp.client.session import _clamp_inbound_ttl, _later_revision_fields
    from mcp.client.streamable_http import RequestContext, StreamableHTTPTransport
    from mcp.shared._context_streams import create_context_streams

    DIRECT_CALLS = all(
        callable(getattr(StreamableHTTPTransport, name, None))
        for name in ("_handle_post_request", "_prepare_headers", "post_writer", "handle_get_stream")
    )
except ImportError:  # pragma: no cover - another SDK release
    DIRECT_CALLS = False


NOT_SENT = -32099
"""Internal JSON-RPC code: the request never left this machine (the TCP connection could not be made)."""
_MAX_PAGES = 100
_LOGIN_POLL_SECONDS = 2.0
_E = TypeVar("_E", bound=BaseException)
_DRAIN_SECONDS = 0.05
_DRAIN_BYTES = 1 << 16
_KEEPALIVE_SECONDS = 30.0
_RECYCLE, _TOOLS, _PROMPTS, _RESOURCES = "recycle", "tools", "prompts", "resources"


class _GuardedTransport(httpx2.AsyncBaseTransport):
    """Turns "could not connect" on a POST into a JSON-RPC error response instead of a transport crash.

    Without this the SDK raises inside its task group and cancels whichever task entered the transport; with it the
    one request gets a clean, typed error (``NOT_SENT``) and the supervisor decides what to do.
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout) as exc:
            if request.method != "POST":
                raise
            message = f"could not connect: {type(exc).__name__}: {exc}"
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": NOT_SENT, "message": message}}
            return httpx2.Response(503, json=body, request=request)
        kind = response.headers.get("content-type", "") if request.method == "POST" else ""
        if kind.startswith("text/event-stream"):
            response.stream = _DrainOnClose(response.stream)
        elif kind.startswith("application/json") and response.status_code < 400:
            response.stream = _Capped(response.stream, MAX_MESSAGE_BYTES)
        elif request.method == "POST" and response.status_code >= 400 and http_error_to_explain(request, response):
            return await explain_http_error(request, response)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Capped(httpx2.AsyncByteStream):
    """A JSON answer, read only up to ``limit`` bytes: the SDK reads a JSON answer whole, and an endless one from a
    hostile server would fill memory. Past the limit the read fails (:class:`AnswerTooLarge`), and the request with
    it; the session goes on. (Streamed answers have the same limit per event, in the SDK's SSE reader.)"""

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner, self._limit = inner, limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise AnswerTooLarge(self._limit)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _DrainOnClose(httpx2.AsyncByteStream):
    """Reads what is left of a finished POST's event stream before closing it, so the connection is kept.

    The SDK closes a POST's SSE response as soon as the JSON-RPC response has arrived, a few bytes before the end of
    the stream; an unfinished response cannot go back to the pool, so every call would open a new TCP connection
    (and leave a TIME_WAIT socket behind). The server ends the stream right after the response, so the tail is
    tiny and arrives at once; a stream that goes on longer than ``_DRAIN_SECONDS`` is closed as before.

    Reading and draining share one iterator over the inner stream, which the drain runs to its end: the iterators
    under it finish there, instead of being left suspended for the garbage collector to close, each through a
    thread-safe loop wake-up and a task of its own.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._chunks: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._chunks is None:
            self._chunks = aiter(self._inner)
        return self._chunks

    async def aclose(self) -> None:
        chunks = self.__aiter__()
        try:
            with anyio.move_on_after(_DRAIN_SECONDS):
                drained = 0
                async for chunk in chunks:
                    drained += len(chunk)
                    if drained > _DRAIN_BYTES:
                        break
        except (httpx2.HTTPError, anyio.ClosedResourceError, anyio.BrokenResourceError, RuntimeError):
            pass  # already broken or closed: nothing to keep
        finally:
            try:
                if isinstance(chunks, AsyncGenerator):
                    await chunks.aclose()  # cut short (too long, too slow, broken): close it now, not in the GC
            finally:
                await self._inner.aclose()


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
        self._wire: _Wire | None = None
        """The transport under ``_session`` (set and cleared with it), for :func:`_call_direct`."""
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
        transport = _GuardedTransport(httpx2.AsyncHTTPTransport(verify=await _ssl_context()))
        async with (
            httpx2.AsyncClient(auth=auth, timeout=timeout, transport=transport) as http,
            _open_wire(self.config.endpoint, http) as (read, write, wire),
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
                await _send(session, types.PingRequest())
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
            raw = await _send(session, request_type.model_validate({"method": method, "params": params}))
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
                    return await _call_direct(wire, session, request, read_timeout=timeout, progress=progress)
                return await _send(session, request, request_read_timeout_seconds=timeout, progress_callback=progress)
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


# ----------------------------------------------------------------------------------------- the direct call path

_FIRST_DIRECT_ID = 1 << 30
"""Request ids of direct calls count up from here: the session's own ids count up from 1, and the two must never
meet on one connection. Below 2**31, for servers that keep ids in 32 bits."""
_ANSWER_HOPS = 5
"""Event-loop rounds a direct call's POST task lets pass after handing over the answer, before the transport cleans
up after it (reads the rest of the stream, returns the connection to the pool, and closes the SSE reader's
generators, each through a loop wake-up and a task of its own; together as long as the answer's own way out).
The answer's way to the IDE takes about as many task hops (the caller, the front's dispatcher, the relay to the
stdio writer, the writer), one loop round each, so it goes first instead of sharing the rounds with the clean-up.
Fewer hops than this cost nothing; more only share some rounds again."""
_COURTESY_CANCEL_SECONDS = 5.0
"""How long the ``notifications/cancelled`` of an abandoned call may take to go out (the SDK's bound too)."""


@dataclass
class _Wire:
    """One connection's streamable-HTTP transport, as :func:`_open_wire` opened it for the session above it."""

    transport: StreamableHTTPTransport
    http: httpx2.AsyncClient
    inbound: Any
    """What the session reads from: the transport puts every message from the server here."""
    tasks: anyio.abc.TaskGroup
    """The transport's task group: its POSTs run (and fail) here."""
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(_FIRST_DIRECT_ID))


@contextlib.asynccontextmanager
async def _open_wire(url: str, http: httpx2.AsyncClient) -> AsyncIterator[tuple[Any, Any, _Wire | None]]:
    """``streamable_http_client(url, http_client=http)``'s streams, and the transport under them.

    It is that function's body, keeping hold of what it builds (it hands out only the two streams), so that a
    tools/call can be POSTed through the same transport (:func:`_call_direct`). Without the SDK internals that
    needs (:data:`DIRECT_CALLS`), it is that function, and the wire is ``None``.
    """
    if not DIRECT_CALLS:
        async with streamable_http_client(url, http_client=http, max_sse_event_size=MAX_MESSAGE_BYTES) as (r, w):
            yield r, w, None
        return
    # The transport hands its URL only to httpx2, which takes a parsed URL as well as a string: parsed once here,
    # not again for every request (a third of the cost of building one).
    transport = StreamableHTTPTransport(cast(str, httpx2.URL(url)), max_sse_event_size=MAX_MESSAGE_BYTES)
    inbound, read = create_context_streams[SessionMessage | Exception](0)
    write, outbound = create_context_streams[SessionMessage](0)
    async with inbound, read, write, outbound, anyio.create_task_group() as tasks:

        def start_get_stream() -> None:
            tasks.start_soon(transport.handle_get_stream, http, inbound)

        tasks.start_soon(transport.post_writer, http, outbound, inbound, write, start_get_stream, tasks)
        try:
            yield read, write, _Wire(transport, http, inbound, tasks)
        finally:
            if transport.session_id:
                await transport.terminate_session(http)
            tasks.cancel_scope.cancel()
    await anyio.lowlevel.cancel_shielded_checkpoint()  # as the SDK's does after its task group (a coverage fix)


class _Answer:
    """Where the transport puts what comes back on one direct call's POST, in place of the session's stream.

    The answer to the call goes to the caller; progress under the call's token goes to its callback and, like
    everything else (the server's requests and notifications), on to the session, which handles it as if it had
    come through its own stream. This is what the session's dispatcher does with these messages.
    """

    def __init__(
        self,
        request_id: int,
        answer: MemoryObjectSendStream[dict[str, Any] | types.ErrorData],
        inbound: Any,
        progress: ProgressFn | None,
    ) -> None:
        self.request_id = request_id
        self._answer = answer
        self._inbound = inbound
        self.progress = progress
        """The caller's progress callback; ``None`` once the caller stopped waiting (later progress is dropped)."""

    async def send(self, item: SessionMessage | Exception) -> None:
        message = item.message if isinstance(item, SessionMessage) else None
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and (
            message.id is not None and coerce_request_id(message.id) == self.request_id
        ):
            outcome = message.result if isinstance(message, types.JSONRPCResponse) else message.error
            try:
                self._answer.send_nowait(outcome)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                log.debug("upstream.late_answer_dropped", request_id=self.request_id)  # as the session drops them
                return
            for _ in range(_ANSWER_HOPS):  # the answer's way to the IDE first, then the transport's clean-up
                await anyio.lowlevel.checkpoint()
            return
        if isinstance(message, types.JSONRPCNotification) and message.method == "notifications/progress":
            await self._relay_progress(message.params)
        await self._inbound.send(item)

    async def _relay_progress(self, params: Any) -> None:
        """What the session's dispatcher does with a progress notification: the same checks, the same call."""
        progress = self.progress
        match params:
            case {"progressToken": str() | int() as token, "progress": int() | float() as value} if (
                progress is not None
                and not isinstance(token, bool)
                and not isinstance(value, bool)
                and coerce_request_id(token) == self.request_id
            ):
                total, text = params.get("total"), params.get("message")
                try:
                    await progress(
                        float(value),
                        float(total) if isinstance(total, int | float) else None,
                        text if isinstance(text, str) else None,
                    )
                except Exception:  # a failing callback must not break the call (the dispatcher contains it too)
                    log.exception("upstream.progress_callback_failed")
            case _:
                pass


_NO_ANSWER = types.ErrorData(code=types.INTERNAL_ERROR, message="the server's answer named another request")


async def _post(
    transport: StreamableHTTPTransport,
    context: RequestContext,
    answer: MemoryObjectSendStream[dict[str, Any] | types.ErrorData],
) -> None:
    """The transport's own POST of one request, run in the transport's task group as its own POSTs are: a failure
    here ends the connection, as it does for them, and the caller gets "Connection closed".

    The transport answers every request it POSTs (with the server's answer, or an error of its own making) except
    when the server answers with another request's id: the session's caller then waits out its timeout, which is
    of no use; this one gets :data:`_NO_ANSWER` at once.
    """
    with answer:
        await transport._handle_post_request(context)
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):  # answered already
            answer.send_nowait(_NO_ANSWER)


async def _call_direct(
    wire: _Wire,
    session: ClientSession,
    request: types.CallToolRequest,
    *,
    read_timeout: float,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    """What ``_send(session, request, request_read_timeout_seconds=read_timeout, progress_callback=progress)``
    does, without the session's dispatcher and the transport's writer task in between.

    What goes on the wire is what the session would send (the request as ``send_request`` dumps and stamps it, an
    id of its own, the same headers, through the transport's own POST handling: redirects, error statuses, JSON or
    SSE answers, resumption); what comes back is checked as ``send_request`` checks it (validated against the
    negotiated protocol version, fields of later revisions dropped); a timeout and a cancelled caller send the same
    ``notifications/cancelled`` and raise the same errors (``tests/test_direct_calls.py`` compares the two ways).
    Not done: the dispatcher's OpenTelemetry span (the bridge exports no traces). Only for handshake-era sessions,
    which is what the bridge opens.
    """
    version = session.protocol_version
    if version not in HANDSHAKE_PROTOCOL_VERSIONS:
        return await _send(session, request, request_read_timeout_seconds=read_timeout, progress_callback=progress)
    data = request.model_dump(by_alias=True, mode="json", exclude_none=True)
    method: str = data["method"]
    headers = {MCP_PROTOCOL_VERSION_HEADER: version}
    params: dict[str, Any] = dict(data.get("params") or {})
    if (key := type(request).name_param) is not None and isinstance(name := params.get(key), str):
        headers[MCP_NAME_HEADER] = encode_header_value(name)
    request_id = next(wire.ids)
    meta = dict(params.get("_meta") or {})
    if progress is not None:
        meta["progressToken"] = request_id  # the request id is the progress token, as the session makes it
    if meta:
        params["_meta"] = meta
    else:
        params.pop("_meta", None)
    if params:
        message = types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params=params)
    else:  # no "params": null on the wire
        message = types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method)
    metadata = ClientMessageMetadata(headers=headers)
    send, receive = anyio.create_memory_object_stream[dict[str, Any] | types.ErrorData](1)
    answer = _Answer(request_id, send, wire.inbound, progress)
    context = RequestContext(
        client=wire.http,
        session_id=wire.transport.session_id,
        session_message=SessionMessage(message, metadata=metadata),
        metadata=metadata,
        read_stream_writer=cast(Any, answer),  # it takes what the transport sends: see _Answer.send
    )
    try:
        wire.tasks.start_soon(_post, wire.transport, context, send)
    except RuntimeError:  # the transport's task group has ended: the connection is closing
        send.close()
        receive.close()
        raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed") from None
    try:
        with receive, anyio.move_on_after(read_timeout) as clock:
            try:
                outcome = await receive.receive()
            except anyio.EndOfStream:  # the POST failed, or the connection is closing
                raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed") from None
    except anyio.get_cancelled_exc_class():
        await _cancel_upstream(session, request_id, "caller cancelled", shield=True)
        raise
    finally:
        answer.progress = None
    if clock.cancelled_caught:
        await _cancel_upstream(session, request_id, f"timed out after {read_timeout}s", shield=False)
        raise MCPError(code=types.REQUEST_TIMEOUT, message=f"Request {method!r} timed out")
    if isinstance(outcome, types.ErrorData):
        raise MCPError(code=outcome.code, message=outcome.message, data=outcome.data)
    # What send_request does with a result before it returns it.
    _clamp_inbound_ttl(outcome)
    with contextlib.suppress(KeyError):
        _methods.validate_server_result(method, version, outcome)
    if not (foreign := _later_revision_fields(method, version)).isdisjoint(outcome):
        outcome = {k: v for k, v in outcome.items() if k not in foreign}
    return _Raw.model_validate(outcome, by_name=False).root


async def _cancel_upstream(session: ClientSession, request_id: int, reason: str, *, shield: bool) -> None:
    """The courtesy ``notifications/cancelled`` the session sends for a request it stops waiting for."""
    params = types.CancelledNotificationParams(request_id=request_id, reason=reason)
    with anyio.move_on_after(_COURTESY_CANCEL_SECONDS, shield=shield) as bound:
        await session.send_notification(types.CancelledNotification(params=params))
    if bound.cancelled_caught:
        log.warning("upstream.cancel_not_sent", request_id=request_id, reason=reason)


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
