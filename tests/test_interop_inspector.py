"""Interoperability with the MCP Inspector's CLI (``@modelcontextprotocol/inspector``, npm), a client written by
others, in each of its protocol eras (``--protocol-era legacy | auto | modern``), with the bridge as its stdio server
and ``@modelcontextprotocol/server-everything`` behind the bridge.

What the Inspector sees through the bridge is what it sees of the server directly (namespaced), less the one tool
that needs tasks, which the bridge does not offer (``mcp-bridge status`` names it with the reason).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from everything import inspector_command

pytestmark = pytest.mark.node

SERVER = "ev"
NEEDS_TASKS = "simulate-research-query"
TIMEOUT = 90


def _inspect(target: list[str], era: str, *args: str) -> dict[str, Any]:
    """One Inspector CLI run: ``--method ...`` against ``target``; its JSON result."""
    done = subprocess.run(
        [*inspector_command(), "--protocol-era", era, "--format", "json", "-q", *args, *target],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
    return dict(json.loads(done.stdout)["result"])


def _bridge(everything_url: str, tmp_path: Path) -> list[str]:
    config = tmp_path / "config.yaml"
    server = {
        "url": everything_url,
        "allowed_tools": ["*"],
        "allowed_prompts": ["*"],
        "allowed_resources": ["*"],
        "auth": {"type": "none"},
    }
    config.write_text(yaml.safe_dump({"servers": {SERVER: server}}), encoding="utf-8")
    home = tmp_path / "home"
    env = ["-e", f"MCP_BRIDGE_HOME={home}", "-e", f"HOME={tmp_path}"]
    return [*env, "--", sys.executable, "-m", "mcp_bridge", "serve", "--config", str(config)]


@pytest.mark.parametrize("era", ["legacy", "auto", "modern"])
def test_the_inspector_cli_through_the_bridge(everything_url: str, tmp_path: Path, era: str) -> None:
    bridge = _bridge(everything_url, tmp_path)
    direct = _inspect([everything_url], "legacy", "--method", "tools/list")
    listed = _inspect(bridge, era, "--method", "tools/list")
    names = {t["name"] for t in listed["tools"]}
    assert names == {f"{SERVER}__{t['name']}" for t in direct["tools"] if t["name"] != NEEDS_TASKS}
    assert f"{SERVER}__get-roots-list" in names  # the Inspector's roots capability reached the server

    message = "héllo from the Inspector ✓"
    called = _inspect(
        bridge, era, "--method", "tools/call", "--tool-name", f"{SERVER}__echo", "--tool-arg", f"message={message}"
    )
    assert called["content"] == [{"type": "text", "text": f"Echo: {message}"}]
    summed = _inspect(
        bridge,
        era,
        "--method",
        "tools/call",
        "--tool-name",
        f"{SERVER}__get-sum",
        "--tool-args-json",
        '{"a": 2, "b": 3.5}',
    )
    assert summed["content"][0]["text"] == "The sum of 2 and 3.5 is 5.5."

    prompts = _inspect(bridge, era, "--method", "prompts/list")
    assert f"{SERVER}__simple-prompt" in {p["name"] for p in prompts["prompts"]}
    prompt = _inspect(bridge, era, "--method", "prompts/get", "--prompt-name", f"{SERVER}__simple-prompt")
    assert prompt["messages"] and prompt["messages"][0]["role"] == "user"

    resources = _inspect(bridge, era, "--method", "resources/list")
    uri = next(r["uri"] for r in resources["resources"] if r["uri"].endswith("/architecture.md"))
    read = _inspect(bridge, era, "--method", "resources/read", "--uri", uri)
    assert read["contents"][0]["uri"] == uri and read["contents"][0]["text"]
