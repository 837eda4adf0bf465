"""``mcp-bridge demo``: the whole flow on this machine, offline, with no account anywhere.

It starts the local backends (``mcp_bridge.sandbox``: three MCP servers, with no auth, an API key and OAuth,
and a Port stand-in that holds the allowlist and receives the audit), then runs the real bridge as a subprocess,
speaks MCP to it over stdio the way an IDE does, and prints what happens: the allowlist Port gave, the
merged tool list with Port's own tools, `oauth` connected from the IDE (its connect tool, a URL elicitation the
headless browser answers), the connections, a few calls, a destructive call the user confirms (and one declined), a
denied call and a denied resource read, search mode, and the audit events Port received. Progress goes to stderr,
the transcript to stdout. Everything lives in a temporary directory that is removed at the end (kept, and named,
when a step fails).

``mcp-bridge demo --serve`` keeps the same backends up and serves the bridge on stdio in this process, so that an IDE
or the MCP Inspector can run it as its command; the entry to paste is printed on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import yaml

from mcp_bridge.errors import BridgeError
from mcp_bridge.sandbox.demo_backends import DemoBackends
from mcp_bridge.sandbox.port_shapes import AUDIT_BLUEPRINT
from mcp_bridge.terminal import printable

CLIENT_NAME = "mcp-bridge-demo-ide"
PORT_TOOLS = ("list_blueprints", "search_entities", "run_action")  # the Port stand-in's MCP endpoint
SEARCH_CONFIG = "config-search.yaml"  # the demo's config with `catalog: {mode: search}` (step 7)
SETTLE_SECONDS = 30.0  # how long the demo waits for the servers' tools


class DemoFailed(BridgeError):
    """A demo step did not do what it should (exit 1)."""


@dataclass
class Transcript:
    """The demo's output: the transcript to stdout, progress and problems to stderr (both sanitised as every
    command's output is: :func:`~mcp_bridge.terminal.printable`)."""

    out: Callable[[str], None] = field(default=lambda line: print(printable(line), flush=True))
    err: Callable[[str], None] = field(default=lambda line: print(printable(line), file=sys.stderr, flush=True))
    problems: list[str] = field(default_factory=list)

    def section(self, title: str) -> None:
        self.out("")
        self.out(title)
        self.out("─" * len(title))

    def progress(self, message: str) -> None:
        self.err(f"demo: {message}")

    def check(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
            self.out(f"  ✗ {problem}")
        return ok


def table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))).rstrip() for r in rows]


def run(serve: Callable[[str], int] | None = None) -> int:
    """The demo; with ``serve``, ``demo --serve``: ``serve(config_path)`` serves the bridge on stdio with the demo's
    config (the command line's own ``serve``, given by :mod:`mcp_bridge.cli.main`, which this module does not
    import)."""
    t = Transcript()
    work = Path(tempfile.mkdtemp(prefix="mcp-bridge-demo-"))
    keep = False
    try:
        home = work / "home"
        home.mkdir(mode=0o700)
        t.progress("starting the local backends (all on 127.0.0.1)")
        with DemoBackends(progress=t.progress) as backends:
            config = work / "config.yaml"
            settings = backends.config(str(home), connect_in_ide=serve is None)
            config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
            searching = {**backends.config(str(home)), "catalog": {"mode": "search"}}  # step 7
            (work / SEARCH_CONFIG).write_text(yaml.safe_dump(searching, sort_keys=False), encoding="utf-8")
            # The bridge (this process's with --serve, subprocesses otherwise) reads its secrets and home from here.
            os.environ.update({**backends.env(), "MCP_BRIDGE_HOME": str(home)})
            if serve:
                return _serve(t, config, serve)
            try:
                anyio.run(_session, t, backends, config, home, work)
            except DemoFailed as exc:
                t.problems.append(str(exc))
        if t.problems:
            keep = True
            t.err(f"mcp-bridge demo: {len(t.problems)} step(s) failed: " + "; ".join(t.problems))
            t.err(f"  the bridge's log and the demo's files are kept in {work}")
            return 1
        t.out("")
        t.out("Every step worked. Next: `mcp-bridge demo --serve` to try it from your IDE, then")
        t.out("`mcp-bridge install --client cursor|claude-desktop --config <your config>` for the real thing.")
        return 0
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# The scripted session
# ---------------------------------------------------------------------------------------------------------------------


