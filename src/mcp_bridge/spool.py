"""The audit spool: every event on disk (SQLite, WAL) before the call it describes is answered.

One row per event, keyed by its id. A call writes its row when it starts (``open``) and rewrites it when it ends
(``closed``): each a single autocommitted statement. In WAL mode with ``synchronous=NORMAL`` a commit has reached the
operating system when it returns, so it survives the process being killed (not a power cut, which would cost
``synchronous=FULL``'s fsync per call). Several bridge processes share the file: SQLite serialises the writers, and
shippers claim batches with a lease so two of them rarely send the same event (when they do, Port's upsert makes it
harmless). A row leaves the spool only when Port acknowledged it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_bridge.logs import get_logger

log = get_logger(__name__)

MAX_BATCH = 20
MAX_BATCH_BYTES = 1024 * 1024 - 4096  # Port's 1 MiB body limit, less the envelope
LEASE_SECONDS = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,          -- open (a call in progress) | closed (ready to ship)
    created REAL NOT NULL,
    payload TEXT NOT NULL,        -- the event as JSON
    lease_until REAL NOT NULL DEFAULT 0,
    lease_owner INTEGER NOT NULL DEFAULT 0,  -- pid of the shipper holding the lease
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
-- The shipper's batch: closed rows in id order (lease filtered inline). Leased rows only, for the lease checks: a
-- put() writes no entry there, so a call's two commits touch the table and one index.
CREATE INDEX IF NOT EXISTS events_by_state ON events (state, id);
CREATE INDEX IF NOT EXISTS events_leased ON events (lease_until) WHERE lease_until > 0;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


@dataclass(frozen=True)
class SpoolStats:
    pending: int
    in_progress: int
    oldest_age: float | None
    last_error: str | None
    dropped: int


class Spool:
    """The SQLite file under ``$MCP_BRIDGE_HOME`` (mode 0600)."""

    def __init__(self, path: Path, *, max_events: int = 200_000) -> None:
        self.path = path
        self.max_events = max_events
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{path}{suffix}")
            if p.exists():
                os.chmod(p, 0o600)
        self._writes = 0

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ writers (the call path)

    def put(self, event: dict[str, Any], *, closed: bool) -> None:
        """Insert or replace one event: one small commit."""
        self._db.execute(
            "INSERT INTO events (id, state, created, payload) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET state = excluded.state, payload = excluded.payload, lease_until = 0",
            (event["id"], "closed" if closed else "open", time.time(), json.dumps(event, separators=(",", ":"))),
        )
        self._writes += 1
        if self._writes % 1000 == 0:
            self._enforce_cap()

    def _enforce_cap(self) -> None:
        (count,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
        excess = count - self.max_events
        if excess <= 0:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE state = 'closed' ORDER BY id LIMIT ?)",
                (excess,),
            )
            self._bump("dropped", excess)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        log.error(
            "audit.spool_full",
            dropped=excess,
            cap=self.max_events,
            hint="Port has not acknowledged events for a long time; check `mcp-bridge audit status`",
        )

    # ------------------------------------------------------------------ the shipper

    def claim(self, *, interrupted_after: float) -> list[dict[str, Any]]:
        """Lease the next batch to ship (at most 20 events and ~1 MiB), oldest first.

        Calls still open after ``interrupted_after`` seconds belonged to a bridge that died: they are closed as
        ``Failed`` / ``interrupted`` first.
        """
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            stale = self._db.execute(
                "SELECT id, payload FROM events WHERE state = 'open' AND created < ?", (now - interrupted_after,)
            ).fetchall()
            for event_id, payload in stale:
                event = json.loads(payload)
                event.update(status="Failed", error="interrupted", error_class="Interrupted")
                self._db.execute(
                    "UPDATE events SET state = 'closed', payload = ? WHERE id = ?",
                    (json.dumps(event, separators=(",", ":")), event_id),
                )
            # A lease held by a process that no longer exists (killed mid-shipment) is free at once.
            owners = [
                o
                for (o,) in self._db.execute(
                    "SELECT DISTINCT lease_owner FROM events "
                    "WHERE lease_until > 0 AND lease_until >= ? AND lease_owner != 0",
                    (now,),
                )
            ]
            dead = [o for o in owners if not _alive(o)]
            rows = self._db.execute(
                "SELECT id, payload FROM events WHERE state = 'closed' AND "
                "(lease_until < ? OR lease_owner IN (SELECT value FROM json_each(?))) ORDER BY id LIMIT ?",
                (now, json.dumps(dead), MAX_BATCH),
            ).fetchall()
            batch: list[dict[str, Any]] = []
            size = 0
            for _event_id, payload in rows:
                if batch and size + len(payload) > MAX_BATCH_BYTES:
                    break
                batch.append(json.loads(payload))
                size += len(payload)
            if batch:
                ids = ",".join("?" * len(batch))
                self._db.execute(
                    f"UPDATE events SET lease_until = ?, lease_owner = ? WHERE id IN ({ids})",  # noqa: S608
                    (now + LEASE_SECONDS, os.getpid(), *[e["id"] for e in batch]),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return batch

    def ack(self, ids: list[str]) -> None:
        """Port has these: they leave the spool."""
        if ids:
            marks = ",".join("?" * len(ids))
            # "+state": look rows up by primary key, not by the state index
            self._db.execute(f"DELETE FROM events WHERE id IN ({marks}) AND +state = 'closed'", ids)  # noqa: S608

    def release(self, ids: list[str], error: str) -> None:
        """Shipping these failed: make them claimable again and remember why."""
        if ids:
            marks = ",".join("?" * len(ids))
            self._db.execute(
                f"UPDATE events SET lease_until = 0, attempts = attempts + 1, last_error = ? WHERE id IN ({marks})",  # noqa: S608
                (error, *ids),
            )
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES ('last_error', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (error,),
        )

    def note_success(self) -> None:
        self._db.execute("DELETE FROM meta WHERE key = 'last_error'")

    def _bump(self, key: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + ?",
            (key, str(by), by),
        )

    def stats(self) -> SpoolStats:
        (pending,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
        (open_,) = self._db.execute("SELECT COUNT(*) FROM events WHERE state = 'open'").fetchone()
        (oldest,) = self._db.execute("SELECT MIN(created) FROM events").fetchone()
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        return SpoolStats(
            pending=pending,
            in_progress=open_,
            oldest_age=(time.time() - oldest) if oldest else None,
            last_error=meta.get("last_error"),
            dropped=int(meta.get("dropped", 0)),
        )
