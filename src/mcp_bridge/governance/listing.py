"""What ``tools/list`` shows: every allowed tool (full mode), or search mode's few.

In search mode the IDE is listed two tools of the bridge's own, ``find_tools`` and ``call_tool``
(:data:`FIND_TOOLS`, :data:`CALL_TOOL`), and directly, up to its budget (:mod:`mcp_bridge.governance.budget`), the
tools each server marks ``always`` and then the user's most used tools (counted in the local audit spool). The meta
tools' descriptions name the servers (and Port's description of each), so the model knows what to search for.

Governance does not change: ``find_tools`` returns only tools the IDE could call directly (allowed, enabled, not
blocked by their pins, of a connected server), and ``call_tool`` goes through the same route, checks and audit as a
direct call (the audit event names the real tool). The direct set is fixed for a session but for what governance
removes, so a change in the catalog outside it does not change ``tools/list``: no ``list_changed`` storm, while
``find_tools`` always searches the live catalog.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

from mcp_bridge.config import Settings
from mcp_bridge.governance import budget
from mcp_bridge.governance.catalog import Catalog, ToolEntry
from mcp_bridge.governance.search import Doc, ToolIndex, doc
from mcp_bridge.logs import cut

FIND_TOOLS = "find_tools"
CALL_TOOL = "call_tool"
META_TOOLS = (FIND_TOOLS, CALL_TOOL)
DEFAULT_LIMIT = 8
MAX_LIMIT = 50
_DESCRIBED_SERVERS = 40
"""At most this many servers are named in ``find_tools``' description (the rest as a count)."""
_ABOUT_CHARS = 120
"""A server's description is cut to this in ``find_tools``' description (``tools/list`` stays under 8 KB)."""


