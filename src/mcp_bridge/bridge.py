"""The running bridge: the allowlist, one :class:`~mcp_bridge.upstream.supervisor.Upstream` per server, the catalog.

:class:`Bridge` is what ``serve`` puts behind the stdio front, and what the debug commands (``status``, ``tools``,
``call``) run in-process. It owns one task group; each upstream's supervisor is a task in it and never raises, so
one server's failure stays with that server.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.exceptions import MCPError

from mcp_bridge import risk, telemetry
from mcp_bridge.audit.shipper import Shipper
from mcp_bridge.audit.spoolcheck import instructions_note
from mcp_bridge.audit.trail import AuditTrail, Event, redact
from mcp_bridge.auth import AuthEnv
from mcp_bridge.backoff import Backoff
from mcp_bridge.config import LoadedConfig, OAuthAuth, ServerConfig, Settings
from mcp_bridge.era import RESERVED_META, is_modern
from mcp_bridge.errors import (
    AuditUnavailable,
    NeedsConnection,
    PolicyDenied,
    UnknownName,
    UpstreamUnavailable,
)
from mcp_bridge.governance.allowlist import (
    Allowlist,
    AllowlistSource,
    LocalSource,
    PortSource,
    changes,
    loading_from_port,
)
from mcp_bridge.governance.catalog import CACHE_FILE, CONNECT, NEEDS_TASKS, Catalog, CatalogCache, Listing, ToolEntry
from mcp_bridge.governance.confirm import confirmation_request, summary
from mcp_bridge.governance.listing import CALL_TOOL, FIND_TOOLS, ToolList, call_arguments, find_arguments
from mcp_bridge.governance.narrowing import Narrowing
from mcp_bridge.governance.pins import Pins, Verdict
from mcp_bridge.logs import clean, get_logger
from mcp_bridge.upstream.era import ERAS_FILE, EraStore
from mcp_bridge.upstream.inputs import ASKING, Gate, InputNote, Offer
from mcp_bridge.upstream.supervisor import ProgressFn, Upstream, describe_error, error_text

log = get_logger(__name__)

_FLUSH_ON_EXIT_SECONDS = 3.0
_PIN_WATCH_SECONDS = 0.5  # how often a running bridge looks for `mcp-bridge pins` and `tools disable|enable` changes
_REBUILD_DELAY_SECONDS = 0.02  # listings arriving within this share one catalog rebuild
_CACHE_SAVE_DELAY_SECONDS = 1.0  # the disk cache is written at most this often
_R = TypeVar("_R")


class Bridge:
    def __init__(
        self,
        loaded: LoadedConfig,
        home: Path,
        *,
        source: AllowlistSource | None = None,
        audit: AuditTrail | None = None,
        auth_env: AuthEnv | None = None,
        initial: Allowlist | None = None,
        ide_capabilities: types.ClientCapabilities | None = None,
        connect_tools: bool = False,
    ) -> None:
        """``initial``: what the source offers at once, when the caller already asked
        (:func:`~mcp_bridge.governance.allowlist.initial_allowlist`, which ``serve`` needs before this module is
        imported); otherwise (and while it is ``None``) the source is asked. ``ide_capabilities``: what the IDE
        declared, when known before the servers connect (``serve`` read its first request early); the servers are
        offered those input capabilities (:mod:`mcp_bridge.upstream.inputs`)."""
        self.settings = loaded.settings
        self.home = home
        self._given_source = source
        self._initial = initial
        self.source: AllowlistSource | None = None
        self.audit: AuditTrail = audit or AuditTrail(self.settings, home)
        self.shipper: Shipper | None = None
        self.catalog = Catalog(self.settings.naming, Allowlist())
        self.listing = ToolList(self.settings, self.catalog, self.audit.most_used)
        """What ``tools/list`` shows: the catalog, or search mode's few (:mod:`mcp_bridge.governance.listing`)."""
        self._listed_version: Any = None
        self._calls: dict[str, collections.deque[float]] = {}
        """Per server, when its calls of the last minute started (``rate_limit``)."""
        self.cache = CatalogCache(home / CACHE_FILE)
        self.pins = Pins(home, self.settings.on_tool_change, self._tool_changed)
        self.connect_tools = connect_tools
        """A server that needs a login is listed as ``<server>__connect`` (``serve``: there is an IDE to sign in
        from; hand-run commands say to run ``mcp-bridge login`` instead)."""
        self._login_errors: dict[str, str] = {}
        """Why the last login from the IDE of a server failed (for the connect tool's answer)."""
        self.narrowing = Narrowing(home)
        """The tools the user turned off (``mcp-bridge tools disable``), looked at again with the pins."""
        self.pins.defer_writes = True  # written by _watch_pins (and on shutdown)
        self._cached: dict[str, tuple[str, Listing]] = {}
        self.upstreams: dict[str, Upstream] = {}
        self.eras = EraStore(home / ERAS_FILE)
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._changes_send: MemoryObjectSendStream[set[str]]
        self._changes_recv: MemoryObjectReceiveStream[set[str]]
        self._changes_send, self._changes_recv = anyio.create_memory_object_stream[set[str]](64)
        self.client_name: str | None = None
        self.confirm_in_terminal: Callable[[str], Awaitable[bool]] | None = None
        """``mcp-bridge call`` in a terminal: asks the person at it the ``confirm`` question (``True``: they accept),
        where there is no IDE to ask."""
        self.ide_capabilities = ide_capabilities
        self._watchers: dict[tuple[str, str], collections.Counter[str]] = {}
        """(server, URI it knows) → the URIs the IDE subscribed to it by (each with how many subscriptions)."""
        self._updates_send, self._updates_recv = anyio.create_memory_object_stream[str](256)
        self._first_load = anyio.Event()
        self._allowlist_known = False  # an allowlist the user had (a cache or an answer), so a difference is a change
        self._rebuild_scheduled = False
        self._cache_dirty = anyio.Event()  # listings changed since the disk cache was written
        self._cache_lock = threading.Lock()
        self._cache_seq = self._cache_written = 0
        self._refresh_now = anyio.Event()
        self.auth_env = auth_env or AuthEnv.for_serve(self.settings, home)

    # ------------------------------------------------------------------ lifecycle

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Bridge]:
        """Serve the allowlist known now (the disk cache, for Port), keep it fresh, run every upstream's supervisor;
        stop them all on exit."""
        self._cached = self.cache.load()
        try:
            async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
                self._tg = tg
                port_client = await self._open_port(stack)
                if port_client is not None and self.auth_env is not None:  # port_token auth (Port's MCP server)
                    self.auth_env = dataclasses.replace(self.auth_env, port_token=port_client.bearer)
                self.source = source = self._given_source or self._make_source(port_client)
                if port_client is not None and self.audit.ships and self.settings.port is not None:
                    blueprint = self.settings.port.audit_blueprint or ""
                    interrupted_after = self.settings.timeouts.call + 30
                    self.shipper = Shipper(self.audit, port_client, blueprint, interrupted_after)
                    tg.start_soon(self.shipper.run)
                initial = self._initial if self._initial is not None else source.initial()
                self.apply_allowlist(initial if initial is not None else loading_from_port())
                self._allowlist_known = initial is not None
                tg.start_soon(self._watch_pins)
                tg.start_soon(self._save_cache)
                if source.refresh_interval is None:
                    self._first_load.set()
                else:
                    tg.start_soon(self._refresh_loop, source, source.refresh_interval)
                try:
                    yield self
                finally:
                    self.pins.flush()  # pins made on first sight, not written yet
                    if self._cache_dirty.is_set():  # listings not written yet
                        self._write_cache(*self._cache_snapshot())
                    if self.shipper is not None:  # on shutdown, flush what is waiting, within a deadline
                        with anyio.CancelScope(shield=True):
                            try:
                                await self.shipper.flush(_FLUSH_ON_EXIT_SECONDS)
                            except AuditUnavailable as exc:  # the spool cannot be read: the next bridge ships
                                log.warning("audit.flush_skipped", error=str(exc))
                    tg.cancel_scope.cancel()
                    self._tg = None
        except ExceptionGroup as group:
            # Supervisors never raise, so a group here wraps the caller's own exception: hand it back unwrapped.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            self.close_streams()
            self.audit.close()

    def close_streams(self) -> None:
        """Close the change and update streams (``running`` does on exit; a bridge that never ran, in tests)."""
        for stream in (self._changes_send, self._changes_recv, self._updates_send, self._updates_recv):
            stream.close()

    async def _open_port(self, stack: AsyncExitStack) -> Any:
        """The one Port client (allowlist and audit share it), or ``None`` without ``port:``."""
        if self.settings.port is None:
            return None
        from mcp_bridge.governance.port import PortClient

        return await stack.enter_async_context(PortClient(self.settings.port))

    def _make_source(self, port_client: Any) -> AllowlistSource:
        if port_client is None:
            return LocalSource(self.settings)
        return PortSource(self.settings, port_client, self.home)

    async def _refresh_loop(self, source: AllowlistSource, interval: float) -> None:
        """Ask the source now, then every ``interval`` (sooner after a failure, at once on :meth:`refresh_now`)."""
        retry = Backoff(initial=2.0, cap=interval)
        while True:
            try:
                self.apply_allowlist(await source.load())
            except Exception as exc:  # supervisor boundary: keep serving the allowlist we have, try again later
                log.error("allowlist.refresh_crashed", error=describe_error(exc), exc_info=True)
            self._first_load.set()
            if source.fresh():
                retry.reset()
                wait = interval
            else:
                wait = min(interval, retry.next())
            with anyio.move_on_after(wait):
                await self._refresh_now.wait()
            self._refresh_now = anyio.Event()

    def _gate(self, name: str, server: ServerConfig) -> Gate:
        """How ``name``'s requests for input reach the IDE: what the IDE declared, sampling only where allowed."""
        return Gate(name, Offer.of(self.ide_capabilities, allow_sampling=server.allow_sampling), self._on_input)

    def _on_input(self, note: InputNote) -> None:
        """Audit a server's request for input, with the original name of the tool in flight (when it is a tool)."""
        tool = next(
            (e.original for e in self.catalog.entries() if (e.exposed, e.server) == (note.subject, note.server)), None
        )
        self.audit.input(note, tool=tool)

    def declare_ide_capabilities(self, capabilities: types.ClientCapabilities | None) -> None:
        """The IDE's declared capabilities, as its session tells them; a server offered something else so far gets a
        new session offering these (the handshake era fixes a session's capabilities)."""
        if capabilities == self.ide_capabilities:
            return
        self.ide_capabilities = capabilities
        for name, upstream in self.upstreams.items():
            if self._gate(name, upstream.config).offer != upstream.gate.offer:
                log.info("bridge.offer_changed", server=name)
                upstream.request_recycle()

    def _auth_failed(self, server: str, reason: str) -> None:
        self.audit.note("auth_failure", server=server, status="Failed", error=reason)
        config = self.catalog.allowlist.servers.get(server)
        if not self.connect_tools or config is None or not isinstance(config.auth, OAuthAuth):
            return  # no IDE to sign in from, or nothing a login fixes (an API key that is not set, say)
        self._publish(self.catalog.set_needs(server, config.description or config.title or ""))

    def refresh_now(self) -> None:
        """Ask the allowlist source again at once (SIGHUP)."""
        self._refresh_now.set()

    def apply_allowlist(self, allowlist: Allowlist) -> None:
        """Connect new servers, drop removed ones (their tools are denied at once), re-filter the rest."""
        assert self._tg is not None, "apply_allowlist needs a running bridge"
        old = self.catalog.allowlist
        allowlist = dataclasses.replace(allowlist, user_disabled=self.narrowing.names)
        for concerned, change in changes(old, allowlist):
            log.info("allowlist.change", change=change, source=allowlist.source)
            if self._allowlist_known:  # not the first answer after a start without a cache: that changes nothing
                self.audit.note("allowlist_change", server=concerned, detail=change)
        self._allowlist_known = True
        self.catalog.set_allowlist(allowlist, rebuild=False)  # one rebuild at the end, however much changed
        self._recheck_pins(rebuild=False)  # the allowlist's own pins may have changed
        gone = [
            n
            for n in self.upstreams
            if not _same_connection(allowlist.servers.get(n), old.servers.get(n))
            or allowlist.problems.get(n) != old.problems.get(n)
        ]
        for name in gone:
            self._scopes.pop(name).cancel()
            del self.upstreams[name]
            self.catalog.remove(name, rebuild=False)
            self.pins.forget(name)
            log.info("bridge.server_removed", server=name)
        for name, server in sorted(allowlist.servers.items()):
            if name in self.upstreams:
                continue
            if not server.allowed_tools:
                log.warning(
                    "bridge.no_tools_allowed",
                    server=name,
                    hint='set `allowed_tools` (a list of tool names, or ["*"] for all); missing means none',
                )
            cached = self._cached.get(name)
            if cached is not None and cached[0] == server.url:
                blocked = self.pins.check(name, server, cached[1].tools, live=False)
                self.catalog.set_listing(name, cached[1], cached=True, blocked=blocked, rebuild=False)
            upstream = Upstream(
                name,
                server,
                self.settings.timeouts,
                self._on_listing,
                problem=allowlist.problems.get(name),
                auth_env=self.auth_env,
                on_auth_failure=self._auth_failed,
                eras=self.eras,
                protocol=self.settings.upstream_protocol(server),
                gate=self._gate,
                on_update=self._resource_updated,
            )
            self.upstreams[name] = upstream
            scope = anyio.CancelScope()
            self._scopes[name] = scope
            self._tg.start_soon(self._supervise, upstream, scope)
        self._publish(self.catalog.rebuild())

    @staticmethod
    async def _supervise(upstream: Upstream, scope: anyio.CancelScope) -> None:
        with scope:
            await upstream.run()

    def _on_listing(self, server: str, listing: Listing) -> None:
        config = self.catalog.allowlist.servers.get(server)
        if server not in self.upstreams or config is None:
            return  # removed while listing
        blocked = self.pins.check(server, config, listing.tools, live=True)
        self.catalog.set_needs(server, None, rebuild=False)  # connected: its own tools again
        self._cached[server] = (self.upstreams[server].config.endpoint, listing)
        self._cache_dirty.set()
        if self._tg is None:
            self._publish(self.catalog.set_listing(server, listing, blocked=blocked))
            return
        # Servers connecting together (dozens at startup) cost one rebuild, not one each: the merged view is rebuilt
        # shortly after, or by the first read before that.
        self.catalog.set_listing(server, listing, blocked=blocked, rebuild=False)
        if not self._rebuild_scheduled:
            self._rebuild_scheduled = True
            self._tg.start_soon(self._rebuild_soon)

    async def _rebuild_soon(self) -> None:
        await anyio.sleep(_REBUILD_DELAY_SECONDS)
        self._rebuild_scheduled = False
        self._publish(self.catalog.rebuild())

    async def _save_cache(self) -> None:
        """Write the disk cache after listings changed: at most once a second, off the event loop (a catalog of
        10,000 tools is megabytes of JSON), and once more on shutdown (see :meth:`running`)."""
        while True:
            await self._cache_dirty.wait()
            await anyio.sleep(_CACHE_SAVE_DELAY_SECONDS)
            self._cache_dirty = anyio.Event()
            await anyio.to_thread.run_sync(self._write_cache, *self._cache_snapshot())

    def _cache_snapshot(self) -> tuple[int, dict[str, tuple[str, Listing]]]:
        """What the cache should hold now, and its sequence number (taken on the event loop)."""
        self._cache_seq += 1
        return self._cache_seq, {k: v for k, v in self._cached.items() if k in self.upstreams}

    def _write_cache(self, seq: int, snapshot: dict[str, tuple[str, Listing]]) -> None:
        """Write a snapshot unless a newer one is already on disk (the shutdown write may overtake a thread's)."""
        with self._cache_lock:
            if seq <= self._cache_written:
                return
            try:
                self.cache.save(snapshot)
                self._cache_written = seq
            except OSError as exc:
                log.warning("catalog_cache.write_failed", path=str(self.cache.path), error=str(exc))

    def _recheck_pins(self, *, rebuild: bool = True) -> set[str]:
        """Every current listing against the pins again (after an allowlist change or a pin store change)."""
        for name, (listing, cached) in self.catalog.listings().items():
            config = self.catalog.allowlist.servers.get(name)
            if config is not None:
                blocked = self.pins.check(name, config, listing.tools, live=not cached)
                self.catalog.set_blocked(name, blocked, rebuild=False)
        return self.catalog.rebuild() if rebuild else set()

    async def _watch_pins(self) -> None:
        """The pin store's loop: write the pins made on first sight (off the event loop), and pick up ``mcp-bridge
        pins approve|reset`` from another process, so that a re-approved tool comes back at once."""
        while True:
            await anyio.sleep(_PIN_WATCH_SECONDS)
            if self.pins.pending:
                await anyio.to_thread.run_sync(self.pins.flush)
            if self.pins.store.changed_on_disk():
                self.pins.store.reload()
                self._publish(self._recheck_pins())
            if self.narrowing.changed():  # `mcp-bridge tools disable|enable` in another process
                log.info("bridge.user_disabled", tools=sorted(self.narrowing.names))
                self.apply_allowlist(self.catalog.allowlist)

    def _tool_changed(self, verdict: Verdict, summary: str) -> None:
        """A tool's definition no longer matches its pin, or its server lists it with different definitions: log it
        and audit it (once per new definition, or set of definitions)."""
        if verdict.duplicated:
            log.warning("pins.tool_duplicated", server=verdict.server, tool=verdict.tool, reason=verdict.reason)
            self.audit.note(
                "tool_definition_changed",
                server=verdict.server,
                tool=verdict.tool,
                status="Denied",
                detail=f"{verdict.reason}; {summary}",
            )
            return
        action = {"block": "blocked", "warn": "kept (warn)", "accept": "re-pinned (accept)"}[self.pins.on_change]
        if verdict.source == "allowlist" and self.pins.on_change == "accept":
            action = "kept (pinned by the allowlist, which cannot be re-pinned locally)"
        log.warning(
            "pins.tool_changed",
            server=verdict.server,
            tool=verdict.tool,
            pinned=verdict.pinned,
            now=verdict.fingerprint,
            pinned_by=verdict.source,
            action=action,
            changes=summary,
        )
        detail = (
            f"pinned {verdict.pinned} (by {verdict.source}), now {verdict.fingerprint}; {action}; changes: {summary}"
        )
        self.audit.note(
            "tool_definition_changed",
            server=verdict.server,
            tool=verdict.tool,
            status="Denied" if verdict.blocked else "Completed",
            detail=detail,
        )

    def listed_tools(self) -> list[dict[str, Any]]:
        """The tools the IDE is listed: every allowed one, or (search mode) the meta tools and the direct set."""
        self._listed_version = self.listing.version(self.client_name)
        return self.listing.tools(self.client_name)

    @property
    def listed_version(self) -> Any:
        """Changes whenever :meth:`listed_tools` would answer differently."""
        return self.listing.version(self.client_name)

    def _publish(self, changed: set[str]) -> None:
        if "tools" in changed:
            version = self.listed_version
            if version[0] == "search" and version == self._listed_version:
                changed = changed - {"tools"}  # search mode: the catalog changed, not what the IDE was listed
            else:
                self._listed_version = version
        if changed:
            try:
                self._changes_send.send_nowait(changed)
            except anyio.WouldBlock:
                log.warning("bridge.change_queue_full")

    @property
    def changes(self) -> MemoryObjectReceiveStream[set[str]]:
        """Which IDE-visible lists changed (``tools``, ``prompts``, ``resources``), in order."""
        return self._changes_recv

    async def wait_allowlist(self, within: float) -> None:
        """Wait (at most ``within`` seconds) until the allowlist source has answered once."""
        with anyio.move_on_after(within):
            await self._first_load.wait()

    async def wait_settled(self, within: float, servers: list[str] | None = None) -> None:
        """Wait until the allowlist has loaded and each upstream (or those named) has a first outcome, at most
        ``within`` seconds."""
        with anyio.move_on_after(within):
            await self._first_load.wait()
            for name in servers or list(self.upstreams):
                upstream = self.upstreams.get(name)
                if upstream is not None:
                    await upstream.settled.wait()

    # ------------------------------------------------------------------ requests

    async def call_tool(
        self,
        exposed: str,
        arguments: Mapping[str, Any] | None,
        *,
        meta: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Route, check, forward, and audit one tool call; returns the upstream's raw result. ``inputs``: a
        2026-07-28 IDE's answers to the server's input requests (``inputResponses``, ``requestState``), verbatim.

        The audit event is on disk before the call leaves (``In Progress``) and again, final, before the result is
        returned: each a small local commit, so a killed bridge loses no call the IDE saw answered. A spool that
        cannot take the first denies the call (:class:`~mcp_bridge.errors.AuditUnavailable`, naming the file and the
        fix); one that cannot take the last withholds the result.
        """
        if exposed in (FIND_TOOLS, CALL_TOOL) and self.listing.mode(self.client_name) == "search":
            try:
                if exposed == FIND_TOOLS:
                    return await self._find_tools(arguments)
                name, inner = call_arguments(arguments)
            except ValueError as exc:
                return _text_result(str(exc), error=True)
            if name in (FIND_TOOLS, CALL_TOOL):
                return _text_result(f"{name} is not a tool call_tool calls", error=True)
            return await self.call_tool(name, inner, meta=meta, progress=progress, inputs=inputs)
        if exposed.endswith(CONNECT) and (server := self._connect_target(exposed)) is not None:
            return await self.connect(server)
        found: list[ToolEntry] = []

        async def admit() -> tuple[str, str]:
            try:
                entry = await self._route_tool(exposed)
            except NeedsConnection as exc:
                # An IDE that can open a URL is asked to sign in, and the call goes on; otherwise the error names
                # the server's connect tool.
                if exc.server is None or not self._can_open_url() or not await self._signed_in(exc.server):
                    raise
                entry = await self._route_tool(exposed)
            found.append(entry)
            counted = self._rate_check(entry)
            try:
                await self._confirm(entry, arguments)
            except BaseException:  # declined, cancelled or not asked: the call never went, so it does not count
                if counted is not None:
                    with contextlib.suppress(ValueError):
                        self._calls[entry.server].remove(counted)
                raise
            return entry.server, entry.original

        async def send(upstream: Upstream) -> dict[str, Any]:
            entry = found[0]
            params: dict[str, Any] = {"name": entry.original}
            if arguments is not None:
                params["arguments"] = dict(arguments)
            # Never the protocol's own keys (an IDE's envelope): the session stamps the bridge's own on each request;
            # but the IDE's log level to a 2026-07-28 server (which sends no log message without it).
            modern = is_modern(upstream.era)
            if meta and (kept := {k: v for k, v in meta.items() if _forwarded_key(k, modern)}):
                params["_meta"] = kept
            params.update(inputs or {})
            request = types.CallToolRequest.model_validate({"method": "tools/call", "params": params})
            limit = upstream.config.timeout_for(entry.original)
            return await upstream.request(request, progress=progress, call_timeout=limit)

        return await self._audited(self.audit.call(exposed, arguments), admit, send)

    # ------------------------------------------------------------------ connecting from the IDE

    def _connect_target(self, exposed: str) -> str | None:
        """The server whose ``<server>__connect`` this is, when it is one now."""
        try:
            entry = self.catalog.route_tool(exposed)
        except (UnknownName, PolicyDenied):
            return None
        return entry.server if entry.connect else None

    def _can_open_url(self) -> bool:
        """Whether the IDE of this request can be asked to open a URL (URL-mode elicitation)."""
        elicitation = Offer.of(self.ide_capabilities, allow_sampling=False).elicitation
        return ASKING.get() is not None and elicitation is not None and elicitation.url is not None

    async def connect(self, server: str) -> dict[str, Any]:
        """``<server>__connect``: sign in to the server from the IDE. An IDE with URL-mode elicitation is asked to
        open the authorization URL, and the answer comes once the login is done ("connected: 9 of 10 tools
        enabled"); otherwise the system browser opens and the answer carries the URL at once (the tools appear
        when the login completes, as a list change). One login per server across every bridge (a file lock)."""
        if not self.catalog.needs(server):
            allowed, offered = self.catalog.counts(server)
            return _text_result(f"{server} is connected already: {allowed} of {offered} tools enabled")
        via_ide = self._can_open_url()
        outcome = await self._login(server, via_ide=via_ide)
        if isinstance(outcome, str):  # the browser's URL: the login goes on without the IDE
            return _text_result(
                f"A browser page opened to sign in to {server}. If it did not open, visit:\n{outcome}\n"
                f"Its tools appear here once you have signed in."
            )
        if not outcome:
            error = self.upstreams[server].last_error if server in self.upstreams else None
            why = self._login_errors.pop(server, error) or "the login failed"
            return _text_result(f"not connected: {why}", error=True)
        allowed, offered = await self._connected(server)
        return _text_result(f"connected: {allowed} of {offered} tools enabled")

    async def _signed_in(self, server: str) -> bool:
        """A call met a server that needs a connection: the IDE is asked to sign in (URL-mode elicitation), and
        whether the server is connected now."""
        if await self._login(server, via_ide=True) is not True:
            return False
        await self._connected(server)
        return not self.catalog.needs(server)

    async def _login(self, server: str, *, via_ide: bool) -> bool | str:
        """Run one browser login for ``server`` beside its supervisor (which waits for new tokens). ``via_ide``:
        the IDE is asked to open the URL, and this waits for the login (True when it worked); otherwise the system
        browser opens, the login finishes in the background, and its URL is returned at once."""
        from mcp_bridge.auth.oauth import LoginPolicy

        assert self._tg is not None, "a running bridge"
        config = self.catalog.allowlist.servers[server]
        urls: list[str] = []
        announced = anyio.Event()

        def announce(_name: str, url: str) -> None:
            urls.append(url)
            announced.set()

        timeout = self.settings.timeouts.login
        policy = LoginPolicy(interactive=True, cooldown=0, timeout=timeout, announce=announce, open_browser=not via_ide)
        env = AuthEnv(self.home, self.settings.token_store, policy)
        probe = Upstream(server, config, self.settings.timeouts, lambda *_: None, auth_env=env, eras=self.eras)
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                await probe.run()

        async def finish() -> bool:
            with anyio.move_on_after(timeout + self.settings.timeouts.connect):
                await probe.settled.wait()
            ok = probe.state == "connected"
            scope.cancel()
            self.audit.note("login", server=server, status="Completed" if ok else "Failed", error=probe.last_error)
            if ok:
                upstream = self.upstreams.get(server)
                if upstream is not None:
                    upstream.credentials_changed()
            else:
                self._login_errors[server] = probe.last_error or "the login did not finish"
            return ok

        self._tg.start_soon(run)
        await _first_of([probe.settled.wait, announced.wait])
        if announced.is_set() and not probe.settled.is_set():
            if not via_ide:
                self._tg.start_soon(finish)
                return urls[0]
            asker = ASKING.get()
            assert asker is not None, "via_ide needs an IDE to ask"
            request = types.ElicitRequest(
                params=types.ElicitRequestURLParams(
                    message=f"Sign in to {server} to connect it to your IDE.",
                    url=urls[0],
                    elicitation_id=f"connect-{server}-{uuid.uuid4().hex[:12]}",
                )
            )
            try:
                answer = await asker.ask(request)
            except MCPError as exc:
                scope.cancel()
                self._login_errors[server] = f"the IDE could not be asked: {clean(exc.error.message)}"
                return False
            action = getattr(answer, "action", None)
            if action != "accept":
                scope.cancel()
                self._login_errors[server] = "the user declined" if action == "decline" else "the user cancelled"
                self.audit.note("login", server=server, status="Failed", error=self._login_errors[server])
                return False
        return await finish()

    async def _connected(self, server: str) -> tuple[int, int]:
        """After a login: wait (at most ``timeouts.connect``) for the server to connect and list; its tool counts
        (allowed, offered)."""
        upstream = self.upstreams.get(server)
        with anyio.move_on_after(self.settings.timeouts.connect):
            while upstream is not None and self.catalog.needs(server):
                upstream.credentials_changed()
                with anyio.move_on_after(0.5):
                    await upstream.next_outcome()
        return self.catalog.counts(server)

    async def _audited(
        self,
        event: Event,
        admit: Callable[[], Awaitable[tuple[str, str]]],
        send: Callable[[Upstream], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """One request of the IDE for a server (a tool call, a prompt, a resource read), audited: ``admit`` routes
        and checks it (raising :class:`UnknownName` or :class:`PolicyDenied`; returns the server and the name the
        server knows it by); ``send`` forwards it.

        The audit event is on disk before the request leaves (``In Progress``) and again, final, before the result is
        returned: each a small local commit, so a killed bridge loses no request the IDE saw answered. A spool that
        cannot take the first denies the request (:class:`~mcp_bridge.errors.AuditUnavailable`, naming the file and
        the fix); one that cannot take the last withholds the result.
        """
        what = event.exposed_name
        try:
            try:
                self.audit.check()  # a spool that cannot take the event denies the request at once
                event.server, event.tool = await admit()
                self.audit.begin(event)
            except (UnknownName, PolicyDenied, AuditUnavailable) as exc:
                event.status, event.error, event.error_class = "Denied", str(exc), type(exc).__name__
                if isinstance(exc, PolicyDenied):
                    event.server, event.tool = exc.server, exc.tool
                log.warning("bridge.denied", kind=event.kind, name=what, reason=event.error)
                raise
            result = await send(self._upstream(event.server))
            event.status = "Failed" if result.get("isError") else "Completed"
            if result.get("isError"):
                event.error_class = "ToolError"
        except BaseException as exc:
            if event.status == "In Progress":
                event.status = "Failed"
                event.error_class = type(exc).__name__
                event.error = "cancelled" if isinstance(exc, anyio.get_cancelled_exc_class()) else error_text(exc)
            try:
                self.audit.end(event)
            except AuditUnavailable as audit_exc:
                if isinstance(exc, UnknownName | PolicyDenied):  # a denial that cannot be recorded: why, and the fix
                    raise audit_exc from exc
                # otherwise the request's own failure (or cancellation) goes on; the event is in the log
            raise
        try:
            self.audit.end(event)
        except AuditUnavailable as exc:
            raise AuditUnavailable(
                f"{what!r} went to server {event.server!r}, but its audit record could not be completed, so its "
                f"result is withheld (it may have had effects; do not simply repeat it): {exc}",
                path=exc.path,
                reason=exc.reason,
                damaged=exc.damaged,
            ) from None
        return result

    async def _confirm(self, entry: ToolEntry, arguments: Mapping[str, Any] | None) -> None:
        """``confirm``: ask the user, through the IDE in its era, before a call of this tool; denied unless they
        accept (and when the IDE cannot be asked)."""
        server = self.catalog.allowlist.servers.get(entry.server)
        if server is None or not server.needs_confirmation(entry.definition.get("annotations")):
            return
        why = "every call" if server.confirm == "all" else "calls of tools not marked read-only or non-destructive"
        title = entry.definition.get("title") or (entry.definition.get("annotations") or {}).get("title")
        request = confirmation_request(
            entry.server, entry.original, title if isinstance(title, str) else None, summary(redact(arguments)), why
        )
        asker = ASKING.get()
        if asker is None and self.confirm_in_terminal is not None:  # mcp-bridge call, in a terminal
            assert isinstance(request.params, types.ElicitRequestFormParams)
            if not await self.confirm_in_terminal(request.params.message):
                raise PolicyDenied(entry.exposed, "the user declined it", server=entry.server, tool=entry.original)
            log.info("bridge.call_confirmed", tool=entry.exposed, by="terminal")
            return
        refusal = Offer.of(self.ide_capabilities, allow_sampling=False).refusal(request)
        if asker is None:
            refusal = "there is no IDE to ask (run it from the IDE, or `mcp-bridge call` in a terminal)"
        if refusal is not None or asker is None:
            raise PolicyDenied(
                entry.exposed,
                f"server {entry.server!r} asks the user to confirm {why} (confirm: {server.confirm}), and {refusal}",
                server=entry.server,
                tool=entry.original,
            )
        try:
            answer = await asker.ask(request)
        except MCPError as exc:
            reason = f"the confirmation failed: {clean(exc.error.message)}"
            raise PolicyDenied(entry.exposed, reason, server=entry.server, tool=entry.original) from None
        action = getattr(answer, "action", None)
        if action != "accept":
            reason = "the user declined it" if action == "decline" else "the user cancelled the confirmation"
            raise PolicyDenied(entry.exposed, reason, server=entry.server, tool=entry.original)
        log.info("bridge.call_confirmed", tool=entry.exposed)

    def _rate_check(self, entry: ToolEntry) -> float | None:
        """``rate_limit`` (calls per minute to the server): a call past it is denied at once, with when to retry;
        one within it is counted (its time, returned; ``None``: the server has no limit)."""
        server = self.catalog.allowlist.servers.get(entry.server)
        limit = server.rate_limit if server is not None else None
        if limit is None:
            return None
        now = time.monotonic()
        recent = self._calls.setdefault(entry.server, collections.deque())
        while recent and now - recent[0] >= 60.0:
            recent.popleft()
        if len(recent) >= limit:
            wait = 60.0 - (now - recent[0])
            raise PolicyDenied(
                entry.exposed,
                f"server {entry.server!r} takes at most {limit} calls a minute (rate_limit); try again in {wait:.0f} s",
                server=entry.server,
                tool=entry.original,
            )
        recent.append(now)
        return now

    async def _find_tools(self, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        """``find_tools`` (search mode): the best matches among the tools the IDE may call, as JSON text and as
        structured content. Like a first ``tools/list``, the first search waits (``timeouts.startup_wait``) for the
        servers that are still connecting."""
        query, server, limit = find_arguments(arguments)
        await self.wait_settled(self.settings.timeouts.startup_wait)
        found = self.listing.find(query, server, limit)
        log.info("bridge.find_tools", found=len(found), server=server)
        text = json.dumps({"tools": found}, ensure_ascii=False)
        if not found:
            text = "No tool matches; try other words, or leave out `server`. " + text
        return {"content": [{"type": "text", "text": text}], "structuredContent": {"tools": found}}

    async def _route_tool(self, exposed: str) -> ToolEntry:
        return await self._route("tool", exposed, self.catalog.route_tool)

    async def _route(self, kind: str, name: str, route: Callable[[str], _R]) -> _R:
        """Route a name (tool, prompt or resource). A name not (yet) known waits, at most ``timeouts.connect``, for
        the allowlist (Port) and for the servers that have not listed anything in this run; then the error names
        the server it would belong to and why it is not there, rather than only "unknown"."""
        try:
            return route(name)
        except UnknownName:
            pass
        connect = self.settings.timeouts.connect
        with anyio.move_on_after(connect):
            if not self._first_load.is_set():  # the allowlist itself is still on its way (Port)
                await self._first_load.wait()
            for upstream in self._unlisted():
                upstream.retry_soon()  # waiting out a backoff: try again now, someone needs it
            while True:
                try:
                    return route(name)
                except UnknownName:
                    waiting = [u for u in self._unlisted() if u.state in ("connecting", "error")]
                    if not waiting:
                        break
                await _first_of(u.next_outcome for u in waiting)  # one connected (and listed) or failed: look again
        try:
            return route(name)
        except UnknownName as exc:
            missing = self._unlisted()
            sep = self.settings.naming.separator
            owner = [u for u in missing if name.startswith(u.name + sep)] if kind != "resource" else []
            if len(owner) == 1 and self.catalog.needs(owner[0].name):
                tool = self.catalog.connect_name(owner[0].name)
                reason = f"server {owner[0].name!r} needs a connection: call `{tool}` to connect it"
                raise NeedsConnection(name, reason, server=owner[0].name) from None
            if len(owner) == 1:
                raise owner[0].unavailable() from None
            if missing:
                why = "; ".join(f"{u.name}: {u.state}{f' ({u.last_error})' if u.last_error else ''}" for u in missing)
                raise UnknownName(kind, name, f"{exc}; servers not connected yet: {why}") from None
            raise

    def _unlisted(self) -> list[Upstream]:
        """The servers that have not listed anything yet in this run (and have no listing from the disk cache)."""
        listings = self.catalog.listings()
        return [u for n, u in self.upstreams.items() if u.listing is None and n not in listings]

    async def get_prompt(
        self, exposed: str, arguments: Mapping[str, str] | None, *, inputs: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        async def admit() -> tuple[str, str]:
            return await self._route("prompt", exposed, self.catalog.route_prompt)

        async def send(upstream: Upstream) -> dict[str, Any]:
            params: dict[str, Any] = {"name": event.tool}
            if arguments is not None:
                params["arguments"] = dict(arguments)
            params.update(inputs or {})
            return await upstream.request(
                types.GetPromptRequest.model_validate({"method": "prompts/get", "params": params})
            )

        event = self.audit.call(exposed, arguments, kind="prompt_get")
        return await self._audited(event, admit, send)

    async def read_resource(self, uri: str, *, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Read a resource from the server its URI routes to; a URI the IDE knows in the per-server form
        (``mcp-bridge://server/...``) is sent as the server listed it, and comes back in the form the IDE asked."""

        async def admit() -> tuple[str, str]:
            return await self._route("resource", uri, self.catalog.route_resource)

        async def send(upstream: Upstream) -> dict[str, Any]:
            params = {"uri": event.tool, **(inputs or {})}
            return await upstream.request(
                types.ReadResourceRequest.model_validate({"method": "resources/read", "params": params})
            )

        event = self.audit.call(uri, None, kind="resource_read")
        result = await self._audited(event, admit, send)
        sent = event.tool
        contents = result.get("contents")
        if sent != uri and isinstance(contents, list):
            result["contents"] = [
                {**c, "uri": uri} if isinstance(c, dict) and c.get("uri") == sent else c for c in contents
            ]
        return result

    async def complete(self, params: types.CompleteRequestParams) -> dict[str, Any]:
        """``completion/complete`` for a prompt's argument or a template's variable, from the server it belongs to
        (audited as ``completion``). A server that does not offer completions answers with none."""
        ref = params.ref
        kind, name = (ref.type, ref.name) if isinstance(ref, types.PromptReference) else (ref.type, ref.uri)

        async def admit() -> tuple[str, str]:
            return await self._route("prompt" if kind == "ref/prompt" else "resource", name, route)

        def route(value: str) -> tuple[str, str]:
            return self.catalog.route_completion(kind, value)

        async def send(upstream: Upstream) -> dict[str, Any]:
            data = params.model_dump(by_alias=True, mode="json", exclude_none=True)
            data.pop("_meta", None)
            data["ref"] = {"type": kind, "name" if kind == "ref/prompt" else "uri": event.tool}
            request = types.CompleteRequest.model_validate({"method": "completion/complete", "params": data})
            try:
                return await upstream.request(request)
            except MCPError as exc:
                if exc.error.code != types.METHOD_NOT_FOUND:
                    raise
                return {"completion": {"values": [], "hasMore": False}}

        argument = {"argument": params.argument.model_dump(mode="json")}
        event = self.audit.call(name, argument, kind="completion")
        return await self._audited(event, admit, send)

    async def subscribe(self, uri: str) -> dict[str, Any]:
        """Subscribe the IDE to updates of a resource: routed and allowed as a read is, audited as
        ``resource_subscribe``; the server is subscribed once however many times the IDE subscribes."""

        async def admit() -> tuple[str, str]:
            return await self._route("resource", uri, self.catalog.route_resource)

        async def send(upstream: Upstream) -> dict[str, Any]:
            key = (upstream.name, event.tool or "")
            watchers = self._watchers.setdefault(key, collections.Counter())
            first = not watchers
            watchers[uri] += 1  # before the server is asked: an update right after it is not lost
            if first:
                try:
                    await upstream.subscribe(key[1])
                except BaseException:
                    del self._watchers[key]
                    raise
            return {}

        event = self.audit.call(uri, None, kind="resource_subscribe")
        return await self._audited(event, admit, send)

    async def unsubscribe(self, uri: str) -> None:
        """The IDE no longer wants updates of a resource it subscribed to (unknown ones are ignored)."""
        for (server, sent), watchers in list(self._watchers.items()):
            if uri not in watchers:
                continue
            watchers[uri] -= 1
            if watchers[uri] <= 0:
                del watchers[uri]
            if not watchers:
                del self._watchers[(server, sent)]
                upstream = self.upstreams.get(server)
                if upstream is not None:
                    await upstream.unsubscribe(sent)
            return

    def _resource_updated(self, server: str, sent: str) -> None:
        for uri in self._watchers.get((server, sent), ()):
            try:
                self._updates_send.send_nowait(uri)
            except anyio.WouldBlock:
                log.warning("bridge.update_queue_full", uri=uri)

    @property
    def resource_updates(self) -> MemoryObjectReceiveStream[str]:
        """The URIs (as the IDE subscribed to them) of resources that changed, in order."""
        return self._updates_recv

    def _upstream(self, server: str) -> Upstream:
        upstream = self.upstreams.get(server)
        if upstream is None:
            raise UpstreamUnavailable(server, "not connected")
        return upstream

    # ------------------------------------------------------------------ reporting

    def instructions(self) -> str:
        """What ``initialize`` tells the model: the allowlist's servers, and a note when every call will be denied
        because the audit spool is damaged (the same words ``serve`` answers with before the SDK loads)."""
        text = self.catalog.allowlist.instructions(self.settings.naming.separator)
        spool = self.audit.spool
        if spool is not None and spool.identity() is None:  # not open: reading the file cannot drop SQLite's locks
            text += instructions_note(self.settings, self.home)
        return text

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for name, upstream in sorted(self.upstreams.items()):
            allowed, offered = self.catalog.counts(name)
            row = upstream.status()
            row["tools_allowed"], row["tools_offered"] = allowed, offered
            row["tools_listed_from_cache"] = upstream.listing is None and name in self._cached
            mine = [e for e in self.catalog.entries() if e.server == name]
            row["blocked_tools"] = sorted(e.exposed for e in mine if e.blocked)
            row["unusable_tools"] = {e.exposed: e.denial for e in mine if e.denial == NEEDS_TASKS}
            by_class: dict[str, dict[str, int]] = {c: {"allowed": 0, "offered": 0} for c in risk.CLASSES}
            for e in mine:
                for c in risk.classes_of(e.definition.get("annotations")):
                    by_class[c]["offered"] += 1
                    by_class[c]["allowed"] += e.denial is None
            row["tools_by_class"] = by_class
            rows.append(row)
        return rows


def _text_result(text: str, error: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}]}
    if error:
        result["isError"] = True
    return result


