"""The upstream side in both protocol eras: the bridge speaks each server's newest era, finds it out once and
remembers it, can be told which to speak, and supervises a 2026-07-28 server as that era needs (no ``ping``, list
changes on a ``subscriptions/listen`` stream, lists re-fetched by their TTL, ``x-mcp-header`` tools).

Servers are real SDK servers on 127.0.0.1: ``localservers --era`` subprocesses, and scripted ones (``hostile.py``)
that record every POST. The bridge is a ``mcp-bridge serve`` subprocess driven by the SDK's client, or, where a
timing constant must be shortened, one supervisor (:class:`~mcp_bridge.upstream.supervisor.Upstream`) in-process.
"""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.session import ClientSession

from harness import (
    LocalUpstream,
    Notifications,
    bridge_client,
    is_modern,
    raw_call,
    run_cli,
    tool_names,
    wait_for,
    write_config,
)
from hostile import Hostile, Scripted, serving, tool
from mcp_bridge.config import ServerConfig, TimeoutsConfig
from mcp_bridge.governance.catalog import Listing
from mcp_bridge.upstream import supervisor, wire
from mcp_bridge.upstream.era import ERAS_FILE, MAX_AGE_SECONDS, EraStore
from mcp_bridge.upstream.supervisor import Upstream

pytestmark = pytest.mark.anyio

MODERN, HANDSHAKE = "2026-07-28", "2025-11-25"


def _spoken(era: str) -> str:
    """The version the bridge should speak to a server of this era (``localservers --era``)."""
    return HANDSHAKE if era == "handshake" else MODERN


async def _stats(client: Any, server: str = "local") -> dict[str, Any]:
    result: dict[str, Any] = (await raw_call(client, f"{server}__stats"))["structuredContent"]
    return result


def _eras(home: Path) -> dict[str, Any]:
    servers: dict[str, Any] = json.loads((home / ERAS_FILE).read_text())["servers"]
    return servers


# ------------------------------------------------------------------------------------------------ the matrix


@pytest.mark.usefixtures("ide_mode")
@pytest.mark.parametrize("upstream_era", ["both", "modern", "handshake"])
async def test_every_ide_era_with_every_server_era(tmp_path: Path, upstream_era: str) -> None:
    """List, call, progress, cancellation and list changes through the bridge, for an IDE of each era (the
    ``ide_mode`` fixture) and a server of each era: the bridge speaks the server's newest era to it."""
    with LocalUpstream("local", tmp_path, era=upstream_era) as upstream:
        cfg = write_config(tmp_path / "config.yaml", {"local": upstream.server_config()})
        notes = Notifications()
        async with bridge_client(cfg, tmp_path / "home", notifications=notes) as client:
            assert "local__echo" in await tool_names(client)
            added = await raw_call(client, "local__add", {"a": 2, "b": 3})
            assert added["structuredContent"] == {"sum": 5}
            assert ("resultType" in added) == is_modern(client)  # the IDE's era, not the server's

            steps: list[float] = []

            async def progress(value: float, total: float | None, message: str | None) -> None:
                steps.append(value)

            done = await raw_call(client, "local__slow", {"steps": 3, "delay": 0.01}, progress=progress)
            assert done["content"][0]["text"] == "done after 3 steps" and steps == [1, 2, 3]

            with anyio.move_on_after(1):
                await raw_call(client, "local__wait_forever")

            async def cancelled() -> bool:
                return "wait_forever" in (await _stats(client))["cancelled"]

            await wait_for(cancelled, "the upstream saw the call cancelled")

            notes.rearm()
            await raw_call(client, "local__add_tool", {"tool": "fresh"})
            with anyio.fail_after(15):
                await notes.tools_changed.wait()
            assert "local__fresh" in await tool_names(client)
            stats = await _stats(client)
    assert stats["protocol_versions"] == [_spoken(upstream_era)]


# ------------------------------------------------------------------------------------------------ memory


