"""The bridge's small state files under ``$MCP_BRIDGE_HOME``: JSON, private (0600), replaced atomically.

A state file is a cache or a record the bridge can rebuild or do without, so reading one never fails: a missing,
unreadable or malformed file reads as ``None`` (the unreadable case logged).

Files the bridge appends to (the log file, the audit JSONL copy) are private too:
:func:`mcp_bridge.logs.open_private`.
"""

from __future__ import annotations

import json
import os
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
