"""``tools/list`` answered from the warm disk cache before the SDK is loaded: the bytes the SDK would send, only when
the caches describe every approved server, and ``list_changed`` when the live list turns out different."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from harness import LocalUpstream, SilentServer, bridge_env, bridge_process, write_config
from mcp_bridge import __version__
from mcp_bridge.config import parse_config
from mcp_bridge.governance.allowlist import (
    ALLOWLIST_CACHE,
    AllowlistCache,
    cache_key,
    initial_allowlist,
    loading_from_port,
)
from mcp_bridge.governance.catalog import CACHE_FILE, CatalogCache, Listing
from mcp_bridge.ide import warmstart
from mcp_bridge.ide.handshake import HANDSHAKE_PROTOCOL_VERSIONS
from port_double import mcp_server_entity
from test_handshake import discover_request, envelope, exchange, init_request, lines_of

INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def list_request(request_id: Any = 2, **params: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": "tools/list"}
    if params:
        message["params"] = params
    return message


PING = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
SESSION = lines_of(init_request(1, "2025-11-25"), INITIALIZED, list_request(), PING)
MODERN_PROMPTS = {"jsonrpc": "2.0", "id": 3, "method": "prompts/list", "params": {"_meta": envelope()}}
SESSIONS = {  # (what the IDE sends, the protocol version of its answers, the ids it gets: its lines' ids)
    "handshake": (SESSION, "2025-11-25", [1, 2, 3]),
    "2026-07-28, discovery first": (
        lines_of(discover_request(1), list_request(2, _meta=envelope()), MODERN_PROMPTS),
        "2026-07-28",
        [1, 2, 3],
    ),
    "2026-07-28, a list first": (
        lines_of(list_request(2, _meta=envelope()), MODERN_PROMPTS),
        "2026-07-28",
        [2, 3],
    ),
}


def answered_early(stderr: str) -> bool:
    return "warmstart.tools_list_answered" in stderr


async def warm(config: Path, home: Path, session: str = "handshake") -> list[Any]:
    """One ordinary session (the SDK answers the list, the front keeps that answer); its output."""
    stdin, version, _ = SESSIONS[session]
    out, stderr = await exchange(config, home, stdin, early=True)
    assert not answered_early(stderr)
    assert [m for m in out if "id" not in m] == []  # its list was the catalog as it is: nothing changed since
    assert (home / f"tools-answer-{version}").exists()
    return out


@pytest.fixture
def alpha(tmp_path: Path) -> Iterator[LocalUpstream]:
    with LocalUpstream("alpha", tmp_path) as upstream:
        yield upstream


def debug_config(tmp_path: Path, servers: dict[str, Any], **extra: Any) -> Path:
    return write_config(tmp_path / "config.yaml", servers, log={"level": "debug"}, **extra)


def by_id(messages: list[Any]) -> dict[Any, Any]:
    ids = [m.get("id") for m in messages]
    assert len(set(ids)) == len(ids), "one answer per request"
    return dict(zip(ids, messages, strict=True))


def tool_names(answer: dict[str, Any]) -> list[str]:
    return sorted(t["name"] for t in answer["result"]["tools"])


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.anyio
@pytest.mark.parametrize("session", sorted(SESSIONS))
async def test_a_warm_start_answers_the_first_list_at_once_with_the_sdks_bytes(tmp_path: Path, session: str) -> None:
    stdin, _, ids = SESSIONS[session]
    with LocalUpstream("alpha", tmp_path) as alpha, LocalUpstream("beta", tmp_path) as beta:
        servers = {"alpha": alpha.server_config(), "beta": beta.server_config(["echo", "add"])}
        config = debug_config(tmp_path, servers)
        home = tmp_path / "home"
        first = await warm(config, home, session)
        shutil.copytree(home, tmp_path / "home-off")
        results: dict[bool, tuple[list[Any], str]] = {}

        async def run(early: bool) -> None:
            results[early] = await exchange(config, home if early else tmp_path / "home-off", stdin, early=early)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, True)
            tg.start_soon(run, False)
    (fast, fast_stderr), (sdk, sdk_stderr) = results[True], results[False]
    # initialize, the list and the ping: what the SDK alone sends (it answers the ping first: its list waits)
    assert by_id(fast) == by_id(sdk) == by_id(first)
    assert [m["id"] for m in fast] == ids
    if session == "handshake":
        assert [m["id"] for m in sdk] == [1, 3, 2]
    names = tool_names(by_id(fast)[2])
    assert "alpha__echo" in names and [n for n in names if n.startswith("beta__")] == ["beta__add", "beta__echo"]
    assert answered_early(fast_stderr) and not answered_early(sdk_stderr)
    # before the SDK was loaded (serve.start is logged once the bridge runs); the live list turned out the same
    assert fast_stderr.index("warmstart.tools_list_answered") < fast_stderr.index("serve.start")
    assert "early_list_differs" not in fast_stderr and "early_initialize_differs" not in fast_stderr


async def read_message(stream: Any, buffer: bytearray) -> dict[str, Any]:
    while b"\n" not in buffer:
        buffer.extend(await stream.receive())
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    message: dict[str, Any] = json.loads(line)
    return message


@pytest.mark.anyio
async def test_a_server_that_changed_since_the_cache_gets_the_ide_to_list_again(tmp_path: Path) -> None:
    """The early answer is the cached catalog; when the live one differs, the IDE is told to list again, and the
    next list is the live one."""
    alpha = LocalUpstream("alpha", tmp_path).start()
    try:
        config = debug_config(tmp_path, {"alpha": alpha.server_config()})
        home = tmp_path / "home"
        cached = tool_names(by_id(await warm(config, home))[2])
        alpha.kill()
        alpha.extra_tools = 2  # the same server, now with two more tools
        alpha.start()
        stderr_path = tmp_path / "stderr.log"
        async with bridge_process(config, home, stderr_path) as proc:
            buffer = bytearray()
            await proc.stdin.send(lines_of(init_request(1, "2025-11-25"), INITIALIZED, list_request(2)))
            with anyio.fail_after(60):
                assert (await read_message(proc.stdout, buffer))["id"] == 1
                early = await read_message(proc.stdout, buffer)
                assert early["id"] == 2 and tool_names(early) == cached
                changed = await read_message(proc.stdout, buffer)
                assert changed == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
                await proc.stdin.send(lines_of(list_request(4)))
                live = await read_message(proc.stdout, buffer)
            await proc.stdin.aclose()
            assert await proc.wait() == 0
    finally:
        alpha.kill()
    assert live["id"] == 4
    assert sorted(set(tool_names(live)) - set(cached)) == ["alpha__tool_0001", "alpha__tool_0002"]
    stderr = stderr_path.read_text()
    assert answered_early(stderr) and "front.early_list_differs" in stderr


@pytest.mark.anyio
async def test_a_server_missing_from_the_cache_means_the_ordinary_wait(tmp_path: Path) -> None:
    with LocalUpstream("alpha", tmp_path) as alpha, LocalUpstream("beta", tmp_path) as beta:
        config = debug_config(tmp_path, {"alpha": alpha.server_config()})
        home = tmp_path / "home"
        await warm(config, home)
        servers = {"alpha": alpha.server_config(), "beta": beta.server_config()}
        config = debug_config(tmp_path, servers)
        out, stderr = await exchange(config, home, SESSION, early=True)
    assert not answered_early(stderr) and "warmstart.cache_incomplete" in stderr
    assert "beta__echo" in tool_names(by_id(out)[2])  # the list waited for the server the cache did not know


@pytest.mark.anyio
async def test_a_tool_whose_pin_no_longer_holds_is_never_listed_from_the_old_answer(
    tmp_path: Path, alpha: LocalUpstream
) -> None:
    config = debug_config(tmp_path, {"alpha": alpha.server_config()})
    home = tmp_path / "home"
    assert "alpha__echo" in tool_names(by_id(await warm(config, home))[2])
    pinned = {**alpha.server_config(), "tool_pins": {"echo": "sha256:" + "0" * 64}}  # not echo's definition
    config = debug_config(tmp_path, {"alpha": pinned})
    out, stderr = await exchange(config, home, SESSION, early=True)
    assert not answered_early(stderr)  # the cached catalog is not the one the kept answer was made from
    assert "alpha__echo" not in tool_names(by_id(out)[2])


@pytest.mark.anyio
async def test_a_cursor_or_another_request_first_takes_the_ordinary_path(tmp_path: Path, alpha: LocalUpstream) -> None:
    config = debug_config(tmp_path, {"alpha": alpha.server_config()})
    home = tmp_path / "home"
    first = await warm(config, home)
    init = init_request(1, "2025-11-25")
    out, stderr = await exchange(config, home, lines_of(init, INITIALIZED, PING, list_request()), early=True)
    assert not answered_early(stderr)
    assert [m.get("id") for m in out] == [1, 3, 2] and by_id(out) == by_id(first)  # as the SDK alone answers
    out, stderr = await exchange(config, home, lines_of(init, list_request(cursor="x")), early=True)
    assert not answered_early(stderr)
    out, stderr = await exchange(config, home, lines_of(init, list_request(), list_request(5)), early=True)
    assert stderr.count("warmstart.tools_list_answered") == 2 and [m["id"] for m in out] == [1, 2, 5]


@pytest.mark.anyio
async def test_switched_off_with_the_early_initialize(tmp_path: Path, alpha: LocalUpstream) -> None:
    config = debug_config(tmp_path, {"alpha": alpha.server_config()})
    home = tmp_path / "home"
    first = await warm(config, home)
    out, stderr = await exchange(config, home, SESSION, early=False)
    assert by_id(out) == by_id(first) and not answered_early(stderr)


@pytest.mark.anyio
async def test_a_damaged_answer_file_is_ignored(tmp_path: Path, alpha: LocalUpstream) -> None:
    config = debug_config(tmp_path, {"alpha": alpha.server_config()})
    home = tmp_path / "home"
    first = await warm(config, home)
    kept = home / "tools-answer-2025-11-25"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    kept.write_bytes(kept.read_bytes()[:-10])  # cut short
    out, stderr = await exchange(config, home, SESSION, early=True)
    assert by_id(out) == by_id(first) and not answered_early(stderr)


def test_the_early_list_loads_nothing_heavy(tmp_path: Path) -> None:
    """Rebuilding the cached catalog (config, allowlist, catalog, pins) needs neither the SDK nor an HTTP client."""
    heavy = ["mcp", "mcp_types", "httpx2", "httpcore", "starlette", "uvicorn", "anyio", "sqlite3", "keyring"]
    config = write_config(
        tmp_path / "config.yaml", {"alpha": {"url": "http://127.0.0.1:9/mcp", "allowed_tools": ["*"]}}
    )
    home = tmp_path / "home"
    listing = {
        "tools": [{"name": "echo", "inputSchema": {"type": "object"}}],
        "templates": [{"uriTemplate": "x://{a}"}],
    }
    (home).mkdir()
    (home / "catalog.json").write_text(
        json.dumps({"version": 1, "servers": {"alpha": {"url": "http://127.0.0.1:9/mcp", **listing}}})
    )
    code = (
        "import sys; from pathlib import Path; from mcp_bridge.ide import warmstart; from mcp_bridge.config import"
        " load_config; from mcp_bridge.governance.allowlist import initial_allowlist;"
        f" s = load_config({str(config)!r}).settings; h = Path({str(home)!r});"
        " tools = warmstart.cached_tools(s, h, initial_allowlist(s, h)); print(len(tools));"
        f" print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=bridge_env(home), capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split("\n")[:2] == ["1", "[]"]


# ---------------------------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (INITIALIZED, "initialized"),
        ({**INITIALIZED, "params": {}}, "initialized"),
        ({**INITIALIZED, "params": {"x": 1}}, "other"),
        (list_request(7), "list"),
        (list_request("seven"), "list"),
        (list_request(7, _meta={"progressToken": 1}), "list"),
        (list_request(7, cursor="abc"), "other"),
        (list_request(7, _meta={"io.modelcontextprotocol/protocolVersion": "2026-07-28"}), "other"),
        (list_request(True), "other"),
        (list_request(1.5), "other"),
        ({**list_request(7), "extra": 1}, "other"),
        ({**list_request(7), "params": []}, "other"),
        ({"jsonrpc": "2.0", "id": 7, "method": "prompts/list"}, "other"),
        ([list_request(7)], "other"),
        ("not json", "other"),
        ("", "other"),
    ],
)
def test_only_plain_lists_are_answered_early(message: Any, kind: str) -> None:
    line = message.encode() if isinstance(message, str) else json.dumps(message).encode()
    assert warmstart.classify(line)[0] == kind


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (list_request(7, _meta=envelope()), "list"),
        (list_request(7, _meta={**envelope(), "progressToken": 1, "io.modelcontextprotocol/logLevel": "info"}), "list"),
        (list_request(7), "other"),  # no envelope: the SDK refuses it on a modern connection
        (list_request(7, _meta=envelope("2099-01-01")), "other"),
        (list_request(7, _meta=envelope(**{"io.modelcontextprotocol/clientCapabilities": None})), "other"),
        (list_request(7, _meta=envelope(), cursor="abc"), "other"),
        (INITIALIZED, "other"),  # no handshake in this era
    ],
)
def test_in_the_2026_era_only_lists_with_a_good_envelope_are_answered_early(message: Any, kind: str) -> None:
    assert warmstart.classify(json.dumps(message).encode(), "2026-07-28")[0] == kind


def test_an_answer_is_used_only_for_the_same_tools_bridge_and_sdk(tmp_path: Path) -> None:
    tools = [{"name": "a__echo", "description": "ünï", "inputSchema": {"type": "object", "b": 1.0, "a": 1}}]
    result = json.dumps({"tools": tools}, ensure_ascii=False)
    version = HANDSHAKE_PROTOCOL_VERSIONS[-1]
    warmstart.write_answer(tmp_path, version, tools, result)
    digest = warmstart.tools_digest(tools)
    assert warmstart.read_answer(tmp_path, version, digest) == result.encode()
    assert warmstart.read_answer(tmp_path, HANDSHAKE_PROTOCOL_VERSIONS[0], digest) is None
    reordered = [{"name": "a__echo", "description": "ünï", "inputSchema": {"type": "object", "a": 1, "b": 1.0}}]
    assert warmstart.tools_digest(reordered) != digest  # the SDK keeps key order on the wire: another answer
    assert warmstart.tools_digest([{**tools[0], "inputSchema": {"type": "object", "b": 1, "a": 1}}]) != digest
    path = warmstart.answer_path(tmp_path, version)
    header, body = path.read_bytes().split(b"\n", 1)
    for change in ({"bridge": __version__ + ".dev"}, {"sdk": "0.0.1"}, {"format": 0}):
        path.write_bytes(json.dumps({**json.loads(header), **change}).encode() + b"\n" + body)
        assert warmstart.read_answer(tmp_path, version, digest) is None
    path.write_bytes(b"garbage")
    assert warmstart.read_answer(tmp_path, version, digest) is None


def test_the_keeper_writes_the_latest_answer_from_a_thread(tmp_path: Path) -> None:
    keeper = warmstart.AnswerKeeper()
    version = HANDSHAKE_PROTOCOL_VERSIONS[-1]
    for n in range(20):
        tools = [{"name": f"t{n}"}]
        keeper.keep(tmp_path, version, tools, json.dumps({"tools": tools}))
    keeper.keep(tmp_path, "1999-01-01", [], "{}")  # a version the bridge does not serve: never kept
    keeper.wait()
    last = [{"name": "t19"}]
    assert (
        warmstart.read_answer(tmp_path, version, warmstart.tools_digest(last)) == json.dumps({"tools": last}).encode()
    )
    assert sorted(os.listdir(tmp_path)) == [f"tools-answer-{version}"]


@pytest.mark.parametrize(
    ("age", "answered"),
    [(5.0, True), (59.0, True), (61.0, False), (3600.0, False), (90000.0, False), (None, False), (-600.0, False)],
)
def test_ports_cached_allowlist_is_used_only_while_fresh(tmp_path: Path, age: float | None, answered: bool) -> None:
    """Younger than ``port.refresh_interval``: what a running bridge would serve too. Older (or failed closed past
    ``max_stale``, or none at all): the first list waits for Port as before."""
    port = {"base_url": "http://127.0.0.1:9", "client_id": "dev", "client_secret": "s", "refresh_interval": 60}
    settings = parse_config(json.dumps({"port": {**port, "max_stale": 86400}}), environ={}).settings
    assert settings.port is not None
    home = tmp_path / "home"
    home.mkdir()
    if age is not None:
        entity = mcp_server_entity("docs", "http://127.0.0.1:9/mcp", ["*"], auth_type="none")
        AllowlistCache(home / ALLOWLIST_CACHE, cache_key(settings.port)).save([entity], time.time() - age)
    tools = [{"name": "search", "inputSchema": {"type": "object"}}]
    CatalogCache(home / CACHE_FILE).save({"docs": ("http://127.0.0.1:9/mcp", Listing(tools=tools))})
    allowlist = initial_allowlist(settings, home)
    version = HANDSHAKE_PROTOCOL_VERSIONS[-1]
    listed = warmstart.cached_tools(settings, home, allowlist or loading_from_port())
    assert listed is not None
    warmstart.write_answer(home, version, listed, json.dumps({"tools": listed}))
    prepared = warmstart.prepare(settings, home, allowlist, version)
    assert (prepared is not None) == answered
    if prepared is not None:
        assert [t["name"] for t in json.loads(prepared[0])["tools"]] == ["docs__search"]
        assert prepared[1] == warmstart.tools_digest(listed)


@pytest.mark.anyio
async def test_an_ide_that_ignores_list_changed_gets_the_ordinary_wait(tmp_path: Path, alpha: LocalUpstream) -> None:
    """Claude Desktop keeps its first list for the session: that list must be the live one, not the cache's."""
    claude = init_request(1, "2025-11-25", clientInfo={"name": "claude-ai", "version": "0.1.0"})
    config = debug_config(tmp_path, {"alpha": alpha.server_config()})
    home = tmp_path / "home"
    first = await warm(config, home)
    out, stderr = await exchange(config, home, lines_of(claude, INITIALIZED, list_request(), PING), early=True)
    assert not answered_early(stderr) and "the IDE ignores list_changed" in stderr
    assert by_id(out)[2] == by_id(first)[2]


