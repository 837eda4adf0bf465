"""Tool-definition pinning: an approved tool is approved *as it was*; a changed definition is a new tool.

Each allowed tool's definition gets a fingerprint: ``sha256:`` + the SHA-256 of the canonical JSON (keys sorted, no
whitespace, UTF-8) of its ``name``, ``description``, ``inputSchema``, ``outputSchema`` and ``annotations``. So a
schema whose keys come in another order is the same tool, and any change of words or shape is not.

A tool's pin comes from, first match wins:

1. the allowlist: ``tool_pins`` on the server (a Port entity property, or the local ``servers:`` entry), which a
   user cannot override locally;
2. the local pin store, ``$MCP_BRIDGE_HOME/pins.json`` (0600): trust on first use, i.e. the definition first seen
   on a live connection is pinned there, and ``mcp-bridge pins approve`` re-pins.

A definition that no longer matches its pin is handled per ``on_tool_change``: ``block`` (the default: the tool leaves
the list and its calls are denied), ``warn`` (kept, logged and audited) or ``accept`` (kept, re-pinned locally and
audited; a pin from the allowlist cannot be re-pinned, so there it acts as ``warn``). Each change is audited once per
process as ``tool_definition_changed`` with the old and new fingerprints and a short summary of what changed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from mcp_bridge.config import ServerConfig, normalize_pin
from mcp_bridge.errors import BridgeError
from mcp_bridge.files import write_private_json
from mcp_bridge.governance.catalog import by_name, duplicate_reason
from mcp_bridge.logs import get_logger

log = get_logger(__name__)

FINGERPRINTED = ("name", "description", "inputSchema", "outputSchema", "annotations")
OnChange = Literal["block", "warn", "accept"]
Listed = tuple[dict[str, Mapping[str, Any]], dict[str, int]]  # catalog.by_name's answer
PinSource = Literal["allowlist", "local", "none"]


def definition_of(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a tool's definition that is pinned (missing fields are null)."""
    return {key: tool.get(key) for key in FINGERPRINTED}


