"""The benchmark knobs of the local upstream server: ``--extra-tools`` and ``--echo-delay``."""

from __future__ import annotations

import time
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from harness import Raw
from mcp_bridge.sandbox.localservers import build_server


async def _list(client: Client) -> list[dict[str, Any]]:
    return (await client.session.send_request(types.ListToolsRequest(), Raw)).root["tools"]


async def _call(client: Client, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    request = types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments=arguments))
    return (await client.session.send_request(request, Raw)).root


@pytest.mark.anyio
async def test_extra_tools_are_listed_and_callable() -> None:
    async with Client(build_server("s", extra_tools=3), mode="legacy") as client:
        tools = await _list(client)
        names = [t["name"] for t in tools]
        assert names[-3:] == ["tool_0001", "tool_0002", "tool_0003"]
        assert len(names) == len(set(names)) == 10 + 3
        assert tools[-1]["inputSchema"]["properties"]["query"]["type"] == "string"
        result = await _call(client, "tool_0002", {"query": "x"})
        assert result["content"][0]["text"] == '{"tool": "tool_0002", "arguments": {"query": "x"}}'
    async with Client(build_server("s"), mode="legacy") as client:
        assert len(await _list(client)) == 10


@pytest.mark.anyio
async def test_echo_delay_delays_echo_only() -> None:
    async with Client(build_server("s", echo_delay=0.3), mode="legacy") as client:
        t0 = time.monotonic()
        assert (await _call(client, "echo", {"text": "hi"}))["content"][0]["text"] == "s: hi"
        assert time.monotonic() - t0 >= 0.3
        t0 = time.monotonic()
        assert (await _call(client, "add", {"a": 1, "b": 2}))["structuredContent"] == {"sum": 3}
        assert time.monotonic() - t0 < 0.3
