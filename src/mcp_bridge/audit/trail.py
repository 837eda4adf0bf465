"""Audit: an event for every call (allowed or denied) and for logins, logouts, auth failures and allowlist changes.

:class:`AuditTrail` records; the call path uses :meth:`AuditTrail.begin` (the ``In Progress`` row, written before the
call goes upstream) and :meth:`AuditTrail.end` (the final row, written before the result goes back to the IDE). With
Port and an ``audit_blueprint``, events go to the :class:`~mcp_bridge.audit.spool.Spool` and a
:class:`~mcp_bridge.audit.shipper.Shipper` sends them to Port in the background; otherwise they stay local (the JSONL
copy, when configured, and the log).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from mcp_bridge import __version__, telemetry
from mcp_bridge.audit.spoolcheck import SPOOL_FILE, spools
from mcp_bridge.config import Settings
from mcp_bridge.errors import AuditUnavailable
from mcp_bridge.logs import clean, enabled_for, get_logger, open_private

if TYPE_CHECKING:
    from mcp_bridge.upstream.inputs import InputNote

log = get_logger("mcp_bridge.audit")

Status = Literal["Completed", "Failed", "Denied", "In Progress"]
EVENT_KINDS = (
    "call",
    "login",
    "logout",
    "auth_failure",
    "allowlist_change",
    "tool_definition_changed",
    "tool_pin_approved",
    "input_request",
    "prompt_get",
    "resource_read",
    "completion",
    "resource_subscribe",
)
"""Every ``event_type`` an event can have (the audit blueprint in README enumerates exactly these)."""
_SECRET_KEY = re.compile(
    r"(?i)(pass(word|wd|phrase)?|secret|token|api[-_]?key|apikey|auth(orization)?|cookie|credential|private[-_]?key|"
    r"session|signature|bearer)"
)
_MAX_STRING = 256


def new_event_id() -> str:
    """Unique and time-ordered (sorts by creation): milliseconds, then 64 random bits."""
    return f"mcpb-{time.time_ns() // 1_000_000:012x}-{secrets.token_hex(8)}"


def digest(arguments: Any) -> str:
    """SHA-256 of the canonical JSON of the arguments."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def redact(value: Any, key: str | None = None) -> Any:
    """Keys kept; values of secret-looking keys masked; long strings cut."""
    if key is not None and _SECRET_KEY.search(key):
        return "***"
    if isinstance(value, Mapping):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        value = clean(value)
        return value if len(value) <= _MAX_STRING else f"{value[:_MAX_STRING]}…({len(value)} chars)"
    return value


def arguments_for(policy: str, arguments: Any) -> Any:
    if policy == "full":
        return arguments
    if policy == "redacted":
        return redact(arguments)
    return None  # none, digest: the digest travels on its own


@dataclass
class Event:
    """One audit event (a call, or a login/logout/auth failure/allowlist change)."""

    kind: str
    status: Status
    server: str | None = None
    tool: str | None = None
    exposed_name: str | None = None
    arguments: Any = None
    arguments_digest: str | None = None
    error: str | None = None
    error_class: str | None = None
    detail: str | None = None
    id: str = field(default_factory=new_event_id)
    asked_at: float = field(default_factory=time.time)
    replied_at: float | None = None

    @functools.cached_property
    def _asked_iso(self) -> str:
        """``asked_at`` written out (once: the start's record and the end's both carry it)."""
        return _iso(self.asked_at)

    def to_record(self, context: Mapping[str, Any]) -> dict[str, Any]:
        duration = round((self.replied_at - self.asked_at) * 1000, 3) if self.replied_at else None
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "server": self.server,
            "tool": self.tool,
            "exposed_name": self.exposed_name,
            "arguments": self.arguments,
            "arguments_digest": self.arguments_digest,
            "error": clean(self.error) if self.error else None,
            "error_class": self.error_class,
            "detail": self.detail,
            "asked_at": self._asked_iso,
            "replied_at": _iso(self.replied_at) if self.replied_at else None,
            "duration_ms": duration,
            **context,
        }


_SECONDS: dict[int, str] = {}


