"""Which server a resource URI goes to, when several servers list resources and templates side by side.

A URI is untrusted input from every server at once, so the routes follow rules no single server can bend:

1. **A URI a server lists goes to that server.** No template of any server captures it.
2. **A URI two servers list is exposed in a per-server form**, ``mcp-bridge://<server>/<uri>``, for each of them (the
   bare URI is ambiguous and answered with an error naming both forms). The same holds for a template two servers
   list with the very same text, and for anything a server lists under the ``mcp-bridge:`` scheme itself (always
   wrapped, so that no server can pose as the bridge's own form).
3. **A URI no server lists goes to the most specific template that matches it**: the one with the most literal
   characters, then the fewest greedy (``{+x}``, ``{#x}``) and the fewest variables. ``{+anything}`` therefore gets
   only what no other server claims. When templates of different servers tie for the best match, the URI is
   ambiguous (an error naming each server's form) rather than given to the one whose name sorts first.
4. **The per-server form** reaches that server only with a URI it lists or one of its templates matches.

The server receives the URI it listed (never the per-server form); :meth:`ResourceRoutes.route` says which URI to send.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from mcp_bridge.errors import UnknownName
from mcp_bridge.logs import get_logger

if TYPE_CHECKING:
    from mcp.shared.uri_template import UriTemplate

log = get_logger(__name__)

SCHEME = "mcp-bridge:"
_PREFIX = "mcp-bridge://"
_EXPRESSION = re.compile(r"\{[^}]*\}")


def server_uri(server: str, uri: str) -> str:
    """The per-server form of a URI (or a template's text): ``mcp-bridge://<server>/<uri>``."""
    return f"{_PREFIX}{quote(server, safe='')}/{uri}"


def split_server_uri(uri: str) -> tuple[str, str] | None:
    """(server, URI) of a per-server form; ``None`` for any other URI."""
    if not uri.startswith(_PREFIX):
        return None
    server, sep, inner = uri[len(_PREFIX) :].partition("/")
    return (unquote(server), inner) if sep and server else None


def _ambiguous(uri: str, servers: Sequence[str], why: str) -> UnknownName:
    """More than one server claims a URI equally: the error names the per-server form of each."""
    forms = " or ".join(server_uri(s, uri) for s in servers)
    return UnknownName("resource", uri, f"resource {uri!r} is ambiguous: {why} {', '.join(servers)}; read {forms}")


@dataclass(frozen=True)
class _Template:
    server: str
    text: str  # as the server listed it
    exposed: dict[str, Any]  # as the IDE sees it


def _specificity(text: str) -> tuple[int, int, int]:
    expressions = _EXPRESSION.findall(text)
    literal = len(_EXPRESSION.sub("", text))
    greedy = sum(1 for e in expressions if e[1:2] in ("+", "#"))
    return (literal, -greedy, -len(expressions))


class ResourceRoutes:
    """The resources and templates the IDE sees, and the route of every URI (the rules in the module docstring)."""

    def __init__(self, listings: Mapping[str, tuple[Sequence[dict[str, Any]], Sequence[dict[str, Any]]]]) -> None:
        """``listings``: server → (its resources, its templates), as the servers sent them."""
        by_uri: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        by_text: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        for server in sorted(listings):
            resources, templates = listings[server]
            seen: set[str] = set()
            for resource in resources:
                uri = resource.get("uri")
                if isinstance(uri, str) and uri not in seen:  # a server listing a URI twice: its first entry
                    seen.add(uri)
                    by_uri[uri].append((server, resource))
            for template in templates:
                text = template.get("uriTemplate")
                if isinstance(text, str):
                    by_text[text].append((server, template))

        self.listed: dict[str, tuple[str, str]] = {}
        """URI the IDE sees → (server, URI the server listed)."""
        self.clashes: dict[str, list[str]] = {}
        """URI listed by several servers → those servers."""
        self.resources: list[dict[str, Any]] = []
        for uri, owners in by_uri.items():
            wrap = len(owners) > 1 or uri.startswith(SCHEME)
            if len(owners) > 1:
                self.clashes[uri] = [server for server, _ in owners]
                log.info("catalog.resource_clash", uri=uri, servers=self.clashes[uri])
            for server, resource in owners:
                shown = server_uri(server, uri) if wrap else uri
                self.listed[shown] = (server, uri)
                self.resources.append({**resource, "uri": shown} if wrap else resource)

        self.raw_templates: list[_Template] = []
        for text, owners in by_text.items():
            wrap = len(owners) > 1 or text.startswith(SCHEME)
            for server, template in owners:
                view = {**template, "uriTemplate": server_uri(server, text)} if wrap else template
                self.raw_templates.append(_Template(server, text, view))
        self._parsed: list[tuple[_Template, UriTemplate, tuple[int, int, int]]] | None = None

    def _templates(self) -> list[tuple[_Template, UriTemplate, tuple[int, int, int]]]:
        """The templates, parsed on first use (the parser is the SDK's, whose import a tools-only start must not
        pay); malformed ones are left out of the list and the routes."""
        if self._parsed is None:
            from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate

            parsed = []
            for template in self.raw_templates:
                try:
                    parsed.append((template, UriTemplate.parse(template.text), _specificity(template.text)))
                except InvalidUriTemplate:
                    log.warning("catalog.bad_uri_template", server=template.server, template=template.text)
            self._parsed = parsed
        return self._parsed

    def templates(self) -> list[dict[str, Any]]:
        """The templates the IDE sees (well-formed ones only)."""
        return [template.exposed for template, _, _ in self._templates()]

    def route(self, uri: str) -> tuple[str, str]:
        """(server, the URI to send it) for a URI the IDE asks for."""
        found = self.listed.get(uri)
        if found is not None:
            return found
        explicit = split_server_uri(uri)
        if explicit is not None:
            server, inner = explicit
            if self.listed.get(server_uri(server, inner)) == (server, inner) or self.listed.get(inner) == (
                server,
                inner,
            ):
                return server, inner
            if any(t.server == server and parsed.match(inner) is not None for t, parsed, _ in self._templates()):
                return server, inner
            raise UnknownName("resource", uri)
        if uri in self.clashes:
            raise _ambiguous(uri, self.clashes[uri], "it is listed by")
        best: tuple[int, int, int] | None = None
        servers: list[str] = []
        for template, parsed, rank in self._templates():
            if best is not None and rank < best:
                continue
            if parsed.match(uri) is None:
                continue
            if best is None or rank > best:
                best, servers = rank, [template.server]
            elif template.server not in servers:
                servers.append(template.server)
        if not servers:
            raise UnknownName("resource", uri)
        if len(servers) > 1:
            raise _ambiguous(uri, servers, "templates match it equally in")
        return servers[0], uri
