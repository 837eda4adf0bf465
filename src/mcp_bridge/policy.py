"""The allowlist: which servers are approved, which of their tools may be used, and what the user turned off.

:class:`AllowlistSource` is the seam for where the allowlist comes from. Today it is the config's ``servers:``
section (:class:`LocalSource`); Port's catalog plugs in beside it. The check is made when listing **and** when
calling, so a tool that leaves the allowlist is denied at once.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mcp_bridge.config import ServerConfig, Settings


@dataclass(frozen=True)
class Allowlist:
    """Approved servers (name → settings) and the user's narrowing."""

    servers: Mapping[str, ServerConfig] = field(default_factory=dict)
    disabled_tools: tuple[str, ...] = ()
    source: str = "local config"

    def denial(self, server: str, tool: str, exposed: str) -> str | None:
        """Why this tool may not be listed or called, or ``None`` when it may."""
        config = self.servers.get(server)
        if config is None:
            return f"server {server!r} is not on the allowlist"
        if not config.allows(tool):
            return f"tool {tool!r} of server {server!r} is not on the allowlist ({self.source})"
        for pattern in self.disabled_tools:
            if fnmatch.fnmatchcase(exposed, pattern):
                return f"disabled by `disabled_tools` ({pattern!r})"
        return None

    def instructions(self, separator: str = "__") -> str:
        """What the model should know about the servers behind this bridge (returned from ``initialize``)."""
        lines = [
            f"Tools are named `<server>{separator}<tool>`; each server below is a remote MCP server approved for you."
        ]
        for name, server in sorted(self.servers.items()):
            about = server.description or server.title
            lines.append(f"- {name}: {about}" if about else f"- {name}")
        return "\n".join(lines)


class AllowlistSource(Protocol):
    """Where the allowlist comes from."""

    async def load(self) -> Allowlist: ...


class LocalSource:
    """The config file's ``servers:`` section is the allowlist."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def load(self) -> Allowlist:
        return from_settings(self._settings)


def from_settings(settings: Settings) -> Allowlist:
    return Allowlist(
        servers=dict(settings.servers),
        disabled_tools=tuple(settings.disabled_tools),
        source="local config",
    )
