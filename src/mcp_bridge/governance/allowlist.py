"""The allowlist: which servers are approved, which of their tools may be used, and what the user turned off.

:class:`AllowlistSource` is the seam for where it comes from: the config's ``servers:`` (:class:`LocalSource`) or
Port (:class:`PortSource`: entities of a blueprint, cached on disk as the last known good, failing closed once that
is older than ``max_stale``). The check is made when listing **and** when calling, so a tool that leaves the
allowlist is denied at once.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from mcp_bridge import risk
from mcp_bridge.config import (
    NATIVE_SERVER,
    SERVER_NAME_RULE,
    ApiKeyAuth,
    AuthConfig,
    NoAuth,
    OAuthAuth,
    PortConfig,
    PortTokenAuth,
    ServerConfig,
    Settings,
    server_name_ok,
)
from mcp_bridge.files import read_json_object, write_private_json
from mcp_bridge.logs import clean, get_logger

log = get_logger(__name__)

ALLOWLIST_CACHE = "allowlist.json"


@dataclass(frozen=True)
class Allowlist:
    """Approved servers (name → settings) and the user's narrowing."""

    servers: Mapping[str, ServerConfig] = field(default_factory=dict)
    disabled_tools: tuple[str, ...] = ()
    source: str = "local config"
    problems: Mapping[str, str] = field(default_factory=dict)
    """Servers that are approved but cannot be used yet, and why (e.g. a missing API key)."""
    fetched_at: float | None = None
    """When the source answered (wall clock); ``None`` for the local config."""
    note: str | None = None
    """Something the user should know about this allowlist (served from cache, or why it is empty)."""
    failed_closed: bool = False
    """No allowlist could be trusted (Port unreachable and no fresh enough cache): nothing is allowed."""
    user_disabled: frozenset[str] = frozenset()
    """Exposed names the user turned off with ``mcp-bridge tools disable`` (:mod:`~mcp_bridge.governance.narrowing`)."""

    def denial(self, server: str, tool: str, exposed: str, annotations: object = None) -> str | None:
        """Why this tool may not be listed or called, or ``None`` when it may (``annotations``: the tool's, for the
        risk classes of ``allowed_tools`` and ``denied_tools``)."""
        if self.failed_closed:
            return f"no trusted allowlist: {self.note}"
        config = self.servers.get(server)
        if config is None:
            return f"server {server!r} is not on the allowlist"
        if risk.matches(config.denied_tools, tool, annotations):
            return f"tool {tool!r} of server {server!r} is denied by `denied_tools` ({self.source})"
        if not risk.matches(config.allowed_tools or [], tool, annotations):
            return f"tool {tool!r} of server {server!r} is not on the allowlist ({self.source})"
        for pattern in self.disabled_tools:
            if fnmatch.fnmatchcase(exposed, pattern):
                return f"disabled by `disabled_tools` ({pattern!r})"
        if exposed in self.user_disabled:
            return f"disabled by you (`mcp-bridge tools enable {exposed}` turns it on again)"
        return None

    def prompt_denial(self, server: str, name: str) -> str | None:
        """Why this prompt (original name) may not be listed or got, or ``None`` when it may."""
        return self._other_denial(server, "prompt", name, "allowed_prompts")

    def resource_denial(self, server: str, uri: str) -> str | None:
        """Why this resource (the URI the server gets) may not be read, or ``None`` when it may."""
        return self._other_denial(server, "resource", uri, "allowed_resources")

    def _other_denial(self, server: str, kind: str, name: str, key: str) -> str | None:
        if self.failed_closed:
            return f"no trusted allowlist: {self.note}"
        config = self.servers.get(server)
        if config is None:
            return f"server {server!r} is not on the allowlist"
        allowed = config.allows_prompt(name) if kind == "prompt" else config.allows_resource(name)
        if not allowed:
            return f"{kind} {name!r} of server {server!r} is not allowed by `{key}` ({self.source})"
        return None

    def instructions(self, separator: str = "__") -> str:
        """What the model should know about the servers behind this bridge (returned from ``initialize``)."""
        if self.failed_closed:
            return f"mcp-bridge offers no tools right now: {self.note}"
        lines = [
            f"Tools are named `<server>{separator}<tool>`; each server below is a remote MCP server approved for you."
        ]
        for name, server in sorted(self.servers.items()):
            about = server.description or server.title
            lines.append(f"- {name}: {about}" if about else f"- {name}")
        if self.note:
            lines.append(f"Note: {self.note}")
        return "\n".join(lines)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "servers": len(self.servers),
            "fetched_at": self.fetched_at,
            "note": self.note,
            "failed_closed": self.failed_closed,
        }


