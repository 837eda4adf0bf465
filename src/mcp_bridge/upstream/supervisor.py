"""One remote MCP server: its supervisor task, its session, reconnects, and the requests sent to it.

Each :class:`Upstream` owns a failure domain. Its supervisor (:meth:`Upstream.run`) connects over streamable HTTP,
settles the protocol era (:mod:`~mcp_bridge.upstream.era`: the handshake, or 2026-07-28's ``server/discover``),
lists what the server offers, and keeps the session until it breaks; then it reconnects with exponential backoff and
jitter.

The two eras are supervised differently. A handshake-era session is kept alive with ``ping`` when idle and hears of
list changes by notification. A 2026-07-28 server has no session to keep and no ``ping``: changes come on a
``subscriptions/listen`` stream (re-opened with backoff when lost, and everything re-listed, since nothing is
replayed), or, from a server that offers no such stream, the lists are fetched again when their ``ttlMs`` runs out.
At 2026-07-28 the tool list also carries the ``x-mcp-header`` annotations a call must mirror into ``Mcp-Param-*``
headers: tools whose annotations are invalid are dropped (the protocol requires it), the rest seed the session's
header maps. The SDK's transport cancels the task that entered it when a POST fails, so only the
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
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    SubscriptionLost,
    ToolsListChanged,
    listen,
)
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import find_invalid_x_mcp_header, x_mcp_header_map
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY, ResourceUpdated

from mcp_bridge import __version__, telemetry
from mcp_bridge.auth import AuthEnv, auth_for
from mcp_bridge.auth.oauth import LoginCompletedElsewhere
from mcp_bridge.backoff import Backoff
from mcp_bridge.config import OAuthAuth, Protocol, ServerConfig, TimeoutsConfig
from mcp_bridge.errors import AuthRequired, BridgeError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from mcp_bridge.governance.catalog import Listing
from mcp_bridge.logs import clean, get_logger
from mcp_bridge.upstream.era import (
    EraStore,
    Known,
    Reprobe,
    Source,
    discover_of,
    era_refusal,
    is_modern,
    negotiate,
)
from mcp_bridge.upstream.http_errors import HTTP_ERROR, explain_not_mcp
from mcp_bridge.upstream.inputs import ASKING, Asker, Gate, Offer, OfferingSession, drive, screen
from mcp_bridge.upstream.own_errors import ours
from mcp_bridge.upstream.transport import NOT_SENT, GuardedTransport, coalescing
from mcp_bridge.upstream.wire import Wire, call_direct, open_wire, send_raw

log = get_logger(__name__)

State = Literal["connecting", "connected", "needs_auth", "error", "stopped"]
ListenState = Literal["active", "none", "lost"]
ProgressFn = ProgressFnT


_MAX_PAGES = 100
_LOGIN_POLL_SECONDS = 2.0
_E = TypeVar("_E", bound=BaseException)
_KEEPALIVE_SECONDS = 30.0
_RECYCLE, _TOOLS, _PROMPTS, _RESOURCES = "recycle", "tools", "prompts", "resources"
_TTL_FLOOR_SECONDS, _TTL_CAP_SECONDS = 10.0, 3600.0
"""A 2026-07-28 list's ``ttlMs`` as the bridge honours it when no listen stream tells it of changes: re-listed no
sooner than this floor (a ``ttlMs`` of 0 would mean polling without pause) and no later than the cap."""
_LISTEN_STEADY_SECONDS = 30.0
"""A listen stream that stayed up this long resets the backoff of its re-opening."""
_EVENT_KINDS: dict[type, str] = {
    ToolsListChanged: _TOOLS,
    PromptsListChanged: _PROMPTS,
    ResourcesListChanged: _RESOURCES,
}


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


_REASON_CHARS = 1024
"""Characters of a server's error message kept where it is the reason of a retry (the log, the span's event)."""


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
        eras: EraStore | None = None,
        protocol: Protocol = "auto",
        gate: Callable[[str, ServerConfig], Gate] | None = None,
        on_update: Callable[[str, str], None] | None = None,
    ) -> None:
        self._on_auth_failure = on_auth_failure
        self._on_update = on_update
        self.subscriptions: set[str] = set()
        """The resource URIs the bridge subscribed to on this server (for the IDE); subscribed again on every
        connection: ``resources/subscribe`` in the handshake era, on the listen stream at 2026-07-28."""
        self._relisten = anyio.Event()
        """2026-07-28: set when :attr:`subscriptions` changed, so the listen stream is opened again with them."""
        self._listening: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        """2026-07-28: the URIs the open listen stream asked for, and those the server's acknowledgement honoured."""
        self._listened = anyio.Event()
        """Set (and replaced) each time a listen stream is acknowledged."""
        self._make_gate = gate or (lambda name, _config: Gate(name, Offer(), lambda _note: None))
        self._asking: list[Asker] = []
        """The IDE requests being forwarded to this server (their askers), shared by each session's gate."""
        self.gate: Gate = self._make_gate(name, config)
        """How this server's requests for input reach the IDE; made again for each session (the IDE's declared
        capabilities may have changed), see :mod:`mcp_bridge.upstream.inputs`."""
        self.gate.asking = self._asking
        self.eras = eras
        """Where the era found for each server is remembered (``None``: probe on every connection)."""
        self.protocol: Protocol = protocol
        """The era to speak (``auto``: the server's newest, remembered in :attr:`eras`)."""
        self.era: str | None = None
        """The protocol version of the last connection (kept while reconnecting)."""
        self.era_source: Source | None = None
        self.listen: ListenState = "none"
        """2026-07-28: whether a ``subscriptions/listen`` stream tells the bridge of list changes."""
        self.dropped_tools: list[str] = []
        """2026-07-28: tools left out of the listing because their ``x-mcp-header`` annotations are invalid."""
        self._expires: dict[str, float] = {}
        """2026-07-28: when (``anyio.current_time()``) each kind's listing should be fetched again, from its TTL."""
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
                    elif (reprobe := _find(exc, Reprobe)) is not None:
                        log.info(
                            "upstream.era_reprobe",
                            server=self.name,
                            remembered=reprobe.remembered,
                            refused=f"{reprobe.error.error.code}: {clean(reprobe.error.error.message)}",
                        )
                        # Not the end of the attempt for those waiting on it: the connection is made again at once.
                        delay = 0.0  # once: a probe's outcome is never "remembered", so this cannot repeat
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
        gate = self._fresh_gate()
        verify = await _ssl_context()
        transport = GuardedTransport(coalescing(httpx2.AsyncHTTPTransport(verify=verify)))
        async with (
            httpx2.AsyncClient(auth=auth, timeout=timeout, transport=transport) as http,
            open_wire(self.config.endpoint, http, ssl_context=verify, connect_timeout=t.connect) as (read, write, wire),
            OfferingSession(
                read,
                write,
                message_handler=self._on_message,
                client_info=types.Implementation(name="mcp-bridge", version=__version__),
                offer=gate.offer,
                **gate.session_callbacks(),
            ) as session,
            anyio.create_task_group() as tasks,
        ):
            self.listen = "none"
            with connect_scope:
                url = self.config.endpoint
                source, known = await negotiate(session, self.name, url, self.protocol, self.eras)
                version = session.protocol_version
                if is_modern(version) and ((kinds := self._listen_kinds(session)) or _can_subscribe(session)):
                    # The stream first, then the lists: a change in between is not missed (nothing is replayed).
                    opened = anyio.Event()
                    tasks.start_soon(self._listen, session, kinds, opened)
                    with anyio.move_on_after(t.connect / 2):  # a server slow to acknowledge still gets listed
                        await opened.wait()
                try:
                    listing = await self._fetch_listing(session, _TOOLS, _PROMPTS, _RESOURCES, current=None)
                except MCPError as exc:
                    if source == "remembered" and era_refusal(exc, modern=is_modern(version), first=True):
                        if self.eras is not None:
                            self.eras.forget(self.name)
                        raise Reprobe(self.name, version or "?", exc) from None
                    raise
                if not is_modern(version):
                    await self._resubscribe(session)
            if connect_scope.cancelled_caught:
                raise TimeoutError
            if source == "probed" and self.eras is not None and version is not None:
                self.eras.remember(self.name, url, version, discover_of(session))
            self.era, self.era_source = version, source
            log.info("upstream.era", server=self.name, era=version, source=source)
            info = session.server_info
            self.server_info = info.model_dump(mode="json", exclude_none=True) if info is not None else None
            self._session, self._wire = session, wire
            self.listing = listing
            self.connected_since = time.time()
            backoff.reset()
            self._set_state("connected")
            self._connected.set()
            self._end_attempt()
            self._on_listing(self.name, listing)
            try:
                await self._serve(session, known)
            finally:
                self._withdraw()  # before the transport closes (which takes a round trip): see _withdraw
                tasks.cancel_scope.cancel()

    def _fresh_gate(self) -> Gate:
        self.gate = self._make_gate(self.name, self.config)
        self.gate.asking = self._asking
        return self.gate

    async def _serve(self, session: ClientSession, known: Known | None) -> None:
        """Keep the connection until a recycle: re-list when told of changes, and per era (see the module)."""
        self._pending.discard(_RECYCLE)  # a recycle asked of an earlier session is done
        modern = is_modern(session.protocol_version)
        async with anyio.create_task_group() as tasks:
            if modern and known is not None:
                tasks.start_soon(self._check_discover, session, known)
            try:
                await self._serve_loop(session, modern)
            finally:
                tasks.cancel_scope.cancel()

    async def _serve_loop(self, session: ClientSession, modern: bool) -> None:
        """Wait for signals: re-list on upstream list changes, return on recycle; when idle, ping (handshake era)
        or re-list what the TTL says is stale (2026-07-28 without a listen stream)."""
        while True:
            if not self._pending:
                wait = self._until_stale() if modern else _KEEPALIVE_SECONDS
                with anyio.move_on_after(wait) as idle:
                    await self._wake.wait()
                self._wake = anyio.Event()
                if idle.cancelled_caught:
                    if not modern:
                        await self._keepalive(session)
                        continue
                    self._pending |= self._stale_kinds()
            kinds, self._pending = self._pending, set()  # a burst of notifications becomes one re-list
            if _RECYCLE in kinds:
                log.info("upstream.recycle", server=self.name)
                return
            if not kinds:
                continue  # woken to look again (a listen stream opened or was lost)
            await self._relist(session, *kinds)

    async def _relist(self, session: ClientSession, *kinds: str) -> None:
        assert self.listing is not None
        with anyio.fail_after(self.timeouts.connect):
            self.listing = await self._fetch_listing(session, *kinds, current=self.listing)
        log.info("upstream.relisted", server=self.name, kinds=sorted(kinds), tools=len(self.listing.tools))
        self._on_listing(self.name, self.listing)

    # ----------------------------------------------------------------- 2026-07-28

    @staticmethod
    def _listen_kinds(session: ClientSession) -> set[str]:
        """The lists whose changes the server offers to tell on a listen stream (its ``listChanged`` flags)."""
        caps = session.server_capabilities
        if caps is None:
            return set()
        offered = {_TOOLS: caps.tools, _PROMPTS: caps.prompts, _RESOURCES: caps.resources}
        return {kind for kind, cap in offered.items() if cap is not None and cap.list_changed}

    async def _listen(self, session: ClientSession, kinds: set[str], opened: anyio.Event) -> None:
        """Hold a ``subscriptions/listen`` stream open; its events re-list like notifications do. A stream lost is
        opened again with backoff, and everything re-listed once it is (events are not replayed). A server that
        refuses the request outright has no stream to offer: its lists are re-fetched by their TTL instead.
        ``opened`` is set once the first stream is acknowledged, or has failed."""
        backoff = Backoff(initial=1.0, cap=60.0)
        while True:
            since = anyio.current_time()
            if not kinds and not self.subscriptions:  # only resource updates to listen for, and none wanted yet
                opened.set()
                await self._relisten.wait()
            self._relisten = anyio.Event()
            self._listening = (frozenset(), frozenset())
            uris = sorted(self.subscriptions) if _can_subscribe(session) else []
            try:
                with anyio.CancelScope() as again:
                    async with (
                        listen(
                            session,
                            tools_list_changed=_TOOLS in kinds,
                            prompts_list_changed=_PROMPTS in kinds,
                            resources_list_changed=_RESOURCES in kinds,
                            resource_subscriptions=uris,
                        ) as subscription,
                        anyio.create_task_group() as watch,
                    ):

                        async def reopen_on_change() -> None:
                            await self._relisten.wait()
                            again.cancel()

                        watch.start_soon(reopen_on_change)
                        honored = subscription.honored.resource_subscriptions or ()
                        self._listening = (frozenset(uris), frozenset(honored))
                        self._listened.set()
                        self._listened = anyio.Event()
                        if kinds:  # (a stream for resource updates alone says nothing of the lists: TTLs apply)
                            self._set_listen("active")
                        if opened.is_set():
                            for kind in kinds:
                                self._signal(kind)
                        opened.set()
                        async for event in subscription:
                            if isinstance(event, ResourceUpdated):
                                self._updated(event.uri)
                            changed = _EVENT_KINDS.get(type(event))
                            if changed is not None:
                                self._signal(changed)
                        watch.cancel_scope.cancel()
                if again.cancelled_caught:
                    continue  # the subscriptions changed: open it again with them at once
                reason = "ended by the server"
            except SubscriptionLost as exc:
                reason = str(exc)
            except MCPError as exc:
                if not opened.is_set():
                    log.info("upstream.listen_refused", server=self.name, error=clean(exc.error.message))
                    self._set_listen("none")
                    opened.set()
                    return
                reason = exc.error.message
            except TimeoutError:
                reason = "no acknowledgment"
            self._set_listen("lost")
            opened.set()  # the connection goes on without it for now
            if anyio.current_time() - since >= _LISTEN_STEADY_SECONDS:
                backoff.reset()
            delay = backoff.next()
            log.info("upstream.listen_lost", server=self.name, reason=clean(reason), again_in=round(delay, 2))
            await anyio.sleep(delay)

    def _set_listen(self, state: ListenState) -> None:
        self.listen = state
        self._wake.set()  # the serve loop looks again at whether TTLs are due

    def _until_stale(self) -> float:
        """Seconds until a listing's TTL runs out (infinite while a listen stream reports changes)."""
        if self.listen == "active" or not self._expires:
            return math.inf
        return max(0.0, min(self._expires.values()) - anyio.current_time())

    def _stale_kinds(self) -> set[str]:
        if self.listen == "active":
            return set()
        now = anyio.current_time()
        return {kind for kind, at in self._expires.items() if at <= now}

    def _note_ttl(self, kind: str, ttls: list[float]) -> None:
        """Remember when a 2026-07-28 listing (all its pages) goes stale: its smallest ``ttlMs``, clamped."""
        if not ttls:
            self._expires.pop(kind, None)
            return
        seconds = min(max(min(ttls) / 1000.0, _TTL_FLOOR_SECONDS), _TTL_CAP_SECONDS)
        self._expires[kind] = anyio.current_time() + seconds

    async def _check_discover(self, session: ClientSession, known: Known) -> None:
        """With a remembered 2026-07-28 era, ask ``server/discover`` again in the background: a server that no
        longer speaks it is probed afresh, and changed capabilities are remembered and adopted by reconnecting."""
        version = session.protocol_version
        assert version is not None
        try:
            with anyio.fail_after(self.timeouts.connect):
                raw = await session.send_discover(version)
            result = types.DiscoverResult.model_validate(raw)
        except MCPError as exc:
            if era_refusal(exc, modern=True, first=False):
                log.info("upstream.era_changed", server=self.name, remembered=version, error=clean(exc.error.message))
                if self.eras is not None:
                    self.eras.forget(self.name)
                self.request_recycle(session)
            return
        except (TimeoutError, ValueError):  # no answer, or not a discover result: the memory stays as it is
            return
        fresh = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        old = known.discover or {}
        if all(fresh.get(k) == old.get(k) for k in ("capabilities", "supportedVersions")):
            return
        log.info("upstream.discover_changed", server=self.name)
        if self.eras is not None:
            self.eras.remember(self.name, self.config.endpoint, version, fresh)
        self.request_recycle(session)

    def _absorb_tools(self, session: ClientSession, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A 2026-07-28 tool listing as the protocol has a client take it: tools with an invalid ``x-mcp-header``
        annotation dropped, the others' annotations kept in the session, which mirrors them into ``Mcp-Param-*``
        headers on each call (what ``ClientSession.list_tools`` does, on the raw listing the bridge passes on)."""
        if not is_modern(session.protocol_version):
            self.dropped_tools = []
            return tools
        maps = getattr(session, "_x_mcp_header_maps", None)  # SDK internals (tests/test_upstream_eras.py)
        kept: list[dict[str, Any]] = []
        dropped: list[str] = []
        for tool in tools:
            name, schema = tool.get("name"), tool.get("inputSchema")
            reason = find_invalid_x_mcp_header(schema)
            if reason is not None:
                dropped.append(str(name))
                if str(name) not in self.dropped_tools:
                    log.warning("upstream.tool_dropped", server=self.name, tool=clean(str(name)), reason=clean(reason))
                continue
            kept.append(tool)
            if isinstance(maps, dict) and isinstance(name, str):
                maps[name] = x_mcp_header_map(schema)
        if isinstance(maps, dict):
            names = {t.get("name") for t in kept}
            for stale in [n for n in maps if n not in names]:
                del maps[stale]
        self.dropped_tools = sorted(dropped)
        return kept

    # ----------------------------------------------------------------- handshake era

    async def _keepalive(self, session: ClientSession) -> None:
        try:
            with anyio.fail_after(self.timeouts.connect):
                await send_raw(session, types.PingRequest())
        except MCPError as exc:
            if ours(exc, NOT_SENT) or ours(exc, types.CONNECTION_CLOSED) or _session_gone(exc):
                raise UpstreamUnavailable(self.name, f"keepalive failed: {exc.error.message}") from None
            # Any other JSON-RPC error (say, ping not implemented) still proves the server is alive.
        except TimeoutError:
            raise UpstreamUnavailable(self.name, "keepalive ping timed out") from None

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            log.debug("upstream.transport_event", server=self.name, error=f"{type(message).__name__}: {message}")
            return
        root = getattr(message, "root", message)
        meta = getattr(getattr(root, "params", None), "meta", None)
        if isinstance(meta, dict) and SUBSCRIPTION_ID_META_KEY in meta:
            return  # an event of a listen stream: _listen has it
        if isinstance(root, types.ToolListChangedNotification):
            self._signal(_TOOLS)
        elif isinstance(root, types.PromptListChangedNotification):
            self._signal(_PROMPTS)
        elif isinstance(root, types.ResourceListChangedNotification):
            self._signal(_RESOURCES)
        elif isinstance(root, types.ResourceUpdatedNotification):
            self._updated(root.params.uri)

    def _updated(self, uri: str) -> None:
        """A resource this server was subscribed to changed (one it was not subscribed to is ignored)."""
        if uri in self.subscriptions and self._on_update is not None:
            self._on_update(self.name, uri)

    async def subscribe(self, uri: str) -> None:
        """Subscribe to updates of a resource (the URI as this server knows it), now and on every reconnection;
        :class:`UpstreamError` when the server offers no subscriptions."""
        session = await self._wait_session()
        if not _can_subscribe(session):
            raise UpstreamError(self.name, "the server does not offer resource subscriptions")
        new = uri not in self.subscriptions
        self.subscriptions.add(uri)
        if is_modern(session.protocol_version):
            if new:
                self._relisten.set()
            await self._acknowledged(uri)
            return
        try:
            await send_raw(session, _subscribe_request(uri), request_read_timeout_seconds=self.timeouts.call)
        except BaseException:
            if new:
                self.subscriptions.discard(uri)
            raise

    async def _acknowledged(self, uri: str) -> None:
        """2026-07-28: wait (at most ``timeouts.connect``) for a listen stream with ``uri`` to be acknowledged;
        :class:`UpstreamError` when the server did not honour it. A stream still reconnecting keeps the
        subscription, which is asked for again when it opens."""
        with anyio.move_on_after(self.timeouts.connect):
            while uri not in self._listening[0]:
                await self._listened.wait()
            if uri not in self._listening[1]:
                self.subscriptions.discard(uri)
                self._relisten.set()
                raise UpstreamError(self.name, "the server did not honour the subscription")
            return
        log.info("upstream.subscription_pending", server=self.name)

    async def unsubscribe(self, uri: str) -> None:
        """No more updates of this resource (best effort: a server that fails it only sends updates nobody wants,
        which are dropped)."""
        if uri not in self.subscriptions:
            return
        self.subscriptions.discard(uri)
        session = self._session
        if session is None:
            return
        if is_modern(session.protocol_version):
            self._relisten.set()
            return
        request = types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri))
        try:
            await send_raw(session, request, request_read_timeout_seconds=self.timeouts.connect)
        except (MCPError, OSError, TimeoutError) as exc:
            log.info("upstream.unsubscribe_failed", server=self.name, error=describe_error(exc))

    async def _resubscribe(self, session: ClientSession) -> None:
        """A handshake-era session (a new connection): the subscriptions the bridge holds, sent again."""
        for uri in sorted(self.subscriptions):
            try:
                await send_raw(session, _subscribe_request(uri), request_read_timeout_seconds=self.timeouts.connect)
            except (MCPError, OSError, TimeoutError) as exc:
                log.warning("upstream.resubscribe_failed", server=self.name, uri=uri, error=describe_error(exc))

    def _signal(self, kind: str) -> None:
        self._pending.add(kind)
        self._wake.set()

    async def _fetch_listing(self, session: ClientSession, *kinds: str, current: Listing | None) -> Listing:
        caps = session.server_capabilities
        out = dataclasses.replace(current) if current else Listing()
        ttls: dict[str, list[float]] = {kind: [] for kind in kinds}
        if _TOOLS in kinds:
            tools = await self._paged(session, "tools/list", "tools", ttls[_TOOLS]) if caps and caps.tools else []
            out.tools = self._absorb_tools(session, tools)
        if _PROMPTS in kinds:
            has = bool(caps and caps.prompts)
            out.prompts = await self._paged(session, "prompts/list", "prompts", ttls[_PROMPTS]) if has else []
        if _RESOURCES in kinds:
            has = bool(caps and caps.resources)
            out.resources = await self._paged(session, "resources/list", "resources", ttls[_RESOURCES]) if has else []
            out.templates = (
                await self._paged(session, "resources/templates/list", "resourceTemplates", ttls[_RESOURCES])
                if has
                else []
            )
        if is_modern(session.protocol_version):
            for kind, seen in ttls.items():
                self._note_ttl(kind, seen)
        return out

    async def _paged(self, session: ClientSession, method: str, key: str, ttls: list[float]) -> list[dict[str, Any]]:
        """Every page of a list; the ``ttlMs`` of each (2026-07-28) is added to ``ttls``."""
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
            try:
                raw = await send_raw(session, request_type.model_validate({"method": method, "params": params}))
            except MCPError as exc:
                if exc.error.code != types.METHOD_NOT_FOUND:
                    raise
                # A capability declared without all of its lists (resources without templates is common): the
                # list is empty, the server is not down.
                log.info("upstream.list_not_served", server=self.name, method=method)
                return items
            items.extend(x for x in raw.get(key) or [] if isinstance(x, dict))
            if isinstance(ttl := raw.get("ttlMs"), int | float) and not isinstance(ttl, bool):
                ttls.append(float(ttl))
            cursor = raw.get("nextCursor")
            if not cursor:
                return items
        log.warning("upstream.pagination_capped", server=self.name, method=method, pages=_MAX_PAGES)
        return items

    def _set_state(self, state: State) -> None:
        if state != self.state:
            log.info("upstream.state", server=self.name, state=state)
        self.state = state
        telemetry.hooks.upstream_state(self.name, state)
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
        telemetry.hooks.upstream_state(self.name, state)
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
        waiting = telemetry.hooks.span("wait for connection", **{"mcp_bridge.server": self.name, "state": self.state})
        with waiting, anyio.move_on_after(wait):
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

    def credentials_changed(self) -> None:
        """New tokens were stored (a login from the IDE): a server waiting for a login connects again now."""
        if self.state in ("needs_auth", "error"):
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
        asker = ASKING.get()
        if asker is not None:
            self._asking.append(asker)
        try:
            with telemetry.hooks.upstream(self.name, request, self.era, self.config.endpoint):
                return await self._request(request, call_timeout=call_timeout, progress=progress)
        finally:
            if asker is not None:
                self._asking.remove(asker)

    async def _request(
        self, request: Any, *, call_timeout: float | None, progress: ProgressFn | None
    ) -> dict[str, Any]:
        timeout = self.timeouts.call if call_timeout is None else call_timeout
        relisted = False
        for attempt in range(3):
            session = await self._wait_session()
            wire = self._wire if self._session is session else None
            try:
                if wire is not None and isinstance(request, types.CallToolRequest):
                    on_log = self.gate.log_to(ASKING.get())
                    result = await call_direct(
                        wire, session, request, read_timeout=timeout, progress=progress, on_log=on_log
                    )
                else:
                    result = await send_raw(
                        session, request, request_read_timeout_seconds=timeout, progress_callback=progress
                    )
                if result.get("resultType") == "input_required":
                    tool_call = isinstance(request, types.CallToolRequest)
                    if getattr(ASKING.get(), "modern", False):
                        # A 2026-07-28 IDE answers and retries itself: only what was offered goes through.
                        result = screen(result, self.gate, tool_call=tool_call)
                    else:
                        # A handshake-era IDE cannot retry with answers itself: the bridge asks it and retries.
                        retry = self._retry_with(session, request, timeout, progress)
                        result = await drive(result, self.gate, retry, tool_call=tool_call)
                return result
            except MCPError as exc:
                code = exc.error.code
                modern = is_modern(session.protocol_version)
                if era_refusal(exc, modern=modern, first=False):
                    # Refused for its era before it ran (the server was upgraded or rolled back): find out the
                    # server's era afresh and send it again.
                    log.info(
                        "upstream.era_refused",
                        server=self.name,
                        era=session.protocol_version,
                        error=clean(exc.error.message),
                    )
                    if self.eras is not None:
                        self.eras.forget(self.name)
                    self.request_recycle(session)
                    telemetry.hooks.note("retry", reason="era refused", attempt=attempt + 1)
                    continue
                if (
                    code == types.HEADER_MISMATCH
                    and modern
                    and not relisted
                    and isinstance(request, types.CallToolRequest)
                ):
                    # The call's Mcp-Param-* headers do not match the tool as the server has it now: the spec's
                    # recovery is to list the tools again (new annotations) and send the call once more.
                    relisted = True
                    log.info("upstream.header_mismatch", server=self.name, tool=clean(request.params.name))
                    await self._relist(session, _TOOLS)
                    telemetry.hooks.note("retry", reason="header mismatch", attempt=attempt + 1)
                    continue
                if ours(exc, NOT_SENT) or _session_gone(exc):
                    # Never reached the server (no connection), or the server rejected the session before running
                    # the request: reconnect and try again.
                    # a server's error message, as long as it likes (masked whole, then cut)
                    reason = clean(exc.error.message)[:_REASON_CHARS]
                    log.info("upstream.retry_unsent", server=self.name, attempt=attempt + 1, reason=reason)
                    self.request_recycle(session)  # withdrawn: the next round waits for the new session
                    telemetry.hooks.note("retry", reason=reason, attempt=attempt + 1)
                    continue
                if ours(exc, types.REQUEST_TIMEOUT):
                    raise UpstreamTimeout(self.name, f"timed out: no answer within {timeout:g}s") from None
                if ours(exc, types.CONNECTION_CLOSED):
                    self.request_recycle(session)
                    raise UpstreamUnavailable(
                        self.name, "connection lost while the request was in flight (it may have run; not retried)"
                    ) from None
                if ours(exc, HTTP_ERROR):  # an HTTP failure, not the server's JSON-RPC answer (http_errors)
                    raise UpstreamError(self.name, exc.error.message) from None
                if (not_mcp := explain_not_mcp(code, exc.error.message)) is not None:
                    raise UpstreamError(self.name, not_mcp) from None
                raise
        raise UpstreamUnavailable(self.name, f"not reachable: {self.last_error or 'could not connect'}")

    def _retry_with(
        self, session: ClientSession, request: Any, timeout: float, progress: ProgressFn | None
    ) -> Callable[[dict[str, Any], str | None], Awaitable[dict[str, Any]]]:
        """Sends ``request`` again with a round's input answers (and the server's ``requestState``, verbatim)."""

        async def retry(answers: dict[str, Any], state: str | None) -> dict[str, Any]:
            raw = request.model_dump(by_alias=True, mode="json", exclude_none=True)
            params = {k: v for k, v in raw.get("params", {}).items() if k not in ("inputResponses", "requestState")}
            params["inputResponses"] = answers
            if state is not None:
                params["requestState"] = state
            # The bridge's own span as the parent, as for any request to a server (telemetry on), not the trace
            # context the IDE sent with its request: the session's dispatcher injects one only for methods that
            # normally take its way, and a tools/call normally takes the direct one (upstream.wire), which injects.
            meta = dict(params.get("_meta") or {})
            telemetry.hooks.inject(meta)
            if meta:
                params["_meta"] = meta
            again = type(request).model_validate({**raw, "params": params}, by_name=False)
            return await send_raw(session, again, request_read_timeout_seconds=timeout, progress_callback=progress)

        return retry

    def status(self) -> dict[str, Any]:
        return {
            "server": self.name,
            "url": self.config.url,
            "state": self.state,
            "last_error": self.last_error,
            "connected_since": self.connected_since,
            "server_info": self.server_info,
            "token_expires_at": self.token_expires_at(),
            "era": self.era,
            "era_source": self.era_source,
            "listen": self.listen,
            "dropped_tools": list(self.dropped_tools),
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
    elif isinstance(exc, MCPError) and (ours(exc, NOT_SENT) or ours(exc, HTTP_ERROR)):
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


def _subscribe_request(uri: str) -> types.SubscribeRequest:
    return types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))


def _can_subscribe(session: ClientSession) -> bool:
    """Whether the server offers resource subscriptions (``resources.subscribe``; at 2026-07-28, on listen)."""
    caps = session.server_capabilities
    return bool(caps and caps.resources and caps.resources.subscribe)
