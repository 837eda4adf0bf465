"""Audit: every call recorded before it is answered, shipped to Port (the double), nothing lost."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from harness import LocalUpstream, bridge_client, bridge_env, raw_call, run_cli, write_config
from mcp_bridge.audit.shipper import Shipper, to_entity
from mcp_bridge.audit.spool import Spool
from mcp_bridge.audit.trail import AuditTrail, redact
from mcp_bridge.config import parse_config
from mcp_bridge.governance.port import PortClient
from port_double import AUDIT_BLUEPRINT, PortDouble, mcp_server_entity

SECRET = "port-secret-for-audit-tests"
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "kill-ide", "version": "9"}},
}


@pytest.fixture
def double(tmp_path: Path) -> Iterator[PortDouble]:
    with PortDouble() as d:
        d.add_client("dev", SECRET)
        yield d


@pytest.fixture
def alpha(tmp_path: Path) -> Iterator[LocalUpstream]:
    with LocalUpstream("alpha", tmp_path) as upstream:
        yield upstream


def config(
    tmp_path: Path, double: PortDouble, alpha: LocalUpstream, *, refresh_interval: float | None = None, **extra: Any
) -> Path:
    double.upsert_entity(
        "_mcp_server", mcp_server_entity("alpha", alpha.url, ["echo", "add", "fail"], auth_type="none")
    )
    port = {"base_url": double.base_url, "client_id": "dev", "client_secret": "${env:TEST_PORT_SECRET}"}
    if refresh_interval is not None:
        port["refresh_interval"] = refresh_interval
    audit = {"arguments": "full", **extra.pop("audit", {})}
    return write_config(
        tmp_path / "config.yaml", {}, port=port, audit=audit, user={"email": "dev@example.com"}, **extra
    )


ENV = {"TEST_PORT_SECRET": SECRET}


def calls_in_port(double: PortDouble) -> list[dict[str, Any]]:
    return [e for e in double.entities(AUDIT_BLUEPRINT).values() if e["properties"].get("event_type") == "call"]


def run(tmp_path: Path, cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(tmp_path / "home", *args, "--config", str(cfg), env=ENV)


@pytest.mark.anyio
@pytest.mark.usefixtures("ide_mode")
async def test_n_calls_give_n_entities_with_the_right_fields_and_a_denied_call_is_recorded(
    tmp_path: Path, double: PortDouble, alpha: LocalUpstream
) -> None:
    cfg = config(tmp_path, double, alpha)
    async with bridge_client(cfg, tmp_path / "home", env=ENV) as client:
        for i in range(5):
            await raw_call(client, "alpha__echo", {"text": f"n{i}"})
        await raw_call(client, "alpha__fail", {"message": "x"})
        with pytest.raises(MCPError):
            await raw_call(client, "alpha__delete_everything")
    entities = calls_in_port(double)  # the bridge flushed on exit
    assert len({e["identifier"] for e in entities}) == len(entities) == 7
    # A burst of calls ships in a request or two, not one request per call (shipper.LINGER_SECONDS).
    assert len(double.requests_to("bulk")) <= 2
    by_status: dict[str, list[dict[str, Any]]] = {}
    for e in entities:
        by_status.setdefault(e["properties"]["status"], []).append(e)
    assert len(by_status["Completed"]) == 5 and len(by_status["Failed"]) == 1 and len(by_status["Denied"]) == 1
    done = sorted(by_status["Completed"], key=lambda e: e["identifier"])[0]
    props = done["properties"]
    assert done["title"] == "alpha__echo" and done["relations"] == {"mcp_server": "alpha"}
    assert props["server"] == "alpha" and props["tool_name"] == "echo" and props["source"] == "mcp-bridge"
    assert props["arguments"] == {"text": "n0"} and len(props["arguments_digest"]) == 64
    assert props["client"] == "pytest-ide" and props["user_email"] == "dev@example.com"
    assert props["duration_ms"] >= 0 and props["asked_at"] <= props["replied_at"]
    denied = by_status["Denied"][0]
    assert denied["properties"]["exposed_name"] == "alpha__delete_everything"
    assert "not allowed" in denied["properties"]["error"]
    # The denied name routes to a server's real tool: the event names both, like any call.
    assert denied["title"] == "alpha__delete_everything" and denied["relations"] == {"mcp_server": "alpha"}
    assert denied["properties"]["tool_name"] == "delete_everything"
    # A start without a cached allowlist is not an allowlist change: nothing but the calls was audited.
    assert len(double.entities(AUDIT_BLUEPRINT)) == 7


@pytest.mark.anyio
@pytest.mark.usefixtures("ide_mode")
async def test_an_allowlist_change_in_port_is_audited_with_its_server(
    tmp_path: Path, double: PortDouble, alpha: LocalUpstream
) -> None:
    cfg = config(tmp_path, double, alpha, refresh_interval=1)
    async with bridge_client(cfg, tmp_path / "home", env=ENV) as client:
        await raw_call(client, "alpha__echo", {"text": "before"})
        double.upsert_entity("_mcp_server", mcp_server_entity("alpha", alpha.url, ["echo"], auth_type="none"))
        with anyio.fail_after(20):  # the refresh interval is 1 s
            while "alpha__add" in [t["name"] for t in (await client.session.list_tools()).model_dump()["tools"]]:
                await anyio.sleep(0.2)
    changes = [
        e for e in double.entities(AUDIT_BLUEPRINT).values() if e["properties"]["event_type"] == "allowlist_change"
    ]
    assert len(changes) == 1
    change = changes[0]
    assert change["title"] == "allowlist_change: alpha" and change["relations"] == {"mcp_server": "alpha"}
    assert "alpha allowed tools" in change["properties"]["detail"] and change["properties"]["duration_ms"] == 0


@pytest.mark.anyio
@pytest.mark.usefixtures("ide_mode")
async def test_events_wait_in_the_spool_while_port_fails_and_all_arrive_after_recovery(
    tmp_path: Path, double: PortDouble, alpha: LocalUpstream
) -> None:
    cfg = config(tmp_path, double, alpha)
    double.fail_next("bulk", status=503, times=100_000)
    async with bridge_client(cfg, tmp_path / "home", env=ENV) as client:
        for i in range(30):
            await raw_call(client, "alpha__echo", {"text": f"w{i}"})
        with anyio.fail_after(30):  # the shipper keeps trying; its failures are recorded
            while "503" not in (json.loads(run(tmp_path, cfg, "audit", "status", "--json").stdout)["last_error"] or ""):
                await anyio.sleep(0.5)
    assert calls_in_port(double) == []
    status = json.loads(run(tmp_path, cfg, "audit", "status", "--json").stdout)
    assert status["pending"] >= 30
    double.clear_faults()
    flushed = run(tmp_path, cfg, "audit", "flush")
    assert flushed.returncode == 0, flushed.stderr
    assert sorted(e["properties"]["arguments"]["text"] for e in calls_in_port(double)) == sorted(
        f"w{i}" for i in range(30)
    )
    assert json.loads(run(tmp_path, cfg, "audit", "status", "--json").stdout)["pending"] == 0


async def one_call_then_maybe_kill(cfg: Path, home: Path, text: str, rng: random.Random) -> bool:
    """Spawn a bridge, call echo, and SIGKILL it at a random moment. True when the client saw the answer."""
    answered = False
    async with await anyio.open_process(
        [sys.executable, "-m", "mcp_bridge", "serve", "--config", str(cfg)],
        env=bridge_env(home, ENV),
        stderr=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "alpha__echo", "arguments": {"text": text}},
        }
        lines = [INIT, {"jsonrpc": "2.0", "method": "notifications/initialized"}, call]
        await proc.stdin.send("".join(json.dumps(m) + "\n" for m in lines).encode())
        moment = rng.choice(["before_answer", "right_after_answer", "later"])
        buffer = b""
        with anyio.move_on_after(rng.uniform(0.0, 0.8) if moment == "before_answer" else 20):
            while b'"id":1' not in buffer:
                chunk = await proc.stdout.receive()
                buffer += chunk
            answered = b'"result"' in buffer.split(b'"id":1', 1)[1][:200] or b'"result"' in buffer
        if moment == "later":
            await anyio.sleep(rng.uniform(0.0, 1.5))  # while the shipper may be sending
        proc.kill()
        await proc.wait()
    return answered


@pytest.mark.anyio
async def test_sigkill_at_random_moments_loses_no_answered_call(
    tmp_path: Path, double: PortDouble, alpha: LocalUpstream
) -> None:
    cfg = config(tmp_path, double, alpha, timeouts={"call": 5})
    home = tmp_path / "home"
    rng = random.Random(20261122)
    answered = []
    for i in range(20):
        if await one_call_then_maybe_kill(cfg, home, f"k{i}", rng):
            answered.append(f"k{i}")
    assert len(answered) >= 5  # the loop really exercised answered calls
    # The final restart: a bridge that lives long enough to ship, then exits cleanly.
    async with bridge_client(cfg, home, env=ENV) as client:
        await raw_call(client, "alpha__echo", {"text": "final"})
    flushed = run(tmp_path, cfg, "audit", "flush")
    assert flushed.returncode == 0, flushed.stderr
    texts = {e["properties"]["arguments"]["text"] for e in calls_in_port(double) if e["properties"].get("arguments")}
    missing = [t for t in answered if t not in texts]
    assert not missing, f"answered calls missing from Port: {missing}"


@pytest.mark.anyio
@pytest.mark.usefixtures("ide_mode")
async def test_three_bridges_sharing_one_spool_lose_nothing(
    tmp_path: Path, double: PortDouble, alpha: LocalUpstream
) -> None:
    cfg = config(tmp_path, double, alpha)
    home = tmp_path / "home"

    async def ide(n: int) -> None:
        async with bridge_client(cfg, home, env=ENV, stderr_path=tmp_path / f"b{n}.log") as client:
            for i in range(15):
                await raw_call(client, "alpha__echo", {"text": f"p{n}-{i}"})

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(ide, n)
    assert run(tmp_path, cfg, "audit", "flush").returncode == 0
    texts = sorted(e["properties"]["arguments"]["text"] for e in calls_in_port(double))
    assert texts == sorted(f"p{n}-{i}" for n in range(3) for i in range(15))


def trail_and_spool(tmp_path: Path, double: PortDouble) -> AuditTrail:
    text = json.dumps({"port": {"base_url": double.base_url, "client_id": "dev", "client_secret": SECRET}})
    return AuditTrail(parse_config(text, environ={}).settings, tmp_path / "home")


@pytest.mark.anyio
async def test_207_resends_only_the_failed_entries_and_429_waits_for_the_reset(
    tmp_path: Path, double: PortDouble
) -> None:
    trail = trail_and_spool(tmp_path, double)
    events = []
    for i in range(5):
        event = trail.call("alpha__echo", {"i": i})
        event.server, event.tool, event.status = "alpha", "echo", "Completed"
        trail.end(event)
        events.append(event.id)
    port = parse_config(
        json.dumps({"port": {"base_url": double.base_url, "client_id": "dev", "client_secret": SECRET}}), environ={}
    ).settings.port
    assert port is not None
    async with PortClient(port) as client:
        shipper = Shipper(trail, client, AUDIT_BLUEPRINT, interrupted_after=60)
        double.fail_bulk_identifiers([events[1], events[3]])
        assert await shipper.ship_once() == 3
        assert trail.spool is not None and trail.spool.stats().pending == 2
        double.fail_next("bulk", status=429, reset=1)
        started = time.monotonic()
        assert await shipper.ship_once() == 2
        assert time.monotonic() - started >= 0.95
    counts = double.received_counts(AUDIT_BLUEPRINT)
    assert {i: counts[i] for i in events} == {events[0]: 1, events[1]: 2, events[2]: 1, events[3]: 2, events[4]: 1}
    trail.close()


def test_a_call_left_open_by_a_dead_bridge_ships_as_interrupted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "audit.db")
    spool.put({"id": "mcpb-1", "kind": "call", "status": "In Progress"}, closed=False)
    spool.put({"id": "mcpb-2", "kind": "call", "status": "In Progress"}, closed=False)
    with sqlite3.connect(tmp_path / "audit.db") as db:
        db.execute("UPDATE events SET created = created - 600 WHERE id = 'mcpb-1'")
    batch = spool.claim(interrupted_after=120)
    assert [(e["id"], e["status"], e["error"]) for e in batch] == [("mcpb-1", "Failed", "interrupted")]
    assert spool.stats().in_progress == 1  # the recent one may still be running in another bridge
    spool.close()


_EARLIER_SCHEMA = """
CREATE TABLE events (id TEXT PRIMARY KEY, state TEXT NOT NULL, created REAL NOT NULL, payload TEXT NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0, lease_owner INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT);
CREATE TABLE usage (tool TEXT PRIMARY KEY, calls INTEGER NOT NULL, last REAL NOT NULL);
INSERT INTO events (id, state, created, payload) VALUES ('mcpb-0', 'open', 1.0, '{"id":"mcpb-0"}');
INSERT INTO usage VALUES ('a__old', 5, 1.0);
"""


def test_completed_calls_count_as_their_rows_are_written_also_in_a_spool_of_an_earlier_release(
    tmp_path: Path,
) -> None:
    """Search mode lists the most used tools directly: a completed call counts once, in the same statement as its
    row (the spool's trigger), a failed or open one not at all; an earlier release's spool gets the column and keeps
    its rows and counts; a row written the earlier release's way (no ``used``) is not counted again."""
    with sqlite3.connect(tmp_path / "audit.db") as db:
        db.executescript(_EARLIER_SCHEMA)
    spool = Spool(tmp_path / "audit.db")
    for i, (tool, status) in enumerate([("a__x", "Completed"), ("a__y", "Completed"), ("a__x", "Completed")]):
        event = {"id": f"mcpb-{i + 1}", "kind": "call", "status": "In Progress"}
        spool.put(event, closed=False)
        spool.put({**event, "status": status}, closed=True, used=tool)
    spool.put({"id": "mcpb-9", "kind": "call", "status": "In Progress"}, closed=False)
    spool.put({"id": "mcpb-9", "kind": "call", "status": "Failed"}, closed=True)
    assert spool.most_used(10) == ["a__old", "a__x", "a__y"]
    with sqlite3.connect(tmp_path / "audit.db") as db:  # an earlier release's bridge, sharing the file
        db.execute(
            "INSERT INTO events (id, state, created, payload) VALUES ('mcpb-10', 'closed', 2.0, '{}') "
            "ON CONFLICT(id) DO UPDATE SET state = excluded.state, payload = excluded.payload, lease_until = 0"
        )
        db.execute("UPDATE usage SET calls = calls + 1 WHERE tool = 'a__y'")  # (it counts in its own statement)
        counts = dict(db.execute("SELECT tool, calls FROM usage").fetchall())
    assert counts == {"a__old": 5, "a__x": 2, "a__y": 2}
    assert spool.stats().in_progress == 1 and spool.stats().pending == 6  # the earlier open row kept
    spool.close()


def test_redacted_arguments_never_carry_secret_values() -> None:
    args = {"query": "x" * 1000, "api_key": "k-123", "nested": {"Authorization": "Bearer abc", "password": "pw"}}
    got = redact(args)
    assert got["api_key"] == "***" and got["nested"] == {"Authorization": "***", "password": "***"}
    assert got["query"].startswith("x" * 256) and got["query"].endswith("(1000 chars)")
    entity = to_entity({"id": "mcpb-x", "kind": "call", "server": "s", "tool": "t", "arguments": got})
    assert "k-123" not in json.dumps(entity) and "pw" not in json.dumps(entity["properties"]["arguments"])


@pytest.mark.anyio
@pytest.mark.usefixtures("ide_mode")
async def test_under_redacted_secrets_reach_neither_port_nor_the_local_file(
    tmp_path: Path, double: PortDouble, alpha: LocalUpstream
) -> None:
    jsonl = tmp_path / "audit.jsonl"
    cfg = config(tmp_path, double, alpha, audit={"arguments": "redacted", "jsonl": str(jsonl)})
    secret_args = {"text": "hello", "token": "tok-SECRET-1", "password": "pw-SECRET-2", "api_key": "key-SECRET-3"}
    async with bridge_client(cfg, tmp_path / "home", env=ENV) as client:
        await raw_call(client, "alpha__echo", secret_args)
    shipped = json.dumps(double.entities(AUDIT_BLUEPRINT))
    local = jsonl.read_text()
    for secret in ("tok-SECRET-1", "pw-SECRET-2", "key-SECRET-3"):
        assert secret not in shipped and secret not in local
    assert "hello" in shipped and "hello" in local
    assert jsonl.stat().st_mode & 0o777 == 0o600


def test_the_readme_blueprint_accepts_every_kind_of_event(tmp_path: Path) -> None:
    """The audit blueprint JSON users paste into Port (README) enumerates exactly the event kinds the bridge emits,
    and the Port double holding that blueprint stores an event of each kind."""
    from mcp_bridge.audit.trail import EVENT_KINDS, Event

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index('{\n  "identifier": "mcp_tool_invocation"')
    blueprint = json.loads(readme[start : readme.index("\n```", start)])
    assert tuple(blueprint["schema"]["properties"]["event_type"]["enum"]) == EVENT_KINDS
    context = {"client": "ide", "bridge_version": "0", "user_email": "dev@example.com"}
    with PortDouble() as double:
        double.add_blueprint(AUDIT_BLUEPRINT, schema=blueprint["schema"])
        for kind in EVENT_KINDS:
            now = time.time()
            event = Event(kind=kind, status="Completed", server="alpha", tool="echo", asked_at=now, replied_at=now)
            double.upsert_entity(AUDIT_BLUEPRINT, to_entity(event.to_record(context)))
        assert len(double.entities(AUDIT_BLUEPRINT)) == len(EVENT_KINDS)