def changes(old: Allowlist, new: Allowlist) -> list[tuple[str | None, str]]:
    """Human-readable differences between two allowlists, each with the server it concerns (``None``: all)."""
    out: list[tuple[str | None, str]] = []
    for name in sorted(set(old.servers) | set(new.servers)):
        a, b = old.servers.get(name), new.servers.get(name)
        if a is None and b is not None:
            out.append((name, f"server {name} added ({b.url}, tools {b.allowed_tools or []})"))
        elif b is None and a is not None:
            out.append((name, f"server {name} removed"))
        elif a is not None and b is not None:
            if a.url != b.url or a.auth != b.auth:
                out.append((name, f"server {name} changed its connection settings"))
            if sorted(a.allowed_tools or []) != sorted(b.allowed_tools or []):
                out.append((name, f"server {name} allowed tools {a.allowed_tools or []} -> {b.allowed_tools or []}"))
            if sorted(a.denied_tools) != sorted(b.denied_tools):
                out.append((name, f"server {name} denied tools {a.denied_tools} -> {b.denied_tools}"))
            for key in ("allowed_prompts", "allowed_resources"):
                if sorted(getattr(a, key) or []) != sorted(getattr(b, key) or []):
                    out.append((name, f"server {name} {key} {getattr(a, key) or []} -> {getattr(b, key) or []}"))
            if a.confirm != b.confirm:
                out.append((name, f"server {name} confirm: {a.confirm} -> {b.confirm}"))
            if (a.timeout, a.rate_limit) != (b.timeout, b.rate_limit):
                out.append((name, f"server {name} limits: timeout {b.timeout}, rate_limit {b.rate_limit}"))
            if a.always != b.always:
                out.append((name, f"server {name} tools listed always: {', '.join(b.always) or 'none'}"))
            if a.allow_sampling != b.allow_sampling:
                out.append((name, f"server {name} sampling {'allowed' if b.allow_sampling else 'no longer allowed'}"))
    if old.failed_closed != new.failed_closed:
        out.append((None, "allowlist failed closed" if new.failed_closed else "allowlist trusted again"))
    return out


class AllowlistSource(Protocol):
    """Where the allowlist comes from."""

    refresh_interval: float | None
    """Seconds between :meth:`load` calls; ``None`` when the source never changes while running."""

    def initial(self) -> Allowlist | None:
        """What to serve at once, before :meth:`load` has answered (``None``: nothing yet)."""

    async def load(self) -> Allowlist:
        """The current allowlist. Never raises: a failing source answers with a cached or failed-closed one."""

    def fresh(self) -> bool:
        """Whether the last :meth:`load` came from the source itself (not a fallback)."""


class LocalSource:
    """The config file's ``servers:`` section is the allowlist."""

    refresh_interval: float | None = None

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def initial(self) -> Allowlist:
        return from_settings(self._settings)

    async def load(self) -> Allowlist:
        return from_settings(self._settings)

    def fresh(self) -> bool:
        return True


def from_settings(settings: Settings) -> Allowlist:
    return Allowlist(
        servers=dict(settings.servers),
        disabled_tools=tuple(settings.disabled_tools),
        source="local config",
    )


class PortSearch(Protocol):
    async def search_entities(self, blueprint: str, query: dict[str, Any]) -> list[dict[str, Any]]: ...


