"""Units of the OAuth plumbing that the end-to-end tests do not isolate."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata

from mcp_bridge.auth.oauth import Login, LoginPolicy, _BridgeContext
from mcp_bridge.auth.store import FileBackend, ServerTokenStorage
from mcp_bridge.errors import AuthRequired


def storage(tmp_path: Path) -> ServerTokenStorage:
    return ServerTokenStorage("https://mcp.example.com/mcp", FileBackend(tmp_path / "secrets.json"), tmp_path)


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["http://evil.example.com/authorize?x=1", "javascript:alert(1)", "file:///etc/passwd"])
async def test_an_authorization_url_that_is_not_https_or_loopback_is_refused(tmp_path: Path, url: str) -> None:
    login = Login("s", storage(tmp_path), tmp_path, LoginPolicy(interactive=True, cooldown=0, timeout=5), port=0)
    with pytest.raises(AuthRequired, match="not https"):
        await login.redirect(url)


@pytest.mark.anyio
async def test_without_interactive_login_the_error_says_how_to_log_in(tmp_path: Path) -> None:
    login = Login("docs", storage(tmp_path), tmp_path, LoginPolicy(interactive=False, cooldown=0, timeout=5), port=0)
    with pytest.raises(AuthRequired, match="mcp-bridge login docs"):
        await login.redirect("https://as.example.com/authorize")


def context(client: OAuthClientInformationFull) -> _BridgeContext:
    metadata = OAuthClientMetadata(redirect_uris=["http://127.0.0.1:1/callback"])  # type: ignore[list-item]
    ctx = _BridgeContext(
        "https://mcp.example.com/mcp", metadata, storage=None, redirect_handler=None, callback_handler=None
    )  # type: ignore[arg-type]
    ctx.client_info = client
    return ctx


def test_a_secret_without_an_auth_method_is_sent_as_client_secret_post() -> None:
    ctx = context(OAuthClientInformationFull(client_id="c", client_secret="s3", token_endpoint_auth_method=None))
    data, headers = ctx.prepare_token_auth({"grant_type": "refresh_token"}, {})
    assert data["client_id"] == "c" and data["client_secret"] == "s3" and "Authorization" not in headers


def test_named_auth_methods_are_left_to_the_sdk() -> None:
    ctx = context(
        OAuthClientInformationFull(client_id="c", client_secret="s3", token_endpoint_auth_method="client_secret_basic")
    )
    data, headers = ctx.prepare_token_auth({"grant_type": "refresh_token"}, {})
    assert "client_secret" not in data and headers["Authorization"].startswith("Basic ")


def test_the_resource_parameter_can_be_turned_off() -> None:
    ctx = context(OAuthClientInformationFull(client_id="c"))
    assert ctx.should_include_resource_param("2025-11-25")
    ctx.send_resource = False
    assert not ctx.should_include_resource_param("2025-11-25")


def test_the_file_store_is_private_and_round_trips(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "secrets.json")
    backend.set("k", "v")
    backend.set("k2", "v2")
    backend.delete("k")
    assert backend.get("k") is None and backend.get("k2") == "v2"
    assert (tmp_path / "secrets.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.anyio
async def test_each_auth_says_its_header_in_advance_only_when_its_flow_would_add_nothing_else(tmp_path: Path) -> None:
    """``lean_headers`` (direct calls over the bridge's own connections, ``upstream.lean``): an API key and a Port
    token always; OAuth only once initialized, with a valid token and no flow step in progress, else ``None`` (the
    call then goes through httpx2 and the flow, which refreshes or logs in)."""
    import time

    from mcp.shared.auth import OAuthToken

    from mcp_bridge.auth import HeaderAuth, PortBearer
    from mcp_bridge.auth.oauth import build_provider
    from mcp_bridge.config import OAuthAuth

    assert await HeaderAuth("X-Api-Key", "k").lean_headers() == {"X-Api-Key": "k"}

    async def port_token(renew: bool) -> str:
        return "renewed" if renew else "cached"

    assert await PortBearer(port_token).lean_headers() == {"Authorization": "Bearer cached"}

    tokens = storage(tmp_path)
    await tokens.set_tokens(OAuthToken(access_token="tok-1", token_type="Bearer", expires_in=3600))
    policy = LoginPolicy(interactive=False, cooldown=0, timeout=1)
    provider = build_provider("s", tokens.server_url, OAuthAuth(type="oauth"), tokens, tmp_path, policy)
    assert await provider.lean_headers() is None  # its first request goes through the flow (which loads the token)
    await provider._initialize()
    provider._initialized = True
    assert await provider.lean_headers() == {"Authorization": "Bearer tok-1"}
    async with provider.context.lock:  # a refresh or login in progress
        assert await provider.lean_headers() is None
    provider.context.token_expiry_time = time.time() - 1
    assert await provider.lean_headers() is None  # expired: the flow refreshes it first
    provider.context.token_expiry_time = None
    provider.context.current_tokens = None
    assert await provider.lean_headers() is None
