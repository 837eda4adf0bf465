"""Settings: the models, where the file is found, and ``${env:NAME}`` interpolation.

The file is validated once, here, into frozen pydantic models; everything else reads those. A bad file raises one
:class:`~mcp_bridge.errors.ConfigError` whose message names the file, the key path and the reason.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mcp_bridge.errors import ConfigError

ENV_CONFIG = "MCP_BRIDGE_CONFIG"
ENV_HOME = "MCP_BRIDGE_HOME"
ENV_PROTOCOL_UPSTREAM = "MCP_BRIDGE_PROTOCOL_UPSTREAM"
"""Overrides ``protocol.upstream`` (and every server's own ``protocol``) when set: the era the bridge speaks to
servers, for trying or working around a server's era without editing the config."""
APP_NAME = "mcp-bridge"

_REF = re.compile(r"\$\{(env|keyring):([A-Za-z_][A-Za-z0-9_]*)\}")
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


AuthConfig = Annotated[NoAuth | ApiKeyAuth | OAuthAuth, Field(discriminator="type")]

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
    """Original tool names this server may expose; ``["*"]`` allows all; missing allows none."""
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

    def allows(self, tool: str) -> bool:
        """Whether the allowlist admits this original tool name."""
        allowed = self.allowed_tools or []
        return "*" in allowed or tool in allowed


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

    @model_validator(mode="after")
    def _check_base_url(self) -> PortConfig:
        if self.base_url is not None:
            parts = urlsplit(self.base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"base_url {self.base_url!r} is not an http(s) URL")
            if parts.scheme == "http" and not is_loopback_host(parts.hostname):
                raise ValueError(f"base_url {self.base_url!r}: plain http is allowed only to loopback")
        return self

    @property
    def api_url(self) -> str:
        return (self.base_url or PORT_REGIONS[self.region]).rstrip("/")

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
    """``auto``: the IDE's era, whichever it speaks."""
    upstream: Protocol = "auto"
    """``auto``: each server's newest era, found out once (``server/discover``, else ``initialize``) and
    remembered per server in ``$MCP_BRIDGE_HOME/upstream-eras.json``."""

    _protocol_choice = field_validator("ide", "upstream", mode="before")(protocol_choice)


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
                raise _MissingUrl(missing)
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


def load_config(
    explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Find, read, interpolate and validate the config file."""
    path = resolve_config_path(explicit)
    if not path.is_file():
        how = (
            "given with --config"
            if explicit
            else (f"from ${ENV_CONFIG}" if os.environ.get(ENV_CONFIG) else "the default location")
        )
        raise ConfigError(
            f"{path}: no config file there ({how}); create one from config.example.yaml "
            f"or point --config / ${ENV_CONFIG} at it",
            fix=f"create it: `mkdir -p {shlex.quote(str(path.parent))}`, then write {path} with a `servers:` list "
            "(or a `port:` section; config.example.yaml documents every key), or point --config at your file",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_config(text, path=path, environ=os.environ if environ is None else environ)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, first: int, again: int) -> None:
        super().__init__(f"line {again}: duplicate key {key!r} (also on line {first}); keep one of them")


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML forbids it; PyYAML keeps the last one,
    so a typo'd copy of a section would silently replace the first). Merge keys (``<<``) still override."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_config(
    text: str,
    *,
    path: Path | None = None,
    environ: Mapping[str, str],
    keyring: Callable[[str], str | None] | None = None,
) -> LoadedConfig:
    """Parse YAML text into settings; ``path`` only labels messages. ``keyring``: looks up a ``${keyring:NAME}``
    (default: the secrets stored with ``mcp-bridge secret``, read only when the text refers to one)."""
    where = str(path) if path else "<config>"
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of keys, not {type(raw).__name__}")
    interpolate = _Interpolation(environ, keyring, where)
    raw = interpolate(raw)
    secrets = interpolate.secrets
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(where, exc, secrets)) from None
    settings = _protocol_from_environment(settings, environ)
    if settings.port is not None:
        secrets.add(settings.port.client_secret)
    for server in settings.servers.values():
        if isinstance(server.auth, ApiKeyAuth):
            secrets.add(server.auth.value)
        elif isinstance(server.auth, OAuthAuth) and server.auth.client_secret:
            secrets.add(server.auth.client_secret)
    return LoadedConfig(settings=settings, path=path, secrets=frozenset(s for s in secrets if s))


def _protocol_from_environment(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """``$MCP_BRIDGE_PROTOCOL_UPSTREAM``, when set, as ``protocol.upstream`` for every server (their own
    ``protocol`` keys too)."""
    value = environ.get(ENV_PROTOCOL_UPSTREAM)
    if value is None or value == "":
        return settings
    try:
        protocol_choice(value.strip())
    except ValueError as exc:
        raise ConfigError(
            f"${ENV_PROTOCOL_UPSTREAM}: {exc}",
            fix=f"set it to one of {', '.join(PROTOCOLS)}, or unset it to use the config's `protocol.upstream`",
        ) from None
    chosen = value.strip()
    servers = {name: server.model_copy(update={"protocol": None}) for name, server in settings.servers.items()}
    protocol = settings.protocol.model_copy(update={"upstream": chosen})
    return settings.model_copy(update={"protocol": protocol, "servers": servers})


@dataclass
class _Interpolation:
    """Replaces ``${env:NAME}`` and ``${keyring:NAME}`` in every string of the raw config, collecting the values
    (secrets, redacted wherever they would appear)."""

    environ: Mapping[str, str]
    keyring: Callable[[str], str | None] | None
    where: str
    secrets: set[str] = field(default_factory=set)

    def __call__(self, value: Any, loc: tuple[Any, ...] = ()) -> Any:
        if isinstance(value, str):
            return _REF.sub(lambda match: self._lookup(match.group(1), match.group(2), loc), value)
        if isinstance(value, dict):
            return {k: self(v, (*loc, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, (*loc, i)) for i, v in enumerate(value)]
        return value

    def _lookup(self, kind: str, name: str, loc: tuple[Any, ...]) -> str:
        at = f"{self.where}: {_path(loc)}"
        if kind == "env":
            if name not in self.environ:
                raise ConfigError(
                    f"{at}: environment variable {name} is not set (referenced as ${{env:{name}}})",
                    fix=f"export {name} in the environment the bridge starts in; an IDE started from the Dock or the "
                    "Start menu does not see a shell's variables, so rather store it in the OS keyring with "
                    f"`mcp-bridge secret set {name}` and write ${{keyring:{name}}} instead of ${{env:{name}}}",
                )
            value = self.environ[name]
        else:
            if self.keyring is None:
                from mcp_bridge.keyring_store import NamedSecrets

                self.keyring = NamedSecrets(home_dir()).get
            try:
                found = self.keyring(name)
            except ConfigError as exc:  # no keyring backend
                raise ConfigError(f"{at}: cannot read ${{keyring:{name}}}: {exc}", fix=exc.fix) from None
            if found is None:
                raise ConfigError(
                    f"{at}: no secret {name} in the keyring (referenced as ${{keyring:{name}}})",
                    fix=f"store it with `mcp-bridge secret set {name}` (it asks for the value)",
                )
            value = found
        self.secrets.add(value)
        return value


def env_references(text: str) -> list[str]:
    """The environment variables a config's values refer to as ``${env:NAME}`` (comments do not count), sorted;
    empty when the text is not valid YAML (loading it says why)."""
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return []
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            names.update(name for kind, name in _REF.findall(value) if kind == "env")
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(raw)
    return sorted(names)


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


class _MissingUrl(ValueError):
    def __init__(self, servers: list[str]) -> None:
        super().__init__("url")
        self.servers = servers


def _format_validation(where: str, exc: ValidationError, secrets: set[str]) -> str:
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _MissingUrl):
            for server in cause.servers:
                lines.append(f"{where}: servers.{server}.url: required key is missing (needed unless `port:` is set)")
    if lines:
        return "\n".join(lines)
    for err in exc.errors(include_url=False, include_input=False):
        # Drop pydantic's discriminator tags ("api_key", only right after `auth`, so a server named "oauth" keeps
        # its name) and function names from the key path.
        raw_loc = err["loc"]
        loc = tuple(
            p
            for i, p in enumerate(raw_loc)
            if not (isinstance(p, str) and ((p in _AUTH_TAGS and i > 0 and raw_loc[i - 1] == "auth") or "[" in p))
        )
        kind = err["type"]
        if kind == "extra_forbidden":
            reason = "unknown key"
        elif kind == "missing":
            reason = "required key is missing"
        elif kind == "union_tag_invalid":
            reason = f"unknown type; expected one of {', '.join(sorted(_AUTH_TAGS))}"
        elif kind == "union_tag_not_found":
            reason = f"`type` is required (one of {', '.join(sorted(_AUTH_TAGS))})"
        else:
            reason = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {_path(loc)}: {reason}")
    message = "\n".join(lines)
    # Validator messages may quote a value (a URL, a header name) that came from the environment: never echo it.
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            message = message.replace(secret, "[redacted]")
    return message


_AUTH_TAGS = frozenset({"none", "api_key", "oauth"})
