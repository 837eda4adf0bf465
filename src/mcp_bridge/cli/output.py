"""What the commands print, and how they fail on bad input: the one sanitised way to stdout and stderr.

Commands print text from servers, Port and browsers: it goes through :func:`~mcp_bridge.terminal.printable`, never
to the terminal as is.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from mcp_bridge.errors import ConfigError
from mcp_bridge.terminal import printable, printable_json


def out(text: str, end: str = "\n") -> None:
    """Print for a person. What commands print holds text from servers, Port and browsers: it goes through the one
    sanitiser (:func:`~mcp_bridge.terminal.printable`), never to the terminal as is."""
    print(printable(text), end=end)


def out_json(data: Any, **dumps: Any) -> None:
    """Print JSON: as ``json.dumps(data, **dumps)`` makes it, with what JSON leaves unescaped (DEL, C1 controls,
    format characters...) escaped too (:func:`~mcp_bridge.terminal.printable_json`): the same data."""
    print(printable_json(json.dumps(data, **dumps)))


def err(message: str) -> None:
    print(printable(message), file=sys.stderr)


def print_table(rows: list[list[str]]) -> None:
    """Aligned columns; each cell on one line, sanitised (a line feed in a server's text cannot forge a row)."""
    cells = [[printable(str(c), newlines=False) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    for r in cells:
        out("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


class UsageError(ConfigError):
    """Bad command-line input (exit 2)."""


def run(func: Callable[..., Awaitable[int]], *args: Any) -> int:
    import anyio  # imported here, not at the top: ``serve`` answers ``initialize`` before it needs anyio

    return anyio.run(func, *args)


def _is_a_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def stdin_is_a_terminal() -> bool:
    return _is_a_terminal(0)


def stderr_is_a_terminal() -> bool:
    return _is_a_terminal(2)
