"""Interoperability with a real third-party MCP server: ``@modelcontextprotocol/server-everything`` (npm).

``test_everything_direct`` checks the fixture and the SDK client against the server itself, so that a failure of
``test_everything_through_bridge`` points at the bridge, not at the server or the test harness.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
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


def _bridge(config: Path, tmp_path: Path) -> StdioServerParameters:
    """``mcp-bridge serve`` with ``config``, as the IDE would run it (its home under ``tmp_path``)."""
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_bridge", "serve", "--config", str(config)],
        env={"MCP_BRIDGE_HOME": str(tmp_path / "home")},
        cwd=tmp_path,
    )


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
            {
                "servers": {
                    SERVER: {
                        "url": everything_url,
                        "allowed_tools": ["*"],
                        "allowed_prompts": ["*"],
                        "allowed_resources": ["*"],
                        "auth": {"type": "none"},
                    }
                }
            }
        ),
        encoding="utf-8",
    )
    bridge = _bridge(config, tmp_path)
    with anyio.fail_after(DEADLINE):
        async with Client(bridge, mode="legacy") as client:
            names = await _tool_names(client)
            expected = {f"{PREFIX}{name}" for name in (ECHO, GET_SUM, LONG_RUNNING)}
            assert expected <= names, sorted(names)
            await _exercise(client, prefix=PREFIX)


ROOT = "file:///work/interop-project"


def _texts(result: CallToolResult) -> str:
    assert not result.is_error, result
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


async def _elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True})


async def _sample(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="sampled by the IDE"), model="ide-model"
    )


async def _roots(ctx: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri=ROOT, name="project")])


INPUTS: dict[str, Any] = {"elicitation_callback": _elicit, "sampling_callback": _sample, "list_roots_callback": _roots}


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_everything_asks_the_ide_through_the_bridge(everything_url: str, tmp_path: Path, mode: str) -> None:
    """The IDE's capabilities reach server-everything (its elicitation, sampling and roots tools are listed as they
    are to the IDE directly, less the tools that need tasks), and its requests for input cross the bridge to the
    IDE in either era."""
    config = tmp_path / "config.yaml"
    server = {
        "url": everything_url,
        "allowed_tools": ["*"],
        "allowed_prompts": ["*"],
        "allowed_resources": ["*"],
        "auth": {"type": "none"},
        "allow_sampling": True,
    }
    config.write_text(yaml.safe_dump({"servers": {SERVER: server}}), encoding="utf-8")
    bridge = _bridge(config, tmp_path)
    with anyio.fail_after(DEADLINE):
        async with Client(everything_url, mode="legacy", **INPUTS) as direct:
            listed = (await direct.list_tools()).tools
        needs_tasks = {t.name for t in listed if t.execution is not None and t.execution.task_support == "required"}
        assert "simulate-research-query" in needs_tasks
        async with Client(bridge, mode=mode, **INPUTS) as client:  # type: ignore[arg-type]
            names = await _tool_names(client)
            assert names == {PREFIX + t.name for t in listed} - {PREFIX + n for n in needs_tasks}, sorted(names)
            elicited = _texts(await client.call_tool(f"{PREFIX}trigger-elicitation-request", {}))
            sampled = _texts(
                await client.call_tool(f"{PREFIX}trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
            )
            rooted = _texts(await client.call_tool(f"{PREFIX}get-roots-list", {}))
    assert "User provided the requested information" in elicited and "Ada Lovelace" in elicited
    assert "sampled by the IDE" in sampled
    if mode == "legacy":  # server-everything asks for the roots when it starts, outside any call
        assert ROOT in rooted
    else:
        # A 2026-07-28 IDE can only be asked within its own requests. server-everything asks on its standalone
        # stream, tied to no request: when one of the IDE's requests to it is in flight at that moment, the bridge
        # asks through that one (so the roots arrive); otherwise the server starts without roots.
        assert ROOT in rooted or "no roots are currently configured" in rooted
