"""Port as the allowlist source: the API client against the Port double, entity mapping, and the bridge end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from harness import (
    LocalUpstream,
    Notifications,
    Raw,
    bridge_client,
    bridge_env,
    raw_call,
    tool_names,
    upstream_pair,
    write_config,
)
from mcp_bridge.config import PortConfig, Settings, parse_config
from mcp_bridge.governance.allowlist import ALLOWLIST_CACHE, PortSource, map_entities
from mcp_bridge.governance.port import PortClient, PortError
from port_double import PortDouble, mcp_server_entity, registry_entity

SECRET = "port-secret-value-0001"


def port_section(double: PortDouble, client_id: str = "dev", **extra: Any) -> dict[str, Any]:
    return {
        "base_url": double.base_url,
        "client_id": client_id,
        "client_secret": "${env:TEST_PORT_SECRET}",
        **extra,
    }


def port_config(double: PortDouble, client_id: str = "dev", **extra: Any) -> PortConfig:
    return PortConfig.model_validate({**port_section(double, client_id, **extra), "client_secret": SECRET})


@pytest.fixture
def double() -> Iterator[PortDouble]:
    with PortDouble() as d:
        d.add_client("dev", SECRET)
        yield d


# ---------------------------------------------------------------------------------------------------------- the client


@pytest.mark.anyio
async def test_token_is_reused_then_renewed_before_it_expires(double: PortDouble) -> None:
    double.expires_in = 1.0
    async with PortClient(port_config(double)) as client:
        for _ in range(3):
            await client.search_entities("_mcp_server", {"combinator": "and", "rules": []})
        assert len(double.requests_to("token")) == 1  # reused
        await anyio.sleep(1.0)  # the token's whole lifetime: the client must renew before using it again
        await client.search_entities("_mcp_server", {"combinator": "and", "rules": []})
    assert len(double.requests_to("token")) == 2
    assert all(r.status == 200 for r in double.requests_to("search"))  # renewed ahead: no 401 was needed


@pytest.mark.anyio
async def test_a_401_mid_run_renews_the_token_once_and_succeeds(double: PortDouble) -> None:
    double.upsert_entity("_mcp_server", mcp_server_entity("docs", "https://docs.example.com/mcp", ["*"]))
    async with PortClient(port_config(double)) as client:
        await client.search_entities("_mcp_server", {"combinator": "and", "rules": []})
        double.expire_all_tokens()
        found = await client.search_entities("_mcp_server", {"combinator": "and", "rules": []})
    assert [e["identifier"] for e in found] == ["docs"]
    assert [r.status for r in double.requests_to("search")] == [200, 401, 200]
    assert len(double.requests_to("token")) == 2


@pytest.mark.anyio
async def test_429_waits_for_the_rate_limit_reset_and_5xx_is_retried(double: PortDouble) -> None:
    async with PortClient(port_config(double)) as client:
        double.fail_next("search", status=429, reset=1)
        started = time.monotonic()
        await client.search_entities("_mcp_server", {"combinator": "and", "rules": []})
        assert time.monotonic() - started >= 0.95  # x-ratelimit-reset honoured
        double.fail_next("search", status=500, times=2)
        await client.search_entities("_mcp_server", {"combinator": "and", "rules": []})
    assert [r.status for r in double.requests_to("search")] == [429, 200, 500, 500, 200]


@pytest.mark.anyio
async def test_persistent_failures_surface_ports_error_without_secrets(double: PortDouble) -> None:
    async with PortClient(port_config(double)) as client:
        double.fail_next("search", status=503, times=10)
        with pytest.raises(PortError) as err:
            await client.search_entities("_mcp_server", {"combinator": "and", "rules": []})
        assert "503" in str(err.value)
    bad = port_config(double).model_copy(update={"client_secret": "wrong-secret-value-42"})
    async with PortClient(bad) as client:
        with pytest.raises(PortError) as err:
            await client.search_entities("_mcp_server", {"combinator": "and", "rules": []})
    assert "401" in str(err.value) and "client_secret" in str(err.value)
    assert "wrong-secret-value-42" not in str(err.value) and SECRET not in str(err.value)


@pytest.mark.anyio
async def test_search_follows_next_across_pages(double: PortDouble) -> None:
    for i in range(450):
        double.upsert_entity("_mcp_server", mcp_server_entity(f"s{i:03d}", "https://x.example.com/mcp", ["a"]))
    async with PortClient(port_config(double)) as client:
        found = await client.search_entities(
            "_mcp_server", {"combinator": "and", "rules": [{"property": "exposed", "operator": "=", "value": True}]}
        )
    assert sorted(e["identifier"] for e in found) == [f"s{i:03d}" for i in range(450)]
    assert len(double.requests_to("search")) == 3


@pytest.mark.anyio
async def test_two_credentials_see_different_servers(double: PortDouble, tmp_path: Path) -> None:
    double.upsert_entity("_mcp_server", mcp_server_entity("docs", "https://docs.example.com/mcp", ["*"]))
    double.upsert_entity("_mcp_server", mcp_server_entity("billing", "https://billing.example.com/mcp", ["*"]))
    double.add_client("finance", SECRET, visible={"docs", "billing"})
    double.add_client("intern", SECRET, visible={"docs"})
    seen = {}
    for who in ("finance", "intern"):
        settings = Settings(port=port_config(double, who))
        async with PortClient(settings.port) as client:  # type: ignore[arg-type]
            allowlist = await PortSource(settings, client, tmp_path / who).load()
        seen[who] = sorted(allowlist.servers)
    assert seen == {"finance": ["billing", "docs"], "intern": ["docs"]}


# ---------------------------------------------------------------------------------------------------------- mapping


def settings_with(port: dict[str, Any], servers: dict[str, Any] | None = None) -> Settings:
    """Settings with Port (without Port's own MCP server unless ``port`` says ``native_tools``)."""
    port = {"native_tools": False, **port}
    text = json.dumps({"port": {"client_id": "x", "client_secret": "y", **port}, "servers": servers or {}})
    return parse_config(text, environ={}).settings


def test_ports_own_mcp_server_is_server_port_by_region_and_a_local_entry_overrides_it() -> None:
    docs = mcp_server_entity("docs", "https://docs.example.com/mcp", ["search"], auth_type="none")
    eu, _ = map_entities([docs], settings_with({"native_tools": True}))
    us, _ = map_entities([docs], settings_with({"native_tools": True, "region": "us"}))
    assert sorted(eu) == ["docs", "port"]
    port = eu["port"]
    assert (port.url, port.auth.type, port.allowed_tools) == ("https://mcp.port.io/v1", "oauth", ["*"])
    assert port.allowed_prompts == port.allowed_resources == ["*"] and port.description
    assert us["port"].url == "https://mcp.us.port.io/v1"
    # A stand-in (base_url) has no known MCP endpoint unless given; then port_token signs in with the API token.
    standin = {"native_tools": True, "base_url": "http://127.0.0.1:9"}
    assert "port" not in map_entities([docs], settings_with(standin))[0]
    given, _ = map_entities(
        [docs], settings_with({**standin, "mcp_url": "http://127.0.0.1:9/mcp", "mcp_auth": "port_token"})
    )
    assert (given["port"].url, given["port"].auth.type) == ("http://127.0.0.1:9/mcp", "port_token")
    local = {"port": {"url": "https://port-mcp.internal.example/v1", "auth": {"type": "api_key", "value": "Bearer t"}}}
    overridden, _ = map_entities([docs], settings_with({"native_tools": True}, local))
    assert (overridden["port"].url, overridden["port"].auth.type) == ("https://port-mcp.internal.example/v1", "api_key")
    # Off, or a server Port itself lists as `port`: no native server (the entity wins).
    assert "port" not in map_entities([docs], settings_with({}))[0]
    own = mcp_server_entity("port", "https://p.example.com/mcp", ["x"], auth_type="none")
    assert map_entities([own], settings_with({"native_tools": True}))[0]["port"].url == "https://p.example.com/mcp"


def test_entities_map_to_servers_and_bad_ones_are_skipped() -> None:
    settings = settings_with({}, {"docs": {"auth": {"type": "api_key", "value": "Bearer k"}}, "stray": {}})
    entities = [
        mcp_server_entity("docs", "https://docs.example.com/mcp", ["search"], auth_type="api_key", description="D"),
        mcp_server_entity("notion", "https://mcp.notion.com/mcp", ["*"], oauth_config={"client_id": "c1"}),
        mcp_server_entity("nokey", "https://nokey.example.com/mcp", ["*"], auth_type="api_key"),
        mcp_server_entity("bad-url", "ftp://nope", ["*"], auth_type="none"),
        mcp_server_entity("plain-http", "http://10.1.2.3/mcp", ["*"], auth_type="none"),
        mcp_server_entity("weird-auth", "https://w.example.com/mcp", ["*"], auth_type="kerberos"),
        {"identifier": "no-url", "properties": {"exposed": True, "allowed_tools": ["a"]}},
        mcp_server_entity("hidden", "https://h.example.com/mcp", ["*"], exposed=False),
    ]
    servers, problems = map_entities(entities, settings)
    assert sorted(servers) == ["docs", "nokey", "notion"]
    assert servers["docs"].auth.type == "api_key" and servers["docs"].description == "D"
    assert servers["docs"].allows("search") and not servers["docs"].allows("delete")
    notion = servers["notion"].auth
    assert notion.type == "oauth" and notion.client_id == "c1"  # auth_type absent means oauth
    assert "needs an API key" in problems["nokey"] and "servers.nokey" in problems["nokey"]


def test_a_client_metadata_document_url_comes_from_port_or_the_local_entry() -> None:
    cimd = "https://platform.example.com/mcp-bridge/client.json"
    settings = settings_with({}, {"local": {"auth": {"type": "oauth", "client_metadata_url": cimd + "?local"}}})
    entities = [
        mcp_server_entity("ported", "https://a.example.com/mcp", ["*"], oauth_config={"client_metadata_url": cimd}),
        mcp_server_entity("local", "https://b.example.com/mcp", ["*"], oauth_config={"client_metadata_url": cimd}),
        mcp_server_entity("bad", "https://c.example.com/mcp", ["*"], oauth_config={"client_metadata_url": "http://x/"}),
    ]
    servers, _ = map_entities(entities, settings)
    assert servers["ported"].auth.client_metadata_url == cimd  # type: ignore[union-attr]
    assert servers["local"].auth.client_metadata_url == cimd + "?local"  # type: ignore[union-attr]
    assert "bad" not in servers  # skipped with a warning that says what the URL must be


def test_the_always_property_lists_tools_directly_in_search_mode_and_a_bad_one_is_a_problem() -> None:
    settings = settings_with({})
    good = mcp_server_entity("docs", "https://docs.example.com/mcp", ["*"], auth_type="none")
    good["properties"]["always"] = ["search", "get_*"]
    bad = mcp_server_entity("wiki", "https://wiki.example.com/mcp", ["*"], auth_type="none")
    bad["properties"]["always"] = "search"
    servers, problems = map_entities([good, bad], settings)
    assert servers["docs"].always == ["search", "get_*"] and "docs" not in problems
    assert servers["wiki"].always == [] and "'always' is not a list of tool names" in problems["wiki"]


def test_denied_tools_and_risk_classes_come_from_port_and_a_bad_list_drops_the_server() -> None:
    settings = settings_with({})
    classes = mcp_server_entity("docs", "https://docs.example.com/mcp", ["@read_only"], auth_type="none")
    classes["properties"]["denied_tools"] = ["delete_*", "@closed_world"]
    unknown = mcp_server_entity("wiki", "https://wiki.example.com/mcp", ["@readonly"], auth_type="none")
    bad = mcp_server_entity("bad", "https://bad.example.com/mcp", ["*"], auth_type="none")
    bad["properties"]["denied_tools"] = "delete_all"  # not a list: the server is not exposed (fail closed)
    servers, _ = map_entities([classes, unknown, bad], settings)
    assert sorted(servers) == ["docs"]
    assert servers["docs"].denied_tools == ["delete_*", "@closed_world"]
    assert servers["docs"].allows("search", {"readOnlyHint": True})
    assert not servers["docs"].allows("delete_old", {"readOnlyHint": True})


def test_timeout_and_rate_limit_come_from_port_and_a_bad_one_drops_the_server() -> None:
    settings = settings_with({})
    limited = mcp_server_entity("docs", "https://docs.example.com/mcp", ["*"], auth_type="none")
    limited["properties"].update(timeout=30, rate_limit=60)
    bad = mcp_server_entity("bad", "https://bad.example.com/mcp", ["*"], auth_type="none")
    bad["properties"]["rate_limit"] = "lots"
    servers, _ = map_entities([limited, bad], settings)
    assert sorted(servers) == ["docs"]
    assert (servers["docs"].timeout, servers["docs"].rate_limit) == (30.0, 60)


def test_the_registry_preset_reads_endpoint_tools_and_status() -> None:
    settings = settings_with({"preset": "mcp_registry"})
    entities = [
        registry_entity("approved-one", "https://a.example.com/mcp", ["x", "y"], status="approved"),
        registry_entity("pending-one", "https://p.example.com/mcp", ["x"], status="pending"),
    ]
    servers, _ = map_entities(entities, settings)
    assert list(servers) == ["approved-one"]
    assert servers["approved-one"].url == "https://a.example.com/mcp"
    assert servers["approved-one"].allows("y") and not servers["approved-one"].allows("z")


# ---------------------------------------------------------------------------------------------------------- end to end


@pytest.fixture
def upstreams(tmp_path: Path) -> Iterator[dict[str, LocalUpstream]]:
    with upstream_pair(tmp_path, "beta-key-from-local-config") as pair:
        yield pair


def bridge_config(
    tmp_path: Path, double: PortDouble, upstreams: dict[str, LocalUpstream], **port: Any
) -> tuple[Path, dict[str, str]]:
    beta = upstreams["beta"]
    config = write_config(
        tmp_path / "config.yaml",
        {"beta": {"auth": beta.server_config()["auth"]}},  # local config adds only the credential
        port=port_section(double, **port),
        timeouts={"startup_wait": 5, "connect": 3},
    )
    return config, {"TEST_PORT_SECRET": SECRET, **beta.env()}


def publish(double: PortDouble, upstreams: dict[str, LocalUpstream], alpha_tools: list[str]) -> None:
    double.upsert_entity(
        "_mcp_server",
        mcp_server_entity(
            "alpha",
            upstreams["alpha"].url,
            alpha_tools,
            auth_type="none",
            description="Alpha does alpha things.",
            allowed_prompts=["*"],
            allowed_resources=["*"],
        ),
    )
    double.upsert_entity(
        "_mcp_server",
        mcp_server_entity(
            "beta",
            upstreams["beta"].url,
            ["echo", "add"],
            auth_type="api_key",
            allowed_prompts=["*"],
            allowed_resources=["*"],
        ),
    )


@pytest.mark.anyio
async def test_the_allowlist_from_port_drives_the_merged_tool_list(
    tmp_path: Path, double: PortDouble, upstreams: dict[str, LocalUpstream]
) -> None:
    publish(double, upstreams, ["echo", "slow"])
    config, env = bridge_config(tmp_path, double, upstreams)
    async with bridge_client(config, tmp_path / "home", env=env) as client:
        names = sorted(await tool_names(client))
        assert names == ["alpha__echo", "alpha__slow", "beta__add", "beta__echo"]
        got = await raw_call(client, "beta__add", {"a": 1, "b": 2})
        assert got["structuredContent"] == {"sum": 3}
        with pytest.raises(MCPError):
            await raw_call(client, "alpha__delete_everything")
    stderr = (tmp_path / "home" / "bridge-stderr.log").read_text()
    assert SECRET not in stderr and "beta-key-from-local-config" not in stderr


@pytest.mark.anyio
async def test_prompts_and_resources_wait_for_the_allowlist_at_startup_as_calls_do(
    tmp_path: Path, double: PortDouble, upstreams: dict[str, LocalUpstream]
) -> None:
    """The first requests arrive while Port's answer is still on its way (no cache yet): each waits for it, bounded
    by ``timeouts.connect``, instead of answering "unknown"."""
    publish(double, upstreams, ["echo"])
    config, env = bridge_config(tmp_path, double, upstreams)
    double.slow_next("search", 1.5)
    async with bridge_client(config, tmp_path / "home", env=env) as client:
        prompt = await client.session.send_request(
            types.GetPromptRequest(params=types.GetPromptRequestParams(name="alpha__greet", arguments={"who": "x"})),
            Raw,
        )
        assert prompt.root["messages"][0]["content"]["text"] == "Hello x, from alpha."
        read = await client.session.send_request(
            types.ReadResourceRequest(params=types.ReadResourceRequestParams(uri="mem://beta/items/7")), Raw
        )
        assert read.root["contents"][0]["text"] == "item 7 of beta"
        assert (await raw_call(client, "alpha__echo", {"text": "x"}))["content"][0]["text"] == "alpha: x"


@pytest.mark.anyio
async def test_an_entity_change_reaches_the_ide_within_one_refresh_interval(
    tmp_path: Path, double: PortDouble, upstreams: dict[str, LocalUpstream]
) -> None:
    publish(double, upstreams, ["echo", "slow"])
    double.delete_entity("_mcp_server", "beta")
    interval = 2.0
    config, env = bridge_config(tmp_path, double, upstreams, refresh_interval=interval)
    notes = Notifications()
    async with bridge_client(config, tmp_path / "home", env=env, notifications=notes) as client:
        assert sorted(await tool_names(client)) == ["alpha__echo", "alpha__slow"]
        # Port changes: alpha loses `slow` (the tool filter changes), beta is approved (the server is added).
        notes.rearm()
        publish(double, upstreams, ["echo"])
        changed_at = time.monotonic()
        with anyio.fail_after(10):  # the filter change is applied on the next refresh and announced
            while "alpha__slow" in await tool_names(client):
                await notes.tools_changed.wait()
                notes.rearm()
        assert time.monotonic() - changed_at < interval + 1.0
        with pytest.raises(MCPError) as err:
            await raw_call(client, "alpha__slow", {"steps": 1})
        assert "not allowed" in err.value.error.message
        with anyio.fail_after(10):  # beta's tools follow as soon as it has connected
            while sorted(await tool_names(client)) != ["alpha__echo", "beta__add", "beta__echo"]:
                notes.rearm()
                await notes.tools_changed.wait()
        assert (await raw_call(client, "beta__echo", {"text": "new"}))["content"][0]["text"] == "beta: new"

        # Port removes alpha: it is disconnected and its tools are denied at once.
        notes.rearm()
        double.delete_entity("_mcp_server", "alpha")
        with anyio.fail_after(10):
            while any(n.startswith("alpha__") for n in await tool_names(client)):
                await notes.tools_changed.wait()
                notes.rearm()
        with pytest.raises(MCPError):
            await raw_call(client, "alpha__echo", {"text": "gone"})
        assert (await raw_call(client, "beta__echo", {"text": "still"}))["content"][0]["text"] == "beta: still"


@pytest.mark.anyio
async def test_sighup_refreshes_at_once(
    tmp_path: Path, double: PortDouble, upstreams: dict[str, LocalUpstream]
) -> None:
    publish(double, upstreams, ["echo"])
    config, env = bridge_config(tmp_path, double, upstreams, refresh_interval=3600)
    notes = Notifications()
    async with bridge_client(config, tmp_path / "home", env=env, notifications=notes) as client:
        assert "alpha__slow" not in await tool_names(client)
        publish(double, upstreams, ["echo", "slow"])
        notes.rearm()
        pid = int(subprocess.check_output(["pgrep", "-f", f"mcp_bridge serve --config {config}"]).split()[0])
        os.kill(pid, signal.SIGHUP)
        with anyio.fail_after(10):
            while "alpha__slow" not in await tool_names(client):
                await notes.tools_changed.wait()
                notes.rearm()


@pytest.mark.anyio
async def test_port_down_at_startup_with_a_cache_gives_full_service(
    tmp_path: Path, double: PortDouble, upstreams: dict[str, LocalUpstream]
) -> None:
    publish(double, upstreams, ["echo"])
    config, env = bridge_config(tmp_path, double, upstreams)
    home = tmp_path / "home"
    async with bridge_client(config, home, env=env) as client:
        first = sorted(await tool_names(client))
    assert (home / ALLOWLIST_CACHE).stat().st_mode & 0o777 == 0o600
    double.stop()
    async with bridge_client(config, home, env=env) as client:
        assert "alpha: Alpha does alpha things." in (client.instructions or "")  # descriptions, from the cache
        assert sorted(await tool_names(client)) == first
        assert (await raw_call(client, "alpha__echo", {"text": "cached"}))["content"][0]["text"] == "alpha: cached"


def run_status(config: Path, home: Path, env: dict[str, str], *, exit_code: int = 0) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_bridge", "status", "--json", "--config", str(config)],
        env=bridge_env(home, env),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == exit_code, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.anyio
async def test_port_down_without_a_cache_serves_no_tools_and_says_why(
    tmp_path: Path, double: PortDouble, upstreams: dict[str, LocalUpstream]
) -> None:
    publish(double, upstreams, ["echo"])
    double.stop()
    config, env = bridge_config(tmp_path, double, upstreams)
    async with bridge_client(config, tmp_path / "home", env=env) as client:
        assert await tool_names(client) == []
        assert "being loaded from Port" in (client.instructions or "")
        with pytest.raises(MCPError):
            await raw_call(client, "alpha__echo", {"text": "x"})
    status = run_status(config, tmp_path / "home", env, exit_code=1)
    assert status["allowlist"]["failed_closed"] is True
    assert (
        "Port is unavailable" in status["allowlist"]["note"] and "no allowlist is cached" in status["allowlist"]["note"]
    )
    assert status["servers"] == []


@pytest.mark.anyio
async def test_past_max_stale_the_bridge_fails_closed(
    tmp_path: Path, double: PortDouble, upstreams: dict[str, LocalUpstream]
) -> None:
    publish(double, upstreams, ["echo"])
    config, env = bridge_config(tmp_path, double, upstreams, max_stale=60)
    home = tmp_path / "home"
    async with bridge_client(config, home, env=env) as client:
        assert await tool_names(client)
    cache = json.loads((home / ALLOWLIST_CACHE).read_text())
    cache["fetched_at"] -= 3600  # an hour old, past max_stale
    (home / ALLOWLIST_CACHE).write_text(json.dumps(cache))
    double.stop()
    async with bridge_client(config, home, env=env) as client:
        instructions = client.instructions or ""
        assert "no tools right now" in instructions and "max_stale" in instructions  # why, and what to fix
        assert await tool_names(client) == []
        with pytest.raises(MCPError):
            await raw_call(client, "alpha__echo", {"text": "x"})
    status = run_status(config, home, env, exit_code=1)
    assert status["allowlist"]["failed_closed"] is True and "max_stale" in status["allowlist"]["note"]


@pytest.mark.parametrize("identifier", ["team/docs", "team\\docs", "host:8080", "../up"])
def test_an_entity_whose_identifier_cannot_be_a_server_name_is_skipped_with_a_warning(
    tmp_path: Path, double: PortDouble, upstreams: dict[str, LocalUpstream], identifier: str
) -> None:
    publish(double, upstreams, ["echo"])
    double.upsert_entity("_mcp_server", mcp_server_entity(identifier, upstreams["alpha"].url, ["*"], auth_type="none"))
    config, env = bridge_config(tmp_path, double, upstreams)
    done = subprocess.run(
        [sys.executable, "-m", "mcp_bridge", "status", "--json", "--log-level", "warning", "--config", str(config)],
        env=bridge_env(tmp_path / "home", env),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(r["server"] for r in json.loads(done.stdout)["servers"]) == ["alpha", "beta"]  # the rest load
    (warning,) = [json.loads(line) for line in done.stderr.splitlines() if "allowlist.entity_skipped" in line]
    assert warning["entity"] == identifier and "may only use ASCII letters" in warning["reason"]
