"""Per-server limits (issue 18): ``timeout`` (and ``tool_timeouts``) cancels a call upstream past it and answers
with an error that says so; ``rate_limit`` denies calls past N a minute at once. Both audited. Run once per IDE mode
(both protocol eras)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from harness import LocalUpstream, audit_jsonl, bridge_client, raw_call, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ide_mode")]


def _config(tmp_path: Path, alpha: LocalUpstream, **server: Any) -> Path:
    settings = {"url": alpha.url, "allowed_tools": ["echo", "slow", "stats"], **server}
    return write_config(tmp_path / "config.yaml", {"alpha": settings}, audit={"jsonl": str(tmp_path / "a.jsonl")})


async def _outcome(client: Any, name: str, arguments: dict[str, Any]) -> str:
    """The call's text: its result's, or its error's."""
    try:
        result = await raw_call(client, name, arguments)
    except MCPError as exc:
        return f"error: {exc.error.message}"
    return str(result["content"][0]["text"]) if result.get("content") else str(result)


async def test_a_call_past_its_timeout_is_cancelled_upstream_and_says_so(tmp_path: Path) -> None:
    with LocalUpstream("alpha", tmp_path) as alpha:
        cfg = _config(tmp_path, alpha, timeout=0.5, tool_timeouts={"echo": 30})
        async with bridge_client(cfg, tmp_path / "home") as client:
            slow = await _outcome(client, "alpha__slow", {"steps": 100, "delay": 0.05})
            assert "timed out" in slow and "0.5" in slow
            assert await _outcome(client, "alpha__echo", {"text": "x"}) == "alpha: x"  # its own, longer timeout
            with anyio.fail_after(10):
                while "slow" not in (await raw_call(client, "alpha__stats"))["structuredContent"]["cancelled"]:
                    await anyio.sleep(0.05)
    (failed,) = [c for c in audit_jsonl(tmp_path / "a.jsonl", "call") if c["tool"] == "slow"]
    assert failed["status"] == "Failed" and "timed out" in failed["error"]


async def test_calls_past_the_rate_limit_are_denied_at_once_and_audited(tmp_path: Path) -> None:
    with LocalUpstream("alpha", tmp_path) as alpha:
        cfg = _config(tmp_path, alpha, rate_limit=2)
        async with bridge_client(cfg, tmp_path / "home") as client:
            assert await _outcome(client, "alpha__echo", {"text": "1"}) == "alpha: 1"
            assert await _outcome(client, "alpha__echo", {"text": "2"}) == "alpha: 2"
            with anyio.fail_after(5):  # denied at once, never queued for the next minute
                third = await _outcome(client, "alpha__echo", {"text": "3"})
    assert "at most 2 calls a minute (rate_limit); try again in" in third
    calls = audit_jsonl(tmp_path / "a.jsonl", "call")
    assert [c["status"] for c in calls] == ["Completed", "Completed", "Denied"]
    assert "rate_limit" in calls[-1]["error"]


def test_limits_must_be_positive(tmp_path: Path) -> None:
    from mcp_bridge.config import load_config
    from mcp_bridge.errors import ConfigError

    for bad in ({"timeout": 0}, {"rate_limit": 0}, {"tool_timeouts": {"x": -1}}):
        cfg = write_config(tmp_path / "c.yaml", {"a": {"url": "https://a.example/mcp", **bad}})
        with pytest.raises(ConfigError):
            load_config(str(cfg))