async def test_the_era_found_is_remembered_and_adopted_without_a_probe(tmp_path: Path) -> None:
    hostile = Hostile("h", tools=[tool("echo", "Echo.")])
    cfg = write_config(tmp_path / "config.yaml", {"h": hostile.server_config()})
    home = tmp_path / "home"
    async with serving(hostile), bridge_client(cfg, home) as client:
        await raw_call(client, "h__echo")
    assert hostile.methods()[0] == "server/discover"  # probed
    entry = _eras(home)["h"]
    assert (entry["url"], entry["era"]) == (hostile.url, MODERN)
    assert entry["discover"]["supportedVersions"] == [MODERN]
    assert stat.S_IMODE((home / ERAS_FILE).stat().st_mode) == 0o600

    hostile.posts.clear()
    async with serving(hostile), bridge_client(cfg, home) as client:
        await raw_call(client, "h__echo")
    methods = hostile.methods()  # adopted from memory: the listen stream, then the lists, without a probe first
    assert methods[:2] == ["subscriptions/listen", "tools/list"] and "initialize" not in methods
    assert methods.count("server/discover") <= 1 and methods.index("server/discover") > 1  # checked in the background


async def test_a_remembered_era_the_server_no_longer_speaks_is_probed_again_once(tmp_path: Path) -> None:
    """A server remembered as 2026-07-28 that now speaks only the handshake refuses the first request: the bridge
    forgets, probes once, and serves; and back again, from a remembered handshake to a 2026-07-28-only server."""
    hostile = Hostile("h", tools=[tool("echo", "Echo.")])
    cfg = write_config(tmp_path / "config.yaml", {"h": hostile.server_config()})
    home = tmp_path / "home"
    async with serving(hostile), bridge_client(cfg, home) as client:
        await raw_call(client, "h__echo")
    assert _eras(home)["h"]["era"] == MODERN

    hostile.era, hostile.posts = "handshake", []
    async with serving(hostile), bridge_client(cfg, home) as client:
        assert (await raw_call(client, "h__echo"))["content"][0]["text"] == "h ran echo"
    refused = [p for p in hostile.posts if p.version == MODERN]
    # The remembered era (its listen stream, its first list), then the probe.
    assert [p.method for p in refused] == ["subscriptions/listen", "tools/list", "server/discover"]
    assert hostile.methods().count("initialize") == 1
    assert _eras(home)["h"]["era"] == HANDSHAKE

    hostile.era, hostile.posts = "modern", []
    async with serving(hostile), bridge_client(cfg, home) as client:
        assert (await raw_call(client, "h__echo"))["content"][0]["text"] == "h ran echo"
    assert hostile.methods()[:4] == ["initialize", "server/discover", "subscriptions/listen", "tools/list"]
    assert _eras(home)["h"]["era"] == MODERN


async def test_a_server_that_changes_era_while_the_bridge_runs_is_followed(tmp_path: Path) -> None:
    """A running bridge whose server restarts in the other era: the next call is refused for its era before it
    runs, and the bridge finds the new era and sends it again."""
    with LocalUpstream("local", tmp_path) as upstream:
        cfg = write_config(tmp_path / "config.yaml", {"local": upstream.server_config()})
        home = tmp_path / "home"
        async with bridge_client(cfg, home) as client:
            assert (await _stats(client))["protocol_versions"] == [MODERN]
            upstream.era = "handshake"
            upstream.restart()
            assert (await _stats(client))["protocol_versions"] == [HANDSHAKE]
            assert _eras(home)["local"]["era"] == HANDSHAKE
            upstream.era = "modern"
            upstream.restart()
            assert (await _stats(client))["protocol_versions"] == [MODERN]
            assert _eras(home)["local"]["era"] == MODERN


