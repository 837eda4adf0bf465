"""`mcp-bridge demo` and `demo --serve`, run as a user runs them: subprocesses, offline, on 127.0.0.1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import mcp_types as types
import pytest
import yaml
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from harness import raw_call, tool_names
from mcp_bridge.sandbox.demo_backends import DemoBackends

EXPECTED_TOOLS = {"open__echo", "open__add", "open__slow", "keyed__echo", "keyed__meta", "oauth__echo", "oauth__add"}
EXPECTED_TOOLS |= {"port__list_blueprints", "port__search_entities", "port__run_action"}  # Port's own tools


def demo_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_BRIDGE", "PORT_"))}
    env["TMPDIR"] = str(tmp_path)  # the demo's temporary directory goes here, so the test can see it removed
    env["HOME"] = str(tmp_path / "user-home")  # nothing of the user's is read or written
    return env


def test_demo_runs_the_whole_flow_and_exits_0(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_bridge", "demo"],
        env=demo_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    # The transcript, in order: allowlist, IDE connection (the OAuth login), status, tools, calls, confirmation,
    # denials, search mode, audit.
    sections = ["1. The allowlist", "2. The IDE connects", "2b. Connecting `oauth` from the IDE", "3. Connections"]
    sections += ["4. The merged tool list", "5. Calls"]
    sections += ["6. A destructive call, confirmed", "7. What the allowlist does not allow", "8. Search mode"]
    sections += ["9. Audit events Port received"]
    positions = [out.index(s) for s in sections]
    assert positions == sorted(positions)
    assert "1 authorization in the demo's headless browser" in out
    connecting = out[out.index("2. The IDE connects") : out.index("3. Connections")]
    assert "oauth__connect: Connect oauth." in connecting  # not connected yet: one tool, its connect tool
    assert "? Sign in to oauth" in connecting and re.search(r"← connected: 2 of \d+ tools enabled", connecting)
    assert "port__search_entities" in connecting  # Port's own tools beside the approved servers'
    assert out[out.index("3. Connections") : out.index("4. The merged")].count(" connected ") == 4
    for name in EXPECTED_TOOLS:
        assert name in out
    assert "← open: hello from the IDE" in out and '(structured: {"sum": 5})' in out
    assert "progress 3/3" in out
    confirm = out[out.index("6. A destructive call") : out.index("7. What the allowlist")]
    assert confirm.count("? Run tool 'echo' on server 'keyed'?") == 2  # the headless IDE was asked, twice
    assert "(the user clicks accept)" in confirm and "← keyed: rename the release" in confirm
    assert "(the user clicks decline)" in confirm
    assert "✗ denied: 'keyed__echo' is not allowed: the user declined" in confirm
    assert "✗ denied: 'open__delete_everything' is not allowed" in out
    assert "← item 7 of open" in out and "✗ denied: 'mem://open/readme' is not allowed" in out
    search = out[out.index("8. Search mode") : out.index("9. Audit events")]
    assert "tools/list (2026-07-28): find_tools, call_tool" in search and "← open__add" in search
    assert '← {"sum": 42}' in search
    audit = out[out.index("9. Audit events") :]
    for title in ["open__echo", "open__add", "open__slow", "keyed__meta", "oauth__echo"]:
        assert f"{title} " in audit
    assert re.search(r"open__delete_everything +call +Denied", audit)
    assert re.search(r"open__mem://open/readme +resource_read +Denied", audit)
    assert re.search(r"keyed__echo +call +Completed", audit) and re.search(r"keyed__echo +call +Denied", audit)
    assert "✗" not in audit and "Every step worked" in out
    # Progress went to stderr, never a log line or a traceback; the temporary directory is gone.
    assert "demo: starting the local backends" in err and "Traceback" not in err
    assert not list(tmp_path.glob("mcp-bridge-demo-*"))


def test_demo_config_carries_no_secret() -> None:
    backends = DemoBackends()  # not started: only the config and the environment it would hand the bridge
    text = yaml.safe_dump(backends.config("/tmp/home"))
    assert backends.api_key not in text and backends.port_secret not in text
    assert "${env:" in text and set(backends.env().values()) >= {backends.api_key, backends.port_secret}


@pytest.mark.anyio
async def test_demo_serve_is_an_ide_command(tmp_path: Path) -> None:
    """`demo --serve` is what an IDE or the MCP Inspector runs: MCP on stdio over the demo's backends."""
    log = tmp_path / "serve.log"  # --log-level and --log-file go to the bridge it serves
    args = ["-m", "mcp_bridge", "demo", "--serve", "--log-level", "info", "--log-file", str(log)]
    params = StdioServerParameters(command=sys.executable, args=args, env=demo_env(tmp_path))
    stderr_path = tmp_path / "serve-stderr.log"
    with stderr_path.open("w", encoding="utf-8") as errlog:
        ide = types.Implementation(name="pytest-ide", version="1.0")
        async with Client(stdio_client(params, errlog=errlog), mode="legacy", client_info=ide) as client:
            with anyio.fail_after(60):
                while set(await tool_names(client)) != EXPECTED_TOOLS:
                    await anyio.sleep(0.2)
            result = await raw_call(client, "oauth__echo", {"text": "from the IDE"})
            assert result["content"][0]["text"] == "oauth: from the IDE"
    err = stderr_path.read_text(encoding="utf-8")
    assert '"args": [' in err and '"demo",' in err and '"--serve"' in err  # the entry to paste
    assert "@modelcontextprotocol/inspector" in err
    assert '"event": "serve.start"' in log.read_text(encoding="utf-8")
    # The headless browser logged in: no login URL is shown to a person who need not open it.
    assert "open this URL" not in err and "/authorize?" not in err
    assert '"event": "serve.login_in_headless_browser"' in log.read_text(encoding="utf-8")
    with anyio.fail_after(10):  # the backends and the temporary directory go when the IDE closes stdin
        while list(tmp_path.glob("mcp-bridge-demo-*")):
            await anyio.sleep(0.1)


def test_readme_quick_start_is_what_ci_runs() -> None:
    """The README's two quick-start commands: the first ends in the demo, the second is the test command, and
    .ci/run runs both (so a change to one without the other fails here)."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    install_and_demo, tests = block.strip().splitlines()
    assert install_and_demo.endswith("&& .venv/bin/mcp-bridge demo")
    assert tests == ".venv/bin/python -m pytest -q"
    ci = (root / ".ci" / "run").read_text(encoding="utf-8")
    assert "\nmcp-bridge demo\n" in ci and "\npython -m pytest -q\n" in ci
