"""The merged catalog: every server's tools, prompts and resources under exposed names, and the routing tables.

Names come from :mod:`~mcp_bridge.governance.naming` over the whole set, so they are unique across servers and
stable across restarts. Every tool gets a route (so a denied call can say *why*), but only allowed ones are listed.
The last listing of each server is kept on disk (:class:`CatalogCache`) so that a restarted bridge can answer
``tools/list`` before its upstreams are back.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp_bridge.config import NamingConfig
from mcp_bridge.errors import NeedsConnection, PolicyDenied, UnknownName
from mcp_bridge.files import read_json_object, write_private_json
from mcp_bridge.governance.allowlist import Allowlist
from mcp_bridge.governance.naming import assign_names
from mcp_bridge.governance.resource_routes import ResourceRoutes
from mcp_bridge.governance.schemas import repaired_tool
from mcp_bridge.logs import get_logger

log = get_logger(__name__)

CACHE_FILE = "catalog.json"
"""The disk cache of every server's last listing, in ``$MCP_BRIDGE_HOME``."""


@dataclass
class Listing:
    """What one server offers, as the raw (camelCase) dicts it sent."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    templates: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"tools": self.tools, "prompts": self.prompts, "resources": self.resources, "templates": self.templates}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Listing:
        return cls(**{k: list(data.get(k) or []) for k in ("tools", "prompts", "resources", "templates")})


def by_name(items: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Mapping[str, Any]], dict[str, int]]:
    """One server's tools (or prompts) by name, under the rule for a name listed more than once.

    The rule, the same for the catalog, the pins, routing and the disk cache (which keeps listings as sent): a name
    listed again with the very same definition is that one entry; a name listed with *different* definitions is
    refused (neither listed, nor pinned, nor callable), since which of them the server would run is unknown. A later
    duplicate therefore never wins, and whatever is exposed is the definition that was fingerprinted.

    Returns (the first entry of each name, in the server's order; name → how many different definitions it has, for
    the refused names only). Entries without a string name are left out.
    """
    first: dict[str, Mapping[str, Any]] = {}
    variants: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        name = item.get("name")
        if not isinstance(name, str):
            continue
        seen = first.setdefault(name, item)
        if seen is not item and item != seen:
            known = variants.setdefault(name, [seen])
            if all(item != other for other in known):
                known.append(item)
    return first, {name: len(known) for name, known in variants.items()}


def duplicate_reason(count: int) -> str:
    """Why a name listed with ``count`` different definitions is refused (see :func:`by_name`)."""
    return (
        f"the server lists it {count} times with different definitions, so which one it runs is unknown; "
        "refused until the server lists it once"
    )


NEEDS_TASKS = (
    "needs task-augmented execution (execution.taskSupport: required), which the bridge cannot drive: the MCP SDK "
    "it is built on (mcp 2.3) has no tasks support"
)
"""Why a tool that requires tasks is not offered (it would only fail when called)."""


def needs_tasks(tool: Mapping[str, Any]) -> str | None:
    """:data:`NEEDS_TASKS` for a tool that can only be called as a task, else ``None``."""
    execution = tool.get("execution")
    if isinstance(execution, dict) and execution.get("taskSupport") == "required":
        return NEEDS_TASKS
    return None


@dataclass(frozen=True)
class ToolEntry:
    exposed: str
    server: str
    original: str
    definition: dict[str, Any]
    denial: str | None
    cached: bool
    """Known only from the disk cache: the server has not connected in this run yet."""
    blocked: bool = False
    """Hidden because its definition no longer matches its pin, or because the server lists its name with different
    definitions (``denial`` says which); see :mod:`mcp_bridge.governance.pins` and :func:`by_name`."""
    duplicated: bool = False
    """Blocked because the server lists its name with different definitions (:func:`by_name`)."""
    connect: bool = False
    """The bridge's own ``<server>__connect`` tool of a server that needs a connection (:meth:`Catalog.needs`)."""

    @property
    def description(self) -> str:
        text = self.definition.get("description") or ""
        return text.strip().splitlines()[0] if text.strip() else ""


CONNECT = "connect"
"""The tool name (after the server's name and the separator) of the bridge's own tool that connects a server."""


def connect_tool(name: str, server: str, about: str, unlocks: int | None) -> dict[str, Any]:
    """The definition of ``<server>__connect``: its title says what it does, its description what the server is for
    and what connecting unlocks."""
    what = f"its {unlocks} tool{'s' if unlocks != 1 else ''}" if unlocks else "its tools"
    text = f"Connect {server}: sign in to it (a browser page opens) to enable {what}."
    if about:
        text += f" {server}: {about.strip()}"
    return {
        "name": name,
        "title": f"Connect {server}",
        "description": text[:1000],
        "inputSchema": {"type": "object", "properties": {}},
        "annotations": {"title": f"Connect {server}", "readOnlyHint": False, "openWorldHint": True},
    }