class PortSource:
    """Port's entities are the allowlist; the last good answer is kept on disk and served while Port is away."""

    def __init__(self, settings: Settings, client: PortSearch, home: Path) -> None:
        assert settings.port is not None
        self._settings = settings
        self._port: PortConfig = settings.port
        self._client = client
        self.cache = AllowlistCache(home / ALLOWLIST_CACHE, cache_key(self._port))
        self.refresh_interval: float | None = self._port.refresh_interval
        self._fresh = False
        self.last_error: str | None = None

    def query(self) -> dict[str, Any]:
        rule = self._port.effective_approval
        return {"combinator": "and", "rules": [{"property": rule.property, "operator": "=", "value": rule.equals}]}

    def initial(self) -> Allowlist | None:
        cached = self.cache.load()
        if cached is None:
            return None
        entities, fetched_at = cached
        return _from_cache(self._settings, entities, fetched_at, why="Port not asked yet")

    async def load(self) -> Allowlist:
        from mcp_bridge.governance.port import PortError

        blueprint = self._port.effective_blueprint
        try:
            entities = await self._client.search_entities(blueprint, self.query())
        except PortError as exc:
            self._fresh = False
            self.last_error = str(exc)
            log.warning("allowlist.port_failed", error=self.last_error)
            cached = self.cache.load()
            if cached is None:
                return _failed_closed(
                    self._settings, f"Port is unavailable ({self.last_error}) and no allowlist is cached"
                )
            return _from_cache(self._settings, *cached, why=self.last_error)
        self._fresh = True
        self.last_error = None
        now = time.time()
        try:
            self.cache.save(entities, now)
        except OSError as exc:
            log.warning("allowlist.cache_write_failed", path=str(self.cache.path), error=str(exc))
        return _mapped(self._settings, entities, fetched_at=now, note=None)

    def fresh(self) -> bool:
        return self._fresh


def _from_cache(settings: Settings, entities: list[dict[str, Any]], fetched_at: float, *, why: str) -> Allowlist:
    assert settings.port is not None
    age = time.time() - fetched_at
    if age > settings.port.max_stale:
        return _failed_closed(
            settings,
            f"Port is unavailable ({why}) and the cached allowlist is {_age(age)} old, "
            f"past port.max_stale ({_age(settings.port.max_stale)})",
        )
    return _mapped(settings, entities, fetched_at=fetched_at, note=f"served from the cache of {_age(age)} ago ({why})")


def _failed_closed(settings: Settings, reason: str) -> Allowlist:
    fix = "check the network and port.client_id / port.client_secret, then run `mcp-bridge status`"
    return Allowlist(
        source="Port",
        disabled_tools=tuple(settings.disabled_tools),
        note=f"{reason}; {fix}",
        failed_closed=True,
    )


def _mapped(settings: Settings, entities: list[dict[str, Any]], *, fetched_at: float, note: str | None) -> Allowlist:
    servers, problems = map_entities(entities, settings)
    return Allowlist(
        servers=servers,
        disabled_tools=tuple(settings.disabled_tools),
        source="Port",
        problems=problems,
        fetched_at=fetched_at,
        note=note,
    )


def loading_from_port() -> Allowlist:
    """What a Port-backed bridge serves while Port has not answered yet and nothing is cached."""
    return Allowlist(source="Port", note="the allowlist is being loaded from Port")


def initial_allowlist(settings: Settings, home: Path) -> Allowlist | None:
    """What the allowlist source of ``serve`` offers at once, before it has answered (its ``initial()``): the
    config's ``servers:``, or Port's allowlist cached on disk; ``None`` while there is nothing (serve then offers
    :func:`loading_from_port`). Needs neither the network nor the SDK, so that the ``initialize`` answer can be
    built before the SDK is imported."""
    if settings.port is None:
        return LocalSource(settings).initial()
    cached = AllowlistCache(home / ALLOWLIST_CACHE, cache_key(settings.port)).load()
    if cached is None:
        return None
    return _from_cache(settings, *cached, why="Port not asked yet")


def map_entities(entities: list[dict[str, Any]], settings: Settings) -> tuple[dict[str, ServerConfig], dict[str, str]]:
    """Port entities → approved servers (with the local settings merged in), and per-server problems.

    An invalid entity (no or bad URL, unknown auth type, malformed tool list) is skipped with a warning naming it;
    the rest still load. A local ``servers:`` entry that Port does not list is ignored with a warning.
    """
    assert settings.port is not None
    rule = settings.port.effective_approval
    servers: dict[str, ServerConfig] = {}
    problems: dict[str, str] = {}
    for entity in entities:
        ident = entity.get("identifier")
        if not isinstance(ident, str) or not server_name_ok(ident):
            log.warning(
                "allowlist.entity_skipped",
                entity=str(ident),
                reason=f"its identifier cannot be a server name: a server name may only use {SERVER_NAME_RULE}",
            )
            continue
        props = entity.get("properties") or {}
        if not isinstance(props, dict) or props.get(rule.property) != rule.equals:
            continue  # not approved (Port's query should not have returned it)
        try:
            server, problem = _server_from_entity(ident, entity, props, settings)
        except _Skip as skip:
            log.warning("allowlist.entity_skipped", entity=ident, reason=str(skip))
            continue
        servers[ident] = server
        if problem:
            problems[ident] = problem
    native = _native_server(settings, servers)
    if native is not None:
        servers[NATIVE_SERVER] = native
    for name in settings.servers:
        if name not in servers:
            log.warning("allowlist.local_entry_ignored", server=name, reason="Port does not list this server for you")
    return servers, problems


