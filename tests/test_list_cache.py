"""``tools/list`` answered from the front's kept answer: on the wire, the same bytes as the SDK's own path, and never
stale after the catalog changes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from mcp_bridge.bridge import Bridge
from mcp_bridge.config import parse_config
from mcp_bridge.governance.allowlist import initial_allowlist
from mcp_bridge.governance.catalog import Listing
from mcp_bridge.ide.front import Front, _PreEncoded

pytestmark = pytest.mark.anyio

VERSIONS = (*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS)

CONFIG = {
    "servers": {
        "alpha": {"url": "http://127.0.0.1:9/mcp", "allowed_tools": ["*"]},
        "beta": {"url": "http://127.0.0.1:9/beta", "allowed_tools": ["search", "ünïcode", "plain"]},
    },
    "timeouts": {"startup_wait": 0},
}

SCHEMA = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "description": "Søg — 検索 🔎", "default": "x\u2028y"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 1e20, "default": 1.0},
        "ratio": {"type": "number", "default": 0.1, "exclusiveMaximum": 12345678901234567890},
        "flags": {"type": "array", "items": {"$ref": "#/$defs/flag"}, "default": [True, False, None]},
    },
    "required": ["query"],
    "$defs": {"flag": {"enum": ["a", "b", 'quote"d', "back\\slash", "\x00ctrl"]}},
    "additionalProperties": False,
}

ALPHA = [
    {
        "name": "search",
        "title": "Search — everything",
        "description": "Finds things.\nSecond line with ünïcode and emoji 🚀.",
        "inputSchema": SCHEMA,
        "outputSchema": {"type": "object", "properties": {"hits": {"type": "array", "items": {"type": "string"}}}},
        "annotations": {"title": "Search", "readOnlyHint": True, "destructiveHint": False, "openWorldHint": True},
        "_meta": {"vendor/x": {"nested": [1, 2.5, "三"], "empty": {}}, "flag": None},
        "icons": [{"src": "https://example.com/i.png", "mimeType": "image/png", "sizes": ["48x48"]}],
        "execution": {"taskSupport": "optional"},
        "unknownField": "dropped by the SDK on some protocol versions",
    },
    {"name": "plain", "inputSchema": {"type": "object"}},
    {"name": "ünïcode", "description": "名前", "inputSchema": {"type": "object", "properties": {}}},
]
BETA = [
    {"name": "search", "description": "The other search", "inputSchema": {"type": "object"}},
    {"name": "plain", "inputSchema": {"type": "object"}, "annotations": {"idempotentHint": True}},
    {"name": "hidden", "inputSchema": {"type": "object"}},  # not on beta's allowlist
]


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    """A bridge that never runs (no upstream is ever contacted) with both servers' listings in its catalog."""
    bridge = make_bridge(tmp_path)
    yield bridge
    bridge.close_streams()  # running() would close them


def make_bridge(tmp_path: Path) -> Bridge:
    loaded = parse_config(json.dumps(CONFIG), environ={})
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    bridge = Bridge(loaded, home)
    allowlist = initial_allowlist(loaded.settings, home)
    assert allowlist is not None
    bridge.catalog.set_allowlist(allowlist)
    bridge.catalog.set_listing("alpha", Listing(tools=[dict(t) for t in ALPHA]))
    bridge.catalog.set_listing("beta", Listing(tools=[dict(t) for t in BETA]))
    return bridge


def sdk_only(bridge: Bridge) -> Front:
    """The front without the kept answer: every ``tools/list`` goes the SDK's whole way."""
    front = Front(bridge)
    front.server.middleware.remove(front._reuse_tools_answer)
    return front


class Conversation:
    """One front's server over memory streams, its answers as the stdio path puts them on the wire."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.pre_encoded: list[bool] = []
        self.envelope: dict[str, Any] | None = None
        """A modern connection's ``_meta`` envelope, put on every request."""

    async def __aenter__(self) -> Conversation:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._send_in, self._receive_in = anyio.create_memory_object_stream[SessionMessage | Exception](4)
        self._send_out, self._receive_out = anyio.create_memory_object_stream[SessionMessage](4)
        options = self.front.initialization_options()
        self._tg.start_soon(self.front.server.run, self._receive_in, self._send_out, options)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        for stream in (self._send_in, self._receive_in, self._send_out, self._receive_out):
            stream.close()

    async def request(self, request_id: Any, method: str, params: Any = None) -> str:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if self.envelope is not None and (params is None or isinstance(params, dict)):
            params = dict(params or {})
            meta = params.get("_meta")
            params["_meta"] = {**self.envelope, **meta} if isinstance(meta, dict) else meta or self.envelope
        if params is not None:
            body["params"] = params
        await self._send_in.send(SessionMessage(types.jsonrpc_message_adapter.validate_python(body, by_name=False)))
        with anyio.fail_after(10):
            reply = self.front.wire_message(await self._receive_out.receive())  # as serve_stdio's pump_out does
        self.pre_encoded.append(isinstance(reply.message, _PreEncoded))
        return reply.message.model_dump_json(by_alias=True, exclude_unset=True)  # as the SDK's stdio writer does

    async def initialize(self, version: str) -> None:
        if version in MODERN_PROTOCOL_VERSIONS:  # no handshake: every request carries its envelope
            self.envelope = {
                "io.modelcontextprotocol/protocolVersion": version,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "ide", "version": "1"},
            }
            return
        params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "ide", "version": "1"}}
        await self.request(0, "initialize", params)
        note = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized")
        await self._send_in.send(SessionMessage(note))


