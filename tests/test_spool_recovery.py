"""A spool that cannot take events (a damaged file, a full disk) denies calls, naming the file and the fix; the bridge
stays up; ``status`` and ``doctor`` say it; ``mcp-bridge audit reset`` moves a damaged spool aside (kept) and bridges,
running ones included, audit again."""

from __future__ import annotations

import contextlib
import json
import random
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from harness import LocalUpstream, bridge_client, bridge_env, raw_call, run_cli, tool_names, write_config
from port_double import AUDIT_BLUEPRINT, PortDouble, mcp_server_entity

SECRET = "port-secret-for-spool-tests"
ENV = {"TEST_PORT_SECRET": SECRET}
RESET = "mcp-bridge audit reset"
GARBAGE = random.Random(13).randbytes(16384)  # not an SQLite file: its first bytes are not SQLite's magic


@pytest.fixture
def double() -> Iterator[PortDouble]:
    with PortDouble() as d:
        d.add_client("dev", SECRET)
        yield d


@pytest.fixture
def alpha(tmp_path: Path) -> Iterator[LocalUpstream]:
    with LocalUpstream("alpha", tmp_path) as upstream:
        yield upstream


@pytest.fixture
def cfg(tmp_path: Path, double: PortDouble, alpha: LocalUpstream) -> Path:
    double.upsert_entity("_mcp_server", mcp_server_entity("alpha", alpha.url, ["echo"], auth_type="none"))
    port = {"base_url": double.base_url, "client_id": "dev", "client_secret": "${env:TEST_PORT_SECRET}"}
    return write_config(tmp_path / "config.yaml", {}, port=port, audit={"arguments": "full"})


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def cli(home: Path, cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(home, *args, "--config", str(cfg), env=ENV)


def completed_texts(double: PortDouble) -> list[str]:
    """The ``text`` argument of every call Port holds as ``Completed``."""
    return sorted(
        e["properties"]["arguments"]["text"]
        for e in double.entities(AUDIT_BLUEPRINT).values()
        if e["properties"].get("event_type") == "call" and e["properties"]["status"] == "Completed"
    )


def spool_texts(path: Path) -> list[str]:
    """The ``text`` argument of every call event in the spool file at ``path`` (read only)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        events = [json.loads(p) for (p,) in db.execute("SELECT payload FROM events")]
    return sorted(e["arguments"]["text"] for e in events if e.get("kind") == "call")


def moved_aside(home: Path) -> list[Path]:
    """The spool files ``audit reset`` moved aside (not their -wal and -shm)."""
    return sorted(p for p in home.iterdir() if re.fullmatch(r"audit\.db\.broken-\d{8}T\d{6}Z(-\d+)?", p.name))


@pytest.mark.anyio
async def test_a_damaged_spool_denies_every_call_naming_the_file_and_the_fix_and_the_bridge_stays_up(
    tmp_path: Path, cfg: Path, home: Path, double: PortDouble
) -> None:
    spool = home / "audit.db"
    spool.write_bytes(GARBAGE)
    stderr = tmp_path / "bridge.log"
    async with bridge_client(cfg, home, env=ENV, stderr_path=stderr) as client:
        # initialize was answered (early), and tells the model why calls will fail
        instructions = client.instructions or ""
        assert "audit spool" in instructions and str(spool) in instructions and RESET in instructions
        assert await tool_names(client) == ["alpha__echo"]  # lists still answer
        for text in ("one", "two"):
            with pytest.raises(MCPError) as denied:
                await raw_call(client, "alpha__echo", {"text": text})
            message = denied.value.error.message
            assert str(spool) in message and "damaged" in message and RESET in message
        assert await tool_names(client) == ["alpha__echo"]  # still serving after the denials

        status = cli(home, cfg, "status")
        assert status.returncode == 1, status.stderr  # the bridge fails closed: every call is denied
        assert "every tool call is denied" in status.stdout and str(spool) in status.stdout
        assert RESET in status.stdout
        as_json_done = cli(home, cfg, "status", "--json")
        assert as_json_done.returncode == 1
        as_json = json.loads(as_json_done.stdout)["audit"]
        assert as_json["state"] == "damaged" and RESET in as_json["problem"]

        doctor = cli(home, cfg, "doctor")
        assert doctor.returncode == 1
        lines = doctor.stdout.splitlines()
        found = next(i for i, x in enumerate(lines) if x.startswith("✗ audit spool"))
        assert str(spool) in lines[found] and "damaged" in lines[found]
        assert "fix:" in lines[found + 1] and RESET in lines[found + 1]
    log = stderr.read_text()
    assert "Traceback" not in log
    assert "front.early_initialize_differs" not in log  # the SDK's instructions carry the same note
    assert spool.read_bytes() == GARBAGE  # denied calls never touch the damaged file
    assert completed_texts(double) == []  # nothing went out unaudited


@pytest.mark.anyio
async def test_audit_reset_moves_the_damaged_spool_aside_and_running_and_new_bridges_audit_again(
    tmp_path: Path, cfg: Path, home: Path, double: PortDouble
) -> None:
    spool = home / "audit.db"
    spool.write_bytes(GARBAGE)
    (home / "audit.db-wal").write_bytes(b"wal of the damaged spool")
    async with bridge_client(cfg, home, env=ENV, stderr_path=tmp_path / "a.log") as client:
        with pytest.raises(MCPError, match="audit reset"):
            await raw_call(client, "alpha__echo", {"text": "before the reset"})

        reset = cli(home, cfg, "audit", "reset")
        assert reset.returncode == 0, reset.stderr
        (aside,) = moved_aside(home)
        wal = aside.with_name(aside.name + "-wal")
        assert aside.read_bytes() == GARBAGE and wal.read_bytes() == b"wal of the damaged spool"  # kept, with its log
        assert stat.S_IMODE(aside.stat().st_mode) == stat.S_IMODE(wal.stat().st_mode) == 0o600
        assert str(aside) in reset.stdout and "fresh spool" in reset.stdout

        # the running bridge uses the fresh spool from its next call
        result = await raw_call(client, "alpha__echo", {"text": "running bridge"})
        assert result["content"][0]["text"] == "alpha: running bridge"
    async with bridge_client(cfg, home, env=ENV, stderr_path=tmp_path / "b.log") as client:
        result = await raw_call(client, "alpha__echo", {"text": "new bridge"})
        assert result["content"][0]["text"] == "alpha: new bridge"
    assert completed_texts(double) == ["new bridge", "running bridge"]  # each bridge flushed on exit
    healthy = cli(home, cfg, "doctor")
    assert "✓ audit spool" in healthy.stdout, healthy.stdout
    assert aside.read_bytes() == GARBAGE  # kept


def test_audit_reset_leaves_a_healthy_spool_alone_unless_forced(tmp_path: Path, cfg: Path, home: Path) -> None:
    nothing = cli(home, cfg, "audit", "reset")
    assert nothing.returncode == 0 and "nothing to reset" in nothing.stdout
    spool = home / "audit.db"
    from mcp_bridge.audit.spool import Spool

    waiting = Spool(spool)  # a healthy spool with an event waiting to be shipped
    waiting.put({"id": "mcpb-1", "kind": "call", "arguments": {"text": "waiting"}}, closed=True)
    waiting.close()
    before = spool.stat().st_ino

    refused = cli(home, cfg, "audit", "reset")
    assert refused.returncode == 2  # usage: the command needs --force for this
    assert "healthy" in refused.stderr and "--force" in refused.stderr and "1 event" in refused.stderr
    assert spool.stat().st_ino == before and moved_aside(home) == []

    forced = cli(home, cfg, "audit", "reset", "--force")
    assert forced.returncode == 0, forced.stderr
    (aside,) = moved_aside(home)
    assert spool_texts(aside) == ["waiting"]  # kept, events and all
    assert spool.stat().st_ino != before and spool_texts(spool) == []  # a fresh spool


@pytest.mark.anyio
async def test_a_bridge_holding_a_spool_moved_aside_writes_its_next_events_into_the_fresh_one(
    tmp_path: Path, cfg: Path, home: Path, double: PortDouble
) -> None:
    double.fail_next("bulk", status=503, times=100_000)  # events stay in the spool
    async with bridge_client(cfg, home, env=ENV, stderr_path=tmp_path / "bridge.log") as client:
        await raw_call(client, "alpha__echo", {"text": "old spool"})
        forced = cli(home, cfg, "audit", "reset", "--force")
        assert forced.returncode == 0, forced.stderr
        await raw_call(client, "alpha__echo", {"text": "fresh spool"})
        (aside,) = moved_aside(home)
        assert spool_texts(home / "audit.db") == ["fresh spool"]
        assert spool_texts(aside) == ["old spool"]


LIMITED = (
    "import os, resource, sys; n = int(sys.argv[1]); hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1];"
    " resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard));"
    " os.execv(sys.executable, [sys.executable, '-m', 'mcp_bridge', *sys.argv[2:]])"
)
"""Runs ``mcp-bridge ARGS`` with files limited to ``n`` bytes: a write past it fails (EFBIG; Python ignores SIGXFSZ)
as on a full disk. The process keeps its pid through the exec, so its limit can be raised from outside again."""


class LineClient:
    """JSON-RPC over the bridge's stdio, one line each way (an IDE's view, with the process at hand)."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.buffer = b""
        self.next_id = 1

    async def send(self, message: dict[str, Any]) -> None:
        await self.proc.stdin.send((json.dumps(message) + "\n").encode())

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id, self.next_id = self.next_id, self.next_id + 1
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
        with anyio.fail_after(30):
            while True:
                while b"\n" not in self.buffer:
                    self.buffer += await self.proc.stdout.receive()
                line, _, self.buffer = self.buffer.partition(b"\n")
                message: dict[str, Any] = json.loads(line)
                if message.get("id") == request_id:
                    return message