def test_the_store_ignores_an_entry_for_another_url(tmp_path: Path) -> None:
    store = EraStore(tmp_path / ERAS_FILE)
    store.remember("a", "http://127.0.0.1:1/mcp", HANDSHAKE, None)
    assert store.get("a", "http://127.0.0.1:1/mcp") is not None
    assert store.get("a", "http://127.0.0.1:2/mcp") is None  # moved: probed again
    assert store.get("b", "http://127.0.0.1:1/mcp") is None
    store.remember("m", "http://127.0.0.1:3/mcp", MODERN, None)  # 2026-07-28 without its discover answer: unusable
    assert store.get("m", "http://127.0.0.1:3/mcp") is None
    store.forget("a")
    assert store.get("a", "http://127.0.0.1:1/mcp") is None
    store.remember("old", "http://127.0.0.1:4/mcp", HANDSHAKE, None)
    data = json.loads((tmp_path / ERAS_FILE).read_text())
    data["servers"]["old"]["checked_at"] -= MAX_AGE_SECONDS + 1
    (tmp_path / ERAS_FILE).write_text(json.dumps(data))
    assert store.get("old", "http://127.0.0.1:4/mcp") is None  # a week old: probed again
    (tmp_path / ERAS_FILE).write_text("{not json")
    assert store.get("a", "http://127.0.0.1:1/mcp") is None  # damaged: probe


# ------------------------------------------------------------------------------------------------ forcing it


@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [
        ({"protocol": {"upstream": "legacy"}}, {}, HANDSHAKE),
        ({"protocol": {"upstream": "2026-07-28"}, "server": {"protocol": "legacy"}}, {}, HANDSHAKE),
        ({"protocol": {"upstream": "2026-07-28"}}, {"MCP_BRIDGE_PROTOCOL_UPSTREAM": "legacy"}, HANDSHAKE),
        ({"protocol": {"upstream": "legacy"}}, {"MCP_BRIDGE_PROTOCOL_UPSTREAM": "auto"}, MODERN),
    ],
)
async def test_the_era_can_be_forced(
    tmp_path: Path, config: dict[str, Any], env: dict[str, str], expected: str
) -> None:
    """``protocol.upstream``, a server's own ``protocol`` (which wins over it) and ``$MCP_BRIDGE_PROTOCOL_UPSTREAM``
    (which wins over both) choose the era for a server that speaks both."""
    with LocalUpstream("local", tmp_path) as upstream:
        server = {**upstream.server_config(), **config.get("server", {})}
        extra = {k: v for k, v in config.items() if k != "server"}
        cfg = write_config(tmp_path / "config.yaml", {"local": server}, **extra)
        home = tmp_path / "home"
        async with bridge_client(cfg, home, env=env) as client:
            assert (await _stats(client))["protocol_versions"] == [expected]
        status = run_cli(home, "status", "--json", "--config", str(cfg), env=env)
    (row,) = json.loads(status.stdout)["servers"]
    assert row["era"] == expected
    auto = env.get("MCP_BRIDGE_PROTOCOL_UPSTREAM") == "auto"
    assert row["era_source"] == ("remembered" if auto else "configured")  # status connects after the bridge did
    remembered = _eras(home) if (home / ERAS_FILE).exists() else {}
    assert ("local" in remembered) == auto  # a configured era is not remembered


async def test_a_forced_era_the_server_does_not_speak_says_so(tmp_path: Path) -> None:
    with LocalUpstream("local", tmp_path, era="handshake") as upstream:
        cfg = write_config(tmp_path / "config.yaml", {"local": upstream.server_config()}, protocol={"upstream": MODERN})
        status = run_cli(tmp_path / "home", "status", "--json", "--config", str(cfg))
    (row,) = json.loads(status.stdout)["servers"]
    assert row["state"] == "error"
    assert "does not speak 2026-07-28, which protocol.upstream" in row["last_error"], row


def test_a_bad_protocol_in_the_environment_is_a_config_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", {})
    done = run_cli(tmp_path / "home", "status", "--config", str(cfg), env={"MCP_BRIDGE_PROTOCOL_UPSTREAM": "modern"})
    assert done.returncode == 2
    assert "$MCP_BRIDGE_PROTOCOL_UPSTREAM: 'modern' is not one of auto | legacy | 2026-07-28" in done.stderr