async def both(bridge: Bridge, version: str, requests: list[tuple[Any, str, Any]]) -> list[bool]:
    """Sends ``requests`` to the front and to the SDK-only front, asserts equal wire lines; which answers the front
    sent pre-encoded."""
    async with Conversation(Front(bridge)) as fast, Conversation(sdk_only(bridge)) as slow:
        await fast.initialize(version)
        await slow.initialize(version)
        for request_id, method, params in requests:
            expected = await slow.request(request_id, method, params)
            got = await fast.request(request_id, method, params)
            assert got == expected, (request_id, method)
        return fast.pre_encoded[-len(requests) :]


@pytest.mark.parametrize("version", VERSIONS)
async def test_repeated_lists_are_the_sdks_bytes(bridge: Bridge, version: str) -> None:
    lists = [(1, "tools/list", None), ("two", "tools/list", {}), (2**40, "tools/list", {"_meta": {"k": "ü"}})]
    lists += [(4, "tools/list", {"cursor": "ignored"}), (5, "tools/list", None)]
    pre_encoded = await both(bridge, version, lists)
    assert pre_encoded == [True] * len(lists)  # the first one too: it fills the answer the pump then encodes


async def test_the_answer_holds_what_the_ide_saw_before(bridge: Bridge) -> None:
    """Not only equal to the SDK-only front: the tools are the catalog's, ``_meta`` and unicode included."""
    async with Conversation(Front(bridge)) as fast:
        await fast.initialize("2025-11-25")
        await fast.request(1, "tools/list")
        line = await fast.request(2, "tools/list")
    assert fast.pre_encoded == [False, True, True]
    tools = json.loads(line)["result"]["tools"]
    assert [t["name"] for t in tools] == [t["name"] for t in bridge.catalog.tools()]
    assert len(tools) == 5  # beta's "hidden" is not on its allowlist
    assert tools[0]["_meta"] == ALPHA[0]["_meta"]
    assert tools[0]["outputSchema"] == ALPHA[0]["outputSchema"]
    assert tools[0]["annotations"] == ALPHA[0]["annotations"]
    assert "検索 🔎" in line  # raw UTF-8 on the wire, as the SDK writes it


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_catalog_change_is_in_the_next_list(bridge: Bridge, version: str) -> None:
    catalog = bridge.catalog
    async with Conversation(Front(bridge)) as fast, Conversation(sdk_only(bridge)) as slow:
        for conversation in (fast, slow):
            await conversation.initialize(version)

        async def names(request_id: int) -> list[str]:
            expected = await slow.request(request_id, "tools/list")
            got = await fast.request(request_id, "tools/list")
            assert got == expected
            return [t["name"] for t in json.loads(got)["result"]["tools"]]

        assert "alpha__plain" in await names(1)
        assert "alpha__plain" in await names(2)  # reused

        before = catalog.version
        catalog.set_blocked("alpha", {"plain": "its definition no longer matches its pin"})
        assert catalog.version > before
        assert "alpha__plain" not in await names(3)

        catalog.set_listing("beta", Listing(tools=[*BETA, {"name": "ünïcode", "inputSchema": {"type": "object"}}]))
        assert "beta___n_code" in await names(4)  # the exposed name of beta's new "ünïcode"

        changed = [dict(t) for t in ALPHA]
        changed[1] = {**changed[1], "description": "now described", "inputSchema": {"type": "object", "default": 1}}
        catalog.set_listing("alpha", Listing(tools=changed))
        await names(5)
        # Equal in Python, not on the wire: 1 == 1.0, so a rebuild must never keep the old answer.
        changed[1] = {**changed[1], "inputSchema": {"type": "object", "default": 1.0}}
        catalog.set_listing("alpha", Listing(tools=changed))
        line = await fast.request(6, "tools/list")
        assert '"default":1.0' in line
        assert line == await slow.request(6, "tools/list")
    assert fast.pre_encoded[-1]


