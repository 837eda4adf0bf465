"""The user's own narrowing: ``mcp-bridge tools disable|enable NAME``.

The exposed names the user turned off are kept in ``$MCP_BRIDGE_HOME/disabled_tools.json`` (private, written
atomically under a lock). It narrows and never widens: a name in it is hidden and denied as one the allowlist does not
allow, and enabling a name only takes it off this list. Running bridges look at the file's stamp twice a second
(:meth:`Narrowing.changed`), so a change reaches the IDE within a second, as a list change.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout

from mcp_bridge.errors import BridgeError
from mcp_bridge.files import read_json_object, write_private_json

FILE = "disabled_tools.json"


class Narrowing:
    """The disabled tools of one home, as last read."""

    def __init__(self, home: Path) -> None:
        self.path = home / FILE
        self._lock = FileLock(str(self.path) + ".lock", timeout=10)
        self._stamp: tuple[int, int] | None = None
        self.names: frozenset[str] = frozenset()
        self.changed()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def changed(self) -> bool:
        """Read the file again when its stamp moved; whether the set of names changed."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        names = self._read()
        if names == self.names:
            return False
        self.names = names
        return True

    def _read(self) -> frozenset[str]:
        data = read_json_object(self.path, "disabled tools") or {}
        tools = data.get("tools")
        return frozenset(t for t in tools if isinstance(t, str)) if isinstance(tools, list) else frozenset()

    def update(self, *, disable: str | None = None, enable: str | None = None) -> bool:
        """Turn a name off or on again; whether that changed anything."""
        try:
            with self._lock:
                names = set(self._read())
                before = set(names)
                if disable is not None:
                    names.add(disable)
                if enable is not None:
                    names.discard(enable)
                if names == before:
                    return False
                write_private_json(self.path, {"version": 1, "tools": sorted(names)})
        except Timeout:
            raise BridgeError(f"{self.path}: another mcp-bridge holds its lock; try again") from None
        self.changed()
        return True