def _iso(ts: float) -> str:
    """``ts`` as UTC ISO 8601 to the millisecond (``...T12:00:00.123Z``): what ``datetime.fromtimestamp(ts, UTC)
    .isoformat(timespec="milliseconds")`` writes (microseconds rounded, then cut to milliseconds), at a third of its
    cost (twice a call on the call's path); the whole seconds are kept for the next events."""
    whole = math.floor(ts)
    micros = round((ts - whole) * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    head = _SECONDS.get(whole)
    if head is None:
        if len(_SECONDS) >= 64:
            _SECONDS.clear()
        head = _SECONDS[whole] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{head}.{micros // 1000:03d}Z"


class JsonlCopy:
    """The optional local copy: one JSON line per finished event, rotated by size (3 old files kept); private (0600)
    like every file the bridge writes, the rotated ones too."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        try:
            if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
                for i in (2, 1):
                    older = self.path.with_name(f"{self.path.name}.{i}")
                    if older.exists():
                        older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
                self.path.replace(self.path.with_name(f"{self.path.name}.1"))
                for i in (1, 2, 3):  # kept from before the copy was private, perhaps
                    older = self.path.with_name(f"{self.path.name}.{i}")
                    if older.exists() and os.name == "posix":
                        os.chmod(older, 0o600)
            fd, note = open_private(self.path)
            if note:
                log.warning("audit.jsonl_permissions", path=str(self.path), note=note)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as exc:
            log.error("audit.jsonl_write_failed", path=str(self.path), error=str(exc))


class AuditTrail:
    """Where the bridge records events: the spool (when Port ships them), the JSONL copy, and the log."""

    def __init__(self, settings: Settings, home: Path) -> None:
        from mcp_bridge.audit.spool import Spool

        self.settings = settings
        self.policy = settings.audit.arguments
        self.ships = spools(settings)
        self.spool: Spool | None = (
            Spool(home / SPOOL_FILE, max_events=settings.audit.spool_max_events) if self.ships else None
        )
        if self.spool is not None and self.spool.problem is not None:
            log.error("audit.spool_unavailable", error=str(self.spool.problem))
        self.jsonl = (
            JsonlCopy(Path(settings.audit.jsonl).expanduser(), settings.audit.jsonl_max_bytes)
            if settings.audit.jsonl
            else None
        )
        self._context: dict[str, Any] = {}
        self.set_client(None, None)
        self.wake = anyio.Event()
        """Set when a finished event is waiting to be shipped."""

    def set_client(self, name: str | None, version: str | None) -> None:
        """The IDE's ``clientInfo`` (from ``initialize``), recorded with every event."""
        email = self.settings.user.email if self.settings.user else None
        self._context = {"client": name, "client_version": version, "user_email": email, "bridge_version": __version__}

    def context(self) -> dict[str, Any]:
        return self._context

    def call(self, exposed: str, arguments: Any, kind: str = "call") -> Event:
        """A new event of an IDE request for a server (not yet recorded): a tool call (``call``), a prompt
        (``prompt_get``; ``exposed``: its exposed name) or a resource read (``resource_read``; ``exposed``: the URI
        the IDE read)."""
        return Event(
            kind=kind,
            status="In Progress",
            exposed_name=exposed,
            arguments=arguments_for(self.policy, arguments),
            arguments_digest=digest(arguments or {}) if self.policy != "none" else None,
        )

    def check(self) -> None:
        """Raise :class:`~mcp_bridge.errors.AuditUnavailable` when no event can be recorded now (the spool cannot
        be opened): a call is denied before anything else is done for it."""
        if self.spool is not None:
            self.spool.ready()

    def begin(self, event: Event) -> None:
        """The ``In Progress`` row: durable before the call leaves (:class:`~mcp_bridge.errors.AuditUnavailable`
        when the spool cannot take it: then the call must not leave)."""
        if self.spool is not None:
            self.spool.put(event.to_record(self.context()), closed=False)

    def end(self, event: Event) -> None:
        """The final row: durable before the answer goes back.

        When the spool cannot take it, the event still goes to the JSONL copy and to the log (``audit.unrecorded``,
        an error), and :class:`~mcp_bridge.errors.AuditUnavailable` is raised: the answer must not go back."""
        event.replied_at = event.replied_at or time.time()
        telemetry.hooks.finished(event)  # the request's span and metrics (telemetry on)
        level = {"Completed": 10, "Failed": 20, "Denied": 30}.get(event.status, 20)  # debug / info / warning
        logged = level > 10 or enabled_for(level)
        if self.spool is None and self.jsonl is None and not logged:
            return  # nothing keeps this event: do not build it
        record = event.to_record(self.context())
        failure: AuditUnavailable | None = None
        if self.spool is not None:
            used = event.exposed_name if event.kind == "call" and event.status == "Completed" else None
            try:
                self.spool.put(record, closed=True, used=used)
            except AuditUnavailable as exc:
                failure = exc
            else:
                self.wake.set()
        if self.jsonl is not None:
            self.jsonl.write(record)
        if failure is not None:
            fields = {k: v for k, v in record.items() if k != "arguments"}
            log.error("audit.unrecorded", reason=str(failure), **fields)
            raise failure
        if logged:
            log.log(level, "audit.event", **{k: v for k, v in record.items() if k != "arguments"})

    def most_used(self, limit: int) -> list[str]:
        """The tools (exposed names) this user called most here, most used first (none without a spool)."""
        return self.spool.most_used(limit) if self.spool is not None else []

    def note(
        self,
        kind: str,
        *,
        server: str | None = None,
        tool: str | None = None,
        status: Status = "Completed",
        error: str | None = None,
        detail: str | None = None,
    ) -> None:
        """A non-call event: one of :data:`EVENT_KINDS`."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown audit event kind {kind!r}")
        now = time.time()
        event = Event(
            kind=kind, status=status, server=server, tool=tool, error=error, detail=detail, asked_at=now, replied_at=now
        )
        # A spool that cannot take it: the event is in the log (``audit.unrecorded``); what it records happened
        # already (a login, an allowlist change), so nothing is refused for it.
        with contextlib.suppress(AuditUnavailable):
            self.end(event)

    def input(self, note: InputNote, tool: str | None = None) -> None:
        """A server's request for input (elicitation, sampling, roots) during a call: who asked, for what call, of
        which kind and how it ended; its content (the request and the IDE's answer) only with ``audit.arguments:
        full``. ``tool``: the original name of the tool called (``note.subject`` is the name the IDE used)."""
        now = time.time()
        event = Event(
            kind="input_request",
            status=note.status,
            server=note.server,
            tool=tool,
            exposed_name=note.subject,
            arguments={"request": note.request, "response": note.response} if self.policy == "full" else None,
            detail=note.detail,
            asked_at=now,
            replied_at=now,
        )
        with contextlib.suppress(AuditUnavailable):
            self.end(event)

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
