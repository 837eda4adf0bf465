"""What is wrong with the audit spool, in words a user can act on.

Every call's event goes into the spool (``$MCP_BRIDGE_HOME/audit.db``, :mod:`mcp_bridge.audit.spool`) before the call
goes anywhere, so a spool that cannot take it (a damaged file, a full disk) denies the call: no call goes unaudited.
This module words the problem and its fix once, for the error the IDE gets, ``status``, ``doctor`` and ``audit reset``.
It also spots a damaged file by its first bytes, without :mod:`sqlite3`, so that ``serve`` can say so in the
``initialize`` instructions it answers before anything heavy is loaded (:mod:`mcp_bridge.ide.handshake`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mcp_bridge.errors import AuditUnavailable

if TYPE_CHECKING:
    from mcp_bridge.config import Settings

SPOOL_FILE = "audit.db"
RESET_COMMAND = "mcp-bridge audit reset"

_MAGIC = b"SQLite format 3\x00"
_DAMAGED = ("SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_ERROR")
"""SQLite's names for a file that is not (or no longer) a usable spool: not a database, a corrupt page, or tables of
another shape (an SQL error on the spool's own statements). Any other failure (a full disk, an I/O error, a read-only
file, a lock held too long) is a file that cannot be written now."""


def spools(settings: Settings) -> bool:
    """Whether events go through the spool: with Port and an ``audit_blueprint`` (otherwise they stay local)."""
    return settings.port is not None and settings.port.audit_blueprint is not None


def spool_path(home: Path) -> Path:
    return home / SPOOL_FILE


def damaged(path: Path, reason: str) -> AuditUnavailable:
    return AuditUnavailable(
        f"the audit spool {path} is damaged ({reason}); no call may go unaudited, so tool calls are denied. "
        f"Fix: run `{RESET_COMMAND}` (it moves the damaged file aside, keeps it, and starts a fresh spool)",
        path=str(path),
        reason=reason,
        damaged=True,
    )


def unwritable(path: Path, reason: str) -> AuditUnavailable:
    return AuditUnavailable(
        f"the audit spool {path} cannot be written ({reason}); no call may go unaudited, so tool calls are denied. "
        f"Fix: free space on the disk that holds it and check that the file is writable; if the file is damaged, "
        f"run `{RESET_COMMAND}`",
        path=str(path),
        reason=reason,
        damaged=False,
    )


def from_error(path: Path, exc: BaseException) -> AuditUnavailable:
    """The user's view of an :mod:`sqlite3` error or an :class:`OSError` met opening or writing the spool."""
    if isinstance(exc, AuditUnavailable):
        return exc
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    if name.startswith(_DAMAGED):
        return damaged(path, reason)
    return unwritable(path, reason)


def header_problem(path: Path) -> str | None:
    """Why the file at ``path`` is certainly not an SQLite database, from its first bytes; ``None`` when it may be
    one (or is missing or empty, which SQLite takes as a new database, or cannot be read: opening it will say).

    Only where this process has no SQLite connection to the file: closing the descriptor read here would drop the
    connection's locks (see :func:`mcp_bridge.audit.spool._connect`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_MAGIC))
    except OSError:
        return None
    if head and head != _MAGIC:
        return "not an SQLite database"
    return None


def instructions_note(settings: Settings, home: Path) -> str:
    """A line for the ``initialize`` instructions when the spool is damaged (every call will be denied), else ``""``.

    Read from the file's first bytes (:func:`header_problem`, with its caveat), so that the early answer
    (:mod:`mcp_bridge.ide.handshake`) and the SDK's carry the same words."""
    if not spools(settings):
        return ""
    path = spool_path(home)
    why = header_problem(path)
    if why is None:
        return ""
    return (
        f"\nNote: every tool call is denied for now: the audit spool {path} is damaged ({why}) and no call may go "
        f"unaudited. The user can fix it with `{RESET_COMMAND}`."
    )
