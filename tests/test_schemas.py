"""Schemas every client accepts (``governance.schemas``): an array without ``items`` is repaired in what the IDE is
listed, never in what a call forwards nor in what pins fingerprint; ``doctor`` reports what cannot be repaired.
The end-to-end test runs once per IDE mode (both protocol eras)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from harness import Raw, bridge_client, raw_call, write_config
from hostile import Hostile, serving, tool
from mcp_bridge.governance.schemas import LARGE_SCHEMA_BYTES, problems, repaired

BROKEN = {
    "type": "object",
    "properties": {
        "ids": {"type": "array"},
        "pairs": {"type": ["array", "null"], "prefixItems": [{"type": "string"}]},
        "nested": {"type": "object", "properties": {"tags": {"type": "array", "default": [{"type": "array"}]}}},
        "fine": {"type": "array", "items": {"type": "integer"}},
    },
}


def test_an_array_without_items_gets_empty_items_and_nothing_else_changes() -> None:
    fixed = repaired(BROKEN)
    assert fixed["properties"]["ids"] == {"type": "array", "items": {}}
    assert "items" not in fixed["properties"]["pairs"]  # prefixItems says what the items are
    assert fixed["properties"]["nested"]["properties"]["tags"]["items"] == {}
    assert fixed["properties"]["nested"]["properties"]["tags"]["default"] == [{"type": "array"}]  # data, not schema
    assert fixed["properties"]["fine"] is BROKEN["properties"]["fine"]
    assert "items" not in BROKEN["properties"]["ids"]  # the server's own definition is untouched
    whole = {"type": "object", "properties": {"x": {"type": "string"}}}
    assert repaired(whole) is whole


def test_hostile_nesting_is_left_alone_past_the_depth_bound() -> None:
    deep: dict[str, Any] = {"type": "array"}
    for _ in range(500):
        deep = {"type": "object", "properties": {"x": deep}}
    repaired(deep)  # no RecursionError
    assert all("nested too deeply" in p for p in problems(deep))


def test_doctor_names_unresolvable_refs_and_oversized_schemas() -> None:
    ref = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}, "b": {"$ref": "#/$defs/ok"}}}
    assert problems({**ref, "$defs": {"ok": {"type": "string"}}}) == ["$ref that does not resolve: #/$defs/missing"]
    assert "does not resolve: https://x" in problems({"$ref": "https://x.example/s.json"})[0]
    big = {"type": "object", "description": "x" * (LARGE_SCHEMA_BYTES + 1)}
    assert "over 32 KB" in problems(big)[0]


@pytest.mark.anyio
@pytest.mark.usefixtures("ide_mode")
async def test_the_ide_gets_the_repaired_schema_and_the_server_the_arguments_as_sent(tmp_path: Path) -> None:
    hostile = Hostile("h", tools=[tool("tag", "Tag things.", inputSchema=BROKEN)])
    cfg = write_config(tmp_path / "config.yaml", {"h": hostile.server_config()})
    async with serving(hostile), bridge_client(cfg, tmp_path / "home") as client:
        listed = (await client.session.send_request(types.ListToolsRequest(), Raw)).root["tools"]
        assert listed[0]["inputSchema"]["properties"]["ids"] == {"type": "array", "items": {}}
        await raw_call(client, "h__tag", {"ids": [1, "two", None]})
    assert hostile.calls == [("tag", {"ids": [1, "two", None]})]
