"""Settings: the models, and where the config file and the bridge's home are found.

The file is validated once (:mod:`mcp_bridge.config.load`) into these frozen pydantic models; everything else reads
those.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mcp_bridge import risk
from mcp_bridge.errors import ConfigError

ENV_CONFIG = "MCP_BRIDGE_CONFIG"
ENV_HOME = "MCP_BRIDGE_HOME"
ENV_PROTOCOL_UPSTREAM = "MCP_BRIDGE_PROTOCOL_UPSTREAM"
ENV_PROTOCOL_IDE = "MCP_BRIDGE_PROTOCOL_IDE"
"""Overrides ``protocol.upstream`` (and every server's own ``protocol``) when set: the era the bridge speaks to
servers, for trying or working around a server's era without editing the config."""
APP_NAME = "mcp-bridge"

"""``${env:NAME}`` (an environment variable) or ``${keyring:NAME}`` (a secret stored with ``mcp-bridge secret``)."""
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_SERVER_NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_-])?")
"""A server's name is its namespace, and may one day name a file or a URI (``mcp-bridge://<server>/...``): ASCII
letters, digits, ``_``, ``-`` and ``.``, not starting with ``.`` or ``-``, not ending with ``.``, no ``..``
(:func:`server_name_ok` matches it against the whole name). A subset of Port's
entity identifiers (which also allow Unicode letters and ``@ + : \\ / =``), without the characters that are unsafe in a
path or a URI authority (``/ \\ : @``, ``.`` and ``..``, a leading ``-`` that reads as an option)."""
_HEX64 = re.compile(r"[0-9a-f]{64}")
SERVER_NAME_RULE = "ASCII letters, digits, '_', '-' and '.', not starting with '-' or '.', not ending with '.', no '..'"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoAuth(_Model):
    """The server needs no credentials."""

    type: Literal["none"]


class ApiKeyAuth(_Model):
    """A static credential sent in one header on every request (normally ``${env:...}``)."""

    type: Literal["api_key"]
    header: str = "Authorization"
    value: str = Field(min_length=1, repr=False)

    @field_validator("header")
    @classmethod
    def _header_token(cls, v: str) -> str:
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", v):
            raise ValueError(f"{v!r} is not a valid HTTP header name")
        return v


class OAuthAuth(_Model):
    """OAuth 2.1 through discovery; ``client_id`` (and its secret) for a manually registered client."""

    type: Literal["oauth"]
    client_id: str | None = None
    client_secret: str | None = Field(default=None, repr=False)
    scopes: list[str] | None = None
    resource: bool = True
    """Send the RFC 8707 ``resource`` parameter (Entra ID rejects it: set false there)."""
    redirect_port: int | None = Field(default=None, ge=1, le=65535)
    """A fixed loopback callback port, for clients registered with a fixed redirect URI."""
    client_metadata_url: str | None = None
    """A Client ID Metadata Document the organisation hosts (an HTTPS URL with a path): used as the client id where
    the authorization server supports such documents, instead of registering a client (DCR)."""

    @field_validator("client_metadata_url")
    @classmethod
    def _cimd_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlsplit(value)
        if parsed.scheme != "https" or not parsed.netloc or parsed.path in ("", "/"):
            raise ValueError(
                f"must be an https:// URL with a path, where the client's metadata document is served; got {value!r}"
            )
        return value


class PortTokenAuth(_Model):
    """The access token of the bridge's own Port credentials (``port.client_id``/``client_secret``), as a bearer
    token: for Port's MCP server where it accepts it (``port.mcp_auth: port_token``)."""

    type: Literal["port_token"]


AuthConfig = Annotated[NoAuth | ApiKeyAuth | OAuthAuth | PortTokenAuth, Field(discriminator="type")]

Protocol = Literal["auto", "legacy", "2026-07-28"]
"""Which protocol era to speak on one side: ``auto`` (find out, and remember per server), ``legacy`` (the handshake
era: ``initialize``, 2025-11-25 and older, the version agreed in the handshake) or ``2026-07-28``."""
PROTOCOLS: tuple[str, ...] = ("auto", "legacy", "2026-07-28")


