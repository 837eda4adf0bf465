"""Shipping audit events to Port: finished events leave the spool in batches, as Port entities, and are deleted
from it only once Port acknowledged them; while Port fails, the shipper backs off and the events wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from mcp_bridge import telemetry
from mcp_bridge.audit.spool import MAX_BATCH
from mcp_bridge.audit.trail import AuditTrail
from mcp_bridge.backoff import Backoff
from mcp_bridge.logs import clean, get_logger

log = get_logger("mcp_bridge.audit")

LINGER_SECONDS = 0.5
"""How long the shipper waits, once an event is ready, for more to ship with it (events are on disk meanwhile)."""


def to_entity(record: Mapping[str, Any]) -> dict[str, Any]:
    """The Port entity of one event (DESIGN §3): identifier = event id, so a resend overwrites itself."""
    server, tool = record.get("server"), record.get("tool")
    if record.get("kind") != "call":
        title = f"{record.get('kind')}: {f'{server}__{tool}' if server and tool else server or '-'}"
    elif server and tool:
        title = f"{server}__{tool}"
    else:  # a denied name that routes to no server: the name the IDE asked for
        title = str(record.get("exposed_name") or "?")
    properties = {
        "status": record.get("status"),
        "asked_at": record.get("asked_at"),
        "replied_at": record.get("replied_at"),
        "duration_ms": record.get("duration_ms"),
        "server": server,
        "tool_name": tool,
        "exposed_name": record.get("exposed_name"),
        "event_type": record.get("kind"),
        "arguments": record.get("arguments"),
        "arguments_digest": record.get("arguments_digest"),
        "error": record.get("error"),
        "error_class": record.get("error_class"),
        "detail": record.get("detail"),
        "client": record.get("client"),
        "client_version": record.get("client_version"),
        "user_email": record.get("user_email"),
        "source": "mcp-bridge",
        "bridge_version": record.get("bridge_version"),
    }
    entity: dict[str, Any] = {
        "identifier": record["id"],
        "title": title,
        "properties": {k: v for k, v in properties.items() if v is not None},
    }
    if server:
        entity["relations"] = {"mcp_server": server}
    return entity


class Shipper:
    """Sends finished events to Port in batches; deletes only what Port acknowledged."""

    def __init__(self, trail: AuditTrail, client: Any, blueprint: str, interrupted_after: float) -> None:
        assert trail.spool is not None
        self.trail = trail
        self.spool = trail.spool
        self.client = client
        self.blueprint = blueprint
        self.interrupted_after = interrupted_after
        self.shipped = 0
        self._error_noted = True
        """Whether the spool may hold a shipping error to clear at the next success (one from an earlier run, say):
        a batch shipped while none is noted costs no write for it."""

    async def run(self) -> None:
        """Ship forever (until cancelled); back off while Port fails."""
        backoff = Backoff(initial=1.0, cap=60.0)
        while True:
            try:
                sent = await self.ship_once()
            except Exception as exc:  # supervisor boundary: Port down, bad answer; the events stay spooled
                log.warning("audit.ship_failed", error=clean(str(exc)))
                telemetry.hooks.count("mcp_bridge.audit.ship_failures")
                await anyio.sleep(backoff.next())
                continue
            backoff.reset()
            if sent < MAX_BATCH:  # (a full batch: more may be waiting, shipped at once)
                with anyio.move_on_after(5.0):  # also picks up other processes' events and stale open calls
                    await self.trail.wake.wait()
                self.trail.wake = anyio.Event()
                # The calls of a burst go in one request, not one request each: a request to Port costs the bridge
                # about a millisecond of CPU, which a busy IDE's next call would wait for (bench/peers.py, with Port).
                # After a partial batch too: what arrived while it was being sent waits for more to go with it.
                await anyio.sleep(LINGER_SECONDS)

    async def ship_once(self) -> int:
        """Ship one batch; the number of events Port acknowledged (0: nothing to ship)."""
        from mcp_bridge.governance.port import PortError

        batch = self.spool.claim(interrupted_after=self.interrupted_after)
        if not batch:
            return 0
        ids = [e["id"] for e in batch]
        try:
            response = await self.client.bulk_upsert(self.blueprint, [to_entity(e) for e in batch])
        except BaseException as exc:  # failed or interrupted: the batch is claimable again at once
            why = str(exc) if isinstance(exc, PortError) else f"shipping interrupted ({type(exc).__name__})"
            self._error_noted = True
            self.spool.release(ids, clean(why))
            raise
        data = response.json() if response.content else {}
        failed = {str(err.get("identifier")) for err in (data.get("errors") or []) if isinstance(err, dict)}
        if response.status_code == 207 or failed:
            self._error_noted = True
            reasons = "; ".join(str(err.get("message") or err.get("error")) for err in data.get("errors") or [])[:500]
            self.spool.release([i for i in ids if i in failed], f"Port rejected some events: {reasons}")
            log.warning("audit.partial", shipped=len(ids) - len(failed), failed=len(failed))
        done = [i for i in ids if i not in failed]
        self.spool.ack(done)
        if not failed and self._error_noted:
            self.spool.note_success()
            self._error_noted = False
        self.shipped += len(done)
        return len(done)

    async def flush(self, within: float) -> int:
        """Ship until nothing closed is left or ``within`` seconds passed; the number of events left."""
        with anyio.move_on_after(within):
            try:
                while await self.ship_once():
                    pass
            except Exception as exc:  # Port unreachable: the events stay spooled for the next bridge
                log.warning("audit.flush_incomplete", error=clean(str(exc)))
        stats = self.spool.stats()
        return stats.pending - stats.in_progress
