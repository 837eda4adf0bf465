"""Which protocol era the bridge speaks to one server: found out, remembered, or configured.

A server speaks the handshake era (``initialize``, a session; 2025-11-25 and older), the stateless 2026-07-28 era
(``server/discover``, every request self-contained), or both. With ``protocol.upstream: auto`` (the default) the
first connection probes: ``server/discover`` at the newest version, and the handshake when the server does not
answer it as a 2026-07-28 server would (the SDK's own policy, :func:`negotiate_auto`). The outcome is remembered per
server in ``$MCP_BRIDGE_HOME/upstream-eras.json`` (:class:`EraStore`: with the URL, so an entry for another URL is
not used; for a week, :data:`MAX_AGE_SECONDS`), and the next start adopts it without the probe's round trip: the
remembered ``server/discover`` answer for a 2026-07-28 server, ``initialize`` for a handshake-era one.

A remembered era can go stale (the server was upgraded, or rolled back). When the server then refuses in a way only
an era mismatch explains (:func:`era_refusal`), the memory is dropped and the connection is made again at once,
probing: once, since a probe's outcome is never "remembered". ``protocol.upstream: legacy | 2026-07-28`` (or a
server's own ``protocol``, or ``$MCP_BRIDGE_PROTOCOL_UPSTREAM``) skips all this and speaks that era.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mcp_types as types
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from mcp_bridge.config import ENV_PROTOCOL_UPSTREAM, Protocol
from mcp_bridge.errors import UpstreamError
from mcp_bridge.files import read_json_object, write_private_json
from mcp_bridge.logs import get_logger
from mcp_bridge.upstream.http_errors import HTTP_ERROR
from mcp_bridge.upstream.own_errors import ours

log = get_logger(__name__)

ERAS_FILE = "upstream-eras.json"
_FORMAT = 1
MAX_AGE_SECONDS = 7 * 86400
"""How long a found era is trusted without asking again: a server once found speaking only the handshake (or whose
probe went unanswered in time) is probed again after this, so an upgrade is noticed even when nothing fails."""

Source = Literal["probed", "remembered", "configured"]
"""How the era of a connection was chosen: found out now, taken from memory, or set in the config."""

try:  # the SDK's connect-time policy for its own mode="auto" (a private module: tests/test_upstream_eras.py)
    from mcp.client._probe import negotiate_auto as _sdk_negotiate_auto

    negotiate_auto: Callable[[ClientSession], Awaitable[None]] = _sdk_negotiate_auto
except ImportError:  # pragma: no cover - another SDK release

    async def negotiate_auto(session: ClientSession) -> None:
        """The SDK's policy in short: ``server/discover``, else the handshake."""
        try:
            await session.discover()
        except (MCPError, RuntimeError, ValidationError):
            await session.initialize()


def is_modern(version: str | None) -> bool:
    return version in MODERN_PROTOCOL_VERSIONS


@dataclass(frozen=True)
class Known:
    """What the bridge remembers of one server's era."""

    version: str
    discover: dict[str, Any] | None
    """The server's ``server/discover`` answer (2026-07-28), adopted instead of asking again."""
    checked_at: float


