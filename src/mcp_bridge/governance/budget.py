"""How many tools an IDE takes, and so whether the catalog is listed in full or behind a search tool.

Clients cap the tools they take, and every tool definition listed costs the model context. ``catalog.mode: auto``
(the default) lists every allowed tool while they fit the IDE's budget and switches to search mode above it
(:mod:`mcp_bridge.governance.search`). The budget is ``catalog.max_tools`` when set, else the known limit of the IDE
by the ``clientInfo.name`` it sends (matched without regard to case), else :data:`DEFAULT_BUDGET`. IDEs that search
their tools themselves get the full list in ``auto`` mode.

Light on purpose: ``serve`` consults it before the SDK loads (the early ``tools/list`` answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_BUDGET = 128
"""The budget of an IDE whose limit is not known: VS Code's cap, the largest documented one."""


@dataclass(frozen=True)
class ClientLimit:
    names: tuple[str, ...]
    """``clientInfo.name`` values, lower case, as the client sends them."""
    label: str
    budget: int | None
    """The most tools to list; ``None``: the client searches its tools itself (full mode in ``auto``)."""
    source: str


KNOWN_CLIENTS: tuple[ClientLimit, ...] = (
    ClientLimit(
        ("cursor-vscode", "cursor"),
        "Cursor",
        40,
        "Cursor's MCP documentation: the agent works with about 40 tools across servers",
    ),
    ClientLimit(
        ("visual studio code", "visual studio code - insiders", "vscode"),
        "VS Code",
        100,
        "VS Code's documentation: at most 128 tools per request, its own built-in tools included (about 28 of them)",
    ),
    ClientLimit(("windsurf",), "Windsurf", 100, "Windsurf's documentation: Cascade takes at most 100 tools"),
    ClientLimit(
        ("claude-ai", "claude desktop"),
        "Claude Desktop",
        DEFAULT_BUDGET,
        "no documented limit; the default budget",
    ),
    ClientLimit(
        ("claude-code", "claude code"),
        "Claude Code",
        None,
        "Claude Code's documentation: it loads tool definitions on demand through its own tool search",
    ),
)

_BY_NAME = {name: limit for limit in KNOWN_CLIENTS for name in limit.names}

Mode = Literal["full", "search"]


def known_limit(client_name: str | None) -> ClientLimit | None:
    return _BY_NAME.get((client_name or "").strip().lower())


def budget(max_tools: int | None, client_name: str | None) -> tuple[int | None, str]:
    """The IDE's tool budget (``None``: it searches tools itself) and where the number comes from."""
    if max_tools is not None:
        return max_tools, "catalog.max_tools"
    limit = known_limit(client_name)
    if limit is not None:
        return limit.budget, f"{limit.label} ({limit.source})"
    return DEFAULT_BUDGET, "the default for an IDE whose limit is not known"


def resolve(mode: str, max_tools: int | None, client_name: str | None, allowed: int) -> Mode:
    """``full`` or ``search`` for an IDE named ``client_name`` with ``allowed`` tools to list."""
    if mode in ("full", "search"):
        return "search" if mode == "search" else "full"
    limit, _ = budget(max_tools, client_name)
    if limit is None:
        return "full"
    return "search" if allowed > limit else "full"
