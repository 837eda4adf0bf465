"""The IDE side in both protocol eras: what differs on the wire between a handshake-era IDE and a 2026-07-28 one.

Everything else (lists, calls with progress and cancellation, prompts, resources, list changes, pins, audit) is
proven in every era by the modules that run their tests once per IDE mode (the ``ide_mode`` fixture)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from harness import Notifications, Raw, bridge_client, is_modern, raw_call, write_config
from hostile import Hostile, serving, tool

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ide_mode")]


async def test_results_are_shaped_for_the_ides_era(tmp_path: Path) -> None:
    hostile = Hostile("h", tools=[tool("echo", "Echo.")], resources=[{"uri": "mem://a", "name": "a"}])
    cfg = write_config(tmp_path / "config.yaml", {"h": hostile.server_config()})
    async with serving(hostile), bridge_client(cfg, tmp_path / "home") as client:
        listed = (await client.session.send_request(types.ListToolsRequest(), Raw)).root
        called = await raw_call(client, "h__echo")
        read = await client.session.send_request(
            types.ReadResourceRequest(params=types.ReadResourceRequestParams(uri="mem://a")), Raw
        )
        if is_modern(client):
            assert (listed["resultType"], listed["ttlMs"], listed["cacheScope"]) == ("complete", 0, "private")
            assert read.root["resultType"] == "complete" and read.root["cacheScope"] == "private"
            assert called["resultType"] == "complete"
            assert called["_meta"] == {"io.modelcontextprotocol/serverInfo": {"name": "mcp-bridge", "version": "0.1.0"}}
        else:
            assert not {"resultType", "ttlMs", "cacheScope"} & (listed.keys() | called.keys() | read.root.keys())


@pytest.mark.parametrize("upstream_era", ["both", "handshake"])
async def test_the_ides_envelope_never_reaches_a_server(tmp_path: Path, upstream_era: str) -> None:
    """A modern IDE's ``_meta`` carries its protocol version, client info and capabilities: they describe its link
    to the bridge, not the bridge's to the server. Other ``_meta`` keys pass. A 2026-07-28 server gets the bridge's
    own envelope (its own client info, the version spoken to that server, and the IDE's log level, without which it
    sends no log message), a handshake-era one none."""
    hostile = Hostile("h", tools=[tool("echo", "Echo.")], era=upstream_era)
    cfg = write_config(tmp_path / "config.yaml", {"h": hostile.server_config()})
    async with serving(hostile), bridge_client(cfg, tmp_path / "home") as client:
        params = types.CallToolRequestParams(
            name="h__echo", arguments={}, _meta={"vendor/trace": "t1", "io.modelcontextprotocol/logLevel": "debug"}
        )
        await client.session.send_request(types.CallToolRequest(params=params), Raw)
        modern_ide = is_modern(client)
    (meta,) = hostile.metas
    assert meta.get("vendor/trace") == "t1"
    reserved = {k: v for k, v in meta.items() if k.startswith("io.modelcontextprotocol/")}
    reserved.pop("io.modelcontextprotocol/related", None)
    if upstream_era == "both":  # the bridge speaks 2026-07-28 to it: the bridge's envelope, nothing of the IDE's
        assert reserved.pop("io.modelcontextprotocol/protocolVersion") == "2026-07-28"
        assert reserved.pop("io.modelcontextprotocol/clientInfo")["name"] == "mcp-bridge"
        assert reserved.pop("io.modelcontextprotocol/clientCapabilities") == {}
        # a handshake-era IDE's level is the one it set with logging/setLevel (none here)
        assert reserved.pop("io.modelcontextprotocol/logLevel", None) == ("debug" if modern_ide else None)
    assert not reserved
    assert "pytest-ide" not in repr(meta)


async def test_discovery_offers_list_changes_and_resource_subscriptions(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", {})
    async with bridge_client(cfg, tmp_path / "home") as client:
        caps = client.server_capabilities
        if is_modern(client):  # what server/discover says (a pinned client did not ask)
            raw = await client.session.send_discover(client.protocol_version)
            caps = types.ServerCapabilities.model_validate(raw["capabilities"])
    assert caps.tools is not None and caps.tools.list_changed
    assert caps.prompts is not None and caps.prompts.list_changed
    assert caps.resources is not None and caps.resources.list_changed and caps.resources.subscribe


async def test_a_modern_ide_hears_of_changes_only_on_its_listen_stream(tmp_path: Path) -> None:
    """No unrequested ``list_changed`` on a modern connection (the spec forbids it); a listen stream gets the event.
    A handshake IDE gets the notification, as always."""
    hostile = Hostile("h", tools=[tool("echo", "Echo.")])
    cfg = write_config(tmp_path / "config.yaml", {"h": hostile.server_config()})
    stray: list[Any] = []

    async def unrequested(message: Any) -> None:
        stray.append(getattr(message, "root", message))

    notes = Notifications()
    async with serving(hostile), bridge_client(cfg, tmp_path / "home", notifications=notes) as client:
        if is_modern(client):  # watch what arrives outside the listen stream
            client.session._message_handler = unrequested  # type: ignore[attr-defined]
        await client.session.send_request(types.ListToolsRequest(), Raw)
        notes.rearm()
        hostile.tools.append(tool("add", "Adds."))
        await hostile.announce("tools")
        with anyio.fail_after(15):
            await notes.tools_changed.wait()
    on_no_stream = [
        m for m in stray if "io.modelcontextprotocol/subscriptionId" not in ((m.params and m.params.meta) or {})
    ]
    assert not [m for m in on_no_stream if isinstance(m, types.ToolListChangedNotification)]


async def test_resource_not_found_uses_the_ides_eras_code(tmp_path: Path) -> None:
    hostile = Hostile("h", templates=[{"uriTemplate": "missing:{x}", "name": "m"}])
    cfg = write_config(tmp_path / "config.yaml", {"h": hostile.server_config()})
    async with serving(hostile), bridge_client(cfg, tmp_path / "home") as client:
        with pytest.raises(MCPError) as missing:
            await client.session.send_request(
                types.ReadResourceRequest(params=types.ReadResourceRequestParams(uri="missing:x")), Raw
            )
        expected = types.INVALID_PARAMS if is_modern(client) else -32002
    assert missing.value.error.code == expected and "no resource missing:x" in missing.value.error.message


def test_the_modern_versions_are_the_sdks() -> None:
    from mcp_types.version import MODERN_PROTOCOL_VERSIONS

    from mcp_bridge.era import MODERN_VERSIONS

    assert frozenset(MODERN_PROTOCOL_VERSIONS) == MODERN_VERSIONS


@pytest.mark.parametrize(
    ("forced", "how"),
    [("legacy", "config"), ("2026-07-28", "config"), ("legacy", "env"), ("2026-07-28", "env")],
)
async def test_the_ides_era_can_be_forced(tmp_path: Path, forced: str, how: str) -> None:
    """``protocol.ide`` (or ``$MCP_BRIDGE_PROTOCOL_IDE``) serves the IDE in one era only: an SDK client in ``auto``
    mode ends up in that era, and a client pinned to the other era is refused with -32022 naming what is spoken."""
    hostile = Hostile("h", tools=[tool("echo", "Echo.")])
    extra: dict[str, Any] = {"protocol": {"ide": forced}} if how == "config" else {}
    env = {"MCP_BRIDGE_PROTOCOL_IDE": forced} if how == "env" else None
    cfg = write_config(tmp_path / "config.yaml", {"h": hostile.server_config()}, **extra)
    other = "2026-07-28" if forced == "legacy" else "legacy"
    async with serving(hostile):
        async with bridge_client(cfg, tmp_path / "home", env=env, mode="auto") as client:
            assert is_modern(client) == (forced != "legacy")
            assert not (await raw_call(client, "h__echo")).get("isError")
        refused: list[MCPError] = []
        try:
            async with bridge_client(cfg, tmp_path / "home2", env=env, mode=other) as client:
                await client.session.send_request(types.ListToolsRequest(), Raw)
        except* MCPError as group:
            refused = [e for e in _leaves(group) if isinstance(e, MCPError)]
    assert refused and refused[0].error.code == -32022 and "protocol.ide" in refused[0].error.message


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