class ToolList:
    """The tools the IDE is listed, and the search behind ``find_tools`` (see the module's docstring)."""

    def __init__(self, settings: Settings, catalog: Catalog, most_used: Callable[[int], list[str]]) -> None:
        self._settings = settings
        self._catalog = catalog
        self._most_used = most_used
        self._index: ToolIndex | None = None
        """Made at the first search (an IDE in full mode never needs one)."""
        self._indexed: int | None = None
        self._docs: dict[str, tuple[Any, str, Doc]] = {}
        """exposed name → (the definition, the server's description, its document): a definition the catalog kept
        (the same object) is not made into a document again."""
        self._entries: tuple[int, dict[str, ToolEntry]] | None = None
        self._usage: list[str] | None = None
        """The most used tools, read once per session (a list that changes with every call would be a storm)."""
        self._search_list: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None
        """(what it was made of: the servers' text and the direct tools' definitions, the list)."""
        self._search_at: tuple[int, str | None] | None = None
        """(catalog version, IDE) the search list was last checked at: nothing it depends on changes in between."""
        self._search_version = 0

    # ------------------------------------------------------------------ the mode

    def mode(self, client_name: str | None) -> budget.Mode:
        cfg = self._settings.catalog
        return budget.resolve(cfg.mode, cfg.max_tools, client_name, len(self._catalog.tools()))

    def budget(self, client_name: str | None) -> tuple[int | None, str]:
        return budget.budget(self._settings.catalog.max_tools, client_name)

    # ------------------------------------------------------------------ tools/list

    def tools(self, client_name: str | None) -> list[dict[str, Any]]:
        if self.mode(client_name) == "full":
            return self._catalog.tools()
        return self._search_tools(client_name)[1]

    def version(self, client_name: str | None) -> Any:
        """Changes whenever :meth:`tools` would answer differently (the front keeps its encoded answer by it)."""
        if self.mode(client_name) == "full":
            return ("full", self._catalog.version)
        self._search_tools(client_name)
        return ("search", self._search_version)

    def _search_tools(self, client_name: str | None) -> tuple[tuple[Any, ...], list[dict[str, Any]]]:
        at = (self._catalog.version, client_name)
        if self._search_list is not None and self._search_at == at:
            return self._search_list
        direct = self.direct(client_name)
        servers = self._servers_text()
        key = (servers, *(e.definition for e in direct))  # compared by value: a server's relist makes new objects
        if self._search_list is None or self._search_list[0] != key:
            tools = [self._find_tools_definition(servers), self._call_tool_definition()]
            tools += [e.definition for e in direct]
            self._search_list = (key, tools)
            self._search_version += 1
        self._search_at = at
        return self._search_list

    def direct(self, client_name: str | None) -> list[ToolEntry]:
        """The tools listed directly in search mode: each server's connect tool while it needs a connection, its
        ``always`` tools, then the most used ones, as many as the budget leaves beside the two meta tools."""
        limit, _ = self.budget(client_name)
        room = max(0, (limit or budget.DEFAULT_BUDGET) - len(META_TOOLS))
        listable = {e.exposed: e for e in self._catalog.entries() if e.denial is None}
        servers = self._catalog.allowlist.servers
        chosen: list[ToolEntry] = [e for e in listable.values() if e.connect]  # a server to connect: say so first
        for entry in listable.values():
            if entry.connect:
                continue
            server = servers.get(entry.server)
            patterns = server.always if server is not None else []
            if any(fnmatch.fnmatchcase(entry.original, p) for p in patterns):
                chosen.append(entry)
        if self._usage is None:
            try:
                self._usage = self._most_used(room)
            except Exception:  # an unreadable spool costs the shortcut, not the list
                self._usage = []
        seen = {e.exposed for e in chosen}
        for name in self._usage:
            used = listable.get(name)
            if used is not None and name not in seen:
                chosen.append(used)
                seen.add(name)
        return chosen[:room]

    # ------------------------------------------------------------------ the meta tools

    def _servers_text(self) -> str:
        servers = self._catalog.allowlist.servers
        lines = []
        for name in sorted(servers)[:_DESCRIBED_SERVERS]:
            server = servers[name]
            about = (server.description or server.title or "").strip().splitlines()
            lines.append(f"- {name}" + (f": {cut(about[0], _ABOUT_CHARS)}" if about else ""))
        if len(servers) > _DESCRIBED_SERVERS:
            lines.append(f"- and {len(servers) - _DESCRIBED_SERVERS} more")
        return "\n".join(lines) or "- (no servers are approved for you yet)"

    def _find_tools_definition(self, servers: str) -> dict[str, Any]:
        return {
            "name": FIND_TOOLS,
            "title": "Find tools",
            "description": (
                "Search the tools of the approved MCP servers for one that does a job; call it with `call_tool`. "
                'Describe the job in a few words ("open a ticket for the login bug", "search the docs"). '
                "Returns the best matches with their names, descriptions and input schemas. Servers:\n" + servers
            ),
            "inputSchema": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What the tool should do, in a few words."},
                    "server": {"type": "string", "description": "Only the tools of this server (optional)."},
                    "limit": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_LIMIT,
                        "description": f"How many matches at most (default {DEFAULT_LIMIT}).",
                    },
                },
                "required": ["query"],
            },
            "annotations": {"readOnlyHint": True, "openWorldHint": False},
        }

    def _call_tool_definition(self) -> dict[str, Any]:
        return {
            "name": CALL_TOOL,
            "title": "Call a tool",
            "description": (
                "Call a tool that `find_tools` found (on the servers `find_tools` names), by its name, with "
                "arguments that follow its input schema."
            ),
            "inputSchema": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "The tool's name, as `find_tools` gave it."},
                    "arguments": {"type": "object", "description": "The tool's arguments."},
                },
                "required": ["name"],
            },
        }

    def find(self, query: str, server: str | None = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
        """``find_tools``: the best matches among the tools the IDE may call, as the model should see them."""
        index = self._sync()
        entries = self._entry_map()
        found = []
        for exposed, _score in index.search(query, server=server, limit=limit):
            entry = entries.get(exposed)
            if entry is None or entry.denial is not None or entry.cached:
                continue
            d = entry.definition
            item: dict[str, Any] = {"name": exposed, "server": entry.server}
            for key in ("title", "description", "inputSchema", "annotations"):
                if key in d:
                    item[key] = d[key]
            found.append(item)
        return found

    def searchable(self) -> list[ToolEntry]:
        """What ``find_tools`` may return: allowed, enabled, not pin-blocked tools of connected servers."""
        return [e for e in self._catalog.entries() if e.denial is None and not e.cached]

    def _entry_map(self) -> dict[str, ToolEntry]:
        version = self._catalog.version
        if self._entries is None or self._entries[0] != version:
            self._entries = (version, {e.exposed: e for e in self._catalog.entries()})
        return self._entries[1]

    def _sync(self) -> ToolIndex:
        """Bring the index up to the catalog (making it first): only the tools whose definition changed are made into
        documents again and re-indexed."""
        if self._index is None:
            self._index = ToolIndex()
        version = self._catalog.version
        if self._indexed == version:
            return self._index
        servers = self._catalog.allowlist.servers
        abouts = {
            name: (server.description or server.title or "") if server is not None else ""
            for name, server in servers.items()
        }
        kept: dict[str, tuple[Any, str, Doc]] = {}
        changed: list[Doc] = []
        known_docs = self._docs
        for e in self.searchable():
            about = abouts.get(e.server, "")
            known = known_docs.get(e.exposed)
            if known is not None and known[0] is e.definition and known[1] == about:
                kept[e.exposed] = known
                continue
            d = doc(e.exposed, e.server, e.definition, about)
            kept[e.exposed] = (e.definition, about, d)
            changed.append(d)
        removed = [name for name in known_docs if name not in kept]
        self._docs = kept
        self._index.apply(removed, changed)
        self._indexed = version
        return self._index


def call_arguments(arguments: Mapping[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """``call_tool``'s arguments: the tool's name and its arguments; ValueError says what is wrong."""
    args = dict(arguments or {})
    name = args.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("call_tool needs `name`: the name of a tool that find_tools returned")
    inner = args.get("arguments")
    if inner is not None and not isinstance(inner, dict):
        raise ValueError("call_tool's `arguments` must be an object (the tool's arguments)")
    return name, inner


def find_arguments(arguments: Mapping[str, Any] | None) -> tuple[str, str | None, int]:
    """``find_tools``' arguments: query, server, limit; ValueError says what is wrong."""
    args = dict(arguments or {})
    query = args.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ValueError("find_tools needs `query`: the job to find a tool for, in a few words")
    server = args.get("server")
    if server is not None and not isinstance(server, str):
        raise ValueError("find_tools' `server` must be a server's name")
    limit = args.get("limit", DEFAULT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"find_tools' `limit` must be a whole number from 1 to {MAX_LIMIT}")
    return query, server or None, min(limit, MAX_LIMIT)
