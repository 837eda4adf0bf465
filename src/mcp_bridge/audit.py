"""What happened to each call: one :class:`CallEvent` per tool invocation, allowed or denied, handed to a sink.

:class:`AuditSink` is the seam: the durable spool that ships events to Port plugs in here. :class:`LogSink` writes
each event as a structured log line (stderr or the log file); it never sees argument values, only their digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from mcp_bridge.logs import get_logger

log = get_logger("mcp_bridge.audit")

Status = Literal["Completed", "Failed", "Denied"]


@dataclass(frozen=True)
class CallEvent:
    asked_at: float
    replied_at: float
    server: str | None
    tool: str | None
    exposed_name: str
    status: Status
    error: str | None
    arguments_digest: str
    client: str | None

    @property
    def duration_ms(self) -> float:
        return round((self.replied_at - self.asked_at) * 1000, 3)


def digest(arguments: Any) -> str:
    """SHA-256 of the canonical JSON of the arguments."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class AuditSink(Protocol):
    async def record(self, event: CallEvent) -> None: ...


class LogSink:
    """Each event becomes one ``audit.call`` log line: completed calls at debug (a log line costs more than the
    rest of the bridge's own work on a call), failed ones at info, denied ones at warning."""

    async def record(self, event: CallEvent) -> None:
        level = {"Completed": logging.DEBUG, "Failed": logging.INFO, "Denied": logging.WARNING}[event.status]
        if not log.is_enabled_for(level):
            return
        fields = asdict(event)
        fields["duration_ms"] = event.duration_ms
        log.log(level, "audit.call", **fields)
