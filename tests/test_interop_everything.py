"""Interoperability with a real third-party MCP server: ``@modelcontextprotocol/server-everything`` (npm).

``test_everything_direct`` checks the fixture and the SDK client against the server itself, so that a failure of
``test_everything_through_bridge`` points at the bridge, not at the server or the test harness.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest
import yaml
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

pytestmark = [pytest.mark.node, pytest.mark.anyio]

# Tool names of server-everything 2026.8.31 (tests/interop/package.json).
ECHO = "echo"
GET_SUM = "get-sum"
LONG_RUNNING = "trigger-long-running-operation"

SERVER = "everything"
PREFIX = f"{SERVER}__"
DEADLINE = 60.0


async def _tool_names(client: Client) -> set[str]:
    names: set[str] = set()
    cursor: str | None = None
    while True:
        page = await client.list_tools(cursor=cursor)
        names.update(tool.name for tool in page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return names


def _text(result: CallToolResult) -> str:
    assert not result.is_error, result
    assert result.content, result
    block = result.content[0]
    assert isinstance(block, TextContent), result
    return block.text


async def _exercise(client: Client, prefix: str) -> None:
    """Call echo, get-sum and the long-running tool (with progress) under ``prefix``."""
    message = "héllo from mcp-bridge ✓"
    assert _text(await client.call_tool(f"{prefix}{ECHO}", {"message": message})) == f"Echo: {message}"

    assert _text(await client.call_tool(f"{prefix}{GET_SUM}", {"a": 2, "b": 3.5})) == "The sum of 2 and 3.5 is 5.5."

    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    steps = 3
    result = await client.call_tool(
        f"{prefix}{LONG_RUNNING}", {"duration": 0.6, "steps": steps}, progress_callback=on_progress
    )
    assert "Long running operation completed" in _text(result)
    assert progress, "no progress notification arrived"
    values = [value for value, _, _ in progress]
    assert values == sorted(set(values)), progress
    assert all(0 < value <= steps and total == steps for value, total, _ in progress), progress


async def test_everything_direct(everything_url: str) -> None:
    with anyio.fail_after(DEADLINE):
        async with Client(everything_url, mode="legacy") as client:
            names = await _tool_names(client)
            assert {ECHO, GET_SUM, LONG_RUNNING} <= names, sorted(names)
            await _exercise(client, prefix="")


async def test_everything_through_bridge(everything_url: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"servers": {SERVER: {"url": everything_url, "allowed_tools": ["*"], "auth": {"type": "none"}}}}
        ),
        encoding="utf-8",
    )
    bridge = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_bridge", "serve", "--config", str(config)],
        env={"MCP_BRIDGE_HOME": str(tmp_path / "home")},
        cwd=tmp_path,
    )
    with anyio.fail_after(DEADLINE):
        async with Client(bridge, mode="legacy") as client:
            names = await _tool_names(client)
            expected = {f"{PREFIX}{name}" for name in (ECHO, GET_SUM, LONG_RUNNING)}
            assert expected <= names, sorted(names)
            await _exercise(client, prefix=PREFIX)
