"""``mcp_bridge.cli.doctor``: each failure comes with its fix, and a healthy setup is all ✓ (in-process, real
servers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import LocalUpstream, free_port, write_config
from mcp_bridge.cli.doctor import Check, render, run_checks
from oauth_harness import LocalOAuthUpstream
from port_double import PortDouble, mcp_server_entity

SECRET = "port-secret-value-doctor-0001"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Own MCP_BRIDGE_HOME, HOME and file keyring per test; keyring re-resolves its backend from the environment."""
    import keyring.core

    home = tmp_path / "home"
    monkeypatch.setenv("MCP_BRIDGE_HOME", str(home))
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    monkeypatch.delenv("MCP_BRIDGE_CONFIG", raising=False)
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    yield home


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def failed(checks: list[Check]) -> list[str]:
    return [c.name for c in checks if not c.ok]


def config(tmp_path: Path, servers: dict[str, Any], **extra: Any) -> str:
    extra.setdefault("timeouts", {"connect": 5})
    return str(write_config(tmp_path / "config.yaml", servers, **extra))


def port_section(base_url: str) -> dict[str, Any]:
    return {"base_url": base_url, "client_id": "dev", "client_secret": "${env:TEST_PORT_SECRET}", "timeout": 2}


@pytest.mark.anyio
async def test_a_healthy_local_config_is_all_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LocalUpstream("local", tmp_path) as upstream:
        path = config(tmp_path, {"local": upstream.server_config()})
        messages: list[str] = []
        checks = await run_checks(path, progress=messages.append)
    names = [c.name for c in checks]
    expected = ["config", "keyring", "allowlist", "server local", "names", "tool count", "schemas", "tool pins"]
    assert names == expected, render(checks)
    assert all(c.ok and not c.warning for c in checks), render(checks)
    assert "connected" in by_name(checks)["server local"].detail
    assert messages and any("connecting" in m for m in messages)
    assert capsys.readouterr().out == ""  # the CLI prints render(...); the checks themselves never do
    out = render(checks)
    assert out.count("✓") == len(checks) and "✗" not in out and "fix:" not in out


@pytest.mark.anyio
async def test_a_healthy_port_setup_is_all_ok(tmp_path: Path) -> None:
    with LocalUpstream("docs", tmp_path) as upstream, PortDouble() as double:
        double.add_client("dev", SECRET)
        double.upsert_entity("_mcp_server", mcp_server_entity("docs", upstream.url, ["*"], auth_type="none"))
        path = config(tmp_path, {}, port=port_section(double.base_url))
        checks = await run_checks(path, environ={"TEST_PORT_SECRET": SECRET})
    assert all(c.ok and not c.warning for c in checks), render(checks)
    got = by_name(checks)
    assert "1 approved entities" in got["port"].detail
    assert "connected" in got["server docs"].detail
    assert SECRET not in render(checks)


@pytest.mark.anyio
async def test_a_broken_config_stops_at_the_config_check(tmp_path: Path) -> None:
    path = config(tmp_path, {}, no_such_key=1)
    checks = await run_checks(path)
    assert len(checks) == 1
    [check] = checks
    assert check.name == "config" and not check.ok
    assert "no_such_key" in check.detail and str(path) in check.detail
    assert check.fix == "edit the file named above"
    assert render(checks).startswith("✗ config: ") and "\n    fix: edit the file named above" in render(checks)


@pytest.mark.anyio
async def test_unreachable_port_names_the_network_fix(tmp_path: Path) -> None:
    path = config(tmp_path, {}, port=port_section(f"http://127.0.0.1:{free_port()}"))
    checks = await run_checks(path, environ={"TEST_PORT_SECRET": SECRET})
    got = by_name(checks)
    assert not got["port"].ok and "unreachable" in got["port"].detail
    assert got["port"].fix == "check the network / port.region / port.base_url"
    assert not got["allowlist"].ok and "FAILED CLOSED" in got["allowlist"].detail
    assert not any(c.name.startswith("server ") for c in checks)