async def _session(t: Transcript, backends: DemoBackends, config: Path, home: Path, work: Path) -> None:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp_types import Implementation

    from mcp_bridge.bridge import load_allowlist
    from mcp_bridge.config import load_config

    loaded = load_config(str(config))
    allowlist = await load_allowlist(loaded.settings, home)
    t.out("mcp-bridge demo: three MCP servers, a Port stand-in and the bridge, all on 127.0.0.1; nothing leaves")
    t.out("this machine, and every step below runs the same code as real use.")
    t.section(f"1. The allowlist, read from Port (the stand-in at {backends.port.base_url})")
    t.out("  Port holds one `_mcp_server` entity per approved server; the bridge reads them with its client")
    t.out("  credentials (given in the environment, never in the config file):")
    rows = [["SERVER", "AUTH", "URL", "ALLOWED TOOLS"]]
    for name, server in sorted(allowlist.servers.items()):
        rows.append([name, server.auth.type, server.url or "", ", ".join(server.allowed_tools or [])])
    for line in table(rows):
        t.out(line)
    t.out("  (`port` is Port's own MCP server, which the bridge adds with `port:`; port.native_tools)")
    t.check(len(allowlist.servers) == 4, f"the allowlist has {len(allowlist.servers)} servers, expected 3 and Port's")

    t.progress("starting the bridge as an IDE does (mcp-bridge serve over stdio)")
    bridge_log = work / "bridge.log"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_bridge", "serve", "--config", str(config), "--log-level", "info"],
        env=dict(os.environ),
    )
    user = _User(t)
    with bridge_log.open("w", encoding="utf-8") as errlog:
        ide = Implementation(name=CLIENT_NAME, version="1.0")
        transport = stdio_client(params, errlog=errlog)
        async with Client(transport, mode="legacy", client_info=ide, elicitation_callback=user.answer) as client:
            await _ide(t, client, config, backends, user)
        await _search_mode(t, work, errlog)
    await _audit(t, backends)


@dataclass
class _User:
    """The person at the demo's IDE: answers the bridge's questions (elicitation) with the next of :attr:`answers`,
    showing the question and the answer."""

    t: Transcript
    answers: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    async def answer(self, context: Any, params: Any) -> Any:
        from mcp_types import ElicitResult

        message = str(getattr(params, "message", ""))
        self.asked.append(message)
        url = getattr(params, "url", None)
        if isinstance(url, str):  # URL mode: the IDE opens the page; here the headless browser signs in
            from mcp_bridge.sandbox.browser import browse

            self.t.out(f"      ? {message}")
            self.t.out(f"      (the IDE opens {url.split('?', 1)[0]}?…; the headless browser signs in)")
            status, outcome, _visited = await anyio.to_thread.run_sync(browse, url, time.monotonic() + 20)
            if status != 0:
                self.t.out(f"      ✗ the headless browser failed: {outcome}")
                return ElicitResult(action="cancel")
            return ElicitResult(action="accept")
        action = self.answers.pop(0) if self.answers else "cancel"
        for line in message.splitlines():
            self.t.out(f"      ? {line}")
        self.t.out(f"      (the user clicks {action})")
        return ElicitResult(action=action)  # type: ignore[arg-type]


