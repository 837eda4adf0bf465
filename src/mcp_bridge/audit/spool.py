"""The audit spool: every event on disk (SQLite, WAL) before the call it describes is answered.

One row per event, keyed by its id. A call writes its row when it starts (``open``) and rewrites it when it ends
(``closed``): each a single autocommitted statement. In WAL mode with ``synchronous=NORMAL`` a commit has reached the
operating system when it returns, so it survives the process being killed (not a power cut, which would cost
``synchronous=FULL``'s fsync per call). Several bridge processes share the file: SQLite serialises the writers, and
shippers claim batches with a lease so two of them rarely send the same event (when they do, Port's upsert makes it
harmless). A row leaves the spool only when Port acknowledged it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from filelock import FileLock, Timeout

from mcp_bridge.audit import spoolcheck
from mcp_bridge.errors import AuditUnavailable
from mcp_bridge.logs import get_logger

log = get_logger(__name__)

MAX_BATCH = 20
MAX_BATCH_BYTES = 1024 * 1024 - 4096  # Port's 1 MiB body limit, less the envelope
LEASE_SECONDS = 60.0
_LOCK_SECONDS = 10.0

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,          -- open (a call in progress) | closed (ready to ship)
    created REAL NOT NULL,
    payload TEXT NOT NULL,        -- the event as JSON
    lease_until REAL NOT NULL DEFAULT 0,
    lease_owner INTEGER NOT NULL DEFAULT 0,  -- pid of the shipper holding the lease
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    used TEXT                     -- a completed call's tool (exposed name): counted in usage as the row is written
);
-- The shipper's batch: closed rows in id order (lease filtered inline). Leased rows only, for the lease checks: a
-- put() writes no entry there, so a call's two commits touch the table and one index.
CREATE INDEX IF NOT EXISTS events_by_state ON events (state, id);
CREATE INDEX IF NOT EXISTS events_leased ON events (lease_until) WHERE lease_until > 0;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- How often each tool (by exposed name) was called and completed here: search mode lists the most used directly.
-- Kept when the events themselves have been shipped.
CREATE TABLE IF NOT EXISTS usage (tool TEXT PRIMARY KEY, calls INTEGER NOT NULL, last REAL NOT NULL);
"""
_COUNT_USE = (
    "BEGIN INSERT INTO usage (tool, calls, last) VALUES (new.used, 1, new.created) "
    "ON CONFLICT(tool) DO UPDATE SET calls = calls + 1, last = excluded.last; END"
)
_TRIGGERS = f"""
-- A completed call counts where its row is written, in the same statement (one commit on the call's path). Bridges
-- of earlier releases never set `used` (they count in a transaction of their own).
CREATE TRIGGER IF NOT EXISTS events_used_insert AFTER INSERT ON events WHEN new.used IS NOT NULL {_COUNT_USE};
CREATE TRIGGER IF NOT EXISTS events_used_update AFTER UPDATE OF used ON events WHEN new.used IS NOT NULL {_COUNT_USE};
"""

_PUT = (
    "INSERT INTO events (id, state, created, payload, used) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(id) DO UPDATE SET state = excluded.state, payload = excluded.payload, lease_until = 0, "
    "used = excluded.used"
)

