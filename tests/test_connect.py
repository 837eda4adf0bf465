"""Connecting a server from the IDE (issue 19): a server the user has no usable token for is listed as one tool,
``<server>__connect``; calling it signs in, by URL-mode elicitation when the IDE declared it (the IDE opens the URL,
the answer comes when the login is done) or by the system browser otherwise (the answer carries the URL at once);
either way the server's tools then replace the connect tool, without a restart. Over stdio, in each IDE mode."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

from harness import Raw, bridge_client, raw_call, run_cli, tool_names, wait_for, write_config
from oauth_harness import FAKE_BROWSER, LocalOAuthUpstream, browser_env, browser_opens

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ide_mode")]

KEYRING = "keyrings.alt.file.PlaintextKeyring"


def _setup(tmp_path: Path, upstream: LocalOAuthUpstream) -> tuple[Path, dict[str, str]]:
    entry = {
        "url": upstream.url,
        "allowed_tools": ["echo", "add", "meta"],
        "auth": {"type": "oauth"},
        "description": "Secure docs.",
    }
    cfg = write_config(
        tmp_path / "config.yaml",
        {"secure": entry},
        auto_login=False,  # no browser opens by itself: the user connects from the IDE
        timeouts={"connect": 10, "startup_wait": 3, "login": 20},
    )
    env = {**browser_env(tmp_path / "browser.jsonl"), "PYTHON_KEYRING_BACKEND": KEYRING}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")
    return cfg, env


async def _listed(ide: Any) -> dict[str, Any]:
    tools = (await ide.session.send_request(types.ListToolsRequest(), Raw)).root["tools"]
    return {t["name"]: t for t in tools}


async def test_connect_by_url_elicitation_and_the_tools_appear(tmp_path: Path) -> None:
    asked: list[types.ElicitRequestURLParams] = []

    async def open_url(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams)
        asked.append(params)
        # the user's browser, opened by the IDE: the test server approves at once and redirects to the bridge
        await anyio.run_process([sys.executable, str(FAKE_BROWSER), params.url], check=True)
        return types.ElicitResult(action="accept")

    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        cfg, env = _setup(tmp_path, upstream)
        async with bridge_client(cfg, tmp_path / "home", env=env, elicitation_callback=open_url) as ide:
            listed = await _listed(ide)
            assert list(listed) == ["secure__connect"]
            connect = listed["secure__connect"]
            assert connect["title"] == "Connect secure" and "Secure docs." in connect["description"]
            result = await ide.call_tool("secure__connect", {})  # a 2026-07-28 IDE is asked by input_required
            assert not result.is_error and isinstance(result.content[0], types.TextContent), result
            assert re.fullmatch(r"connected: 3 of \d+ tools enabled", result.content[0].text), result
            assert sorted(await tool_names(ide)) == ["secure__add", "secure__echo", "secure__meta"]
            assert (await raw_call(ide, "secure__echo", {"text": "hi"}))["content"][0]["text"] == "secure: hi"
        stats = upstream.stats()
    (params,) = asked
    assert params.url.startswith(upstream.issuer + "/authorize?") and "secure" in params.message
    assert browser_opens(tmp_path / "browser.jsonl") == [] or all(
        o["url"] == params.url for o in browser_opens(tmp_path / "browser.jsonl")
    )
    assert stats["authorize"] == 1


async def test_a_call_of_a_server_that_needs_a_connection_asks_to_sign_in_and_goes_on(tmp_path: Path) -> None:
    """With URL-mode elicitation, calling one of the server's tools before connecting asks the IDE to open the sign-in
    page, and the call goes on once the login is done."""

    async def open_url(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams)
        await anyio.run_process([sys.executable, str(FAKE_BROWSER), params.url], check=True)
        return types.ElicitResult(action="accept")

    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        cfg, env = _setup(tmp_path, upstream)
        async with bridge_client(cfg, tmp_path / "home", env=env, elicitation_callback=open_url) as ide:
            result = await ide.call_tool("secure__echo", {"text": "after signing in"})
            assert isinstance(result.content[0], types.TextContent), result
            assert result.content[0].text == "secure: after signing in"
        assert upstream.stats()["authorize"] == 1


async def test_connect_without_url_elicitation_opens_the_browser_and_returns_the_url(tmp_path: Path) -> None:
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        cfg, env = _setup(tmp_path, upstream)
        async with bridge_client(cfg, tmp_path / "home", env=env) as ide:
            assert list(await _listed(ide)) == ["secure__connect"]
            with pytest.raises(MCPError) as early:  # no URL elicitation: the error says what to call
                await raw_call(ide, "secure__echo", {"text": "x"})
            assert "secure__connect" in early.value.error.message
            result = await raw_call(ide, "secure__connect")
            text = result["content"][0]["text"]
            assert not result.get("isError") and "A browser page opened to sign in to secure" in text
            assert upstream.issuer + "/authorize?" in text

            async def connected() -> bool:
                return sorted(await tool_names(ide)) == ["secure__add", "secure__echo", "secure__meta"]

            await wait_for(connected, "the server's tools in place of its connect tool", timeout=30)
    opens = browser_opens(tmp_path / "browser.jsonl")
    assert len(opens) == 1 and opens[0]["url"] in text


async def test_expiry_mid_session_in_three_bridges_opens_one_browser(tmp_path: Path) -> None:
    """Three IDE windows, each with its bridge, connected; the server then loses every token (a refresh fails too).
    Each bridge's next call fails naming ``secure__connect``, which replaces the tools; all three call it at once,
    and one browser opens: the other bridges take the tokens that login stored (a lock), and all three get the
    tools back without a restart."""
    from contextlib import AsyncExitStack

    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        cfg, env = _setup(tmp_path, upstream)
        login = run_cli(tmp_path / "home", "login", "secure", "--config", str(cfg), env=env)
        assert login.returncode == 0, login.stderr
        async with AsyncExitStack() as stack:
            ides = [
                await stack.enter_async_context(
                    bridge_client(cfg, tmp_path / "home", env=env, stderr_path=tmp_path / f"bridge-{i}.log")
                )
                for i in range(3)
            ]
            for ide in ides:
                assert "secure__echo" in await tool_names(ide)
            assert upstream.forget_clients(tokens=True) == 1
            for ide in ides:
                with pytest.raises(MCPError) as failed:
                    await raw_call(ide, "secure__echo", {"text": "x"})
                assert "secure" in failed.value.error.message
            for ide in ides:

                async def needs_connection(ide: Any = ide) -> bool:
                    return await tool_names(ide) == ["secure__connect"]

                await wait_for(needs_connection, "the connect tool in place of the tools", timeout=20)
            results: list[dict[str, Any]] = []

            async def connect(ide: Any) -> None:
                results.append(await raw_call(ide, "secure__connect"))

            async with anyio.create_task_group() as tg:
                for ide in ides:
                    tg.start_soon(connect, ide)
            for ide in ides:

                async def back(ide: Any = ide) -> bool:
                    return "secure__echo" in await tool_names(ide)

                await wait_for(back, "the tools back in every bridge", timeout=30)
                assert (await raw_call(ide, "secure__echo", {"text": "y"}))["content"][0]["text"] == "secure: y"
    assert len(results) == 3 and not any(r.get("isError") for r in results), results
    opens = browser_opens(tmp_path / "browser.jsonl")
    assert len(opens) == 2, opens  # the first login (the CLI's), and one for the three bridges


async def test_in_search_mode_the_connect_tool_is_listed_directly(tmp_path: Path) -> None:
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        cfg, env = _setup(tmp_path, upstream)
        text = cfg.read_text(encoding="utf-8") + "catalog: {mode: search}\n"
        cfg.write_text(text, encoding="utf-8")
        async with bridge_client(cfg, tmp_path / "home", env=env) as ide:
            assert await tool_names(ide) == ["find_tools", "call_tool", "secure__connect"]