@pytest.mark.anyio
async def test_wrong_port_credentials_name_the_client_secret(tmp_path: Path) -> None:
    wrong = "not-the-right-secret-0002"
    with PortDouble() as double:
        double.add_client("dev", SECRET)
        path = config(tmp_path, {}, port=port_section(double.base_url))
        checks = await run_checks(path, environ={"TEST_PORT_SECRET": wrong})
    port = by_name(checks)["port"]
    assert not port.ok and "401" in port.detail
    assert port.fix is not None and "port.client_secret" in port.fix
    assert wrong not in render(checks)


@pytest.mark.anyio
async def test_missing_keyring_backend_with_an_oauth_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    closed = f"http://127.0.0.1:{free_port()}/mcp"
    path = config(tmp_path, {"secure": {"url": closed, "allowed_tools": ["*"], "auth": {"type": "oauth"}}})
    checks = await run_checks(path)
    got = by_name(checks)
    keyring = got["keyring"]
    assert not keyring.ok and "no usable keyring backend" in keyring.detail
    assert keyring.fix is not None and "PYTHON_KEYRING_BACKEND" in keyring.fix and "token_store: file" in keyring.fix
    server = got["server secure"]
    assert not server.ok and server.fix is not None and "keyring" in server.fix


@pytest.mark.anyio
async def test_a_server_that_needs_a_login(tmp_path: Path) -> None:
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        servers = {"secure": {"url": upstream.url, "allowed_tools": ["*"], "auth": {"type": "oauth"}}}
        path = config(tmp_path, servers, token_store="file")
        checks = await run_checks(path)
    got = by_name(checks)
    assert got["keyring"].ok and "token_store: file" in got["keyring"].detail
    server = got["server secure"]
    assert not server.ok and "needs a login" in server.detail
    assert server.fix == "run `mcp-bridge login secure`"
    assert "✗ server secure: " in render(checks)


@pytest.mark.anyio
async def test_an_unreachable_upstream(tmp_path: Path) -> None:
    with LocalUpstream("up", tmp_path) as up:
        closed = f"http://127.0.0.1:{free_port()}/mcp"
        path = config(tmp_path, {"up": up.server_config(), "down": {"url": closed, "allowed_tools": ["*"]}})
        checks = await run_checks(path)
    got = by_name(checks)
    assert failed(checks) == ["server down"], render(checks)
    assert "cannot connect" in got["server down"].detail
    assert got["server down"].fix == "check the URL and that the server is up"
    assert got["server up"].ok


@pytest.mark.anyio
async def test_an_api_key_server_without_its_key_is_reported_with_the_allowlist(tmp_path: Path) -> None:
    with PortDouble() as double:
        double.add_client("dev", SECRET)
        closed = f"http://127.0.0.1:{free_port()}/mcp"
        double.upsert_entity("_mcp_server", mcp_server_entity("keyed", closed, ["*"], auth_type="api_key"))
        path = config(tmp_path, {}, port=port_section(double.base_url))
        checks = await run_checks(path, environ={"TEST_PORT_SECRET": SECRET})
    got = by_name(checks)
    assert got["port"].ok and got["allowlist"].ok
    keyed = got["server keyed"]
    assert not keyed.ok and keyed.fix is not None and "servers.keyed" in keyed.fix
    assert "names" not in got  # nothing usable to connect to


def test_long_names_and_many_tools_warn() -> None:
    from mcp_bridge.cli.doctor import _count_check, _names_check
    from mcp_bridge.config import Settings

    settings = Settings.model_validate({"naming": {"max_length": 64}})
    long = _names_check(settings, ["a" * 50, "short"])
    assert long.ok and long.warning and long.fix is not None and "naming.max_length" in long.fix
    assert _names_check(settings, ["a" * 40]).warning is False
    from mcp_bridge.config import CatalogConfig

    full = CatalogConfig(mode="full")
    assert _count_check(129, full).warning and _count_check(129, full).ok
    assert not _count_check(128, full).warning
    assert _count_check(41, CatalogConfig(mode="full", max_tools=40)).warning
    auto = _count_check(50)  # auto: no warning, but which IDEs get search mode is said
    assert not auto.warning and "Cursor (40)" in auto.detail and "VS Code" not in auto.detail
    assert "every IDE but Claude Code" in _count_check(300).detail
    assert "catalog.mode search" in _count_check(10, CatalogConfig(mode="search")).detail
    assert render([long]).startswith("! names: ")
