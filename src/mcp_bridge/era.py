"""What differs between the two protocol eras on the IDE side, in one place.

The handshake era (``initialize``, 2025-11-25 and older) and the stateless 2026-07-28 era ("modern") differ in the
shape of results, not in what they carry. A modern result names its kind (``resultType``), and a cacheable one
(the lists and ``resources/read``) says how long and for whom it may be cached (``ttlMs``, ``cacheScope``). The
bridge's lists are per user and change whenever a server's do, so they are ``private`` with a ``ttlMs`` of 0: a
modern IDE refetches them, cheaply (the bridge keeps each list answer encoded), and hears of changes on its
``subscriptions/listen`` stream.

Requests from a modern IDE carry its envelope in ``_meta`` (``io.modelcontextprotocol/...``: protocol version,
client info, capabilities, log level). It describes the IDE's connection to the bridge, never the bridge's to a
server, so it is not forwarded; and a server's identity stamp on a result is not passed on as the bridge's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MODERN_VERSIONS = frozenset({"2026-07-28"})
"""The SDK's ``mcp_types.version.MODERN_PROTOCOL_VERSIONS`` (a test keeps them equal; this module loads before it)."""

RESERVED_META = "io.modelcontextprotocol/"
"""The prefix of the ``_meta`` keys the protocol itself defines (the envelope, the server's identity stamp)."""

SERVER_INFO_META = RESERVED_META + "serverInfo"
CACHE_FIELDS: Mapping[str, Any] = {"ttlMs": 0, "cacheScope": "private"}


def is_modern(version: str | None) -> bool:
    return version in MODERN_VERSIONS


def finish(version: str | None, result: dict[str, Any], *, cacheable: bool = False) -> dict[str, Any]:
    """``result`` as the IDE's era needs it: a server's identity stamp removed (both eras), and in the modern era
    ``resultType`` (``complete`` unless the server said otherwise, e.g. ``input_required``) and, for a cacheable
    result, the cache fields."""
    meta = result.get("_meta")
    if isinstance(meta, dict) and SERVER_INFO_META in meta:
        rest = {k: v for k, v in meta.items() if k != SERVER_INFO_META}
        result = {k: v for k, v in result.items() if k != "_meta"}
        if rest:
            result["_meta"] = rest
    if not is_modern(version):
        return result
    out = {"resultType": "complete", **result}
    if cacheable and out["resultType"] == "complete":
        for key, value in CACHE_FIELDS.items():
            out.setdefault(key, value)
    return out


def forwarded_meta(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The part of an IDE request's ``_meta`` that goes on to the server: without the protocol's own keys (the
    envelope) and without the progress token (the bridge relays progress under a token of its own)."""
    if not meta:
        return None
    out = {
        k: v
        for k, v in meta.items()
        if k not in ("progress_token", "progressToken") and not str(k).startswith(RESERVED_META)
    }
    return out or None