def _native_server(settings: Settings, servers: Mapping[str, ServerConfig]) -> ServerConfig | None:
    """Port's own MCP server as server ``port`` (``port.native_tools``): all its tools, prompts and resources allowed
    (Port's RBAC applies on its side); a local ``servers: port:`` entry may override its URL and auth."""
    assert settings.port is not None
    local = settings.servers.get(NATIVE_SERVER)
    url = (local.url if local is not None else None) or settings.port.native_url
    if url is None or not settings.port.native_tools:
        return None
    if NATIVE_SERVER in servers:
        log.warning("allowlist.native_tools_skipped", reason="Port lists a server named `port` itself")
        return None
    auth: AuthConfig
    if local is not None and "auth" in local.model_fields_set:
        auth = local.auth
    elif settings.port.mcp_auth == "port_token":
        auth = PortTokenAuth(type="port_token")
    else:
        auth = OAuthAuth(type="oauth")
    return ServerConfig(
        url=url,
        allowed_tools=["*"],
        allowed_prompts=["*"],
        allowed_resources=["*"],
        auth=auth,
        allow_insecure_http=bool(local and local.allow_insecure_http),
        protocol=local.protocol if local else None,
        title="Port",
        description="Port's own tools: your software catalog (blueprints, entities), scorecards and self-service "
        "actions.",
    )


class _Skip(Exception):
    pass


def _server_from_entity(
    ident: str, entity: dict[str, Any], props: dict[str, Any], settings: Settings
) -> tuple[ServerConfig, str | None]:
    assert settings.port is not None
    fields = settings.port.effective_fields
    url = props.get(fields.url)
    if not isinstance(url, str) or not url:
        raise _Skip(f"property {fields.url!r} (the server URL) is missing")
    tools = props.get(fields.allowed_tools)
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, str) for t in tools)):
        raise _Skip(f"property {fields.allowed_tools!r} is not a list of tool names")
    auth_type = props.get(fields.auth_type) or "oauth"
    if auth_type not in ("oauth", "api_key", "none"):
        raise _Skip(f"unknown auth type {auth_type!r} (expected oauth, api_key or none)")
    oauth_config = props.get(fields.oauth_config)
    local = settings.servers.get(ident)
    auth, problem = _merge_auth(ident, auth_type, oauth_config if isinstance(oauth_config, dict) else {}, local)
    description = props.get(fields.description)
    title = entity.get("title")
    pins = props.get(fields.tool_pins)
    if pins is not None and not (isinstance(pins, dict) and all(isinstance(v, str) for v in pins.values())):
        raise _Skip(f"property {fields.tool_pins!r} is not an object of tool name → fingerprint")
    sampling = props.get(fields.allow_sampling)
    if sampling is not None and not isinstance(sampling, bool):
        problem = problem or f"property {fields.allow_sampling!r} is not true or false; sampling stays off"
    denied = props.get(fields.denied_tools)
    if denied is not None and not (isinstance(denied, list) and all(isinstance(t, str) for t in denied)):
        raise _Skip(f"property {fields.denied_tools!r} is not a list of tool names, patterns or classes")
    others: dict[str, Any] = {}
    for key in ("allowed_prompts", "allowed_resources"):
        value = props.get(getattr(fields, key))
        if value is not None and not (isinstance(value, list) and all(isinstance(t, str) for t in value)):
            raise _Skip(f"property {getattr(fields, key)!r} is not a list of names or patterns")
        others[key] = value
    confirm = props.get(fields.confirm)
    if confirm is not None:
        if confirm not in ("destructive", "all", "none"):
            raise _Skip(f"property {fields.confirm!r} is not one of destructive, all, none")
        others["confirm"] = confirm
    always = props.get(fields.always)
    if always is not None and not (isinstance(always, list) and all(isinstance(t, str) for t in always)):
        problem = problem or f"property {fields.always!r} is not a list of tool names; none is listed always"
        always = None
    limits: dict[str, Any] = {}
    for key in ("timeout", "rate_limit"):
        value = props.get(getattr(fields, key))
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise _Skip(f"property {getattr(fields, key)!r} is not a positive number")
        limits[key] = int(value) if key == "rate_limit" else float(value)
    data = {
        **limits,
        **others,
        "url": url,
        "allowed_tools": tools,
        "denied_tools": denied or [],
        "allow_sampling": sampling is True,
        "always": always or [],
        "auth": auth,
        "allow_insecure_http": bool(local and local.allow_insecure_http),
        "protocol": local.protocol if local else None,
        "title": title if isinstance(title, str) else None,
        "description": description if isinstance(description, str) else None,
    }
    try:
        server = ServerConfig.model_validate(data)
    except ValidationError as exc:
        raise _Skip(clean(_reasons(exc))) from None
    # Pins are set after validation: a malformed one must not drop the server, it blocks its tool (fail closed).
    return server.model_copy(update={"tool_pins": pins}) if pins else server, problem