async def _ide(t: Transcript, client: Any, config: Path, backends: DemoBackends, user: _User) -> None:
    info = client.server_info
    t.section("2. The IDE connects (initialize, then tools/list)")
    if info is not None:
        t.out(f"  initialize: {info.name} {info.version}, protocol {client.protocol_version}")
    t.progress("waiting for the servers' tools")
    expected = {f"{s.name}__{tool}" for s in backends.servers for tool in s.allowed_tools if s.auth != "oauth"}
    expected |= {f"port__{tool}" for tool in PORT_TOOLS} | {"oauth__connect"}
    tools = await _settled_tools(client, expected)
    names = {tool.name for tool in tools}
    t.out(f"  tools/list: {len(tools)} tools; `oauth` is not connected yet, so it is one tool, oauth__connect:")
    connect = next((tool for tool in tools if tool.name == "oauth__connect"), None)
    if t.check(connect is not None, "oauth__connect is not listed") and connect is not None:
        t.out(f"    {connect.name}: {connect.title}. {connect.description}")
    t.check(names == expected, f"the merged list is {sorted(names)}, expected {sorted(expected)}")
    t.out(
        "  Port's own tools (port.native_tools) are listed beside the approved servers': "
        + ", ".join(sorted(n for n in names if n.startswith("port__")))
    )

    t.section("2b. Connecting `oauth` from the IDE (no terminal, no restart)")
    t.out("  The IDE calls oauth__connect; it declared URL-mode elicitation, so the bridge asks it to open the")
    t.out("  sign-in page (the authorization server approves at once):")
    await _call(t, client, "oauth__connect", {}, "connected: 2 of")
    expected = (expected - {"oauth__connect"}) | {"oauth__echo", "oauth__add"}
    tools = await _settled_tools(client, expected)
    names = {tool.name for tool in tools}
    t.out(f"  tools/list again (a list change told the IDE): {len(tools)} tools, oauth's among them")
    t.check(names == expected, f"after connecting, the list is {sorted(names)}, expected {sorted(expected)}")
    oauth = backends.oauth_stats()
    codes = oauth.get("token", {}).get("authorization_code", 0)
    t.out(f"  OAuth to `oauth`: {oauth.get('register', 0)} dynamic client registration, {codes} code exchange,")
    t.out(f"  {oauth.get('authorize', 0)} authorization in the demo's headless browser")
    t.check(oauth.get("authorize") == 1 and codes == 1, f"expected exactly one OAuth login, the server saw {oauth}")

    t.section("3. Connections (`mcp-bridge status`, run beside the IDE's bridge)")
    with anyio.fail_after(60):
        status = await anyio.run_process(
            [sys.executable, "-m", "mcp_bridge", "status", "--config", str(config)],
            check=False,
        )
    stdout = status.stdout.decode("utf-8", "replace")
    for line in stdout.splitlines():
        t.out(f"  {line}")
    problem = status.stderr.decode("utf-8", "replace").strip()
    t.check(status.returncode == 0, f"`mcp-bridge status` exited {status.returncode}: {problem}")
    t.check(stdout.count(" connected ") == 4, "not every server shows as connected")
    if t.check(backends.oauth_stats().get("authorize") == 1, "`status` logged in again instead of reusing the token"):
        t.out("  (this second bridge reused the stored OAuth token: no second login)")

    t.section("4. The merged tool list the IDE sees (only what Port allows, namespaced)")
    rows = [["NAME", "DESCRIPTION"]] + [[tool.name, (tool.description or "")[:70]] for tool in tools]
    for line in table(rows):
        t.out(line)

    t.section("5. Calls")
    await _call(t, client, "open__echo", {"text": "hello from the IDE"}, "open: hello from the IDE")
    await _call(t, client, "open__add", {"a": 2, "b": 3}, '{"sum": 5}')
    await _call(t, client, "open__slow", {"steps": 3, "delay": 0.1}, "done after 3 steps", progress=True)
    await _call(t, client, "keyed__meta", {}, "with meta")
    await _call(t, client, "oauth__echo", {"text": "signed in through OAuth"}, "oauth: signed in through OAuth")
    await _call(t, client, "port__search_entities", {"blueprint": "_mcp_server", "query": "o"}, '"identifier": "oauth"')

    t.section("6. A destructive call, confirmed by the user first")
    t.out("  Port says `confirm: destructive` for `keyed`: a tool that may destroy (its `echo` declares no")
    t.out("  annotations, so by the spec's defaults it may) is asked about in the IDE before it runs. Accepted:")
    user.answers[:] = ["accept"]
    user.asked.clear()  # (the sign-in of step 2b was a question too)
    await _call(t, client, "keyed__echo", {"text": "rename the release"}, "keyed: rename the release")
    t.check(len(user.asked) == 1, f"the IDE was asked {len(user.asked)} times, expected once")
    t.out("  Declined: the call does not run, and the audit says the user declined.")
    user.answers[:] = ["decline"]
    await _call(t, client, "keyed__echo", {"text": "delete the release"}, None)
    t.check(len(user.asked) == 2, "the IDE was not asked before the second call")

    t.section("7. What the allowlist does not allow")
    t.out("  `delete_everything` is offered by the server `open`, but Port does not allow it:")
    await _call(t, client, "open__delete_everything", {}, None)
    t.out("  Resources are governed too: Port allows `open`'s items (`mem://open/items/*`), not its readme:")
    await _read(t, client, "mem://open/items/7", "item 7 of open")
    await _read(t, client, "mem://open/readme", None)
    t.progress("closing the IDE session (the bridge ships its audit events before it exits)")