def fingerprint(tool: Mapping[str, Any]) -> str:
    canonical = json.dumps(definition_of(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def short(fp: str | None) -> str:
    return fp[:19] if fp else "-"  # "sha256:" + 12 hex digits


def diff_summary(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """What changed between two pinned definitions, in a line (``old`` unknown: say so)."""
    if old is None:
        return "the approved definition is not known here (only its fingerprint)"
    parts = []
    for key in FINGERPRINTED:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "description":
            parts.append(f"description {_clip(a)!r} → {_clip(b)!r}")
        elif key in ("inputSchema", "outputSchema") and isinstance(a, dict) and isinstance(b, dict):
            parts.append(f"{key}: {_schema_diff(a, b)}")
        elif key == "annotations" and isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            parts.append(f"annotations changed: {', '.join(keys)}")
        else:
            parts.append(f"{key} {'added' if a is None else 'removed' if b is None else 'changed'}")
    return "; ".join(parts) or "no visible difference"


def _clip(value: Any, limit: int = 60) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _schema_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    pa, pb = a.get("properties") or {}, b.get("properties") or {}
    if not isinstance(pa, dict) or not isinstance(pb, dict):
        return "changed"
    out = []
    if added := sorted(set(pb) - set(pa)):
        out.append("properties added " + ", ".join(added))
    if removed := sorted(set(pa) - set(pb)):
        out.append("properties removed " + ", ".join(removed))
    if changed := sorted(k for k in set(pa) & set(pb) if pa[k] != pb[k]):
        out.append("properties changed " + ", ".join(changed))
    if sorted(a.get("required") or []) != sorted(b.get("required") or []):
        out.append("required changed")
    rest = {k for k in set(a) | set(b) if k not in ("properties", "required") and a.get(k) != b.get(k)}
    if rest:
        out.append("changed " + ", ".join(sorted(rest)))
    return ", ".join(out) or "changed"


class PinStore:
    """``pins.json``: local pins by server and tool, plus the definitions seen by fingerprint (for diffs).

    Several bridges share it: every change is a read-modify-write under a file lock, written atomically (0600).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = FileLock(str(path) + ".lock", timeout=10)
        self._data: dict[str, Any] = {}
        self._stamp: tuple[float, int] | None = None
        self.reload()

    def _disk_stamp(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def changed_on_disk(self) -> bool:
        return self._disk_stamp() != self._stamp

    def reload(self) -> None:
        """Read the file again. Unlike a cache, a pin store that exists but cannot be read is not "no pins" (that
        would trust whatever the servers say now): :attr:`broken` says why, and checks fail closed until it is
        fixed or removed."""
        self._stamp = self._disk_stamp()
        self.broken: str | None = None
        data: Any = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            self.broken = f"{self.path} cannot be read ({exc}); fix it, or delete it to pin again from scratch"
        if not isinstance(data, dict):
            self.broken = f"{self.path} is not a pin store (a JSON object); fix it, or delete it to pin again"
            data = {}
        pins, seen, reported = data.get("pins"), data.get("definitions"), data.get("reported")
        self._data = {
            "version": 1,
            "pins": pins if isinstance(pins, dict) else {},
            "definitions": seen if isinstance(seen, dict) else {},
            "reported": reported if isinstance(reported, dict) else {},
        }

    def pin(self, server: str, tool: str) -> dict[str, Any] | None:
        entry = self._data["pins"].get(server, {}).get(tool)
        return entry if isinstance(entry, dict) and isinstance(entry.get("fingerprint"), str) else None

    def definition(self, fp: str | None) -> dict[str, Any] | None:
        found = self._data["definitions"].get(fp) if fp else None
        return found if isinstance(found, dict) else None

    def first_report(self, server: str, tool: str, fp: str) -> bool:
        """Whether this changed definition is news to every bridge of this user (then it is recorded as reported):
        one audit event per change, however many IDE windows or commands see it."""
        key = f"{server}/{tool}"
        try:
            with self._lock:
                self.reload()
                if self.broken:
                    return True
                if self._data["reported"].get(key) == fp:
                    return False
                self._data["reported"][key] = fp
                self._write()
                return True
        except (Timeout, OSError):
            return True

    def update(
        self,
        pins: Mapping[tuple[str, str], Mapping[str, Any]] = {},
        definitions: Mapping[str, Mapping[str, Any]] = {},
        *,
        reset: str | None = None,
    ) -> int:
        """Under the lock: set ``(server, tool) → definition`` pins, remember definitions by fingerprint, and/or
        drop every pin of server ``reset``. Returns how many pins ``reset`` dropped."""
        try:
            with self._lock:
                self.reload()
                if self.broken:
                    raise BridgeError(self.broken)
                dropped = 0
                if reset is not None:
                    dropped = len(self._data["pins"].pop(reset, {}) or {})
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                for (server, tool), definition in pins.items():
                    fp = fingerprint(definition)
                    self._data["pins"].setdefault(server, {})[tool] = {"fingerprint": fp, "pinned_at": now}
                    self._data["definitions"][fp] = dict(definition)
                for fp, definition in definitions.items():
                    self._data["definitions"][fp] = dict(definition)
                self._write()
                return dropped
        except Timeout:
            raise BridgeError(f"{self.path}: another mcp-bridge holds its lock; try again") from None

    def _write(self) -> None:
        """Under the lock: the store as this process now holds it, and its stamp (so it is not taken for news)."""
        write_private_json(self.path, self._data)
        self._stamp = self._disk_stamp()


@dataclass(frozen=True)
class Verdict:
    """One allowed tool's definition against its pin."""

    server: str
    tool: str
    fingerprint: str
    pinned: str | None  # the pin, None when there is none (yet)
    source: PinSource
    blocked: bool
    reason: str | None  # why it is blocked or flagged (a changed definition, a malformed pin, a duplicated name)
    duplicated: bool = False
    """The server lists this name with different definitions: refused whatever the pins say (see
    :func:`mcp_bridge.governance.catalog.by_name`)."""

    @property
    def changed(self) -> bool:
        return self.reason is not None


class Pins:
    """Checks listings against their pins, pins on first sight, and reports changes (log + audit, once each)."""

    def __init__(
        self,
        home: Path,
        on_change: OnChange,
        report: Callable[[Verdict, str], None] | None = None,
    ) -> None:
        self.store = PinStore(home / "pins.json")
        self.on_change = on_change
        self._report = report or (lambda _verdict, _summary: None)
        self._reported: set[tuple[str, str, str]] = set()
        self.verdicts: dict[str, dict[str, Verdict]] = {}
        # server -> (the listing's tool list, kept so its identity stays valid; its tools by name (by_name);
        # tool -> (fingerprint, definition))
        self._memo: dict[str, tuple[Sequence[Mapping[str, Any]], Listed, dict[str, tuple[str, dict[str, Any]]]]] = {}
        self.defer_writes = False
        """Pins made by :meth:`check` wait in memory for :meth:`flush` (the bridge flushes within a second, off the
        event loop, and on shutdown): 50 servers pinning 200 tools each must not rewrite the store 50 times."""
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}
        self._pending_seen: dict[str, dict[str, Any]] = {}

    @property
    def pending(self) -> bool:
        """Pins made by :meth:`check` that :meth:`flush` has not written yet."""
        return bool(self._pending or self._pending_seen)

    def flush(self) -> None:
        """Write the pins (and definitions) :meth:`check` made since the last flush; safe from a worker thread."""
        pins, seen = self._pending, self._pending_seen
        self._pending, self._pending_seen = {}, {}
        if not (pins or seen):
            return
        try:
            self.store.update(pins, seen)
        except (OSError, BridgeError) as exc:
            log.warning("pins.write_failed", path=str(self.store.path), error=str(exc))

    def check(
        self, server: str, config: ServerConfig, tools: Sequence[Mapping[str, Any]], *, live: bool
    ) -> dict[str, str]:
        """Verdicts for the allowed tools of one listing; returns ``{tool: reason}`` for those blocked.

        ``live``: the listing came from the server in this run (a cached one never creates pins)."""
        verdicts: dict[str, Verdict] = {}
        to_pin: dict[tuple[str, str], dict[str, Any]] = {}  # first sight, or re-pinned under `accept`
        seen: dict[str, dict[str, Any]] = {}
        admin = config.tool_pins or {}
        memo = self._memo.get(server)
        if memo is None or memo[0] is not tools:  # a listing is hashed once, not on every re-check
            memo = (tools, by_name(tools), {})
            self._memo[server] = memo
        (unique, duplicated), hashed = memo[1], memo[2]
        for name, tool in unique.items():
            if not config.may_allow(name):  # watched even while its hints keep it out: a flip must not let it in
                continue
            if name not in hashed:
                hashed[name] = (fingerprint(tool), definition_of(tool))
            fp, definition = hashed[name]
            verdict = self._judge(server, name, fp, admin)
            if name in duplicated:
                verdicts[name] = self._refuse(server, verdict, tools, live=live)
                continue
            if verdict.source == "none" and live:
                to_pin[(server, name)] = definition
                verdict = Verdict(server, name, fp, fp, "local", False, None)
            elif verdict.source == "allowlist" and not verdict.changed and live and not self.store.definition(fp):
                seen[fp] = definition  # kept for the diff when this tool changes later
            if verdict.changed and live:
                key = (server, name, fp)
                if key not in self._reported:
                    self._reported.add(key)
                    if verdict.pinned is None:  # no usable pin (malformed, or an unreadable store): not a change
                        log.warning("pins.untrusted", server=server, tool=name, reason=verdict.reason)
                    elif self.store.first_report(server, name, fp):
                        self._report(verdict, diff_summary(self.store.definition(verdict.pinned), definition))
                    else:  # another bridge of this user reported (and audited) it already
                        log.warning("pins.tool_changed", server=server, tool=name, now=fp, reason=verdict.reason)
                if self.on_change == "accept" and verdict.source == "local" and verdict.pinned is not None:
                    to_pin[(server, name)] = definition  # re-pinned: the new definition is the approved one now
                    verdict = Verdict(server, name, fp, fp, "local", False, None)
            verdicts[name] = verdict
        if to_pin or seen:
            self._pending.update(to_pin)
            self._pending_seen.update(seen)
            if not self.defer_writes:
                self.flush()
        self.verdicts[server] = verdicts
        return {name: v.reason for name, v in verdicts.items() if v.blocked and v.reason}

    def _refuse(self, server: str, verdict: Verdict, tools: Sequence[Mapping[str, Any]], *, live: bool) -> Verdict:
        """The verdict on a name the server lists with different definitions: blocked, never pinned, reported once
        (with every definition's fingerprint) like a changed definition."""
        prints = sorted({fingerprint(t) for t in tools if t.get("name") == verdict.tool})
        refused = Verdict(
            server,
            verdict.tool,
            verdict.fingerprint,
            verdict.pinned,
            verdict.source,
            blocked=True,
            reason=duplicate_reason(len(prints)),
            duplicated=True,
        )
        key = (server, verdict.tool, ",".join(prints))
        if live and key not in self._reported:
            self._reported.add(key)
            if self.store.broken or self.store.first_report(server, verdict.tool, key[2]):
                self._report(refused, "definitions " + ", ".join(short(fp) for fp in prints))
            else:  # another bridge of this user reported (and audited) it already
                log.warning("pins.tool_duplicated", server=server, tool=verdict.tool, definitions=prints)
        return refused

    def _judge(self, server: str, tool: str, fp: str, admin: Mapping[str, str]) -> Verdict:
        if tool in admin:
            pinned = normalize_pin(admin[tool])
            if pinned is None:
                reason = f"its pin in the allowlist ({admin[tool]!r}) is not a sha256 fingerprint"
                return Verdict(server, tool, fp, None, "allowlist", self.on_change == "block", reason)
            if pinned == fp:
                return Verdict(server, tool, fp, pinned, "allowlist", False, None)
            return Verdict(server, tool, fp, pinned, "allowlist", self.on_change == "block", _changed(pinned, fp))
        if self.store.broken:
            return Verdict(server, tool, fp, None, "local", True, f"no trusted pin: {self.store.broken}")
        waiting = self._pending.get((server, tool))
        local = {"fingerprint": fingerprint(waiting)} if waiting is not None else self.store.pin(server, tool)
        if local is None:
            return Verdict(server, tool, fp, None, "none", False, None)
        pinned = local["fingerprint"]
        if pinned == fp:
            return Verdict(server, tool, fp, pinned, "local", False, None)
        return Verdict(server, tool, fp, pinned, "local", self.on_change == "block", _changed(pinned, fp))

    def forget(self, server: str) -> None:
        self.verdicts.pop(server, None)
        self._memo.pop(server, None)


def _changed(pinned: str, fp: str) -> str:
    return f"its definition changed since it was approved (pinned {short(pinned)}, now {short(fp)})"