def _merge_auth(
    ident: str, auth_type: str, oauth_config: dict[str, Any], local: ServerConfig | None
) -> tuple[AuthConfig, str | None]:
    local_auth = local.auth if local else None
    if auth_type == "none":
        if local_auth is not None and not isinstance(local_auth, NoAuth):
            log.warning("allowlist.local_auth_ignored", server=ident, reason="Port says this server needs no auth")
        return NoAuth(type="none"), None
    if auth_type == "api_key":
        if isinstance(local_auth, ApiKeyAuth):
            return local_auth, None
        hint = (
            f'needs an API key: add `auth: {{type: api_key, header: Authorization, value: "Bearer ${{env:...}}"}}` '
            f"under servers.{ident} in your config"
        )
        return NoAuth(type="none"), hint
    # OAuth: client id and scopes from the local config or Port's oauth_config; the secret only from local config.
    mine = local_auth if isinstance(local_auth, OAuthAuth) else None
    client_id = (mine.client_id if mine else None) or _str(oauth_config.get("client_id"))
    scopes = (mine.scopes if mine else None) or _strings(oauth_config.get("scopes"))
    cimd = (mine.client_metadata_url if mine else None) or _str(oauth_config.get("client_metadata_url"))
    try:
        auth = OAuthAuth(
            type="oauth",
            client_id=client_id,
            client_secret=mine.client_secret if mine else None,
            scopes=scopes,
            resource=mine.resource if mine else True,
            redirect_port=mine.redirect_port if mine else None,
            client_metadata_url=cimd,
        )
    except ValidationError as exc:
        raise _Skip(clean(f"oauth_config.client_metadata_url: {_reasons(exc)}")) from None
    return auth, None


def _reasons(exc: ValidationError) -> str:
    """A validation error's messages, one line."""
    return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors(include_url=False))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def cache_key(port: PortConfig) -> str:
    """Which Port answer a cache file holds: endpoint, credentials' id, blueprint and rule (RBAC differs per user)."""
    material = json.dumps(
        [
            port.api_url,
            port.client_id,
            port.effective_blueprint,
            port.effective_fields.model_dump(),
            port.effective_approval.model_dump(),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


class AllowlistCache:
    """The last allowlist Port sent (raw entities), on disk: atomic replace, mode 0600, no secrets."""

    VERSION = 1

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key

    def load(self) -> tuple[list[dict[str, Any]], float] | None:
        data = read_json_object(self.path, "allowlist cache")
        if data is None or data.get("version") != self.VERSION or data.get("key") != self.key:
            return None  # another Port, blueprint or user: not ours to serve
        entities, fetched_at = data.get("entities"), data.get("fetched_at")
        if not isinstance(entities, list) or not isinstance(fetched_at, int | float):
            return None
        return [e for e in entities if isinstance(e, dict)], float(fetched_at)

    def save(self, entities: list[dict[str, Any]], fetched_at: float) -> None:
        payload = {"version": self.VERSION, "key": self.key, "fetched_at": fetched_at, "entities": entities}
        write_private_json(self.path, payload)