@pytest.mark.parametrize("version", ["2025-11-25", *MODERN_PROTOCOL_VERSIONS])
async def test_bad_params_still_get_the_sdks_error(bridge: Bridge, version: str) -> None:
    requests: list[tuple[Any, str, Any]] = [(1, "tools/list", None), (2, "tools/list", {"cursor": 5})]
    requests += [(3, "tools/list", {"_meta": 1}), (4, "tools/list", None)]
    pre_encoded = await both(bridge, version, requests)
    assert pre_encoded == [True, False, False, True]


@pytest.mark.parametrize("version", ["2025-11-25", *MODERN_PROTOCOL_VERSIONS])
async def test_other_messages_pass_unchanged(bridge: Bridge, version: str) -> None:
    requests: list[tuple[Any, str, Any]] = [(1, "tools/list", None), (2, "ping", None), (3, "prompts/list", None)]
    pre_encoded = await both(bridge, version, requests)
    assert pre_encoded == [True, False, False]


def test_a_pre_encoded_response_dumps_normally_when_asked_otherwise() -> None:
    wire = _PreEncoded.model_construct(jsonrpc="2.0", id=1, result={"tools": []})
    wire._line = "the line"
    assert wire.model_dump_json(by_alias=True, exclude_unset=True) == "the line"
    assert json.loads(wire.model_dump_json()) == {"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}


def test_a_deferred_rebuild_is_never_hidden_behind_an_old_version() -> None:
    """Listings arriving together are applied with ``rebuild=False``: the version (what the kept answer is keyed by)
    and every read still see them at once, and what they changed is reported once."""
    from mcp_bridge.governance.allowlist import Allowlist
    from mcp_bridge.governance.catalog import Catalog

    loaded = parse_config(json.dumps(CONFIG), environ={})
    catalog = Catalog(loaded.settings.naming, Allowlist(servers=loaded.settings.servers))
    catalog.set_listing("alpha", Listing(tools=ALPHA))
    before = catalog.version
    catalog.set_listing("beta", Listing(tools=[{"name": "plain", "inputSchema": {"type": "object"}}]), rebuild=False)
    assert catalog.version > before
    assert "beta__plain" in [t["name"] for t in catalog.tools()]
    assert catalog.rebuild() == {"tools"} and catalog.rebuild() == set()


async def test_after_a_change_only_the_new_tools_are_shaped_again(bridge: Bridge) -> None:
    """A list after one server's change reuses what the SDK made of every other tool (same objects), and is still
    the SDK's answer byte for byte."""
    front = Front(bridge)
    async with Conversation(front) as fast, Conversation(sdk_only(bridge)) as slow:
        for conversation in (fast, slow):
            await conversation.initialize("2025-11-25")
        assert await fast.request(1, "tools/list") == await slow.request(1, "tools/list")
        before = {t["name"]: t for t in front._tools_answer.tools} if front._tools_answer else {}
        search, plain, hidden = bridge.catalog.listings()["beta"][0].tools  # the server lists again: one changed
        bridge.catalog.set_listing("beta", Listing(tools=[search, {**plain, "description": "changed"}, hidden]))
        assert await fast.request(2, "tools/list") == await slow.request(2, "tools/list")
        after = {t["name"]: t for t in front._tools_answer.tools} if front._tools_answer else {}
    assert before.keys() == after.keys() and len(after) == 5
    same = sorted(name for name in after if after[name] is before[name])
    assert same == ["alpha___n_code", "alpha__plain", "alpha__search", "beta__search"]  # not beta__plain


async def test_a_tool_the_sdk_refuses_gets_the_sdks_error(bridge: Bridge) -> None:
    async with Conversation(Front(bridge)) as fast, Conversation(sdk_only(bridge)) as slow:
        for conversation in (fast, slow):
            await conversation.initialize("2025-11-25")
        assert await fast.request(1, "tools/list") == await slow.request(1, "tools/list")
        bridge.catalog.set_listing("beta", Listing(tools=[{"name": "search", "inputSchema": "not a schema"}]))
        refused = await slow.request(2, "tools/list")
        assert '"error"' in refused
        assert await fast.request(2, "tools/list") == refused
        bridge.catalog.set_listing("beta", Listing(tools=[dict(t) for t in BETA]))
        assert await fast.request(3, "tools/list") == await slow.request(3, "tools/list")