async def _search_mode(t: Transcript, work: Path, errlog: Any) -> None:
    """The same servers in search mode (``catalog.mode: search``; ``auto`` picks it when the allowed tools exceed
    the IDE's budget): two tools of the bridge's own, the model finds a tool and calls it through them."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp_types import Implementation

    searching = work / SEARCH_CONFIG
    t.section("8. Search mode: for catalogs larger than the IDE takes")
    t.out("  With more tools than the IDE takes (Cursor about 40, VS Code 128), the bridge lists two tools of its")
    t.out("  own instead; here forced with `catalog: {mode: search}`. The IDE starts another bridge:")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_bridge", "serve", "--config", str(searching), "--log-level", "info"],
        env=dict(os.environ),
    )
    ide = Implementation(name=CLIENT_NAME, version="1.0")
    async with Client(stdio_client(params, errlog=errlog), mode="auto", client_info=ide) as client:
        listed = (await client.list_tools()).tools
        t.out(f"  tools/list ({client.protocol_version}): {', '.join(tool.name for tool in listed)}")
        t.check([tool.name for tool in listed][:2] == ["find_tools", "call_tool"], "search mode lists no find_tools")
        query = {"query": "add two numbers"}
        t.out(f"  → find_tools {json.dumps(query)}")
        found = await client.call_tool("find_tools", query)
        names = [tool["name"] for tool in (found.structured_content or {}).get("tools", [])]
        t.out(f"  ← {', '.join(names[:5])}")
        t.check(bool(names) and names[0] == "open__add", f"find_tools ranked {names[:3]}, expected open__add first")
        await _call(t, client, "call_tool", {"name": "open__add", "arguments": {"a": 20, "b": 22}}, '{"sum": 42}')
    t.out("  The audit names the real tool (open__add), as for a direct call; Port's allowlist applies as before.")


async def _settled_tools(client: Any, expected: set[str]) -> list[Any]:
    """tools/list until every expected tool is there (a server still connecting sends list_changed later)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        tools = list((await client.list_tools()).tools)
        if {tool.name for tool in tools} >= expected or time.monotonic() > deadline:
            return sorted(tools, key=lambda tool: tool.name)
        await anyio.sleep(0.25)


async def _call(
    t: Transcript, client: Any, name: str, arguments: dict[str, Any], expect: str | None, *, progress: bool = False
) -> None:
    from mcp.shared.exceptions import MCPError

    t.out(f"  → {name} {json.dumps(arguments)}")
    seen: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        line = f"      progress {done:g}/{total:g}" if total else f"      progress {done:g}"
        seen.append(line + (f": {message}" if message else ""))
        t.out(seen[-1])

    try:
        result = await client.call_tool(name, arguments, progress_callback=on_progress if progress else None)
    except MCPError as exc:
        t.out(f"  ✗ denied: {exc.error.message}")
        t.check(expect is None, f"{name} failed: {exc.error.message}")
        return
    text = " ".join(getattr(c, "text", "") for c in result.content)
    structured = result.structured_content
    t.out(f"  ← {text}" + (f"   (structured: {json.dumps(structured)})" if structured else ""))
    if expect is None:
        t.check(False, f"{name} was not denied")
        return
    t.check(not result.is_error and expect in text, f"{name} answered {text!r}, expected {expect!r}")
    if progress:
        t.check(len(seen) > 0, f"{name} sent no progress")


