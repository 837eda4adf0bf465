"""The bridge's small state files under ``$MCP_BRIDGE_HOME``: JSON, private (0600), replaced atomically.

A state file is a cache or a record the bridge can rebuild or do without, so reading one never fails: a missing,
unreadable or malformed file reads as ``None`` (the unreadable case logged).

Files the bridge appends to (the log file, the audit JSONL copy) are private too: :func:`open_private`.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from mcp_bridge.logs import get_logger

log = get_logger(__name__)


def read_json_object(path: Path, what: str) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when there is none to use; ``what`` names the file in the log."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("state_file.unreadable", file=what, path=str(path), error=str(exc))
        return None
    return data if isinstance(data, dict) else None


def write_private_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename) with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, separators=(",", ":"))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_private(path: str | os.PathLike[str]) -> tuple[int, str | None]:
    """Open ``path`` for appending, created with mode 0600; an existing file that others may read is narrowed to 0600.

    Returns the descriptor and, when the file was readable by others, a note saying what was done (for the caller to
    log: this module's logger may not be usable yet, e.g. while the log file itself is being opened)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    if os.name != "posix":  # permission bits mean little elsewhere (Windows: only read-only)
        return fd, None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not mode & 0o077:
        return fd, None
    try:
        os.fchmod(fd, 0o600)
    except OSError as exc:  # not the owner: the file still works, and the caller says what is wrong
        return fd, f"the file is readable by others (mode {mode:04o}) and could not be made private: {exc.strerror}"
    return fd, f"the file was readable by others (mode {mode:04o}); it is now private (0600)"