class EraStore:
    """``upstream-eras.json``: the era found for each server, by server name, with the URL it was found at.

    Read on every connection attempt (a few hundred bytes), written when a probe found something new or memory is
    dropped: private (0600), replaced atomically. A missing or damaged file reads as empty: the servers are probed.
    Several bridges may share it; the last write wins, and a lost entry only costs a probe."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _servers(self) -> dict[str, Any]:
        data = read_json_object(self.path, "upstream eras")
        servers = data.get("servers") if data and data.get("format") == _FORMAT else None
        return dict(servers) if isinstance(servers, dict) else {}

    def get(self, server: str, url: str) -> Known | None:
        entry = self._servers().get(server)
        if not isinstance(entry, dict) or entry.get("url") != url:
            return None
        version, discover, checked = entry.get("era"), entry.get("discover"), entry.get("checked_at")
        if not isinstance(version, str) or (discover is not None and not isinstance(discover, dict)):
            return None
        if is_modern(version) and discover is None:
            return None
        checked_at = float(checked) if isinstance(checked, int | float) else 0.0
        if abs(time.time() - checked_at) > MAX_AGE_SECONDS:  # (a clock set back counts as old too)
            return None
        return Known(version, discover, checked_at)

    def remember(self, server: str, url: str, version: str, discover: dict[str, Any] | None) -> None:
        servers = self._servers()
        servers[server] = {"url": url, "era": version, "discover": discover, "checked_at": round(time.time(), 3)}
        self._write(servers)

    def forget(self, server: str) -> None:
        servers = self._servers()
        if servers.pop(server, None) is not None:
            self._write(servers)

    def _write(self, servers: dict[str, Any]) -> None:
        try:
            write_private_json(self.path, {"format": _FORMAT, "servers": servers})
        except OSError as exc:  # memory is an optimisation: without it, servers are probed each time
            log.warning("upstream_eras.write_failed", path=str(self.path), error=str(exc))


class Reprobe(Exception):
    """The remembered era was refused: connect again at once, probing (the memory is already dropped)."""

    def __init__(self, server: str, remembered: str, error: MCPError) -> None:
        super().__init__(f"{server}: the remembered era {remembered} was refused ({error.error.message}); probing")
        self.server, self.remembered, self.error = server, remembered, error


_SESSION_WORDS = ("session id", "missing session", "no valid session", "not initialized")


def era_refusal(exc: MCPError, *, modern: bool, first: bool) -> bool:
    """Whether ``exc`` is the server refusing the era the bridge spoke (``modern``: 2026-07-28, else the
    handshake), rather than the request itself.

    Any era: -32022 (unsupported protocol version, which names the server's versions). A 2026-07-28 request to a
    handshake-era server: that server wants a session ("Bad Request: Missing session ID", "Server not
    initialized"). ``first`` (nothing has succeeded on this connection yet) widens it to what a server that does not
    know the era says of any request: -32601, or a bare HTTP 400/404/405; and for the handshake, -32020 (a 2026-07-28
    server missing its headers)."""
    code, message = exc.error.code, exc.error.message.lower()
    if code == types.UNSUPPORTED_PROTOCOL_VERSION:
        return True
    if modern and code in (types.INVALID_REQUEST, -32000) and any(w in message for w in _SESSION_WORDS):
        return True
    if not first:
        return False
    if code == types.METHOD_NOT_FOUND:
        return True
    if not modern and code == types.HEADER_MISMATCH:
        return True
    if ours(exc, HTTP_ERROR):
        data = exc.error.data
        return isinstance(data, dict) and data.get("httpStatus") in (400, 404, 405)
    return False


def _wanted(protocol: Protocol) -> str:
    where = f"protocol.upstream (or the server's own `protocol`, or ${ENV_PROTOCOL_UPSTREAM})"
    era = "the handshake era (2025-11-25 and older)" if protocol == "legacy" else protocol
    return f"{era}, which {where} asks for"


async def negotiate(
    session: ClientSession, server: str, url: str, protocol: Protocol, store: EraStore | None
) -> tuple[Source, Known | None]:
    """Open ``session`` in the era ``protocol`` asks for (``auto``: remembered, else probed). Returns how it was
    chosen, and what was remembered (``None`` unless adopted from memory).

    Raises :class:`Reprobe` when a remembered handshake era is refused (memory dropped), :class:`UpstreamError`
    when the server refuses a configured era, and whatever the connection raises otherwise."""
    if protocol != "auto":
        try:
            if protocol == "legacy":
                await session.initialize()
            else:
                await session.discover()
        except MCPError as exc:
            if era_refusal(exc, modern=protocol != "legacy", first=True):
                raise UpstreamError(server, f"does not speak {_wanted(protocol)}: {exc.error.message}") from None
            raise
        except (RuntimeError, ValidationError) as exc:  # discover answered, but not as a 2026-07-28 server does
            reason = str(exc).splitlines()[0]
            raise UpstreamError(server, f"does not speak {_wanted(protocol)}: {reason}") from None
        return "configured", None
    known = store.get(server, url) if store is not None else None
    if known is not None and is_modern(known.version):
        try:
            session.adopt(types.DiscoverResult.model_validate(known.discover))
            return "remembered", known
        except (ValidationError, RuntimeError) as exc:
            log.info("upstream.era_memory_unusable", server=server, error=str(exc).splitlines()[0])
    elif known is not None:
        try:
            await session.initialize()
        except MCPError as exc:
            if store is not None and era_refusal(exc, modern=False, first=True):
                store.forget(server)
                raise Reprobe(server, known.version, exc) from None
            raise
        return "remembered", known
    await negotiate_auto(session)
    return "probed", None


def discover_of(session: ClientSession) -> dict[str, Any] | None:
    """The session's ``server/discover`` answer as it would be stored (``None`` for a handshake-era session)."""
    result = session.discover_result
    return None if result is None else result.model_dump(by_alias=True, mode="json", exclude_none=True)
