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


class _Pipes:
    """One line in, the next JSON-RPC answer out (notifications the bridge sends meanwhile are skipped)."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.buffer = b""

    async def answer(self, line: str) -> dict[str, Any]:
        await self.proc.stdin.send((line + "\n").encode())
        with anyio.fail_after(30):
            while True:
                head, newline, rest = self.buffer.partition(b"\n")
                if newline:
                    self.buffer = rest
                    message: dict[str, Any] = json.loads(head)
                    if "method" not in message:
                        return message
                    continue
                self.buffer += await self.proc.stdout.receive()


def _invalid(request_id: Any, data: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": -32600, "message": "Invalid Request"}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


BAD_ID = "the id must be a string or an integer"

BAD_LINES: list[tuple[str, dict[str, Any]]] = [
    # Ids JSON-RPC (and MCP) do not allow: the request is invalid and its id cannot be named.
    ('{"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}', _invalid(None, BAD_ID)),
    ('{"jsonrpc": "2.0", "id": [7], "method": "ping"}', _invalid(None, BAD_ID)),
    ('{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}', _invalid(None, BAD_ID)),
    ('{"jsonrpc": "2.0", "id": 1.0, "method": "ping"}', _invalid(None, BAD_ID)),  # refused, not answered as 1
    ('{"jsonrpc": "2.0", "id": null, "method": "ping"}', _invalid(None, BAD_ID)),
    ('{"jsonrpc": "2.0", "id": true, "method": "ping"}', _invalid(None, BAD_ID)),
    ('{"jsonrpc": "2.0", "\\u0069d": false, "method": "ping"}', _invalid(None, BAD_ID)),  # an escaped key
    ('{"jsonrpc": "2.0", "id": {}, "method": "notifications/initialized"}', _invalid(None, BAD_ID)),
    # Malformed requests whose id can be read: answered under that id, so the IDE's request resolves.
    ('{"jsonrpc": "1.0", "id": 8, "method": "ping"}', _invalid(8)),
    ('{"id": 9, "method": "ping"}', _invalid(9)),
    ('{"jsonrpc": "2.0", "id": 11, "method": "ping", "params": "x"}', _invalid(11)),
    ('{"jsonrpc": "2.0", "id": "twelve", "method": 12}', _invalid("twelve")),
    # Nothing to name: a broken response, something that is no object, and no JSON at all.
    ('{"jsonrpc": "2.0", "id": 13}', _invalid(None)),
    ("[1, 2]", _invalid(None)),
    ("{", {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}),
]


async def test_invalid_ids_and_malformed_requests_get_the_answers_json_rpc_asks_for(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", {})
    async with bridge_process(config, tmp_path / "home", tmp_path / "stderr.log") as proc:
        pipes = _Pipes(proc)
        assert (await pipes.answer(json.dumps(INIT)))["id"] == 1
        await proc.stdin.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        got = [await pipes.answer(line) for line, _ in BAD_LINES]
        # A notification gets no answer, and the session still serves: the next answer is the ping's.
        await proc.stdin.send(b'{"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}\n')
        after = await pipes.answer('{"jsonrpc": "2.0", "id": 99, "method": "ping"}')
        await proc.stdin.aclose()
    assert got == [expected for _, expected in BAD_LINES]
    assert after == {"jsonrpc": "2.0", "id": 99, "result": {}}


NOT_INITIALIZED = {"code": -32600, "message": "Server not initialized: send initialize first"}


async def test_requests_before_initialize_are_told_so_and_a_malformed_first_line_is_answered_under_its_id(
    tmp_path: Path,
) -> None:
    """The first line goes through the early ``initialize`` reader (which leaves anything it doubts to the rest)."""
    config = write_config(tmp_path / "config.yaml", {})
    old_init = {**INIT, "jsonrpc": "1.0", "id": 8}
    async with bridge_process(config, tmp_path / "home", tmp_path / "stderr.log") as proc:
        pipes = _Pipes(proc)
        first = await pipes.answer(json.dumps(old_init))
        listed = await pipes.answer('{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}')
        called = await pipes.answer('{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "x"}}')
        unknown = await pipes.answer('{"jsonrpc": "2.0", "id": 4, "method": "nope/nope"}')
        pinged = await pipes.answer('{"jsonrpc": "2.0", "id": 5, "method": "ping"}')
        initialized = await pipes.answer(json.dumps({**INIT, "id": 6}))
        await proc.stdin.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        listed_after = await pipes.answer('{"jsonrpc": "2.0", "id": 7, "method": "tools/list"}')
        await proc.stdin.aclose()
    assert first == _invalid(8)
    assert listed == {"jsonrpc": "2.0", "id": 2, "error": NOT_INITIALIZED}
    assert called == {"jsonrpc": "2.0", "id": 3, "error": NOT_INITIALIZED}
    assert unknown["error"]["code"] == -32601  # a method nobody serves is "not found", initialized or not
    assert pinged == {"jsonrpc": "2.0", "id": 5, "result": {}}  # ping is allowed before initialize
    assert initialized["result"]["serverInfo"]["name"] == "mcp-bridge"
    assert listed_after == {"jsonrpc": "2.0", "id": 7, "result": {"tools": []}}
