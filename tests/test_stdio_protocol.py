"""stdout is the protocol: only JSON-RPC goes there, bad input gets JSON-RPC errors, and the bridge stays up."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from harness import LocalUpstream, bridge_env, bridge_process, free_port, write_config

pytestmark = pytest.mark.anyio

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw-ide", "version": "0"}},
}


async def test_raw_stdout_holds_only_json_rpc_and_bad_input_gets_errors(tmp_path: Path) -> None:
    alpha = LocalUpstream("alpha", tmp_path).start()
    dead_port = free_port()  # nothing listens here: the bridge logs warnings about it
    try:
        config = write_config(
            tmp_path / "config.yaml",
            {
                "alpha": alpha.server_config(),
                "dead": {"url": f"http://127.0.0.1:{dead_port}/mcp", "allowed_tools": ["*"]},
                "quiet": {"url": f"http://127.0.0.1:{dead_port}/other"},  # no allowed_tools: a config warning
            },
            timeouts={"connect": 1, "startup_wait": 1},
        )
        lines: list[Any] = [
            INIT,
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            "this is not json",
            {"foo": 1},
            {"jsonrpc": "2.0", "id": 2, "method": "nope/nope"},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"nam": 3}},
            {"jsonrpc": "2.0", "id": 4, "method": "tools/list"},
            {
                "jsonrpc": "2.0",
                "id": 5,
                "method": "tools/call",
                "params": {"name": "alpha__echo", "arguments": {"text": "hi"}},
            },
            {"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "dead__x", "arguments": {}}},
            {"jsonrpc": "2.0", "id": 7, "method": "ping"},
        ]
        stderr_path = tmp_path / "stderr.log"
        async with bridge_process(config, tmp_path / "home", stderr_path) as proc:
            for line in lines:
                text = line if isinstance(line, str) else json.dumps(line)
                await proc.stdin.send((text + "\n").encode())
            out = b""
            with anyio.fail_after(30):
                while True:
                    out += await proc.stdout.receive()
                    got = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
                    if {m.get("id") for m in got} >= {1, 2, 3, 4, 5, 6, 7}:
                        break
            await proc.stdin.aclose()
            with anyio.fail_after(15):
                async for chunk in proc.stdout:
                    out += chunk
                assert await proc.wait() == 0
    finally:
        alpha.kill()

    messages = [json.loads(x) for x in out.decode().splitlines()]  # every line parses as JSON...
    assert all(m.get("jsonrpc") == "2.0" for m in messages)  # ...and is JSON-RPC
    by_id = {m["id"]: m for m in messages if m.get("id") is not None}
    anonymous = [m["error"]["code"] for m in messages if "error" in m and m.get("id") is None]
    notifications = [m["method"] for m in messages if "method" in m]
    assert set(notifications) <= {"notifications/tools/list_changed", "notifications/message"}
    assert sorted(anonymous) == [-32700, -32600]
    assert by_id[1]["result"]["capabilities"]["tools"]["listChanged"] is True
    assert by_id[2]["error"]["code"] == -32601
    assert by_id[3]["error"]["code"] == -32602
    assert "alpha__echo" in {t["name"] for t in by_id[4]["result"]["tools"]}
    assert by_id[5]["result"]["content"][0]["text"] == "alpha: hi"
    assert by_id[6]["error"]["code"] < 0  # an unknown tool on a dead server: an error, not a crash
    assert by_id[7]["result"] == {}
    stderr = stderr_path.read_text()
    assert "bridge.no_tools_allowed" in stderr and "dead" in stderr  # the warnings went to stderr, not stdout


async def test_sigterm_stops_the_bridge_promptly_while_the_ide_keeps_stdin_open(tmp_path: Path) -> None:
    import signal

    alpha = LocalUpstream("alpha", tmp_path).start()
    try:
        config = write_config(tmp_path / "config.yaml", {"alpha": alpha.server_config()})
        stderr_path = tmp_path / "stderr.log"
        async with bridge_process(config, tmp_path / "home", stderr_path) as proc:
            await proc.stdin.send((json.dumps(INIT) + "\n").encode())
            with anyio.fail_after(20):
                assert b'"id":1' in await proc.stdout.receive()
            proc.send_signal(signal.SIGTERM)  # stdin stays open, as an IDE's pipe does
            with anyio.fail_after(5):
                code = await proc.wait()
    finally:
        alpha.kill()
    assert code == 0
    stderr = stderr_path.read_text()
    assert "serve.stop" in stderr and "Fatal" not in stderr and "Traceback" not in stderr


async def test_stdin_that_is_not_a_pipe_is_read_too(tmp_path: Path) -> None:
    """A file (or a terminal) on stdin cannot be read on the event loop: the reader thread takes over."""
    import subprocess

    config = write_config(tmp_path / "config.yaml", {})
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        "\n".join(
            json.dumps(m)
            for m in [
                INIT,
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            ]
        )
        + "\n"
    )
    with open(requests, "rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "mcp_bridge", "serve", "--config", str(config)],
            stdin=stdin,
            capture_output=True,
            env=bridge_env(tmp_path / "home"),
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    replies = {m["id"]: m for m in map(json.loads, done.stdout.decode().splitlines())}
    assert replies[1]["result"]["serverInfo"]["name"] == "mcp-bridge"
    assert replies[2]["result"] == {"tools": []}
