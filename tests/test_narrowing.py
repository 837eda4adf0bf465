"""The user's own narrowing (``mcp-bridge tools disable|enable NAME``, issue 19): a running bridge drops the tool from
the IDE's list within a second and denies its calls, saying how to undo it; ``enable`` brings it back. It never
widens: a tool the allowlist does not allow stays out when enabled."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from harness import LocalUpstream, Notifications, bridge_client, raw_call, run_cli, tool_names, wait_for, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ide_mode")]


async def test_disable_and_enable_reach_a_running_bridge(tmp_path: Path) -> None:
    alpha = LocalUpstream("alpha", tmp_path).start()
    try:
        cfg = write_config(tmp_path / "config.yaml", {"alpha": {"url": alpha.url, "allowed_tools": ["echo", "add"]}})
        home = tmp_path / "home"
        notes = Notifications()
        async with bridge_client(cfg, home, notifications=notes) as ide:
            assert sorted(await tool_names(ide)) == ["alpha__add", "alpha__echo"]
            notes.rearm()
            off = run_cli(home, "tools", "disable", "alpha__echo", "--config", str(cfg))
            assert off.returncode == 0, off.stderr

            async def gone() -> bool:
                return await tool_names(ide) == ["alpha__add"]

            await wait_for(gone, "alpha__echo dropped from the list", timeout=5)
            await wait_for(_set(notes), "a list change told to the IDE", timeout=5)
            with pytest.raises(MCPError) as denied:
                await raw_call(ide, "alpha__echo", {"text": "x"})
            assert "disabled by you" in denied.value.error.message
            assert "mcp-bridge tools enable alpha__echo" in denied.value.error.message

            widen = run_cli(home, "tools", "enable", "alpha__delete_everything", "--config", str(cfg))
            assert widen.returncode == 0 and "nothing to enable" in widen.stdout
            on = run_cli(home, "tools", "enable", "alpha__echo", "--config", str(cfg))
            assert on.returncode == 0, on.stderr

            async def back() -> bool:
                return sorted(await tool_names(ide)) == ["alpha__add", "alpha__echo"]

            await wait_for(back, "alpha__echo back in the list", timeout=5)
            assert (await raw_call(ide, "alpha__echo", {"text": "x"}))["content"][0]["text"] == "alpha: x"
    finally:
        alpha.kill()


def test_disable_refuses_a_name_of_no_approved_server(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", {"alpha": {"url": "http://127.0.0.1:9/mcp", "allowed_tools": ["*"]}})
    home = tmp_path / "home"
    wrong = run_cli(home, "tools", "disable", "beta__echo", "--config", str(cfg))
    missing = run_cli(home, "tools", "disable", "--config", str(cfg))
    mixed = run_cli(home, "tools", "disable", "alpha__echo", "--json", "--config", str(cfg))
    assert wrong.returncode == 2 and "not a tool of a server on your allowlist (servers: alpha)" in wrong.stderr
    assert missing.returncode == 2 and "needs the tool's exposed NAME" in missing.stderr
    assert mixed.returncode == 2 and "takes only a NAME" in mixed.stderr
    assert not (home / "disabled_tools.json").exists()


def _set(notes: Notifications) -> object:
    async def predicate() -> bool:
        return notes.tools_changed.is_set()

    return predicate