_COMPANIONS = ("", "-wal", "-shm")
"""The spool's files: the database and SQLite's write-ahead log and its index, which belong to it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _lock(path: Path) -> FileLock:
    """Held to open the spool, and by ``audit reset`` while it moves the file aside and starts a fresh one: a bridge
    never opens a database whose write-ahead log is being moved (they would not belong together)."""
    return FileLock(f"{path}.lock", timeout=_LOCK_SECONDS, mode=0o600)


def _connect(path: Path) -> tuple[sqlite3.Connection, tuple[int, int]]:
    """A connection to the spool at ``path`` (a new, empty one when there is none) and the file's identity.

    Never open an existing spool file by other means in a process that may have a connection to it: closing any
    descriptor of a file drops every POSIX lock the process holds on it, SQLite's included, and another process
    may then take itself for the last user and delete the write-ahead log still in use here.
    """
    with contextlib.suppress(FileExistsError):  # a new file is private from its first byte (-wal, -shm take its mode)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    # A file that is not a database is refused before SQLite opens it for writing: that would take the -wal beside
    # it for an empty log and delete it on closing. Read as immutable, the -wal and -shm are left as they are.
    probe = sqlite3.connect(f"{path.absolute().as_uri()}?immutable=1", uri=True)
    try:
        probe.execute("PRAGMA schema_version").fetchall()
    finally:
        probe.close()
    db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        db.executescript(_SCHEMA)
        if "used" not in {row[1] for row in db.execute("PRAGMA table_info(events)")}:  # a spool of an earlier release
            db.execute("ALTER TABLE events ADD COLUMN used TEXT")
        db.executescript(_TRIGGERS)
        st = os.stat(path)
        for suffix in _COMPANIONS:  # older spools were not always created private
            p = Path(f"{path}{suffix}")
            if p.exists():
                os.chmod(p, 0o600)
    except BaseException:
        db.close()
        raise
    return db, (st.st_dev, st.st_ino)


@dataclass(frozen=True)
class SpoolStats:
    pending: int
    in_progress: int
    oldest_age: float | None
    last_error: str | None
    dropped: int


class Spool:
    """The SQLite file under ``$MCP_BRIDGE_HOME`` (mode 0600).

    A spool that cannot be opened or written raises :class:`~mcp_bridge.errors.AuditUnavailable` from every
    operation (and keeps it in :attr:`problem`); it never fails to construct. Each operation tries again: a full disk
    that has room again, or a damaged file that ``mcp-bridge audit reset`` replaced, works at the next one. A file
    moved aside while it is open (``audit reset``) is noticed after each write, and the event written again into the
    file now at :attr:`path`: an event that arrives after the reset is never left behind in the old file.
    """

    def __init__(self, path: Path, *, max_events: int = 200_000) -> None:
        self.path = path
        self.max_events = max_events
        self._db: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._lock = _lock(path)
        self._writes = 0
        self.problem: AuditUnavailable | None = None
        """Why the last operation failed (``None``: it worked)."""
        with contextlib.suppress(AuditUnavailable):  # kept in self.problem; every operation tries again
            self._open()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db = None

    def _open(self) -> sqlite3.Connection:
        """Connect to the file now at :attr:`path` (a new spool when there is none)."""
        self.close()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._lock:
                self._db, self._identity = _connect(self.path)
            self.problem = None
        except Timeout:
            why = f"another mcp-bridge process held {self._lock.lock_file} for {_LOCK_SECONDS:g}s"
            raise self._failed(spoolcheck.unwritable(self.path, why)) from None
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(spoolcheck.from_error(self.path, exc)) from None
        return self._db

    def ready(self) -> None:
        """Raise :class:`AuditUnavailable` when the spool cannot be opened now: the file now at :attr:`path` is
        opened when none is open or the one open was moved aside (a full disk is tried again by the next write)."""
        if self._db is None or self._moved():
            self._open()

    def _moved(self) -> bool:
        """Whether the file at :attr:`path` is no longer the one open (moved aside, or gone)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def _failed(self, problem: AuditUnavailable) -> AuditUnavailable:
        self.problem = problem
        return problem

    def _run(self, op: Callable[[sqlite3.Connection], _T], *, reopen: bool = False) -> _T:
        """``op`` on the spool, opened first when it is not (or ``reopen``); a failure that is not the file having
        been moved aside (then ``op`` runs on the file now at :attr:`path`) raises :class:`AuditUnavailable`."""
        db = self._db if self._db is not None and not reopen else self._open()
        try:
            result = op(db)
        except sqlite3.Error as exc:
            if reopen or not self._moved():
                raise self._failed(spoolcheck.from_error(self.path, exc)) from None
            return self._run(op, reopen=True)
        self.problem = None
        return result

    def identity(self) -> tuple[int, int] | None:
        """The open file's (device, inode), ``None`` when none is open."""
        return self._identity if self._db is not None else None

    # ------------------------------------------------------------------ writers (the call path)

    def put(self, event: dict[str, Any], *, closed: bool, used: str | None = None) -> None:
        """Insert or replace one event: one small commit (with one more use of the tool named ``used``, counted by
        the spool's trigger in the same statement)."""
        now = time.time()
        row = (event["id"], "closed" if closed else "open", now, json.dumps(event, separators=(",", ":")), used)

        def write(db: sqlite3.Connection) -> None:
            db.execute(_PUT, row)

        self._run(write)
        if self._moved():  # moved aside (`audit reset`) while being written: the event belongs in the new spool
            self._run(write, reopen=True)
        self._writes += 1
        if self._writes % 1000 == 0:
            self._run(self._enforce_cap)

    def _enforce_cap(self, db: sqlite3.Connection) -> None:
        (count,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
        excess = count - self.max_events
        if excess <= 0:
            return
        with _transaction(db):
            db.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE state = 'closed' ORDER BY id LIMIT ?)",
                (excess,),
            )
            _bump(db, "dropped", excess)
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
        return self._run(lambda db: _claim(db, interrupted_after))

    def ack(self, ids: list[str]) -> None:
        """Port has these: they leave the spool."""
        if ids:
            marks = ",".join("?" * len(ids))
            # "+state": look rows up by primary key, not by the state index
            sql = f"DELETE FROM events WHERE id IN ({marks}) AND +state = 'closed'"  # noqa: S608
            self._run(lambda db: db.execute(sql, ids))

    def release(self, ids: list[str], error: str) -> None:
        """Shipping these failed: make them claimable again and remember why."""

        def write(db: sqlite3.Connection) -> None:
            if ids:
                marks = ",".join("?" * len(ids))
                db.execute(
                    f"UPDATE events SET lease_until = 0, attempts = attempts + 1, last_error = ? WHERE id IN ({marks})",  # noqa: S608
                    (error, *ids),
                )
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('last_error', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (error,),
            )

        self._run(write)

    def note_success(self) -> None:
        self._run(lambda db: db.execute("DELETE FROM meta WHERE key = 'last_error'"))

    def most_used(self, limit: int) -> list[str]:
        """The exposed names of the tools called most often here (completed calls), most used first."""
        rows = self._run(
            lambda db: db.execute("SELECT tool FROM usage ORDER BY calls DESC, last DESC LIMIT ?", (limit,)).fetchall()
        )
        return [str(tool) for (tool,) in rows]

    def stats(self) -> SpoolStats:
        return self._run(_stats)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite rolls back by itself after some errors (a full disk, an I/O error)
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _bump(db: sqlite3.Connection, key: str, by: int) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + ?",
        (key, str(by), by),
    )