async def _read(t: Transcript, client: Any, uri: str, expect: str | None) -> None:
    from mcp.shared.exceptions import MCPError

    t.out(f"  → resources/read {uri}")
    try:
        result = await client.read_resource(uri)
    except MCPError as exc:
        t.out(f"  ✗ denied: {exc.error.message}")
        t.check(expect is None, f"reading {uri} failed: {exc.error.message}")
        return
    text = " ".join(getattr(c, "text", "") for c in result.contents)
    t.out(f"  ← {text}")
    t.check(expect is not None and expect in text, f"reading {uri} answered {text!r}, expected a denial")


async def _audit(t: Transcript, backends: DemoBackends) -> None:
    t.section(f"9. Audit events Port received (blueprint {AUDIT_BLUEPRINT})")
    calls = ["open__echo", "open__add", "open__slow", "keyed__meta", "oauth__echo", "open__delete_everything"]
    calls += ["keyed__echo", "port__search_entities"]
    deadline = time.monotonic() + 15
    while True:
        events = backends.audit_events()
        titles = [e.get("title") for e in events]
        read = [e for e in events if e["properties"].get("tool_name") == "mem://open/readme"]
        if (all(c in titles for c in calls) and read) or time.monotonic() > deadline:
            break
        await anyio.sleep(0.2)
    rows = [["TITLE", "KIND", "STATUS", "DURATION", "CLIENT", "ARGUMENTS (redacted)"]]
    for e in sorted(events, key=lambda e: e["properties"].get("asked_at") or ""):
        p = e["properties"]
        duration = f"{max(0.0, p['duration_ms']):.0f} ms" if isinstance(p.get("duration_ms"), int | float) else ""
        arguments = json.dumps(p.get("arguments")) if p.get("arguments") is not None else ""
        kind, client = str(p.get("event_type") or ""), str(p.get("client") or "")
        rows.append([str(e.get("title")), kind, str(p.get("status")), duration, client, arguments[:40]])
    for line in table(rows):
        t.out(line)
    missing = [c for c in calls if c not in titles]
    t.check(not missing, f"no audit event arrived for {', '.join(missing)}")
    denied = [e for e in events if e.get("title") == "open__delete_everything"]
    t.check(bool(denied) and denied[0]["properties"].get("status") == "Denied", "the denied call is not audited")
    t.check(bool(read) and read[0]["properties"].get("status") == "Denied", "the denied read is not audited")
    confirmed = sorted(p["properties"].get("status") for p in events if p.get("title") == "keyed__echo")
    t.check(confirmed == ["Completed", "Denied"], f"the confirmed calls are audited as {confirmed}")


# ---------------------------------------------------------------------------------------------------------------------
# --serve
# ---------------------------------------------------------------------------------------------------------------------


def _serve(t: Transcript, config: Path, serve: Callable[[str], int]) -> int:
    """Serve the bridge on stdio in this process, over the running backends, until the client closes stdin."""
    from mcp_bridge.cli.install import bridge_command

    command, args = bridge_command()
    entry = {"command": command, "args": [*args, "demo", "--serve"]}
    t.err("")
    t.err("mcp-bridge demo --serve: the demo's backends are up and the bridge is serving MCP on stdio.")
    t.err("Paste this entry into your IDE's mcpServers (Cursor: ~/.cursor/mcp.json; Claude Desktop:")
    t.err("claude_desktop_config.json), or run the MCP Inspector with the same command:")
    t.err(json.dumps({"mcpServers": {"bridge-demo": entry}}, indent=2))
    t.err(f"  npx @modelcontextprotocol/inspector {' '.join([command, *entry['args']])}")
    t.err("Each run starts fresh backends on new ports; stop with Ctrl-C or by closing stdin. The `oauth` server's")
    t.err("login runs in the demo's headless browser: no browser opens and there is no URL to visit.")
    return serve(str(config))
