"""``initialize`` answered before the SDK is loaded: the same answer as the SDK's front, and nothing else changes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage
from mcp_types import methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS

from harness import LocalUpstream, bridge_client, bridge_env, bridge_process, raw_call, tool_names, write_config
from mcp_bridge.audit.spoolcheck import instructions_note
from mcp_bridge.config import parse_config
from mcp_bridge.governance.allowlist import (
    ALLOWLIST_CACHE,
    AllowlistCache,
    cache_key,
    initial_allowlist,
    loading_from_port,
)
from mcp_bridge.ide import handshake
from mcp_bridge.ide.handshake import discover_result, initialize_result, parse_discover, parse_initialize
from port_double import mcp_server_entity

OFF = {handshake.ENV_SWITCH: "0"}


def init_request(request_id: Any = 1, version: Any = "2025-06-18", **params: Any) -> dict[str, Any]:
    body = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw-ide", "version": "0"}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": {**body, **params}}


def envelope(version: Any = "2026-07-28", **meta: Any) -> dict[str, Any]:
    base = {
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw-ide", "version": "0"},
    }
    return {k: v for k, v in {**base, **meta}.items() if v is not _DROP}


_DROP = object()


def discover_request(request_id: Any = 1, version: Any = "2026-07-28", **meta: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "server/discover",
        "params": {"_meta": envelope(version, **meta)},
    }


SERVERS = {
    "docs": {"url": "http://127.0.0.1:9/mcp", "allowed_tools": ["*"], "description": "Internal docs — ünïcode"},
    "wiki": {"url": "http://127.0.0.1:9/wiki", "allowed_tools": ["search"], "title": "The wiki"},
}


# ------------------------------------------------------------------------------------------- the same as the SDK's


def test_the_handshake_versions_are_the_sdks() -> None:
    assert handshake.HANDSHAKE_PROTOCOL_VERSIONS == HANDSHAKE_PROTOCOL_VERSIONS
    assert handshake.LATEST_HANDSHAKE_VERSION == LATEST_HANDSHAKE_VERSION
    assert handshake.MODERN_VERSIONS == MODERN_PROTOCOL_VERSIONS


async def sdk_initialize(front: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The SDK-based front's answer to one ``initialize`` on a fresh connection, as its stdio writer puts it on the
    wire."""
    send_in, receive_in = anyio.create_memory_object_stream[SessionMessage | Exception](4)
    send_out, receive_out = anyio.create_memory_object_stream[SessionMessage](4)
    message = types.jsonrpc_message_adapter.validate_python(request, by_name=False)
    async with anyio.create_task_group() as tg, send_in, receive_out:
        tg.start_soon(front.server.run, receive_in, send_out, front.initialization_options())
        await send_in.send(SessionMessage(message))
        with anyio.fail_after(10):
            reply = await receive_out.receive()
        tg.cancel_scope.cancel()
    wire: dict[str, Any] = json.loads(reply.message.model_dump_json(by_alias=True, exclude_unset=True))
    return wire