def _claim(db: sqlite3.Connection, interrupted_after: float) -> list[dict[str, Any]]:
    now = time.time()
    with _transaction(db):
        stale = db.execute(
            "SELECT id, payload FROM events WHERE state = 'open' AND created < ?", (now - interrupted_after,)
        ).fetchall()
        for event_id, payload in stale:
            event = json.loads(payload)
            event.update(status="Failed", error="interrupted", error_class="Interrupted")
            db.execute(
                "UPDATE events SET state = 'closed', payload = ? WHERE id = ?",
                (json.dumps(event, separators=(",", ":")), event_id),
            )
        # A lease held by a process that no longer exists (killed mid-shipment) is free at once.
        owners = [
            o
            for (o,) in db.execute(
                "SELECT DISTINCT lease_owner FROM events "
                "WHERE lease_until > 0 AND lease_until >= ? AND lease_owner != 0",
                (now,),
            )
        ]
        dead = [o for o in owners if not _alive(o)]
        rows = db.execute(
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
            db.execute(
                f"UPDATE events SET lease_until = ?, lease_owner = ? WHERE id IN ({ids})",  # noqa: S608
                (now + LEASE_SECONDS, os.getpid(), *[e["id"] for e in batch]),
            )
    return batch


def _stats(db: sqlite3.Connection) -> SpoolStats:
    (pending,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
    (open_,) = db.execute("SELECT COUNT(*) FROM events WHERE state = 'open'").fetchone()
    (oldest,) = db.execute("SELECT MIN(created) FROM events").fetchone()
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    return SpoolStats(
        pending=pending,
        in_progress=open_,
        oldest_age=(time.time() - oldest) if oldest else None,
        last_error=meta.get("last_error"),
        dropped=int(meta.get("dropped", 0)),
    )


# ---------------------------------------------------------------------------------------------------------- recovery


@dataclass(frozen=True)
class Health:
    """What :func:`check` found in the spool at :attr:`path`."""

    path: Path
    state: Literal["missing", "ok", "damaged", "unwritable"]
    """``missing``: no file yet (the first event creates it); ``damaged``: not a usable spool (``audit reset``);
    ``unwritable``: intact as far as can be seen, but it cannot be written now (a full disk, permissions)."""
    problem: AuditUnavailable | None = None
    pending: int = 0
    """Events waiting to be shipped (for a healthy spool)."""
    identity: tuple[int, int] | None = None
    """(device, inode) of the file checked: :func:`move_aside` moves only that file."""


def check(path: Path) -> Health:
    """Open the spool at ``path`` as a bridge does, verify it (SQLite's ``quick_check``, the spool's tables) and write
    to it once: what a call would meet. Never raises."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Health(path, "missing")
    except OSError as exc:
        problem = spoolcheck.from_error(path, exc)
        return Health(path, "unwritable", problem)
    identity = (st.st_dev, st.st_ino)
    spool = Spool(path)
    try:
        if spool.problem is None:
            rows = spool._run(lambda db: db.execute("PRAGMA quick_check").fetchall())
            if rows != [("ok",)]:
                found = "; ".join(str(r[0]) for r in rows[:3])
                return Health(path, "damaged", spoolcheck.damaged(path, f"integrity check: {found}"), 0, identity)
            stats = spool.stats()
            spool._run(
                lambda db: db.execute(
                    "INSERT INTO meta (key, value) VALUES ('checked_at', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (str(time.time()),),
                )
            )
            return Health(path, "ok", None, stats.pending, identity)
    except AuditUnavailable:
        pass  # in spool.problem
    finally:
        spool.close()
    found_problem = spool.problem
    assert found_problem is not None
    return Health(path, "damaged" if found_problem.damaged else "unwritable", found_problem, 0, identity)


class SpoolChanged(Exception):
    """The file at the spool's path is not the one checked (another ``audit reset`` replaced it meanwhile)."""


def move_aside(path: Path, identity: tuple[int, int] | None) -> tuple[list[tuple[Path, Path]], AuditUnavailable | None]:
    """Rename the spool at ``path`` (the file :func:`check` saw: ``identity``) and its ``-wal`` and ``-shm`` to
    ``<name>.broken-<UTC time>`` (plus the same suffixes, so SQLite opens them together) and start a fresh spool at
    ``path``: the renames as pairs, and why the fresh spool could not be made, if it could not.

    Nothing is deleted. Done under the lock bridges take to open the spool, so none opens the old database with the
    new write-ahead log or the other way round. A bridge that has the old file open keeps writing to it until its next
    write, after which it notices (:class:`Spool`) and writes that event again into the fresh spool.

    Raises :class:`SpoolChanged`, :class:`OSError` (a rename failed; on Windows, while a bridge has the file open)
    or :class:`filelock.Timeout`.
    """
    with _lock(path):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise SpoolChanged(f"{path} is gone (moved by another `{spoolcheck.RESET_COMMAND}`?)") from None
        if identity is not None and (st.st_dev, st.st_ino) != identity:
            raise SpoolChanged(f"{path} was replaced while it was checked (by another `{spoolcheck.RESET_COMMAND}`?)")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        base, n = f"{path.name}.broken-{stamp}", 1
        while any(path.with_name(f"{base}{suffix}").exists() for suffix in _COMPANIONS):
            n += 1
            base = f"{path.name}.broken-{stamp}-{n}"
        moved: list[tuple[Path, Path]] = []
        for suffix in _COMPANIONS:
            source, target = Path(f"{path}{suffix}"), path.with_name(f"{base}{suffix}")
            if source.exists():
                os.rename(source, target)
                moved.append((source, target))
                with contextlib.suppress(OSError):  # kept as it was, but private like the spool
                    os.chmod(target, 0o600)
        try:
            db, _ = _connect(path)
            db.close()
        except (sqlite3.Error, OSError) as exc:
            return moved, spoolcheck.from_error(path, exc)
    return moved, None
