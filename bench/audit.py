"""Audit benchmark: recording cost on the call path and spool throughput (a benchmark, not a test: nothing asserted).

Run from the repository root::

    .venv/bin/python bench/audit.py [--calls 5000] [--rounds 3] [--no-write] [--profile]

It measures on this machine, in a temporary directory, with the bridge's own ``AuditTrail`` and ``Spool``:

1. the recording cost on the call path: ``trail.begin(event)`` + ``trail.end(event)`` (two autocommitted SQLite
   statements) per call, p50/p99, for every ``audit.arguments`` policy and with ``audit.jsonl`` on top, plus a
   breakdown of one call's cost (building the records, JSON encoding, the SQLite statement with and without its
   commit);
2. spool throughput: 4 writer processes (each its own ``Spool`` on one file) putting closed events as fast as they
   can, and the same with 1 writer; and how fast one shipper-side ``claim()`` + ``ack()`` loop drains 20,000 events
   (spool operations only: nothing is sent).

Settings come from ``parse_config`` with a ``port:`` section pointing at a closed loopback port, so the trail spools;
no ``Shipper`` is ever started. Logging is configured as ``serve`` does at ``info`` (to a discarded stream), so a
``Completed`` call is not logged. It prints one markdown table and appends it to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import io
import json
import multiprocessing as mp
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import git_commit, load_average
from mcp_bridge.audit.spool import MAX_BATCH, Spool
from mcp_bridge.audit.trail import AuditTrail, new_event_id
from mcp_bridge.config import Settings, parse_config
from mcp_bridge.logs import configure

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

TARGET_RECORD_P50_US = 100.0
TARGET_WRITES_PER_S = 5_000.0
WARMUP_CALLS = 200
WRITERS = 4
WRITER_EVENTS_TOTAL = 12_000  # split across the writers; the single writer puts all of them
DRAIN_EVENTS = 20_000
BREAKDOWN_CALLS = 3_000
BACKLOG_ROWS = 100_000

PORT_YAML = 'port: {base_url: "http://127.0.0.1:9", client_id: x, client_secret: y}\n'
EXPOSED = "github__search_code"
# A small, realistic tool-call argument dict: a few plain fields, a nested option block, one secret-looking key and
# one string long enough that ``redacted`` cuts it.
ARGUMENTS: dict[str, Any] = {
    "owner": "acme-corp",
    "repo": "payments-service",
    "query": "def refund( language:python path:src/",
    "path": "src/payments/refunds/handlers.py",
    "ref": "main",
    "page": 1,
    "per_page": 30,
    "options": {"case_sensitive": False, "include": ["*.py", "*.md"], "exclude": ["tests/**"]},
    "api_token": "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
    "context": "Looking for the refund handler that retries on a 409 from the ledger. " * 5,
}

VARIANTS: dict[str, str] = {  # label -> extra YAML
    "digest (default)": "",
    "none": "audit: {arguments: none}\n",
    "redacted": "audit: {arguments: redacted}\n",
    "full": "audit: {arguments: full}\n",
    "digest + `audit.jsonl`": "audit: {jsonl: JSONL_PATH}\n",
}


def us(ns: float) -> float:
    return ns / 1000.0


def pct(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values)) - 1))
    return float(sorted_values[k])


def settings_for(extra: str, work: Path) -> Settings:
    text = PORT_YAML + extra.replace("JSONL_PATH", json.dumps(str(work / "audit.jsonl")))
    return parse_config(text, environ={}).settings


# ---------------------------------------------------------------------------------------------- 1. recording cost


@dataclass
class Recording:
    begin_end_p50: list[float] = field(default_factory=list)  # µs, one value per round
    begin_end_p99: list[float] = field(default_factory=list)
    call_p50: list[float] = field(default_factory=list)  # trail.call(): digest / redaction
    total_p50: list[float] = field(default_factory=list)  # call() + begin() + end()


def record_round(extra: str, work: Path, calls: int) -> tuple[float, float, float, float]:
    """One round of one variant on a fresh home: p50/p99 of begin+end, p50 of call(), p50 of all three (ns)."""
    work.mkdir(parents=True)
    trail = AuditTrail(settings_for(extra, work), work / "home")
    assert trail.spool is not None, "the trail should spool (port: with an audit_blueprint)"
    clock = time.perf_counter_ns
    try:
        for _ in range(WARMUP_CALLS):
            event = trail.call(EXPOSED, ARGUMENTS)
            event.server, event.tool = "github", "search_code"
            trail.begin(event)
            event.status = "Completed"
            trail.end(event)
        record: list[int] = []
        make: list[int] = []
        for _ in range(calls):
            t0 = clock()
            event = trail.call(EXPOSED, ARGUMENTS)
            t1 = clock()
            event.server, event.tool = "github", "search_code"  # known after routing, before begin()
            t2 = clock()
            trail.begin(event)
            event.status = "Completed"  # the upstream answered
            trail.end(event)
            t3 = clock()
            make.append(t1 - t0)
            record.append(t3 - t2)
    finally:
        trail.close()
    totals = sorted(m + r for m, r in zip(make, record, strict=True))
    record.sort()
    make.sort()
    return pct(record, 0.50), pct(record, 0.99), pct(make, 0.50), pct(totals, 0.50)


def run_recording(work: Path, calls: int, rounds: int) -> dict[str, Recording]:
    results = {label: Recording() for label in VARIANTS}
    for r in range(rounds):
        labels = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))  # spread drift over the variants
        for i, label in enumerate(labels):
            p50, p99, make50, total50 = record_round(VARIANTS[label], work / f"rec-{r}-{i}", calls)
            res = results[label]
            res.begin_end_p50.append(us(p50))
            res.begin_end_p99.append(us(p99))
            res.call_p50.append(us(make50))
            res.total_p50.append(us(total50))
    return results


@dataclass
class Breakdown:
    """Per-call cost of the pieces of begin()+end() (each happens twice per call), p50 in µs, one value per round."""

    to_record: list[float] = field(default_factory=list)
    dumps: list[float] = field(default_factory=list)
    put_commit: list[float] = field(default_factory=list)
    put_no_commit: list[float] = field(default_factory=list)
    payload_bytes: int = 0


def breakdown_round(work: Path, n: int, out: Breakdown) -> None:
    work.mkdir(parents=True)
    trail = AuditTrail(settings_for("", work), work / "home")
    spool = trail.spool
    assert spool is not None
    clock = time.perf_counter_ns
    try:
        events = []
        for _ in range(n):
            event = trail.call(EXPOSED, ARGUMENTS)
            event.server, event.tool, event.status = "github", "search_code", "Completed"
            event.replied_at = event.asked_at + 0.004
            events.append(event)
        build: list[int] = []
        records = []
        for event in events:
            t0 = clock()
            rec = event.to_record(trail.context())
            t1 = clock()
            build.append(t1 - t0)
            records.append(rec)
        dumps: list[int] = []
        for rec in records:
            t0 = clock()
            json.dumps(rec, separators=(",", ":"))
            dumps.append(clock() - t0)
        out.payload_bytes = len(json.dumps(records[0], separators=(",", ":")))
        committed: list[int] = []
        for rec in records[: n // 2]:
            t0 = clock()
            spool.put(rec, closed=True)
            committed.append(clock() - t0)
        uncommitted: list[int] = []
        spool._db.execute("BEGIN IMMEDIATE")  # one open transaction: the same statements without a commit each
        for rec in records[n // 2 :]:
            t0 = clock()
            spool.put(rec, closed=True)
            uncommitted.append(clock() - t0)
        spool._db.execute("COMMIT")
    finally:
        trail.close()
    for values, dest in (
        (build, out.to_record),
        (dumps, out.dumps),
        (committed, out.put_commit),
        (uncommitted, out.put_no_commit),
    ):
        values.sort()
        dest.append(us(2 * pct(values, 0.50)))  # two of each per call


# ---------------------------------------------------------------------------------------------- 2. spool throughput


def _realistic_records(trail: AuditTrail, n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        event = trail.call(EXPOSED, ARGUMENTS)
        event.server, event.tool, event.status = "github", "search_code", "Completed"
        event.replied_at = event.asked_at + 0.004
        out.append(event.to_record(trail.context()))
    return out


def _now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # one clock for all processes


def writer_proc(path: str, work: str, n: int, ready: Any, go: Any, results: Any) -> None:
    """One writer process: its own Spool on the shared file, n closed events as fast as it can."""
    configure("info", stream=io.StringIO())
    trail = AuditTrail(settings_for("", Path(work)), Path(work) / "scratch-home")  # only to make realistic records
    records = _realistic_records(trail, n)
    trail.close()
    spool = Spool(Path(path))
    latencies: list[int] = []
    errors = 0
    ready.release()
    go.wait()
    start = _now_ns()
    for rec in records:
        t0 = _now_ns()
        try:
            spool.put(rec, closed=True)
        except Exception:  # sqlite3.OperationalError "database is locked" after busy_timeout: counted, not retried
            errors += 1
        latencies.append(_now_ns() - t0)
    end = _now_ns()
    spool.close()
    latencies.sort()
    results.put((start, end, pct(latencies, 0.50), pct(latencies, 0.99), latencies[-1], errors))


@dataclass
class Writers:
    per_s: list[float] = field(default_factory=list)
    put_p50: list[float] = field(default_factory=list)  # µs, median over the writers
    put_p99: list[float] = field(default_factory=list)  # µs, max over the writers
    put_max: list[float] = field(default_factory=list)  # µs
    errors: int = 0


def writers_round(work: Path, writers: int, total: int, out: Writers) -> None:
    work.mkdir(parents=True)
    path = work / "home" / "audit.db"
    Spool(path).close()  # schema and WAL mode first, so the writers do not race to create them
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    per = total // writers
    procs = [
        ctx.Process(target=writer_proc, args=(str(path), str(work / f"w{i}"), per, ready, go, results))
        for i in range(writers)
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a writer process did not get ready")
        t_go = _now_ns()
        go.set()
        rows = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    end = max(r[1] for r in rows)
    out.per_s.append(per * writers / ((end - t_go) / 1e9))
    out.put_p50.append(us(statistics.median(r[2] for r in rows)))
    out.put_p99.append(us(max(r[3] for r in rows)))
    out.put_max.append(us(max(r[4] for r in rows)))
    out.errors += sum(r[5] for r in rows)
    check = Spool(path)
    try:
        pending = check.stats().pending
    finally:
        check.close()
    if pending != per * writers:
        print(f"warning: {pending} rows in the spool after {per * writers} puts", file=sys.stderr)


@dataclass
class Drain:
    per_s: list[float] = field(default_factory=list)
    first_claim: list[float] = field(default_factory=list)  # µs, p50 of the first 50 claims (20k rows left)
    last_claim: list[float] = field(default_factory=list)  # µs, p50 of the last 50 claims (few rows left)
    ack_p50: list[float] = field(default_factory=list)
    fill_per_s: list[float] = field(default_factory=list)  # the fill, in one transaction: not a call-path figure


def drain_round(work: Path, n: int, out: Drain) -> None:
    work.mkdir(parents=True)
    trail = AuditTrail(settings_for("", work), work / "home")
    spool = trail.spool
    assert spool is not None
    try:
        records = _realistic_records(trail, n)
        t0 = time.perf_counter()
        spool._db.execute("BEGIN IMMEDIATE")
        for rec in records:
            spool.put(rec, closed=True)
        spool._db.execute("COMMIT")
        out.fill_per_s.append(n / (time.perf_counter() - t0))
        claims: list[int] = []
        acks: list[int] = []
        drained = 0
        clock = time.perf_counter_ns
        start = clock()
        while True:
            c0 = clock()
            batch = spool.claim(interrupted_after=3600.0)
            c1 = clock()
            if not batch:
                break
            spool.ack([e["id"] for e in batch])
            acks.append(clock() - c1)
            claims.append(c1 - c0)
            drained += len(batch)
        elapsed = (clock() - start) / 1e9
        left = spool.stats().pending
    finally:
        trail.close()
    if drained != n or left:
        print(f"warning: drained {drained} of {n}, {left} left", file=sys.stderr)
    out.per_s.append(drained / elapsed)
    out.first_claim.append(us(statistics.median(claims[:50])))
    out.last_claim.append(us(statistics.median(claims[-50:])))
    out.ack_p50.append(us(statistics.median(acks)))


@dataclass
class Backlog:
    rows: int
    claim_ms: float
    ack_ms: float


def backlog_probe(work: Path, rows: int, batches: int = 20) -> Backlog:
    """claim() and ack() of single batches with ``rows`` closed events pending (how the drain scales)."""
    work.mkdir(parents=True)
    trail = AuditTrail(settings_for("", work), work / "home")
    spool = trail.spool
    assert spool is not None
    try:
        (template,) = _realistic_records(trail, 1)
        spool._db.execute("BEGIN IMMEDIATE")
        for _ in range(rows):
            spool.put({**template, "id": new_event_id()}, closed=True)
        spool._db.execute("COMMIT")
        claims: list[int] = []
        acks: list[int] = []
        clock = time.perf_counter_ns
        for _ in range(batches):
            t0 = clock()
            batch = spool.claim(interrupted_after=3600.0)
            t1 = clock()
            spool.ack([e["id"] for e in batch])
            acks.append(clock() - t1)
            claims.append(t1 - t0)
    finally:
        trail.close()
    return Backlog(rows, statistics.median(claims) / 1e6, statistics.median(acks) / 1e6)


def wal_bytes_per_put(work: Path, n: int = 200) -> float:
    """Bytes one put() appends to the WAL (autocheckpoint off on this connection only, to see the growth)."""
    work.mkdir(parents=True)
    trail = AuditTrail(settings_for("", work), work / "home")
    spool = trail.spool
    assert spool is not None
    try:
        records = _realistic_records(trail, n + 50)
        spool._db.execute("PRAGMA wal_autocheckpoint=0")
        for rec in records[:50]:
            spool.put(rec, closed=True)
        wal = Path(f"{spool.path}-wal")
        before = wal.stat().st_size
        for rec in records[50:]:
            spool.put(rec, closed=True)
        return (wal.stat().st_size - before) / n
    finally:
        trail.close()


# ---------------------------------------------------------------------------------------------- profile (optional)


def profile_recording(work: Path, calls: int) -> None:
    """cProfile of ``calls`` begin()+end() pairs (default policy) and of one drain; top functions to stderr."""
    work.mkdir(parents=True)
    trail = AuditTrail(settings_for("", work), work / "home")
    events = []
    for _ in range(calls):
        event = trail.call(EXPOSED, ARGUMENTS)
        event.server, event.tool = "github", "search_code"
        events.append(event)

    def record_all() -> None:
        for event in events:
            trail.begin(event)
            event.status = "Completed"
            trail.end(event)

    def drain_all() -> None:
        assert trail.spool is not None
        while batch := trail.spool.claim(interrupted_after=3600.0):
            trail.spool.ack([e["id"] for e in batch])

    for title, fn in (("begin()+end()", record_all), ("claim()+ack() drain", drain_all)):
        prof = cProfile.Profile()
        prof.runcall(fn)
        print(f"--- cProfile: {title}, {calls} events ---", file=sys.stderr)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(10)
    trail.close()


# ---------------------------------------------------------------------------------------------- report


def rounds_note(values: list[float], fmt: str = ".1f") -> str:
    return f"rounds: {', '.join(format(v, fmt) for v in values)}"


def verdict(ok: bool) -> str:
    return "holds" if ok else "does NOT hold"


def render(
    rec: dict[str, Recording],
    brk: Breakdown,
    multi: Writers,
    single: Writers,
    drain: Drain,
    backlog: Backlog,
    wal_bytes: float,
    calls: int,
    rounds: int,
    started: dt.datetime,
    load_start: str,
) -> str:
    med = statistics.median
    rows: list[list[str]] = []
    default = rec["digest (default)"]
    d50 = med(default.begin_end_p50)
    rows.append(
        [
            "`begin()`+`end()` p50, `arguments: digest` (default)",
            f"{d50:.1f} µs",
            f"target: under {TARGET_RECORD_P50_US:g} µs per call at p50 — {verdict(d50 < TARGET_RECORD_P50_US)}; "
            + rounds_note(default.begin_end_p50),
        ]
    )
    rows.append(
        [
            "`begin()`+`end()` p99, `arguments: digest` (default)",
            f"{med(default.begin_end_p99):.1f} µs",
            rounds_note(default.begin_end_p99),
        ]
    )
    for label, res in rec.items():
        if label == "digest (default)":
            continue
        rows.append(
            [
                f"`begin()`+`end()` p50 / p99, `arguments: {label}`"
                if "jsonl" not in label
                else f"`begin()`+`end()` p50 / p99, {label}",
                f"{med(res.begin_end_p50):.1f} / {med(res.begin_end_p99):.1f} µs",
                "p50 " + rounds_note(res.begin_end_p50),
            ]
        )
    for label, res in rec.items():
        rows.append(
            [
                f"`trail.call()` p50 (event + arguments policy), {label}",
                f"{med(res.call_p50):.1f} µs",
                f"call()+begin()+end() p50 {med(res.total_p50):.1f} µs",
            ]
        )
    rows += [
        [
            "breakdown: 2 × `to_record(context())`",
            f"{med(brk.to_record):.1f} µs",
            "p50 per call (two records per call); " + rounds_note(brk.to_record),
        ],
        [
            "breakdown: 2 × `json.dumps(record)`",
            f"{med(brk.dumps):.1f} µs",
            f"payload {brk.payload_bytes} bytes; " + rounds_note(brk.dumps),
        ],
        [
            "breakdown: 2 × `Spool.put()`, autocommit (as on the call path)",
            f"{med(brk.put_commit):.1f} µs",
            "includes its json.dumps; " + rounds_note(brk.put_commit),
        ],
        [
            "breakdown: 2 × `Spool.put()` inside one open transaction",
            f"{med(brk.put_no_commit):.1f} µs",
            f"the commits cost ≈ {med(brk.put_commit) - med(brk.put_no_commit):.1f} µs per call; "
            + rounds_note(brk.put_no_commit),
        ],
        [
            "WAL bytes appended per `put()`",
            f"{wal_bytes:,.0f} B",
            f"≈{wal_bytes / 4120:.1f} pages of 4 KiB (table leaf, id index, `events_ready` index); "
            "no fsync at commit (`synchronous=NORMAL`)",
        ],
    ]
    m = med(multi.per_s)
    s = med(single.per_s)
    rows += [
        [
            f"spool writes, {WRITERS} writer processes",
            f"{m:,.0f} events/s",
            f"target: ≥ {TARGET_WRITES_PER_S:,.0f} events/s — {verdict(m >= TARGET_WRITES_PER_S)}; "
            + rounds_note(multi.per_s, ",.0f"),
        ],
        [
            f"`put()` latency under {WRITERS} writers, p50 / p99 / max",
            f"{med(multi.put_p50):.0f} / {med(multi.put_p99):.0f} / {max(multi.put_max):,.0f} µs",
            f"p99 = worst writer's; busy errors: {multi.errors}",
        ],
        [
            "spool writes, 1 writer process",
            f"{s:,.0f} events/s",
            f"target: ≥ {TARGET_WRITES_PER_S:,.0f} events/s — {verdict(s >= TARGET_WRITES_PER_S)}; "
            + rounds_note(single.per_s, ",.0f"),
        ],
        [
            "`put()` latency, 1 writer, p50 / p99 / max",
            f"{med(single.put_p50):.0f} / {med(single.put_p99):.0f} / {max(single.put_max):,.0f} µs",
            f"busy errors: {single.errors}",
        ],
        [
            f"drain {DRAIN_EVENTS:,} events, `claim()`+`ack()` loop",
            f"{med(drain.per_s):,.0f} events/s",
            f"batches of {MAX_BATCH}; no network; " + rounds_note(drain.per_s, ",.0f"),
        ],
        [
            "`claim()` p50: first 50 / last 50 batches",
            f"{med(drain.first_claim):,.0f} / {med(drain.last_claim):,.0f} µs",
            f"≈{DRAIN_EVENTS:,} vs ≤1,000 rows pending; `ack()` p50 over the drain {med(drain.ack_p50):,.0f} µs",
        ],
        [
            f"`claim()` / `ack()` p50 with {backlog.rows:,} events pending",
            f"{backlog.claim_ms:.1f} / {backlog.ack_ms:.1f} ms",
            f"one batch of {MAX_BATCH}: ≈{MAX_BATCH / ((backlog.claim_ms + backlog.ack_ms) / 1000):,.0f} events/s "
            "at that backlog (median of 20 batches, one fill)",
        ],
    ]
    header = [
        f"## {started:%Y-%m-%d %H:%M} UTC — commit {git_commit()} — audit recording and spool (`bench/audit.py`)",
        "",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}; 1-min load average {load_start} before the run, "
        f"{load_average()} at its end (includes this run's own load)",
        f"- recording: {calls} sequential calls per variant per round ({WARMUP_CALLS} warm-up), {rounds} rounds, "
        "fresh spool per variant and round, variant order reversed every other round; times are "
        "`begin(event)` + `end(event)` (two autocommitted statements, WAL, `synchronous=NORMAL`) with the "
        "event already built; values are the median across rounds of each round's p50/p99",
        f"- spool: {WRITER_EVENTS_TOTAL:,} closed events per round put by {WRITERS} spawned writer processes "
        f"({WRITER_EVENTS_TOTAL // WRITERS:,} each, own `Spool` each, one file) and by 1 writer; one event = one "
        "`put()` (a call costs two: In Progress and final); drain = one `claim()`+`ack()` loop over "
        f"{DRAIN_EVENTS:,} prefilled closed events; {rounds} rounds each, medians",
        "",
        "| metric | value | notes |",
        "|---|---:|---|",
    ]
    return "\n".join(header + [f"| {' | '.join(r)} |" for r in rows]) + "\n"


# ---------------------------------------------------------------------------------------------- main


def timed(label: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    print(f"{label} ...", file=sys.stderr, end="", flush=True)
    out = fn()
    print(f" {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="sequential calls per variant per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement (default 3)")
    parser.add_argument("--no-write", action="store_true", help="print the table only; do not append to RESULTS.md")
    parser.add_argument("--profile", action="store_true", help="also print cProfile tops to stderr")
    args = parser.parse_args()
    if args.calls < 100 or args.rounds < 1:
        parser.error("--calls must be at least 100 and --rounds at least 1")

    configure("info", stream=io.StringIO())  # as `serve` at the default level: Completed calls are not logged
    started = dt.datetime.now(dt.UTC)
    load_start = load_average()
    t_start = time.perf_counter()
    with _workdir() as work:
        rec = timed("recording cost", lambda: run_recording(work, args.calls, args.rounds))
        brk = Breakdown()
        timed(
            "breakdown",
            lambda: [breakdown_round(work / f"brk-{r}", BREAKDOWN_CALLS, brk) for r in range(args.rounds)],
        )
        multi, single = Writers(), Writers()

        def spool_writes() -> None:
            for r in range(args.rounds):
                writers_round(work / f"multi-{r}", WRITERS, WRITER_EVENTS_TOTAL, multi)
                writers_round(work / f"single-{r}", 1, WRITER_EVENTS_TOTAL, single)

        timed("spool writers", spool_writes)
        drain = Drain()
        timed("drain", lambda: [drain_round(work / f"drain-{r}", DRAIN_EVENTS, drain) for r in range(args.rounds)])
        backlog = timed("backlog probe", lambda: backlog_probe(work / "backlog", BACKLOG_ROWS))
        wal_bytes = wal_bytes_per_put(work / "wal")
        if args.profile:
            profile_recording(work / "profile", args.calls)
    table = render(rec, brk, multi, single, drain, backlog, wal_bytes, args.calls, args.rounds, started, load_start)
    print(table)
    if not args.no_write:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n" + table)
        print(f"appended to {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    print(f"total runtime {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mcp-bridge-audit-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
