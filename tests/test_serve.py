"""End to end as an IDE drives it: ``mcp-bridge serve`` as a subprocess, the SDK stdio client, two real upstreams."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from harness import (
    LocalUpstream,
    Notifications,
    bridge_client,
    direct_client,
    era_neutral,
    raw_call,
    tool_names,
    upstream_pair,
    write_config,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ide_mode")]

BETA_ALLOWED = ["echo", "add", "fail", "meta", "slow"]


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalUpstream]]:
    with upstream_pair(tmp_path_factory.mktemp("upstream-logs"), "beta-secret-key-123") as pair:
        yield pair


@pytest.fixture
def config(tmp_path: Path, upstreams: dict[str, LocalUpstream]) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        {
            "alpha": upstreams["alpha"].server_config(["*"]),
            "beta": upstreams["beta"].server_config(BETA_ALLOWED),
        },
        disabled_tools=["alpha__delete_everything"],
    )


@pytest.fixture
def env(upstreams: dict[str, LocalUpstream]) -> dict[str, str]:
    return upstreams["beta"].env()


async def test_merged_list_is_namespaced_and_only_allowed(config: Path, tmp_path: Path, env: dict[str, str]) -> None:
    async with bridge_client(config, tmp_path / "home", env=env) as client:
        names = set(await tool_names(client))
    assert {f"beta__{t}" for t in BETA_ALLOWED} <= names
    assert {"alpha__echo", "alpha__add", "alpha__wait_forever", "alpha__add_tool"} <= names
    assert "beta__delete_everything" not in names  # not on beta's allowlist
    assert "beta__stats" not in names
    assert "alpha__delete_everything" not in names  # on the allowlist, but the user disabled it
    assert all(n.startswith(("alpha__", "beta__")) for n in names)


async def test_calling_a_hidden_tool_is_an_error_and_never_reaches_the_server(
    config: Path, tmp_path: Path, env: dict[str, str], upstreams: dict[str, LocalUpstream]
) -> None:
    async with bridge_client(config, tmp_path / "home", env=env) as client:
        for hidden in ("beta__delete_everything", "alpha__delete_everything", "no_such_tool", "beta__stats"):
            with pytest.raises(MCPError) as err:
                await raw_call(client, hidden)
            assert "not allowed" in err.value.error.message or "unknown tool" in err.value.error.message
        # The bridge is still up and serving.
        assert (await raw_call(client, "beta__echo", {"text": "still here"}))["content"][0][
            "text"
        ] == "beta: still here"
    async with direct_client(upstreams["beta"]) as direct:
        stats = (await raw_call(direct, "stats"))["structuredContent"]
    assert stats["calls"] >= 1
    # delete_everything was never forwarded: its handler would not have raised, so look at the server's log instead.
    assert "delete_everything" not in upstreams["beta"].log_path.read_text(errors="replace")


CASES: list[tuple[str, dict[str, Any]]] = [
    ("echo", {"text": "héllo wörld"}),
    ("add", {"a": 2, "b": 40}),
    ("fail", {"message": "on purpose"}),
    ("meta", {}),
]


async def test_results_through_the_bridge_equal_direct_results(
    config: Path, tmp_path: Path, env: dict[str, str], upstreams: dict[str, LocalUpstream]
) -> None:
    async with direct_client(upstreams["beta"]) as direct:
        expected = [await raw_call(direct, name, args) for name, args in CASES]
    async with bridge_client(config, tmp_path / "home", env=env) as client:
        got = [era_neutral(await raw_call(client, f"beta__{name}", args)) for name, args in CASES]
    assert got == expected
    # The interesting fields really were there to compare.
    assert expected[1]["structuredContent"] == {"sum": 42}
    assert expected[2]["isError"] is True
    assert expected[3]["_meta"]["example.com/origin"] == "beta"


async def test_once_started_the_heap_is_collected_and_frozen_and_calls_go_on(
    config: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """Once started (the allowlist loaded, each server's first outcome, then a moment), the bridge collects its garbage
    once and freezes the rest (``gc.freeze``): the interpreter's full collections no longer walk the start's objects
    (the SDK, the catalog: each walk was a pause of about 50 ms for the call that met it). It says so in its log, and
    calls go on after it."""
    stderr = tmp_path / "stderr.log"

    def frozen() -> list[str]:
        text = stderr.read_text(encoding="utf-8") if stderr.exists() else ""
        return [line for line in text.splitlines() if "serve.heap_frozen" in line]

    async with bridge_client(config, tmp_path / "home", env=env, stderr_path=stderr) as client:
        before = await raw_call(client, "beta__echo", {"text": "before"})  # (a 2026-07-28 client starts it here)
        with anyio.move_on_after(30):
            while not frozen():
                await anyio.sleep(0.1)
        assert frozen(), stderr.read_text(encoding="utf-8")[-3000:]
        after = await raw_call(client, "beta__echo", {"text": "after"})
    assert before["content"][0]["text"].endswith("before")
    assert after["content"][0]["text"].endswith("after")
    (line,) = frozen()
    found = re.search(r"objects\W+(\d+)", line)
    assert found is not None, line
    assert int(found.group(1)) > 10_000  # the start's objects (modules, the SDK's, the catalog's), not a handful


async def test_tool_definitions_pass_through_except_the_name(
    config: Path, tmp_path: Path, env: dict[str, str], upstreams: dict[str, LocalUpstream]
) -> None:
    async with direct_client(upstreams["beta"]) as direct:
        direct_tools = {
            t.name: t.model_dump(by_alias=True, exclude_none=True) for t in (await direct.list_tools()).tools
        }
    async with bridge_client(config, tmp_path / "home", env=env) as client:
        bridged = {t.name: t.model_dump(by_alias=True, exclude_none=True) for t in (await client.list_tools()).tools}
    for name in BETA_ALLOWED:
        assert bridged[f"beta__{name}"] == {**direct_tools[name], "name": f"beta__{name}"}


async def test_progress_is_relayed_under_the_ides_token(config: Path, tmp_path: Path, env: dict[str, str]) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with bridge_client(config, tmp_path / "home", env=env) as client:
        result = await raw_call(client, "beta__slow", {"steps": 4, "delay": 0.02}, progress=on_progress)
    assert result["content"][0]["text"] == "done after 4 steps"
    assert [p for p, _, _ in seen] == [1, 2, 3, 4]
    assert {t for _, t, _ in seen} == {4}
    assert seen[-1][2] == "step 4 of 4"


async def test_cancellation_reaches_the_upstream(
    config: Path, tmp_path: Path, env: dict[str, str], upstreams: dict[str, LocalUpstream]
) -> None:
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async with bridge_client(config, tmp_path / "home", env=env) as client:
        async with anyio.create_task_group() as tg:

            async def long_call() -> None:
                await raw_call(client, "alpha__slow", {"steps": 10_000, "delay": 0.05}, progress=on_progress)

            tg.start_soon(long_call)
            with anyio.fail_after(10):
                await started.wait()
            tg.cancel_scope.cancel()  # the SDK client sends notifications/cancelled to the bridge

        async with direct_client(upstreams["alpha"]) as direct:
            with anyio.fail_after(10):
                while "slow" not in (await raw_call(direct, "stats"))["structuredContent"]["cancelled"]:
                    await anyio.sleep(0.05)


async def test_upstream_list_changed_reaches_the_ide_and_the_new_tool_works(
    config: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    notes = Notifications()
    async with bridge_client(config, tmp_path / "home", env=env, notifications=notes) as client:
        before = await tool_names(client)
        new_tool = f"fresh_{tmp_path.name[-6:]}".replace("-", "_")
        assert f"alpha__{new_tool}" not in before
        notes.rearm()
        await raw_call(client, "alpha__add_tool", {"tool": new_tool})
        with anyio.fail_after(10):
            while True:  # other servers connecting may announce changes too: wait for the one with our tool
                await notes.tools_changed.wait()
                notes.rearm()
                if f"alpha__{new_tool}" in await tool_names(client):
                    break
        result = await raw_call(client, f"alpha__{new_tool}", {"x": 1})
    assert json.loads(result["content"][0]["text"]) == {"tool": new_tool, "arguments": {"x": 1}}


async def test_prompts_and_resources_are_merged_and_routed(config: Path, tmp_path: Path, env: dict[str, str]) -> None:
    async with bridge_client(config, tmp_path / "home", env=env) as client:
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert {"alpha__greet", "beta__greet"} <= prompts
        got = await client.get_prompt("beta__greet", {"who": "Ada"})
        assert got.messages[0].content.text == "Hello Ada, from beta."  # type: ignore[union-attr]

        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        assert {"mem://alpha/readme", "mem://beta/readme"} <= uris
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        assert "mem://beta/items/{id}" in templates
        readme = await client.read_resource("mem://alpha/readme")
        assert readme.contents[0].text == "This is alpha."  # type: ignore[union-attr]
        item = await client.read_resource("mem://beta/items/7")
        assert item.contents[0].text == "item 7 of beta"  # type: ignore[union-attr]
        with pytest.raises(MCPError):
            await client.read_resource("mem://nobody/readme")


async def test_api_key_never_appears_in_logs_or_stdout(
    config: Path, tmp_path: Path, env: dict[str, str], upstreams: dict[str, LocalUpstream]
) -> None:
    home = tmp_path / "home"
    async with bridge_client(config, home, env={**env}) as client:
        await raw_call(client, "beta__echo", {"text": "x"})
    key = upstreams["beta"].api_key
    assert key
    for path in home.rglob("*"):
        if path.is_file():
            assert key not in path.read_text(errors="replace"), path


async def test_calls_reuse_the_upstream_connection(tmp_path: Path) -> None:
    """The SDK drops each POST's connection after its event stream; the bridge keeps it (no socket per call)."""
    from harness import LocalUpstream as Upstream

    gamma = Upstream("gamma", tmp_path).start()
    try:
        config = write_config(tmp_path / "config.yaml", {"gamma": gamma.server_config()})
        async with bridge_client(config, tmp_path / "home") as client:
            for i in range(50):
                await raw_call(client, "gamma__echo", {"text": str(i)})
            stats = (await raw_call(client, "gamma__stats"))["structuredContent"]
    finally:
        gamma.kill()
    assert stats["calls"] == 51
    assert stats["connections"] <= 5, stats  # handshake, listing and GET stream may use a few; not one per call


async def test_a_tool_list_over_one_mib_comes_through_and_is_cached(tmp_path: Path) -> None:
    """One server with 3,000 tools: its tools/list is one SSE event of about 1.4 MiB, over the SDK's default limit;
    and the catalog cache written for the next start holds them all."""
    with LocalUpstream("big", tmp_path, extra_tools=3000) as big:  # listed in full, past any IDE's budget
        config = write_config(tmp_path / "config.yaml", {"big": big.server_config()}, catalog={"mode": "full"})
        async with bridge_client(config, tmp_path / "home") as client:
            names = await tool_names(client)
            assert len(names) == 3010 and "big__tool_3000" in names
            assert (await raw_call(client, "big__echo", {"text": "x"}))["content"][0]["text"] == "big: x"
    cached = json.loads((tmp_path / "home" / "catalog.json").read_text(encoding="utf-8"))
    assert len(cached["servers"]["big"]["tools"]) == 3010


async def test_the_config_can_come_from_mcp_bridge_config_alone(
    tmp_path: Path, upstreams: dict[str, LocalUpstream]
) -> None:
    """What the MCP Inspector runs (its own CLI takes `--config`, so the bridge gets none): the bare command, with
    `-e MCP_BRIDGE_CONFIG=/abs/config.yaml` in its environment."""
    import sys

    import mcp_types as types
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from harness import bridge_env

    config = write_config(tmp_path / "inspector.yaml", {"alpha": upstreams["alpha"].server_config(["echo"])})
    home = tmp_path / "home"
    env = {**bridge_env(home), "MCP_BRIDGE_CONFIG": str(config)}  # bridge_env drops MCP_BRIDGE_*: add it after
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_bridge"], env=env)
    home.mkdir()
    with (tmp_path / "stderr.log").open("w", encoding="utf-8") as errlog:
        ide = types.Implementation(name="pytest-inspector", version="1.0")
        async with Client(stdio_client(params, errlog=errlog), mode="legacy", client_info=ide) as client:
            assert await tool_names(client) == ["alpha__echo"]
            result = await raw_call(client, "alpha__echo", {"text": "from the inspector"})
            assert result["content"][0]["text"] == "alpha: from the inspector"
