"""The client under test for the official MCP conformance suite: ``mcp-bridge serve`` driven as an IDE drives it.

``scripts/conformance`` passes this program to ``conformance client --command``; the suite appends the scenario
server's URL as the last argument and sets ``$MCP_CONFORMANCE_SCENARIO`` (and, for scenarios with pre-registered
credentials, ``$MCP_CONFORMANCE_CONTEXT``, a JSON object). For each run the driver:

1. writes a private config with one server, ``scenario``, at that URL: ``allowed_tools``, ``allowed_prompts`` and
   ``allowed_resources`` all ``["*"]``, ``auth: {type: oauth, client_metadata_url: ...}`` (the suite's Client ID
   Metadata Document URL; with the context's ``client_id``/``client_secret`` when it has them), ``token_store: file``
   and ``auto_login: true``, in a fresh ``$MCP_BRIDGE_HOME`` (nothing touches the user's keyring or home);
2. sets ``$BROWSER`` to tests/fake_browser.py, which GETs the authorization URL and follows loopback redirects (the
   scenarios' authorization servers approve at once and redirect to the bridge's 127.0.0.1 callback);
3. starts ``python -m mcp_bridge serve`` over stdio with the SDK's stdio client in ``$CONFORMANCE_DRIVER_MODE``
   (``legacy`` by default; ``auto`` for the 2026-07-28 requirements), declaring elicitation (it accepts every form
   without filling anything in), waits until the server's tools appear (re-listing on
   ``notifications/tools/list_changed``, which the bridge sends once the login finished), and calls them: the calls
   the scenario's context names (``toolCalls``), else each tool once with arguments made up from its input schema.

Exit status: 0 when every call succeeded (or, for a scenario whose server offers no tools, when the bridge logged the
server connected), 1 when the tool never appeared or the call failed, 2 on a usage error. The bridge's stderr, the fake
browser's log and what the driver saw go to this program's stderr, which the suite stores as ``stderr.txt`` next to
``checks.json``.

Environment: ``CONFORMANCE_DRIVER_WAIT`` (seconds to wait for the tool to appear and the call to finish, counted from
the bridge's answer to ``initialize``, default 30: starting many bridges at once on a small machine takes a while),
``CONFORMANCE_DRIVER_TIMEOUT`` (a hard limit for the whole run, default 55; keep it below the suite's ``--timeout``),
``CONFORMANCE_DRIVER_KEEP`` (keep the temporary directory with the config, the bridge's home and its logs).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from pydantic import RootModel

ROOT = Path(__file__).resolve().parent.parent
FAKE_BROWSER = ROOT / "tests" / "fake_browser.py"
SERVER = "scenario"
SEPARATOR = "__"

CLIENT_METADATA_URL = "https://conformance-test.local/client-metadata.json"
"""The Client ID Metadata Document the suite's authorization servers know (as an organisation would host one): the
bridge is configured with it as ``auth.client_metadata_url`` and uses it where a server supports such documents."""

NO_TOOLS = {"initialize"}
"""Scenarios whose server lists no tools: success is the bridge reporting the server connected (the checks are on the
bridge's handshake with it)."""


MODE = os.environ.get("CONFORMANCE_DRIVER_MODE") or "legacy"
"""The SDK client's mode for the IDE side: ``legacy`` for the 0.1 suite, ``auto`` (discover first) for the 2026-07-28
requirements."""


async def accept_elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    """A minimal IDE's answer to a form: accept, filling in nothing (the bridge applies the schema's defaults)."""
    return types.ElicitResult(action="accept", content={})


class Raw(RootModel[dict[str, Any]]):
    """A result as the raw dict on the wire (no client-side validation of tool results)."""


def say(message: str) -> None:
    sys.stderr.write(f"driver: {message}\n")
    sys.stderr.flush()


def example_value(schema: dict[str, Any]) -> Any:
    """A plausible value for one JSON-schema property (only what the suite's tools need)."""
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if not isinstance(kind, str):
        kind = "string"
    return {
        "number": 2,
        "integer": 2,
        "boolean": True,
        "array": [],
        "object": {},
        "null": None,
    }.get(kind, "conformance")


def example_arguments(tool: dict[str, Any]) -> dict[str, Any]:
    schema = tool.get("inputSchema") or {}
    properties = schema.get("properties") or {}
    return {name: example_value(properties.get(name) or {}) for name in schema.get("required") or []}


def write_config(work: Path, url: str, context: dict[str, Any]) -> Path:
    auth: dict[str, Any] = {"type": "oauth", "client_metadata_url": CLIENT_METADATA_URL}
    if context.get("client_id") and "private_key_pem" not in context:
        auth["client_id"] = context["client_id"]
        if context.get("client_secret"):
            auth["client_secret"] = context["client_secret"]
    config = {
        "servers": {
            SERVER: {
                "url": url,
                "allowed_tools": ["*"],
                "allowed_prompts": ["*"],
                "allowed_resources": ["*"],
                "auth": auth,
            }
        },
        "auto_login": True,
        "token_store": "file",
        "timeouts": {"connect": 10, "call": 15, "startup_wait": 5, "login": 15},
        "log": {"level": "debug"},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def bridge_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_BRIDGE_", "MCP_CONFORMANCE_"))}
    env.update(
        {
            "MCP_BRIDGE_HOME": str(work / "bridge-home"),
            "HOME": str(work / "home"),
            "XDG_DATA_HOME": str(work / "xdg-data"),
            "XDG_CONFIG_HOME": str(work / "xdg-config"),
            "BROWSER": f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_BROWSER))} %s",
            "FAKE_BROWSER_LOG": str(work / "browser.jsonl"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class ToolsChanged:
    """The IDE side's message handler: notes each ``notifications/tools/list_changed``."""

    def __init__(self) -> None:
        self.event = anyio.Event()

    async def __call__(self, message: Any) -> None:
        root = getattr(message, "root", message)
        if isinstance(root, types.ToolListChangedNotification):
            self.event.set()

    async def wait(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self.event.wait()
        self.event = anyio.Event()


def bridge_says_connected(bridge_log: Path) -> bool:
    """Whether the bridge logged (JSON lines on stderr) that the scenario's server is connected."""
    for line in bridge_log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("event") != "upstream.state":
            continue
        if record.get("server") == SERVER and record.get("state") == "connected":
            return True
    return False


async def drive(
    config: Path, env: dict[str, str], errlog: Any, scenario: str, context: dict[str, Any], wait: float
) -> int:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_bridge", "serve", "--config", str(config)], env=env
    )
    changed = ToolsChanged()
    prefix = f"{SERVER}{SEPARATOR}"
    async with Client(
        stdio_client(params, errlog=errlog),
        mode=MODE,  # type: ignore[arg-type]
        message_handler=changed,
        elicitation_callback=accept_elicitation,
        client_info=types.Implementation(name="conformance-driver", version="1.0"),
    ) as client:
        say("bridge initialized")
        deadline = time.monotonic() + wait
        tools: list[dict[str, Any]] = []
        while True:
            listed = await client.session.send_request(types.ListToolsRequest(), Raw)
            tools = [t for t in listed.root.get("tools", []) if t["name"].startswith(prefix)]
            if tools or scenario in NO_TOOLS:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                say(f"no {prefix}* tool appeared in time; tools/list gave {[t['name'] for t in listed.root['tools']]}")
                return 1
            await changed.wait(min(1.0, remaining))
        say(f"tools: {[t['name'] for t in tools]}")
        if not tools:  # a scenario without tools: wait for the bridge to say it connected to the server
            errlog.flush()
            while not bridge_says_connected(Path(errlog.name)):
                if time.monotonic() > deadline:
                    say("the bridge never reported the server connected")
                    return 1
                await anyio.sleep(0.2)
            say("the bridge reports the server connected")
            return 0
        status = 0
        for tool, arguments in planned_calls(tools, context):
            status = max(status, await call(client, tool, arguments, deadline))
        return status


def planned_calls(tools: list[dict[str, Any]], context: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The calls to make: the ones the scenario names in its context (``toolCalls``: name and arguments), else every
    tool once (some scenarios, MRTR's, check what happens across several calls) with arguments made up from its
    schema; a ``json_schema_echo`` tool gets the other tool's input schema as listed by the bridge, as the
    json-schema-2020-12-preservation scenario asks (it checks what the bridge kept of it)."""
    by_name = {tool["name"].removeprefix(f"{SERVER}{SEPARATOR}"): tool for tool in tools}
    wanted = context.get("toolCalls")
    if isinstance(wanted, list) and wanted:
        return [
            (by_name[c["name"]], dict(c.get("arguments") or {}))
            for c in wanted
            if isinstance(c, dict) and c.get("name") in by_name
        ]
    calls = []
    for name, tool in by_name.items():
        arguments = example_arguments(tool)
        if name == "json_schema_echo":
            others = [t for n, t in by_name.items() if n != name]
            if others:
                arguments["schema"] = others[0].get("inputSchema") or {}
        calls.append((tool, arguments))
    return calls


async def call(client: Client, tool: dict[str, Any], arguments: dict[str, Any], deadline: float) -> int:
    say(f"calling {tool['name']} with {json.dumps(arguments)}")
    try:
        with anyio.fail_after(max(1.0, deadline - time.monotonic())):
            if MODE == "legacy":
                request = types.CallToolRequest(
                    params=types.CallToolRequestParams(name=tool["name"], arguments=arguments)
                )
                result = (await client.session.send_request(request, Raw)).root
            else:  # the SDK's own call, which drives InputRequiredResult rounds as a modern IDE does
                called = await client.call_tool(tool["name"], arguments)
                result = called.model_dump(mode="json", by_alias=True, exclude_none=True)
    except TimeoutError:
        say("the tool call did not finish in time")
        return 1
    except Exception as exc:  # a JSON-RPC error from the bridge
        say(f"the tool call failed: {type(exc).__name__}: {exc}")
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    if result.get("isError"):
        say("the tool call returned isError")
        return 1
    return 0


async def bounded(
    config: Path, env: dict[str, str], errlog: Any, scenario: str, context: dict[str, Any], wait: float, limit: float
) -> int:
    try:
        with anyio.fail_after(limit):
            return await drive(config, env, errlog, scenario, context, wait)
    except TimeoutError:
        say(f"gave up after {limit:g}s")
        return 1


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[-1].startswith(("http://", "https://")):
        say("usage: conformance_driver.py SERVER_URL (the suite appends the URL)")
        return 2
    url = argv[-1]
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    wait = float(os.environ.get("CONFORMANCE_DRIVER_WAIT", "30"))
    limit = float(os.environ.get("CONFORMANCE_DRIVER_TIMEOUT", "55"))
    work = Path(tempfile.mkdtemp(prefix="mcp-bridge-conformance-"))
    say(f"scenario {scenario or '(unnamed)'} at {url}; work dir {work}")
    status = 1
    try:
        config = write_config(work, url, context)
        bridge_log = work / "bridge-stderr.log"
        with open(bridge_log, "w", encoding="utf-8") as errlog:
            try:
                status = anyio.run(bounded, config, bridge_env(work), errlog, scenario, context, wait, limit)
            except Exception as exc:
                say(f"driver error: {type(exc).__name__}: {exc}")
                sys.stderr.write("".join(traceback.format_exception(exc)))
                status = 1
        sys.stderr.write("----- bridge stderr -----\n" + bridge_log.read_text(encoding="utf-8", errors="replace"))
        browser_log = work / "browser.jsonl"
        if browser_log.exists():
            sys.stderr.write("----- fake browser -----\n" + browser_log.read_text(encoding="utf-8"))
    finally:
        if os.environ.get("CONFORMANCE_DRIVER_KEEP"):
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    say(f"exit {status}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
