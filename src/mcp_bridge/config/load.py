"""Reading the config file: the YAML (duplicate keys refused), ``${env:NAME}`` and ``${keyring:NAME}`` interpolation,
and validation into :class:`~mcp_bridge.config.model.Settings`, with one clear error naming the file, the key path and
the reason."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mcp_bridge.config.model import (
    ENV_CONFIG,
    ENV_PROTOCOL_IDE,
    ENV_PROTOCOL_UPSTREAM,
    PROTOCOLS,
    ApiKeyAuth,
    LoadedConfig,
    MissingUrl,
    OAuthAuth,
    Settings,
    home_dir,
    protocol_choice,
    resolve_config_path,
)
from mcp_bridge.errors import ConfigError

_REF = re.compile(r"\$\{(env|keyring):([A-Za-z_][A-Za-z0-9_]*)\}")


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
    settings = _ide_protocol_from_environment(_protocol_from_environment(settings, environ), environ)
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


def _ide_protocol_from_environment(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """``$MCP_BRIDGE_PROTOCOL_IDE``, when set, as ``protocol.ide``."""
    value = (environ.get(ENV_PROTOCOL_IDE) or "").strip()
    if not value:
        return settings
    try:
        protocol_choice(value)
    except ValueError as exc:
        raise ConfigError(
            f"${ENV_PROTOCOL_IDE}: {exc}",
            fix=f"set it to one of {', '.join(PROTOCOLS)}, or unset it to use the config's `protocol.ide`",
        ) from None
    return settings.model_copy(update={"protocol": settings.protocol.model_copy(update={"ide": value})})


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


def _format_validation(where: str, exc: ValidationError, secrets: set[str]) -> str:
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, MissingUrl):
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