def _forwarded_key(key: object, modern: bool) -> bool:
    if key in ("traceparent", "tracestate"):
        return telemetry.hooks.propagate  # (telemetry.propagate: false sends none, not the IDE's either)
    return not str(key).startswith(RESERVED_META) or (modern and key == types.LOG_LEVEL_META_KEY)


async def _first_of(waits: Iterable[Callable[[], Awaitable[None]]]) -> None:
    """Return as soon as one of ``waits`` returns."""
    async with anyio.create_task_group() as tg:

        async def one(wait: Callable[[], Awaitable[None]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            tg.start_soon(one, wait)


def _same_connection(new: ServerConfig | None, old: ServerConfig | None) -> bool:
    """Whether a server can keep its session across an allowlist change (only its tool filter changed; the
    capabilities it is offered depend on ``allow_sampling``)."""
    if new is None or old is None:
        return False
    return (new.url, new.auth, new.allow_insecure_http, new.protocol, new.allow_sampling) == (
        old.url,
        old.auth,
        old.allow_insecure_http,
        old.protocol,
        old.allow_sampling,
    )


async def load_allowlist(settings: Settings, home: Path) -> Allowlist:
    """The allowlist as ``serve`` would see it now (for commands that act on one server)."""
    if settings.port is None:
        return await LocalSource(settings).load()
    from mcp_bridge.governance.port import PortClient

    async with PortClient(settings.port) as client:
        return await PortSource(settings, client, home).load()
