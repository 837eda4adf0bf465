"""Port's own tools through the same entry (issue 19, ``port.native_tools``): with ``port:`` the bridge also connects
to Port's MCP server as server ``port``, signing in with the access token of its Port credentials
(``mcp_auth: port_token``), its tools listed beside the approved servers', governed and audited like theirs. Against
the Port double's MCP endpoint, over stdio, in each IDE mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import LocalUpstream, bridge_client, raw_call, tool_names, wait_for, write_config
from port_double import AUDIT_BLUEPRINT, PortDouble, mcp_server_entity

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ide_mode")]

SECRET = "native-secret"


async def test_ports_native_tools_beside_the_approved_servers(tmp_path: Path) -> None:
    alpha = LocalUpstream("alpha", tmp_path).start()
    try:
        with PortDouble() as double:
            double.add_client("dev", SECRET)
            double.upsert_entity("_mcp_server", mcp_server_entity("alpha", alpha.url, ["echo"], auth_type="none"))
            port = {
                "base_url": double.base_url,
                "client_id": "dev",
                "client_secret": SECRET,
                "mcp_url": f"{double.base_url}/mcp",
                "mcp_auth": "port_token",
            }
            cfg = write_config(tmp_path / "config.yaml", {}, port=port, timeouts={"startup_wait": 5})
            async with bridge_client(cfg, tmp_path / "home") as ide:
                expected = ["alpha__echo", "port__list_blueprints", "port__run_action", "port__search_entities"]

                async def listed() -> bool:
                    return sorted(await tool_names(ide)) == expected

                await wait_for(listed, "Port's native tools beside alpha's", timeout=20)
                found = await raw_call(ide, "port__search_entities", {"blueprint": "_mcp_server", "query": "alp"})
                assert json.loads(found["content"][0]["text"]) == {"entities": [{"identifier": "alpha", "title": None}]}
                ran = await raw_call(ide, "port__run_action", {"action": "restart", "entity": "alpha"})
                assert not ran.get("isError"), ran
            runs = list(double.mcp.runs)
            events = [e["properties"] for e in double.entities(AUDIT_BLUEPRINT).values()]
    finally:
        alpha.kill()
    assert [(r["action"], r["entity"]) for r in runs] == [("restart", "alpha")]
    audited = sorted((e["server"], e["tool_name"], e["status"]) for e in events if e.get("event_type") == "call")
    assert audited == [("port", "run_action", "Completed"), ("port", "search_entities", "Completed")]


async def test_native_tools_off_and_a_refused_token(tmp_path: Path) -> None:
    """``native_tools: false`` lists no ``port`` server; Port's MCP endpoint refuses a request without a valid Port
    token (401), so nothing but the bridge's own credentials get in."""
    import httpx2

    with PortDouble() as double:
        double.add_client("dev", SECRET)
        port = {"base_url": double.base_url, "client_id": "dev", "client_secret": SECRET, "native_tools": False}
        port["mcp_url"] = f"{double.base_url}/mcp"
        cfg = write_config(tmp_path / "config.yaml", {}, port=port, timeouts={"startup_wait": 3})
        async with bridge_client(cfg, tmp_path / "home") as ide:
            assert await tool_names(ide) == []
        with httpx2.Client() as http:
            refused = http.post(f"{double.base_url}/mcp", json={}, headers={"authorization": "Bearer nope"})
    assert refused.status_code == 401