class Catalog:
    """Merged view over the servers' listings, filtered by the allowlist."""

    def __init__(self, naming: NamingConfig, allowlist: Allowlist) -> None:
        self._naming = naming
        self._allowlist = allowlist
        self._listings: dict[str, Listing] = {}
        self._cached: set[str] = set()
        self._blocked: dict[str, dict[str, str]] = {}  # server -> original tool name -> why its pin blocks it
        self._tools: dict[str, ToolEntry] = {}
        # (server, tool) -> (the listing's tool, exposed name, the definition made of them): a rebuild keeps a
        # definition object while both stay the same, so per-tool work on the list (the front's) is done once.
        self._definitions: dict[tuple[str, str], tuple[Mapping[str, Any], str, dict[str, Any]]] = {}
        self._prompts: dict[str, tuple[str, str, dict[str, Any]]] = {}
        self._refused_prompts: dict[str, tuple[str, str, str]] = {}  # exposed -> (server, name, why)
        self._routes = ResourceRoutes({})
        self._visible_tools: list[dict[str, Any]] = []
        self._visible_prompts: list[dict[str, Any]] = []
        self._visible_resources: list[dict[str, Any]] = []
        self._visible_templates: list[dict[str, Any]] = []
        self._stale = False
        self._unreported: set[str] = set()
        self._version = 0
        self._needs: dict[str, str] = {}
        """Servers that need a connection (a login), and what each is for."""

    # ------------------------------------------------------------------ updates

    @property
    def version(self) -> int:
        """Bumped by every rebuild, changed lists or not (equal lists can still encode differently: ``1`` and
        ``1.0``, key order). The lists a rebuild makes are never changed in place, so an answer computed from them
        (the front's encoded ``tools/list``) stays right for as long as this number does not change. Reading it
        rebuilds a stale view first, so it is never older than the lists a read would get."""
        self._fresh()
        return self._version

    @property
    def allowlist(self) -> Allowlist:
        return self._allowlist

    # Every update takes ``rebuild``: True rebuilds the merged view now and returns which lists the IDE sees changed
    # (tools, prompts, resources); False only marks it stale and returns nothing, so that a burst of updates (50
    # servers connecting, a cache of 50 listings) costs one rebuild. A stale view is rebuilt by :meth:`rebuild` or by
    # the first read, and what such a rebuild changed is returned by the next :meth:`rebuild`.

    def set_listing(
        self,
        server: str,
        listing: Listing,
        *,
        cached: bool = False,
        blocked: dict[str, str] | None = None,
        rebuild: bool = True,
    ) -> set[str]:
        """Replace one server's listing (``blocked``: its tools that fail their pins, and why)."""
        self._listings[server] = listing
        self._blocked[server] = dict(blocked or {})
        if cached:
            self._cached.add(server)
        else:
            self._cached.discard(server)
        return self._changed(rebuild)

    def set_needs(self, server: str, about: str | None, *, rebuild: bool = True) -> set[str]:
        """A server needs a connection (``about``: what it is for), or no longer (``None``): while it does, its
        tools are replaced in the list by one tool of the bridge's own, ``<server>__connect``, which says how many
        of them connecting enables (when its listing is known, say from the disk cache)."""
        if self._needs.get(server) == about:
            return set()
        if about is None:
            del self._needs[server]
        else:
            self._needs[server] = about
        return self._changed(rebuild)

    def needs(self, server: str) -> bool:
        """Whether the server needs a connection (see :meth:`set_needs`)."""
        return server in self._needs

    def connect_name(self, server: str) -> str:
        return f"{server}{self._naming.separator}{CONNECT}"

    def set_blocked(self, server: str, blocked: dict[str, str], *, rebuild: bool = True) -> set[str]:
        """Which of a server's tools fail their pins (re-checked after a pin or allowlist change)."""
        if self._blocked.get(server, {}) == blocked:
            return set()
        self._blocked[server] = dict(blocked)
        return self._changed(rebuild)

    def listings(self) -> dict[str, tuple[Listing, bool]]:
        """Each server's current listing, and whether it is only the disk cache's."""
        return {name: (listing, name in self._cached) for name, listing in self._listings.items()}

    def remove(self, server: str, *, rebuild: bool = True) -> set[str]:
        self._listings.pop(server, None)
        self._blocked.pop(server, None)
        self._cached.discard(server)
        return self._changed(rebuild)

    def set_allowlist(self, allowlist: Allowlist, *, rebuild: bool = True) -> set[str]:
        self._allowlist = allowlist
        for server in [s for s in self._listings if s not in allowlist.servers]:
            del self._listings[server]
            self._cached.discard(server)
            self._blocked.pop(server, None)
        for server in [s for s in self._needs if s not in allowlist.servers]:
            del self._needs[server]
        return self._changed(rebuild)

    def _changed(self, rebuild: bool) -> set[str]:
        self._stale = True
        return self.rebuild() if rebuild else set()

    def rebuild(self) -> set[str]:
        """Rebuild the merged view if an update left it stale; return what changed (and anything a read-time
        rebuild changed since the last call)."""
        changed = self._rebuild() if self._stale else set()
        changed |= self._unreported
        self._unreported = set()
        return changed

    def _fresh(self) -> None:
        """Before a read: a stale view is rebuilt now (its changes kept for the next :meth:`rebuild`)."""
        if self._stale:
            self._unreported |= self._rebuild()

    def _rebuild(self) -> set[str]:
        self._stale = False
        self._version += 1
        before = (self._visible_tools, self._visible_prompts, self._visible_resources, self._visible_templates)
        sep, max_len = self._naming.separator, self._naming.max_length
        servers = sorted(self._listings)

        listed_tools = {s: by_name(self._listings[s].tools) for s in servers}
        tool_keys = [(s, name) for s in servers for name in listed_tools[s][0]]
        tool_names = assign_names(tool_keys, separator=sep, max_length=max_len)
        tools: dict[str, ToolEntry] = {}
        unlocks: collections.Counter[str] = collections.Counter()  # a server that needs a connection: its tools then
        previous, self._definitions = self._definitions, {}
        for server in servers:
            blocked = self._blocked.get(server, {})
            unique, duplicated = listed_tools[server]
            for original, tool in unique.items():
                exposed = tool_names[(server, original)]
                kept = previous.get((server, original))
                if kept is not None and kept[0] is tool and kept[1] == exposed:
                    definition = kept[2]
                else:  # what the IDE is listed: renamed, its schemas repaired where safe (governance.schemas)
                    definition = {**repaired_tool(tool), "name": exposed}
                self._definitions[(server, original)] = (tool, exposed, definition)
                denial = self._allowlist.denial(server, original, exposed, tool.get("annotations")) or needs_tasks(tool)
                if original in duplicated:
                    pin: str | None = duplicate_reason(duplicated[original])
                else:
                    pin = blocked.get(original)
                if denial is not None:
                    pin = None
                if denial is None and server in self._needs:
                    unlocks[server] += 1
                    denial = f"server {server!r} needs a connection: call `{self.connect_name(server)}` to connect it"
                    pin = None
                tools[exposed] = ToolEntry(
                    exposed=exposed,
                    server=server,
                    original=original,
                    definition=definition,
                    denial=denial or (f"tool {original!r} of server {server!r}: {pin}" if pin else None),
                    cached=server in self._cached,
                    blocked=pin is not None,
                    duplicated=pin is not None and original in duplicated,
                )
        for server, about in sorted(self._needs.items()):
            name = self.connect_name(server)
            definition = connect_tool(name, server, about, unlocks[server] or None)
            tools[name] = ToolEntry(name, server, CONNECT, definition, None, False, connect=True)
        self._tools = tools
        self._visible_tools = [e.definition for e in tools.values() if e.denial is None]

        listed_prompts = {s: by_name(self._listings[s].prompts) for s in servers}
        prompt_keys = [(s, name) for s in servers for name in listed_prompts[s][0]]
        prompt_names = assign_names(prompt_keys, separator=sep, max_length=max_len)
        self._prompts = {}
        self._refused_prompts = {}
        for server in servers:
            unique, duplicated = listed_prompts[server]
            for name, prompt in unique.items():
                exposed = prompt_names[(server, name)]
                if name in duplicated:
                    self._refused_prompts[exposed] = (server, name, duplicate_reason(duplicated[name]))
                else:
                    self._prompts[exposed] = (server, name, {**prompt, "name": exposed})
        allowlist = self._allowlist
        self._visible_prompts = [p for s, n, p in self._prompts.values() if allowlist.prompt_denial(s, n) is None]

        # Routes are made over every server's resources (which server a URI goes to must not depend on what one is
        # allowed); the allowlist decides per server, after routing: in what is listed and in every read.
        self._routes = ResourceRoutes({s: (self._listings[s].resources, self._listings[s].templates) for s in servers})
        listed = self._routes.listed
        self._visible_resources = [
            r for r in self._routes.resources if allowlist.resource_denial(*listed[r["uri"]]) is None
        ]
        self._visible_templates = [
            t.exposed for t in self._routes.raw_templates if allowlist.resource_denial(t.server, t.text) is None
        ]
        after = (self._visible_tools, self._visible_prompts, self._visible_resources, self._visible_templates)
        return {
            kind
            for kind, b, a in zip(("tools", "prompts", "resources", "resources"), before, after, strict=True)
            if b != a
        }

    # ------------------------------------------------------------------ reads

    def tools(self) -> list[dict[str, Any]]:
        """The tool definitions the IDE sees: allowed ones, under exposed names."""
        self._fresh()
        return self._visible_tools

    def entries(self) -> list[ToolEntry]:
        """Every known tool, allowed or not (for ``tools`` and ``status``)."""
        self._fresh()
        return list(self._tools.values())

    def route_tool(self, exposed: str) -> ToolEntry:
        """The entry for an exposed name, checked against the allowlist now (not only when listed)."""
        self._fresh()
        entry = self._tools.get(exposed)
        if entry is None:
            raise UnknownName("tool", exposed)
        if entry.connect:
            return entry
        denial = self._allowlist.denial(entry.server, entry.original, exposed, entry.definition.get("annotations"))
        if denial is None and entry.server in self._needs:
            raise NeedsConnection(exposed, entry.denial or "", server=entry.server, tool=entry.original)
        if denial is None and (entry.blocked or entry.denial == NEEDS_TASKS):  # changed since pinned; needs tasks
            denial = entry.denial
        if denial is not None:
            raise PolicyDenied(exposed, denial, server=entry.server, tool=entry.original)
        return entry

    def prompts(self) -> list[dict[str, Any]]:
        self._fresh()
        return self._visible_prompts

    def route_prompt(self, exposed: str) -> tuple[str, str]:
        self._fresh()
        found = self._prompts.get(exposed)
        if found is None:
            refused = self._refused_prompts.get(exposed)
            if refused is not None:
                server, name, reason = refused
                raise PolicyDenied(exposed, f"prompt {name!r} of server {server!r}: {reason}", server=server, tool=name)
            raise UnknownName("prompt", exposed)
        server, name, _ = found
        denial = self._allowlist.prompt_denial(server, name)
        if denial is not None:
            raise PolicyDenied(exposed, denial, server=server, tool=name)
        return server, name

    def resources(self) -> list[dict[str, Any]]:
        """The resources the IDE sees: the allowed ones, in their routed form."""
        self._fresh()
        return self._visible_resources

    def templates(self) -> list[dict[str, Any]]:
        """The templates the IDE sees: well-formed ones whose text the allowlist admits."""
        self._fresh()
        allowed = {id(t) for t in self._visible_templates}
        return [t for t in self._routes.templates() if id(t) in allowed]

    def route_resource(self, uri: str) -> tuple[str, str]:
        """(server, URI to send it) for a URI the IDE reads (the rules of :mod:`.resource_routes`), checked against
        the allowlist of the server it routes to."""
        self._fresh()
        server, sent = self._routes.route(uri)
        denial = self._allowlist.resource_denial(server, sent)
        if denial is not None:
            raise PolicyDenied(uri, denial, server=server, tool=sent)
        return server, sent

    def route_completion(self, kind: str, ref: str) -> tuple[str, str]:
        """(server, the name or URI it knows) for a ``completion/complete`` reference the IDE sends: a prompt's
        exposed name (``ref/prompt``), or a template's text as the IDE was listed it, or a resource URI
        (``ref/resource``); checked against the allowlist like a get or a read."""
        if kind == "ref/prompt":
            return self.route_prompt(ref)
        self._fresh()
        for template in self._routes.raw_templates:
            if template.exposed.get("uriTemplate") == ref:
                denial = self._allowlist.resource_denial(template.server, template.text)
                if denial is not None:
                    raise PolicyDenied(ref, denial, server=template.server, tool=template.text)
                return template.server, template.text
        return self.route_resource(ref)

    def counts(self, server: str) -> tuple[int, int]:
        """(allowed, offered) tool counts for one server."""
        self._fresh()
        mine = [e for e in self._tools.values() if e.server == server and not e.connect]
        return sum(1 for e in mine if e.denial is None), len(mine)


class CatalogCache:
    """The last listing of each server, on disk (one JSON file, atomic replace, mode 0600)."""

    VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, tuple[str, Listing]]:
        """server → (url it was listed from, listing). A missing or unreadable file is an empty cache."""
        data = read_json_object(self.path, "catalog cache")
        if data is None or data.get("version") != self.VERSION:
            return {}
        out: dict[str, tuple[str, Listing]] = {}
        for server, entry in (data.get("servers") or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("url"), str):
                out[server] = (entry["url"], Listing.from_json(entry))
        return out

    def save(self, entries: dict[str, tuple[str, Listing]]) -> None:
        payload = {
            "version": self.VERSION,
            "servers": {s: {"url": url, **listing.to_json()} for s, (url, listing) in sorted(entries.items())},
        }
        write_private_json(self.path, payload)