async def test_status_shows_the_era_and_how_it_was_chosen(tmp_path: Path) -> None:
    with LocalUpstream("new", tmp_path) as new, LocalUpstream("old", tmp_path, era="handshake") as old:
        cfg = write_config(tmp_path / "config.yaml", {"new": new.server_config(), "old": old.server_config()})
        home = tmp_path / "home"
        first = run_cli(home, "status", "--json", "--config", str(cfg))
        again = run_cli(home, "status", "--json", "--config", str(cfg))
        table = run_cli(home, "status", "--config", str(cfg))
        doctor = run_cli(home, "doctor", "--config", str(cfg))
    header, *lines = [line.split() for line in table.stdout.splitlines() if line.startswith(("SERVER", "new", "old"))]
    assert header[:4] == ["SERVER", "STATE", "ERA", "TOOLS"]
    assert {line[0]: line[2] for line in lines} == {"new": MODERN, "old": HANDSHAKE}
    assert f"connected ({new.url}, speaks {MODERN} (remembered from an earlier start))" in doctor.stdout
    assert f"connected ({old.url}, speaks {HANDSHAKE} (remembered from an earlier start))" in doctor.stdout
    rows = {r["server"]: r for r in json.loads(first.stdout)["servers"]}
    assert (rows["new"]["era"], rows["new"]["era_source"]) == (MODERN, "probed")
    assert (rows["old"]["era"], rows["old"]["era_source"]) == (HANDSHAKE, "probed")
    assert rows["old"]["listen"] == "none" and rows["new"]["dropped_tools"] == []
    rows = {r["server"]: r for r in json.loads(again.stdout)["servers"]}
    assert rows["new"]["era_source"] == rows["old"]["era_source"] == "remembered"


# ------------------------------------------------------------------------------------------------ x-mcp-header