PORT = {"base_url": "http://127.0.0.1:9", "client_id": "dev", "client_secret": "port-secret-0001"}
ENTITIES = [
    mcp_server_entity("docs", "http://127.0.0.1:9/mcp", ["*"], auth_type="none", description="Docs from Port — ü"),
    mcp_server_entity("wiki", "http://127.0.0.1:9/wiki", ["search"], auth_type="none", title="The wiki"),
]
ALLOWLISTS = {
    "local servers": ({"servers": SERVERS}, False, "Internal docs — ünïcode"),
    "Port, cached": ({"port": PORT}, True, "Docs from Port — ü"),
    "Port, nothing cached yet": ({"port": PORT}, False, "being loaded from Port"),
    "Port, cached, damaged audit spool": ({"port": PORT}, True, "mcp-bridge audit reset"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("version", [*HANDSHAKE_PROTOCOL_VERSIONS, "2026-07-28", "1999-01-01", ""])
@pytest.mark.parametrize("request_id", [7, "init-1"])
@pytest.mark.parametrize("allowlist_kind", sorted(ALLOWLISTS))
async def test_the_hand_built_answer_equals_the_sdk_fronts(
    tmp_path: Path, version: str, request_id: Any, allowlist_kind: str
) -> None:
    """Built as ``serve`` builds it, before the SDK loads; against the front's answer, as ``serve`` runs it."""
    from mcp_bridge.bridge import Bridge
    from mcp_bridge.ide.front import Front

    raw, cached, expected_text = ALLOWLISTS[allowlist_kind]
    loaded = parse_config(json.dumps(raw), environ={})
    home = tmp_path / "home"
    home.mkdir()
    if cached:
        assert loaded.settings.port is not None
        AllowlistCache(home / ALLOWLIST_CACHE, cache_key(loaded.settings.port)).save(ENTITIES, time.time())
    if "damaged" in allowlist_kind:
        (home / "audit.db").write_bytes(b"not an SQLite database" * 100)
    allowlist = initial_allowlist(loaded.settings, home)
    offered = allowlist if allowlist is not None else loading_from_port()
    instructions = offered.instructions(loaded.settings.naming.separator) + instructions_note(loaded.settings, home)
    request = init_request(request_id, version)

    bridge = Bridge(loaded, home, initial=allowlist)
    async with bridge.running():  # as serve does: the front takes its instructions from the running bridge
        sdk = await sdk_initialize(Front(bridge), request)

    assert parse_initialize(json.dumps(request).encode()) == (request_id, version)
    hand_built = {"jsonrpc": "2.0", "id": request_id, "result": initialize_result(version, instructions)}
    assert hand_built == sdk
    assert expected_text in sdk["result"]["instructions"]  # the instructions really were compared

    probe = discover_request(request_id)  # a 2026-07-28 IDE's first request
    bridge = Bridge(loaded, home, initial=allowlist)
    async with bridge.running():
        sdk = await sdk_initialize(Front(bridge), probe)
    assert parse_discover(json.dumps(probe).encode()) == (request_id, "2026-07-28", "raw-ide")
    hand_built = {"jsonrpc": "2.0", "id": request_id, "result": discover_result(instructions)}
    assert json.dumps(hand_built) == json.dumps(sdk)  # key order too: the SDK's answer is dropped, this one sent


# A line the early path answers must be one the SDK accepts as a valid initialize; the rest go to the SDK.
ANSWERED = [
    init_request(),
    init_request("abc"),
    init_request(2**40),
    init_request(version="2026-07-28"),
    init_request(capabilities={"roots": {"listChanged": True}, "sampling": {}, "experimental": {"x": {}}}),
    init_request(clientInfo={"name": "ide", "version": "1", "title": "IDE", "icons": []}),
    init_request(_meta={"progressToken": 1}),
    init_request(extra="ignored by the SDK"),
]
NOT_ANSWERED: list[Any] = [
    init_request(1.0),
    init_request(True),
    init_request(None),
    init_request(version=5),
    init_request(capabilities={"roots": True}),
    init_request(capabilities={"experimental": {"x": 1}}),
    init_request(clientInfo={"name": "ide"}),
    init_request(clientInfo={"name": "ide", "version": 1}),
    init_request(clientInfo={"name": "ide", "version": "1", "icons": 1}),
    init_request(_meta=3),
    {**init_request(), "params": None},
    {**init_request(), "extra": 1},
    {**init_request(), "jsonrpc": "1.0"},
    {**init_request(), "method": "ping"},
    {"jsonrpc": "2.0", "method": "initialize", "params": init_request()["params"]},
    [init_request()],
    "not json",
    "",
]


DISCOVER_ANSWERED = [
    discover_request(),
    discover_request("d-1"),
    discover_request(**{"io.modelcontextprotocol/clientInfo": _DROP}),
    discover_request(**{"io.modelcontextprotocol/logLevel": "debug"}),
    discover_request(**{"io.modelcontextprotocol/clientCapabilities": {"elicitation": {}, "sampling": {}}}),
    discover_request(**{"progressToken": 3, "vendor/x": 1}),
]
DISCOVER_NOT_ANSWERED: list[Any] = [
    discover_request(version="2025-11-25"),
    discover_request(version="2099-01-01"),
    discover_request(version=7),
    discover_request(**{"io.modelcontextprotocol/clientCapabilities": _DROP}),
    discover_request(**{"io.modelcontextprotocol/clientCapabilities": {"roots": True}}),
    discover_request(**{"io.modelcontextprotocol/clientInfo": {"name": "x"}}),
    discover_request(**{"io.modelcontextprotocol/logLevel": "loud"}),
    discover_request(**{"io.modelcontextprotocol/somethingNew": 1}),
    discover_request(1.0),
    {**discover_request(), "params": {"_meta": envelope(), "cursor": "x"}},
    {**discover_request(), "params": {}},
    {**discover_request(), "method": "tools/list"},
]


@pytest.mark.parametrize(
    ("message", "answered"), [(m, True) for m in DISCOVER_ANSWERED] + [(m, False) for m in DISCOVER_NOT_ANSWERED]
)
def test_only_discovery_probes_the_sdk_answers_so_are_answered_early(message: Any, answered: bool) -> None:
    """Answered early: what the SDK's modern loop certainly answers with the discovery result (its inbound ladder and
    envelope checks). Anything else (another version: the SDK's -32022; a malformed envelope) is left to it."""
    from mcp.server.connection import Connection
    from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request

    line = json.dumps(message).encode()
    parsed = parse_discover(line)
    assert (parsed is not None) == answered
    if parsed is not None:
        route = classify_inbound_request(message)
        assert not isinstance(route, InboundLadderRejection)
        Connection.from_envelope(route.protocol_version, route.client_info, route.client_capabilities, outbound=None)  # type: ignore[arg-type]


def sdk_accepts_initialize(line: bytes) -> bool:
    try:
        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        if not isinstance(message, types.JSONRPCRequest) or message.method != "initialize":
            return False
        methods.validate_client_request("initialize", LATEST_HANDSHAKE_VERSION, message.params)
        types.InitializeRequestParams.model_validate(message.params or {}, by_name=False)
    except Exception:
        return False
    return True


@pytest.mark.parametrize(("message", "answered"), [(m, True) for m in ANSWERED] + [(m, False) for m in NOT_ANSWERED])
def test_only_initialize_requests_the_sdk_accepts_are_answered_early(message: Any, answered: bool) -> None:
    line = message.encode() if isinstance(message, str) else json.dumps(message).encode()
    parsed = parse_initialize(line)
    assert (parsed is not None) == answered
    if parsed is not None:
        assert sdk_accepts_initialize(line)
        assert parsed == (message["id"], message["params"]["protocolVersion"])


# ---------------------------------------------------------------------------------------------- end to end, stdio


def lines_of(*messages: Any, final_newline: bool = True) -> bytes:
    text = "\n".join(m if isinstance(m, str) else json.dumps(m) for m in messages)
    return (text + ("\n" if final_newline else "")).encode()


async def exchange(config: Path, home: Path, stdin: bytes, *, early: bool) -> tuple[list[Any], str]:
    """Everything the bridge writes to stdout for ``stdin`` (then EOF), parsed; and its stderr."""
    stderr_path = home.with_suffix(".stderr.log")
    out = b""
    async with bridge_process(config, home, stderr_path, env=None if early else OFF) as proc:
        await proc.stdin.send(stdin)
        await proc.stdin.aclose()
        with anyio.fail_after(60):
            async for chunk in proc.stdout:
                out += chunk
            assert await proc.wait() == 0
    return [json.loads(line) for line in out.decode().splitlines()], stderr_path.read_text()


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
LIST = {"jsonrpc": "2.0", "id": 20, "method": "tools/list"}
PING = {"jsonrpc": "2.0", "id": 30, "method": "ping"}

SCENARIOS: dict[str, bytes] = {
    "initialize first": lines_of(init_request(), INITIALIZED, LIST, PING),
    "initialize first, string id, unknown version": lines_of(init_request("a", "1999-01-01"), INITIALIZED, LIST),
    "an initialize without a newline before the end": lines_of(init_request(), final_newline=False),
    "ping first": lines_of(PING, init_request(), INITIALIZED, LIST),
    "tools/list before initialize": lines_of(LIST, init_request(), INITIALIZED, {**LIST, "id": 21}),
    "a notification first": lines_of(INITIALIZED, init_request(), LIST),
    "a batch first": lines_of([init_request()], init_request(2), INITIALIZED, LIST),
    "garbage first": lines_of("this is not json", init_request(), INITIALIZED, LIST),
    "an empty line first": lines_of("", init_request(), INITIALIZED, LIST),
    "an initialize the SDK refuses first": lines_of(init_request(clientInfo={"name": "x"}), init_request(2), LIST),
    "an initialize of JSON-RPC 1.0 first": lines_of({**init_request(8), "jsonrpc": "1.0"}, init_request(), LIST),
    "an initialize with a float id first": lines_of(init_request(1.0), init_request(2), INITIALIZED, LIST),
    "discover first": lines_of(
        discover_request(), {**LIST, "params": {"_meta": envelope()}}, {**PING, "params": {"_meta": envelope()}}
    ),
    "discover first, at a version not served": lines_of(
        discover_request(version="2099-01-01"), discover_request(2), {**LIST, "params": {"_meta": envelope()}}
    ),
    "a modern tools/list first": lines_of({**LIST, "params": {"_meta": envelope()}}, discover_request(3)),
}


@pytest.mark.anyio
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_the_ide_sees_the_same_bytes_with_and_without_the_early_answer(tmp_path: Path, scenario: str) -> None:
    config = write_config(tmp_path / "config.yaml", SERVERS, log={"level": "debug"})
    results: dict[bool, tuple[list[Any], str]] = {}

    async def run(early: bool) -> None:
        results[early] = await exchange(config, tmp_path / f"home-{early}", SCENARIOS[scenario], early=early)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, True)
        tg.start_soon(run, False)
    (fast, fast_stderr), (sdk, sdk_stderr) = results[True], results[False]
    assert fast == sdk
    assert fast, "the scenario must produce answers to compare"
    event = "serve.discover_answered_early" if scenario.startswith("discover") else "serve.initialize_answered_early"
    took_early_path = event in fast_stderr
    assert took_early_path == (
        scenario.startswith(("initialize first", "discover first")) and "not served" not in scenario
    )
    assert "answered_early" not in sdk_stderr
    if took_early_path:
        # answered before the SDK was even loaded, and the SDK's own answer (dropped) was the same
        assert fast_stderr.index(event) < fast_stderr.index("serve.start")
    assert "early_initialize_differs" not in fast_stderr
    assert [m.get("id") for m in fast].count(1) <= 1  # one answer per request, never two


@pytest.mark.anyio
async def test_a_session_initialized_early_serves_as_usual(tmp_path: Path) -> None:
    """The SDK client through the early path: its session is initialized, lists and calls work, the IDE is known."""
    alpha = LocalUpstream("alpha", tmp_path).start()
    try:
        jsonl = tmp_path / "audit.jsonl"
        config = write_config(
            tmp_path / "config.yaml",
            {"alpha": alpha.server_config()},
            log={"level": "debug"},
            audit={"jsonl": str(jsonl)},
        )
        stderr_path = tmp_path / "stderr.log"
        async with bridge_client(config, tmp_path / "home", stderr_path=stderr_path) as client:
            assert client.server_info is not None and client.server_info.name == "mcp-bridge"
            assert "alpha__echo" in await tool_names(client)
            assert (await raw_call(client, "alpha__echo", {"text": "hi"}))["content"][0]["text"] == "alpha: hi"
    finally:
        alpha.kill()
    stderr = stderr_path.read_text()
    assert "serve.initialize_answered_early" in stderr and "early_initialize_differs" not in stderr
    calls = [e for e in map(json.loads, jsonl.read_text().splitlines()) if e["kind"] == "call"]
    assert [c["client"] for c in calls] == ["pytest-ide"]  # the IDE's name, from the SDK's initialized session


@pytest.mark.anyio
async def test_sigterm_while_waiting_for_the_first_message_stops_cleanly(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", {}, log={"level": "debug"})
    stderr_path = tmp_path / "stderr.log"
    async with bridge_process(config, tmp_path / "home", stderr_path) as proc:
        with anyio.fail_after(30):
            while "serve.awaiting_first_message" not in stderr_path.read_text():
                await anyio.sleep(0.02)  # polls the log for the bridge to reach its read: an event, not a delay
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            code = await proc.wait()
    assert code == 0
    stderr = stderr_path.read_text()
    assert "serve.stop" in stderr and "Traceback" not in stderr


def test_nothing_heavy_is_imported_before_the_answer(tmp_path: Path) -> None:
    """The early path needs the CLI, the config, the allowlist and this module: no SDK, no HTTP client, not even
    anyio or structlog (which imports asyncio): those load once the IDE has its answer."""
    heavy = [
        "mcp",
        "mcp_types",
        "httpx2",
        "httpcore",
        "starlette",
        "uvicorn",
        "opentelemetry",
        "jsonschema",
        "sqlite3",
        "keyring",
        "anyio",
        "asyncio",
        "structlog",
    ]
    code = (
        "import sys, mcp_bridge.cli, mcp_bridge.ide.handshake, mcp_bridge.governance.allowlist;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=bridge_env(tmp_path), capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.anyio
async def test_an_open_listen_stream_does_not_hold_the_bridge_at_eof(tmp_path: Path) -> None:
    """A 2026-07-28 IDE's ``subscriptions/listen`` is never answered (it is a stream): when the IDE closes stdin, the
    bridge does not wait for its answer as it waits for the requests still being handled (it ends with the
    connection)."""
    config = write_config(tmp_path / "config.yaml", SERVERS, log={"level": "debug"})
    listen = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "subscriptions/listen",
        "params": {"_meta": envelope(), "notifications": {"toolsListChanged": True}},
    }
    out, stderr = await exchange(config, tmp_path / "home", lines_of(discover_request(), listen), early=True)
    assert out[0]["id"] == 1 and "result" in out[0]
    assert any(m.get("method") == "notifications/subscriptions/acknowledged" for m in out)
    assert "front.unanswered_at_eof" not in stderr and "Traceback" not in stderr