@pytest.mark.anyio
async def test_an_ide_that_leaves_after_its_list_does_not_wait_for_the_sdk(
    tmp_path: Path, alpha: LocalUpstream
) -> None:
    config = debug_config(tmp_path, {"alpha": alpha.server_config()})
    home = tmp_path / "home"
    first = await warm(config, home)
    out, stderr = await exchange(config, home, lines_of(init_request(1, "2025-11-25"), list_request()), early=True)
    assert by_id(out) == {1: by_id(first)[1], 2: by_id(first)[2]}
    assert "every request was answered" in stderr and "serve.start" not in stderr  # the bridge never had to run


@pytest.mark.anyio
async def test_after_an_early_list_the_next_one_does_not_wait_for_servers(tmp_path: Path) -> None:
    """The IDE has a whole list already: listing again (or another kind) answers with the catalog as it is, not after
    the first list's wait for a server that hangs (here up to a 30 s startup wait)."""
    alpha = LocalUpstream("alpha", tmp_path).start()
    try:
        servers = {"alpha": alpha.server_config()}
        timeouts = {"startup_wait": 30, "connect": 60}
        config = debug_config(tmp_path, servers, timeouts=timeouts)
        home = tmp_path / "home"
        cached = tool_names(by_id(await warm(config, home))[2])
    finally:
        alpha.kill()
    with SilentServer(port=alpha.port):  # the same address now hangs
        async with bridge_process(config, home, tmp_path / "stderr.log") as proc:
            buffer = bytearray()
            await proc.stdin.send(lines_of(init_request(1, "2025-11-25"), INITIALIZED, list_request(2)))
            with anyio.fail_after(15):  # half the startup wait: a list that waited for alpha would not be here
                assert (await read_message(proc.stdout, buffer))["id"] == 1
                assert tool_names(await read_message(proc.stdout, buffer)) == cached
                while "serve.start" not in (tmp_path / "stderr.log").read_text():
                    await anyio.sleep(0.05)  # polls the log for the SDK to take over: an event, not a delay
                await proc.stdin.send(lines_of(list_request(3)))
                again = await read_message(proc.stdout, buffer)
            proc.kill()
    assert again["id"] == 3 and tool_names(again) == cached
    assert answered_early((tmp_path / "stderr.log").read_text())