ROUTED = tool(
    "routed",
    "Routed by region.",
    inputSchema={"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}},
)
BROKEN = tool(
    "broken",
    "An x-mcp-header on an object: invalid.",
    inputSchema={"type": "object", "properties": {"where": {"type": "object", "x-mcp-header": "Where"}}},
)


@pytest.mark.parametrize("upstream_era", ["both", "handshake"])
async def test_tools_with_invalid_x_mcp_headers_are_dropped_at_2026(tmp_path: Path, upstream_era: str) -> None:
    """At 2026-07-28 a client must drop a tool whose ``x-mcp-header`` is invalid, and mirror the valid ones into
    ``Mcp-Param-*`` headers (the server refuses a call without them). The handshake era has no such rule."""
    hostile = Hostile("h", tools=[ROUTED, BROKEN], era=upstream_era)
    cfg = write_config(tmp_path / "config.yaml", {"h": hostile.server_config()})
    home = tmp_path / "home"
    async with serving(hostile):
        async with bridge_client(cfg, home) as client:
            names = await tool_names(client)
            called = await raw_call(client, "h__routed", {"region": "eu-west"})
        # In a thread: the server runs in this event loop.
        status = await anyio.to_thread.run_sync(lambda: run_cli(home, "status", "--json", "--config", str(cfg)))
    assert called["content"][0]["text"] == "h ran routed"
    (call,) = [p for p in hostile.posts if p.method == "tools/call"]
    (row,) = json.loads(status.stdout)["servers"]
    if upstream_era == "both":
        assert names == ["h__routed"]
        assert call.params == {"mcp-param-region": "eu-west"}
        assert row["dropped_tools"] == ["broken"]
    else:
        assert sorted(names) == ["h__broken", "h__routed"]
        assert call.params == {}
        assert row["dropped_tools"] == []


async def test_a_header_mismatch_relists_the_tools_and_sends_the_call_again(tmp_path: Path) -> None:
    """The server's tool gained an ``x-mcp-header`` since the bridge listed it (without announcing it): the call
    is refused (-32020, before it runs), the bridge lists again and sends it once more, with the header."""
    plain = tool(
        "routed", "Routed by region.", inputSchema={"type": "object", "properties": {"region": {"type": "string"}}}
    )
    hostile = Hostile("h", tools=[plain])
    cfg = write_config(tmp_path / "config.yaml", {"h": hostile.server_config()}, on_tool_change="warn")
    async with serving(hostile), bridge_client(cfg, tmp_path / "home") as client:
        assert await tool_names(client) == ["h__routed"]
        hostile.tools = [ROUTED]
        called = await raw_call(client, "h__routed", {"region": "eu"})
    assert called["content"][0]["text"] == "h ran routed"
    calls = [p for p in hostile.posts if p.method == "tools/call"]
    assert [c.params for c in calls] == [{}, {"mcp-param-region": "eu"}]
    assert hostile.calls == [("routed", {"region": "eu"})]  # the refused one never ran


@pytest.mark.usefixtures("ide_mode")
async def test_a_2026_result_without_result_type_is_a_complete_one(tmp_path: Path) -> None:
    """The spec: a client MUST assume ``resultType: complete`` when a result does not name its kind. The SDK would
    reject such a result; the bridge takes it as complete, for an IDE of either era."""
    listed = {"resultType": "complete", "ttlMs": 0, "cacheScope": "private", "tools": [tool("plain", "No kind.")]}
    called = {"content": [{"type": "text", "text": "done, and no resultType"}]}
    server = Scripted({"tools/list": listed, "tools/call": called})
    cfg = write_config(tmp_path / "config.yaml", {"h": {"url": server.url, "allowed_tools": ["*"]}})
    async with serving(server), bridge_client(cfg, tmp_path / "home") as client:
        result = await raw_call(client, "h__plain")
    assert not result.get("isError"), result
    assert result["content"] == called["content"]
    [call] = [r for r in server.received if r.get("method") == "tools/call"]
    assert call["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == MODERN


def test_the_sdk_internals_the_upstream_side_uses_are_there() -> None:
    """``mcp.client._probe.negotiate_auto`` (the SDK's probe policy) and ``ClientSession._x_mcp_header_maps`` (what
    it mirrors into ``Mcp-Param-*`` headers) are private: held here, and by the header tests above."""
    from mcp.client._probe import negotiate_auto

    from mcp_bridge.upstream import era

    assert era.negotiate_auto is negotiate_auto
    send, receive = anyio.create_memory_object_stream[Any](1)
    session = ClientSession(receive, send)
    assert session._x_mcp_header_maps == {}
    session._x_mcp_header_maps["t"] = {("region",): "Region"}
    assert session._resolve_param_headers("t", {"region": "eu"}) == {"Mcp-Param-Region": "eu"}
    send.close()
    receive.close()


# ------------------------------------------------------------------------------------------------ supervision


@asynccontextmanager
async def supervised(url: str, **kwargs: Any) -> AsyncIterator[tuple[Upstream, list[Listing]]]:
    """One upstream supervisor in this process, connected to ``url``."""
    listings: list[Listing] = []
    config = ServerConfig(url=url, allowed_tools=["*"])
    up = Upstream(
        "h", config, TimeoutsConfig(connect=5, call=10), lambda _, listing: listings.append(listing), **kwargs
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(up.run)
        with anyio.fail_after(10):
            await up._wait_session()
        yield up, listings
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("era", ["both", "handshake"])
async def test_no_ping_at_2026(monkeypatch: pytest.MonkeyPatch, era: str) -> None:
    """``ping`` does not exist at 2026-07-28 (-32601): an idle 2026-07-28 connection is not pinged; a
    handshake-era session is."""
    monkeypatch.setattr(supervisor, "_KEEPALIVE_SECONDS", 0.1)
    hostile = Hostile("h", tools=[tool("echo", "Echo.")], era=era)
    async with serving(hostile), supervised(hostile.url) as (up, _):
        await anyio.sleep(1)
        assert up.era == _spoken(era)
    assert ("ping" in hostile.methods()) == (era == "handshake")


async def test_without_a_listen_stream_lists_are_fetched_again_by_their_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "_TTL_FLOOR_SECONDS", 0.2)
    hostile = Hostile("h", tools=[tool("echo", "Echo.")], listen=False, ttl_ms=0)
    async with serving(hostile), supervised(hostile.url) as (up, listings):
        assert up.listen == "none"
        hostile.tools.append(tool("later", "Added without a word."))

        async def seen() -> bool:
            return any("later" in [t["name"] for t in listing.tools] for listing in listings)

        await wait_for(seen, "the new tool listed", timeout=5)
    assert "subscriptions/listen" not in hostile.methods()


async def test_a_listen_stream_reports_changes_and_is_opened_again_when_lost(tmp_path: Path) -> None:
    """Changes come on the listen stream (the TTL, a minute here, plays no part). The server goes away and comes
    back: the stream is lost, opened again, and everything is listed again (nothing is replayed)."""
    hostile = Hostile("h", tools=[tool("echo", "Echo.")], ttl_ms=60_000)
    async with anyio.create_task_group() as outer:
        stop = anyio.Event()

        async def serve() -> None:
            async with serving(hostile):
                await stop.wait()

        outer.start_soon(serve)
        await anyio.sleep(0.3)
        async with supervised(hostile.url) as (up, listings):
            await wait_for(_is(lambda: up.listen == "active"), "the listen stream open")
            hostile.tools.append(tool("announced", "Announced."))
            await hostile.announce("tools")
            await wait_for(_is(lambda: _listed(listings, "announced")), "the announced tool listed")

            stop.set()  # the server goes away, and its listen stream with it
            await wait_for(_is(lambda: up.listen == "lost"), "the listen stream lost")
            hostile.tools.append(tool("unannounced", "Added while the stream was down."))
            stop = anyio.Event()
            outer.start_soon(serve)
            await wait_for(_is(lambda: _listed(listings, "unannounced")), "everything listed again", timeout=20)
            assert up.listen == "active"
            stop.set()
    assert hostile.methods().count("subscriptions/listen") >= 2


def _is(check: Any) -> Any:
    async def predicate() -> bool:
        return bool(check())

    return predicate


def _listed(listings: list[Listing], name: str) -> bool:
    return bool(listings) and name in [t["name"] for t in listings[-1].tools]


@pytest.mark.parametrize("era", ["both", "handshake"])
async def test_the_direct_call_path_serves_both_eras(monkeypatch: pytest.MonkeyPatch, era: str) -> None:
    """The direct POST (``wire.call_direct``) serves sessions of either era (a 2026-07-28 one with the session's
    own stamp: envelope, ``Mcp-Method``, ``Mcp-Name``, ``Mcp-Param-*``; ``tests/test_direct_calls.py`` compares the
    bytes with the session's)."""
    direct: list[Any] = []
    real_post, real_lean_post = wire._post, wire._lean_post

    async def counting_post(*args: Any) -> None:
        direct.append(("transport", args))
        await real_post(*args)

    async def counting_lean_post(*args: Any) -> bool:
        direct.append(("lean", args))
        return await real_lean_post(*args)

    monkeypatch.setattr(wire, "_post", counting_post)
    monkeypatch.setattr(wire, "_lean_post", counting_lean_post)
    hostile = Hostile("h", tools=[tool("echo", "Echo.")], era=era)
    async with serving(hostile), supervised(hostile.url) as (up, _):
        request = types.CallToolRequest(params=types.CallToolRequestParams(name="echo", arguments={}))
        result = await up.request(request)
    assert result["content"][0]["text"] == "h ran echo"
    assert up.era == _spoken(era)
    assert [way for way, _ in direct] == ["lean"]  # the direct POST, over the direct calls' own connection