@asynccontextmanager
async def limited_bridge(cfg: Path, home: Path, stderr: Path, limit: int) -> AsyncIterator[tuple[Any, LineClient]]:
    with open(stderr, "wb") as errlog:
        async with await anyio.open_process(
            [sys.executable, "-c", LIMITED, str(limit), "serve", "--config", str(cfg)],
            env=bridge_env(home, ENV),
            stderr=errlog,
        ) as proc:
            client = LineClient(proc)
            init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "ide", "version": "1"}}
            assert "result" in await client.request("initialize", init)
            await client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            yield proc, client
            await proc.stdin.aclose()
            with anyio.fail_after(30):
                await proc.wait()


@pytest.mark.anyio
@pytest.mark.skipif(sys.platform == "win32", reason="file size limits (RLIMIT_FSIZE) are POSIX")
async def test_a_full_disk_denies_calls_naming_the_file_and_the_fix_and_no_answered_call_goes_unaudited(
    tmp_path: Path, cfg: Path, home: Path, double: PortDouble
) -> None:
    import resource

    spool = home / "audit.db"
    answered: list[str] = []
    denied: list[str] = []
    async with limited_bridge(cfg, home, tmp_path / "bridge.log", limit=160 * 1024) as (proc, client):
        for i in range(60):  # each call adds some 20 KiB of write-ahead log: the limit comes within a few calls
            reply = await client.request("tools/call", {"name": "alpha__echo", "arguments": {"text": f"c{i}"}})
            if "result" in reply:
                answered.append(f"c{i}")
                continue
            message = reply["error"]["message"]
            assert str(spool) in message and "free space" in message and RESET in message
            denied.append(f"c{i}")
            break
        assert answered and denied, "the file size limit was never reached"
        # still up: lists answer, calls are denied with the same reason
        listed = await client.request("tools/list")
        assert [t["name"] for t in listed["result"]["tools"]] == ["alpha__echo"]
        again = await client.request("tools/call", {"name": "alpha__echo", "arguments": {"text": "again"}})
        assert "free space" in again["error"]["message"]
        denied.append("again")
        if hasattr(resource, "prlimit"):  # Linux: "free space", and the same bridge records calls again
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
            reply = await client.request("tools/call", {"name": "alpha__echo", "arguments": {"text": "freed"}})
            assert reply["result"]["content"][0]["text"] == "alpha: freed"
            answered.append("freed")
    assert "Traceback" not in (tmp_path / "bridge.log").read_text(errors="replace")
    flushed = cli(home, cfg, "audit", "flush")
    assert flushed.returncode == 0, flushed.stderr
    shipped = completed_texts(double)
    assert set(answered) <= set(shipped), f"answered calls missing from Port: {set(answered) - set(shipped)}"
    assert not set(denied) & set(shipped)  # a denied call never ran


def test_opening_the_spool_twice_in_one_process_keeps_the_first_connections_locks(tmp_path: Path) -> None:
    """A descriptor of the spool closed in a process drops that process's SQLite locks: another process could then
    delete the write-ahead log still in use here (its events lost). Opening the spool again must not do that."""
    from mcp_bridge.audit.spool import Spool

    path = tmp_path / "audit.db"
    first = Spool(path)
    first.put({"id": "mcpb-1"}, closed=True)
    Spool(path).close()  # another Spool in the same process, closed
    reader = "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.execute('SELECT * FROM meta'); db.close()"
    subprocess.run([sys.executable, "-c", reader, str(path)], check=True, timeout=30)  # another process comes and goes
    first.put({"id": "mcpb-2"}, closed=True)
    assert (tmp_path / "audit.db-wal").exists()  # still the log `first` writes to
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert sorted(i for (i,) in db.execute("SELECT id FROM events")) == ["mcpb-1", "mcpb-2"]
    first.close()