def protocol_choice(value: object) -> object:
    """A ``protocol`` value checked, with a message that says what to write instead (a pydantic ``before``
    validator; the model's ``Literal`` type keeps it exact). YAML reads an unquoted ``2026-07-28`` as a date: it
    counts as the version it spells."""
    if isinstance(value, datetime.date):
        value = value.isoformat()
    if value is None or value in PROTOCOLS:
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        raise ValueError(
            f"{value!r} is not a choice here: write `legacy` for the handshake era (2025-11-25 and older; the "
            "version is agreed in the handshake), `2026-07-28`, or `auto`"
        )
    raise ValueError(f"{value!r} is not one of {' | '.join(PROTOCOLS)}")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and any loopback address (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_pin(value: object) -> str | None:
    """A pin as written in Port or the config (``sha256:<hex>`` or bare hex, any case) → ``sha256:<hex>``;
    ``None`` when it is not a SHA-256 fingerprint at all."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower().removeprefix("sha256:")
    return f"sha256:{text}" if _HEX64.fullmatch(text) else None


class ServerConfig(_Model):
    """One remote MCP server reached over streamable HTTP."""

    url: str | None = None
    """Required without ``port:``; with ``port:`` the URL comes from Port and this key is ignored."""
    allowed_tools: list[str] | None = None
    """Original tool names (or ``fnmatch`` patterns, or risk classes such as ``@read_only``: :mod:`mcp_bridge.risk`)
    this server may expose; ``["*"]`` allows all; missing allows none."""
    denied_tools: list[str] = Field(default_factory=list)
    """Names, patterns or risk classes this server may never expose: wins over ``allowed_tools``."""
    allowed_prompts: list[str] | None = None
    """Prompt names (or ``fnmatch`` patterns) this server may expose; ``["*"]`` allows all; missing allows none."""
    allowed_resources: list[str] | None = None
    """Resource URI patterns (``fnmatch`` globs: ``docs://pages/*``) this server may be read at; ``["*"]`` allows
    all; missing allows none. A template is listed when its text matches a pattern; a read is checked on the URI
    the server gets."""
    confirm: Literal["destructive", "all", "none"] = "none"
    """Ask the user (an elicitation request to the IDE) before a call: of a tool outside ``@non_destructive``
    (``destructive``), of every tool (``all``), or never (``none``)."""
    auth: AuthConfig = Field(default_factory=lambda: NoAuth(type="none"))
    allow_insecure_http: bool = False
    """Allow plain ``http://`` to a host that is not loopback (refused by default)."""
    title: str | None = None
    description: str | None = None
    """When to use this server; goes into the ``instructions`` the bridge returns from ``initialize``."""
    tool_pins: dict[str, str] | None = None
    """Tool name → the fingerprint of its approved definition (``sha256:<hex>``); wins over local pins."""
    protocol: Protocol | None = None
    """The era to speak to this server; ``None``: ``protocol.upstream``."""

    _protocol_choice = field_validator("protocol", mode="before")(protocol_choice)
    allow_sampling: bool = False
    """Let this server ask the IDE's model for completions (``sampling/createMessage``): off by default, since it
    spends the user's model on the server's prompts."""
    always: list[str] = Field(default_factory=list)
    """Original tool names (or ``fnmatch`` patterns) listed directly even when the catalog is in search mode."""
    timeout: float | None = Field(default=None, gt=0, le=86_400)
    """Seconds a call to this server may take (``None``: ``timeouts.call``); past it the call is cancelled upstream
    and answered with an error that says so."""
    tool_timeouts: dict[str, float] = Field(default_factory=dict)
    """Per original tool name: its own ``timeout``, winning over the server's."""
    rate_limit: int | None = Field(default=None, ge=1, le=100_000)
    """Calls per minute to this server; a call past it is denied at once (never queued)."""

    @field_validator("tool_pins")
    @classmethod
    def _pins_are_fingerprints(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for tool, pin in (v or {}).items():
            if normalize_pin(pin) is None:
                raise ValueError(f"tool_pins[{tool!r}] is not a sha256 fingerprint (sha256:<64 hex digits>)")
        return v

    @model_validator(mode="after")
    def _check_url(self) -> ServerConfig:
        if self.url is None:
            return self
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {self.url!r} is not an http(s) URL")
        if parts.username or parts.password:
            raise ValueError("url must not carry credentials; use `auth` instead")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname) and not self.allow_insecure_http:
            raise ValueError(
                f"url {self.url!r} uses plain http to a host that is not loopback; "
                "use https, or set `allow_insecure_http: true` for this server if you accept that risk"
            )
        return self

    @property
    def endpoint(self) -> str:
        """The URL to connect to (always set on servers the allowlist approved)."""
        if self.url is None:
            raise ConfigError("a server without a url cannot be connected")
        return self.url

    @field_validator("tool_timeouts")
    @classmethod
    def _positive_timeouts(cls, v: dict[str, float]) -> dict[str, float]:
        for tool, seconds in v.items():
            if not 0 < seconds <= 86_400:
                raise ValueError(f"tool_timeouts[{tool!r}] must be seconds above 0 and at most 86400")
        return v

    def timeout_for(self, tool: str) -> float | None:
        """The seconds a call of this tool may take (``None``: the global ``timeouts.call``)."""
        return self.tool_timeouts.get(tool, self.timeout)

    @field_validator("allowed_tools", "denied_tools")
    @classmethod
    def _known_classes(cls, v: list[str] | None) -> list[str] | None:
        unknown = risk.unknown_classes(v or [])
        if unknown:
            raise ValueError(f"unknown risk class {', '.join(unknown)}; the classes are {', '.join(risk.CLASSES)}")
        return v

    @field_validator("allowed_prompts", "allowed_resources")
    @classmethod
    def _no_classes(cls, v: list[str] | None) -> list[str] | None:
        classes = [p for p in v or [] if p.startswith("@")]
        if classes:
            raise ValueError(f"risk classes ({', '.join(classes)}) apply to tools only; use names or patterns")
        return v

    def allows_prompt(self, name: str) -> bool:
        return risk.matches(self.allowed_prompts or [], name, None)

    def allows_resource(self, uri: str) -> bool:
        """Whether the allowlist admits a read of this URI (as the server gets it) or a template with this text."""
        return risk.matches(self.allowed_resources or [], uri, None)

    def needs_confirmation(self, annotations: object) -> bool:
        """Whether a call of a tool with these annotations is asked of the user first (``confirm``)."""
        if self.confirm == "all":
            return True
        return self.confirm == "destructive" and "@non_destructive" not in risk.classes_of(annotations)

    def allows(self, tool: str, annotations: object = None) -> bool:
        """Whether the allowlist admits this tool (original name; ``annotations`` for the risk classes)."""
        if risk.matches(self.denied_tools, tool, annotations):
            return False
        return risk.matches(self.allowed_tools or [], tool, annotations)

    def may_allow(self, tool: str) -> bool:
        """Whether some annotations would let the allowlist admit this tool (its pins must watch it: a hint the
        server flips could let it in)."""
        names_only = [p for p in self.denied_tools if not p.startswith("@")]
        return not risk.matches(names_only, tool, None) and risk.could_match(self.allowed_tools or [], tool)


class NamingConfig(_Model):
    separator: str = "__"
    max_length: int = Field(default=64, ge=16, le=128)

    @field_validator("separator")
    @classmethod
    def _separator_safe(cls, v: str) -> str:
        if not _SAFE_NAME.match(v):
            raise ValueError("separator may only use A-Z, a-z, 0-9, '_' and '-'")
        return v


class TimeoutsConfig(_Model):
    connect: float = Field(default=10, gt=0)
    call: float = Field(default=120, gt=0)
    startup_wait: float = Field(default=3, ge=0, le=30)
    login: float = Field(default=300, gt=0)
    """Seconds to wait for a person to finish an OAuth login in the browser."""


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    file: str | None = None
    """Also write JSON log lines to this file (appended)."""


class PortFields(_Model):
    """Which entity properties hold what the bridge needs (property identifiers of the blueprint)."""

    url: str = "url"
    allowed_tools: str = "allowed_tools"
    auth_type: str = "auth_type"
    oauth_config: str = "oauth_config"
    description: str = "description"
    tool_pins: str = "tool_pins"
    allow_sampling: str = "allow_sampling"
    always: str = "always"
    denied_tools: str = "denied_tools"
    allowed_prompts: str = "allowed_prompts"
    allowed_resources: str = "allowed_resources"
    confirm: str = "confirm"
    timeout: str = "timeout"
    rate_limit: str = "rate_limit"


class PortApproval(_Model):
    """The rule an entity must match to be on the allowlist: ``properties[property] == equals``."""

    property: str
    equals: str | bool | int


PORT_PRESETS: dict[str, tuple[str, PortFields, PortApproval]] = {
    # Port's built-in blueprint of MCP connectors.
    "mcp_server": ("_mcp_server", PortFields(), PortApproval(property="exposed", equals=True)),
    # The blueprint of Port's "Manage MCP server registry" guide.
    "mcp_registry": (
        "mcpRegistry",
        PortFields(url="endpoint", allowed_tools="tools"),
        PortApproval(property="status", equals="approved"),
    ),
}

PORT_REGIONS = {"eu": "https://api.port.io", "us": "https://api.us.port.io"}
PORT_MCP_REGIONS = {"eu": "https://mcp.port.io/v1", "us": "https://mcp.us.port.io/v1"}
"""Port's remote MCP server per region, as Port's docs give them."""
NATIVE_SERVER = "port"
"""The server name of Port's own MCP server (``port.native_tools``)."""


class PortConfig(_Model):
    """Port as the source of the allowlist."""

    region: Literal["eu", "us"] = "eu"
    base_url: str | None = None
    """Overrides ``region`` (tests point it at a local double)."""
    client_id: str = Field(min_length=1)
    client_secret: str = Field(min_length=1, repr=False)
    preset: Literal["mcp_server", "mcp_registry"] = "mcp_server"
    blueprint: str | None = None
    """Default: the preset's blueprint (``_mcp_server`` or ``mcpRegistry``)."""
    fields: PortFields | None = None
    """Default: the preset's property names."""
    approved_when: PortApproval | None = None
    """Default: the preset's rule (``exposed == true`` or ``status == approved``)."""
    refresh_interval: float = Field(default=300, ge=1)
    max_stale: float = Field(default=86400, ge=0)
    audit_blueprint: str | None = "mcp_tool_invocation"
    timeout: float = Field(default=10, gt=0)
    """Seconds for one request to Port."""
    native_tools: bool = True
    """Also connect to Port's own MCP server, as server ``port`` (its tools governed like any server's, all allowed by
    default: Port's RBAC applies on its side)."""
    mcp_url: str | None = None
    """Port's MCP server. Default: the documented endpoint of ``region``; none when ``base_url`` points elsewhere (a
    stand-in: give it here)."""
    mcp_auth: Literal["oauth", "port_token"] = "oauth"
    """How the bridge signs in to Port's MCP server: OAuth, as Port documents it (a browser login, like any OAuth
    server), or ``port_token``: the access token of ``client_id``/``client_secret``, where Port accepts it."""

    @model_validator(mode="after")
    def _check_base_url(self) -> PortConfig:
        for key, url in (("base_url", self.base_url), ("mcp_url", self.mcp_url)):
            if url is None:
                continue
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{key} {url!r} is not an http(s) URL")
            if parts.scheme == "http" and not is_loopback_host(parts.hostname):
                raise ValueError(f"{key} {url!r}: plain http is allowed only to loopback")
        return self

    @property
    def api_url(self) -> str:
        return (self.base_url or PORT_REGIONS[self.region]).rstrip("/")

    @property
    def native_url(self) -> str | None:
        """Where Port's own MCP server is (``None``: native tools off, or no known endpoint)."""
        if not self.native_tools:
            return None
        if self.mcp_url is not None:
            return self.mcp_url
        return None if self.base_url is not None else PORT_MCP_REGIONS[self.region]

    @property
    def effective_blueprint(self) -> str:
        return self.blueprint or PORT_PRESETS[self.preset][0]

    @property
    def effective_fields(self) -> PortFields:
        return self.fields or PORT_PRESETS[self.preset][1]

    @property
    def effective_approval(self) -> PortApproval:
        return self.approved_when or PORT_PRESETS[self.preset][2]


class AuditConfig(_Model):
    arguments: Literal["none", "digest", "redacted", "full"] = "digest"
    """What of a call's arguments an audit event carries: nothing, a SHA-256 digest, the keys with secret-looking
    values masked and long strings cut, or everything."""
    jsonl: str | None = None
    """Also append each event to this local JSONL file (rotated by size, 3 old files kept)."""
    jsonl_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    spool_max_events: int = Field(default=200_000, ge=100)
    """Events kept while Port is unreachable; past it the oldest are dropped, each time with an error in the log."""


class ProtocolConfig(_Model):
    """Which protocol era the bridge speaks: to the IDE (``ide``) and to the servers (``upstream``)."""

    ide: Protocol = "auto"
    """``auto``: the IDE's era, whichever it speaks; ``legacy`` or ``2026-07-28``: only that era (a request of the
    other gets the error a server of this era alone gives: -32022 with the versions it supports)."""
    upstream: Protocol = "auto"
    """``auto``: each server's newest era, found out once (``server/discover``, else ``initialize``) and
    remembered per server in ``$MCP_BRIDGE_HOME/upstream-eras.json``."""

    _protocol_choice = field_validator("ide", "upstream", mode="before")(protocol_choice)


class CatalogConfig(_Model):
    """How the tools are listed to the IDE: every allowed tool (``full``), or a search tool, a call tool and a few
    tools directly (``search``), or ``full`` while the allowed tools fit the IDE's budget (``auto``)."""

    mode: Literal["full", "search", "auto"] = "auto"
    max_tools: int | None = Field(default=None, ge=3, le=10_000)
    """The most tools to list; ``None``: the IDE's known limit (by its ``clientInfo.name``), else 128."""


class TelemetryConfig(_Model):
    """OpenTelemetry traces and metrics of the bridge itself, exported over OTLP/HTTP (protobuf). Off unless
    ``enabled``: the ``OTEL_EXPORTER_OTLP_*`` variables configure the exporter (endpoint, headers, timeout, TLS) but
    never turn it on. Needs the ``otel`` extra (``pip install 'mcp-bridge[otel]'``)."""

    enabled: bool = False
    endpoint: str | None = None
    """The collector's OTLP/HTTP base URL (``http://127.0.0.1:4318``; ``/v1/traces`` and ``/v1/metrics`` are
    appended); ``None``: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the per-signal variables), else the OTLP default."""
    service_name: str = Field(default="mcp-bridge", min_length=1)
    """``service.name`` (``OTEL_SERVICE_NAME`` wins, as the SDK has it)."""
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    """More resource attributes (beside ``OTEL_RESOURCE_ATTRIBUTES``); ``user.email`` comes from ``user.email``."""
    metrics_interval: float = Field(default=60, ge=1, le=3600)
    """Seconds between metric exports."""
    propagate: bool = True
    """Send the trace context to the servers (``traceparent``/``tracestate`` in a request's ``_meta`` and HTTP
    headers), so that their spans join the bridge's traces; ``false``: none is sent, not the IDE's either (trace
    ids of the organisation's stay inside it; the servers then skip the context's handling too)."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (OTLP over HTTP)")
        return v


class UserConfig(_Model):
    email: str | None = None
    """Recorded in audit events (Port's API has no "who am I")."""


class Settings(_Model):
    """The whole configuration file."""

    port: PortConfig | None = None
    servers: dict[str, ServerConfig] = Field(default_factory=dict)

    disabled_tools: list[str] = Field(default_factory=list)
    """Exposed names (or ``fnmatch`` patterns) the user turns off; never widens the allowlist."""
    naming: NamingConfig = Field(default_factory=NamingConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    user: UserConfig | None = None
    auto_login: bool = True
    """``serve`` opens the browser once for a server that needs an OAuth login (then waits for ``login``)."""
    token_store: Literal["keyring", "file"] = "keyring"  # noqa: S105 - a store name, not a password
    """Where OAuth tokens live: the OS keyring, or (explicit, weaker) one 0600 file under $MCP_BRIDGE_HOME."""
    on_tool_change: Literal["block", "warn", "accept"] = "block"
    """What a tool whose definition no longer matches its pin becomes: hidden and denied, kept with a warning, or
    kept and re-pinned (see :mod:`mcp_bridge.governance.pins`). Every change is audited."""
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)

    def upstream_protocol(self, server: ServerConfig) -> Protocol:
        """The era to speak to ``server``: its own ``protocol``, else ``protocol.upstream`` (the environment's
        override is already in both, see :func:`parse_config`)."""
        return server.protocol or self.protocol.upstream

    @field_validator("servers")
    @classmethod
    def _server_names(cls, v: dict[str, ServerConfig]) -> dict[str, ServerConfig]:
        for name in v:
            if not server_name_ok(name or ""):
                raise ValueError(f"server name {name!r} may only use {SERVER_NAME_RULE}")
        return v

    @model_validator(mode="after")
    def _urls_without_port(self) -> Settings:
        if self.port is None:
            missing = [name for name, server in self.servers.items() if server.url is None]
            if missing:
                raise MissingUrl(missing)
        return self


@dataclass(frozen=True)
class LoadedConfig:
    """Validated settings plus where they came from and which strings are secret."""

    settings: Settings
    path: Path | None
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    """Every value substituted from the environment and every credential: redacted wherever it would appear."""


def server_name_ok(name: str) -> bool:
    """Whether ``name`` can be a server's name (its namespace): see :data:`SERVER_NAME_RULE`."""
    return bool(_SERVER_NAME.fullmatch(name))


def default_config_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "config.yaml"


def home_dir() -> Path:
    """``$MCP_BRIDGE_HOME`` or the platform's user data dir; created (mode 0700) on first use."""
    env = os.environ.get(ENV_HOME)
    if env:
        path = Path(env).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """``--config``, then ``$MCP_BRIDGE_CONFIG``, then the user config dir."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env).expanduser()
    return default_config_path()


class MissingUrl(ValueError):
    def __init__(self, servers: list[str]) -> None:
        super().__init__("url")
        self.servers = servers
