"""The local upstream server's knobs: ``--extra-tools`` and ``--echo-delay`` (benchmarks), ``--era`` (protocol eras)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.subscriptions import ToolsListChanged
from mcp.shared.exceptions import MCPError

from harness import LocalUpstream, Raw, direct_client
from mcp_bridge.sandbox.localservers import LIST_TTL_MS, build_server, without_sdk_spans


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


# ------------------------------------------------------------------------------------------------ protocol eras


async def _roundtrip(client: Client) -> dict[str, Any]:
    """What a client sees of one list, call, read and prompt: the result keys beyond the payload."""
    listed = (await client.session.send_request(types.ListToolsRequest(), Raw)).root
    called = await _call(client, "add", {"a": 1, "b": 2})
    read = await client.session.send_request(
        types.ReadResourceRequest(params=types.ReadResourceRequestParams(uri="mem://s/readme")), Raw
    )
    prompt = await client.session.send_request(
        types.GetPromptRequest(params=types.GetPromptRequestParams(name="greet", arguments={"who": "x"})), Raw
    )
    assert called["structuredContent"] == {"sum": 3}
    return {"list": listed, "call": called, "read": read.root, "prompt": prompt.root}


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto", "2026-07-28"])
async def test_results_are_right_for_each_era(mode: str) -> None:
    """A 2026-07-28 client rejects a result without ``resultType`` (and a list without the cache fields): the
    server's answers carry them at 2026-07-28, and only then."""
    async with Client(build_server("s"), mode=mode) as client:  # type: ignore[arg-type]
        seen = await _roundtrip(client)
        modern = client.protocol_version == "2026-07-28"
    assert modern == (mode != "legacy")
    for kind, result in seen.items():
        assert ("resultType" in result) == modern, kind
        assert ("ttlMs" in result) == (modern and kind in ("list", "read")), kind
    if modern:
        assert seen["list"]["ttlMs"] == LIST_TTL_MS and seen["list"]["cacheScope"] == "private"


@pytest.mark.anyio
async def test_a_modern_client_hears_of_a_new_tool_on_its_listen_stream() -> None:
    async with Client(build_server("s"), mode="2026-07-28") as client:
        async with client.listen(tools_list_changed=True) as subscription:
            await _call(client, "add_tool", {"tool": "zz"})
            with anyio.fail_after(5):
                assert isinstance(await subscription.__anext__(), ToolsListChanged)
        await _call(client, "redefine", {"tool": "echo", "description": "new"})  # no listener: nothing to tell
        assert "zz" in [t["name"] for t in await _list(client)]


@pytest.mark.anyio
@pytest.mark.parametrize("era", ["both", "modern", "handshake"])
@pytest.mark.parametrize("mode", ["legacy", "auto", "2026-07-28"])
async def test_the_era_switch_over_http(tmp_path: Path, era: str, mode: str) -> None:
    """``--era``: ``both`` serves either client; ``modern`` refuses ``initialize`` with HTTP 400 and -32022 naming
    its versions (so an auto client settles on 2026-07-28); ``handshake`` answers a 2026-07-28 request as a 2025
    server does (HTTP 400 "Missing session ID"), so an auto client falls back to the handshake."""
    with LocalUpstream("s", tmp_path, era=era) as upstream:
        refused = (era == "modern" and mode == "legacy") or (era == "handshake" and mode == "2026-07-28")
        if refused:
            with pytest.raises(BaseException) as caught:  # the SDK's task group may wrap the error
                async with direct_client(upstream, mode) as client:
                    await _list(client)  # a pinned 2026-07-28 client sends nothing before its first request
            error = _mcp_error(caught.value)
            if era == "modern":
                assert error.error.code == types.UNSUPPORTED_PROTOCOL_VERSION
                assert error.error.data["supported"] == ["2026-07-28"]
            else:
                assert error.error.code == types.INVALID_REQUEST
                assert "Missing session ID" in error.error.message
            return
        async with direct_client(upstream, mode) as client:
            seen = await _roundtrip(client)
            expected = "2025-11-25" if era == "handshake" or mode == "legacy" else "2026-07-28"
            assert client.protocol_version == expected
            assert ("resultType" in seen["call"]) == (expected == "2026-07-28")
            stats = await _call(client, "stats", {})
    assert stats["structuredContent"]["protocol_versions"] == [expected]


def _mcp_error(exc: BaseException) -> MCPError:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, MCPError), exc
    return exc


def _trace_reporting_server() -> Any:
    """A server whose one tool answers the trace id its handler runs in (the current OpenTelemetry span's)."""
    from mcp.server.context import ServerRequestContext
    from mcp.server.lowlevel import Server
    from opentelemetry import trace

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        trace_id = trace.get_current_span().get_span_context().trace_id
        result = {"content": [{"type": "text", "text": f"{trace_id:032x}"}]}
        return {**result, "resultType": "complete"} if ctx.protocol_version == "2026-07-28" else result

    return Server("t", on_call_tool=call_tool)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto", "2026-07-28"])
async def test_without_sdk_spans_the_trace_context_is_passed_over(mode: str) -> None:
    """``--untraced`` (bench/telemetry.py): the SDK's span middleware, as shipped, runs the handler in the caller's
    trace (it reads ``_meta.traceparent``); without it the context is not read, and nothing else changes."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    params = types.CallToolRequestParams(
        name="t", arguments={}, _meta={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    )
    shipped, stripped = _trace_reporting_server(), without_sdk_spans(_trace_reporting_server())
    assert len(stripped.middleware) == len(shipped.middleware) - 1
    seen = []
    for server in (shipped, stripped):
        async with Client(server, mode=mode) as client:  # type: ignore[arg-type]
            seen.append((await client.session.send_request(types.CallToolRequest(params=params), Raw)).root)
    assert [answer["content"][0]["text"] for answer in seen] == [trace_id, "0" * 32]
