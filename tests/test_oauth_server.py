"""The OAuth-protected local server (``mcp_bridge.sandbox.oauth_server``) proven with the SDK's own OAuth client, raw
HTTP, and the fake browser the bridge tests will use."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest

from oauth_harness import (
    BROWSER,
    FAKE_BROWSER,
    CallbackListener,
    LocalOAuthUpstream,
    MemoryTokenStorage,
    browser_opens,
    sdk_oauth_client,
)

REDIRECT_URI = "http://127.0.0.1:9/callback"  # raw flows read the redirect's Location; nothing listens there


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOAuthUpstream]:
    with LocalOAuthUpstream("guarded", tmp_path_factory.mktemp("oauth-logs")) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOAuthUpstream]:
    with LocalOAuthUpstream("short", tmp_path_factory.mktemp("oauth-logs"), token_lifetime=2) as upstream:
        yield upstream


@pytest.fixture
def listener() -> Iterator[CallbackListener]:
    with CallbackListener() as cb:
        yield cb


def delta(before: dict[str, Any], after: dict[str, Any], key: str, grant: str | None = None) -> int:
    if grant is not None:
        return int(after[key].get(grant, 0)) - int(before[key].get(grant, 0))
    return int(after[key]) - int(before[key])


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def register(server: LocalOAuthUpstream, **metadata: Any) -> httpx2.Response:
    body = {"client_name": "raw", "redirect_uris": [REDIRECT_URI], **metadata}
    return httpx2.post(f"{server.issuer}/register", json=body, timeout=5)


def authorize(server: LocalOAuthUpstream, client_id: str, challenge: str, state: str) -> httpx2.Response:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": server.url,
        "scope": "mcp",
    }
    return httpx2.get(f"{server.issuer}/authorize", params=params, timeout=5, follow_redirects=False)


def token(server: LocalOAuthUpstream, **form: str) -> httpx2.Response:
    return httpx2.post(f"{server.issuer}/token", data=form, timeout=5)


def raw_login(server: LocalOAuthUpstream) -> tuple[dict[str, Any], dict[str, Any]]:
    """Register, authorize and exchange the code by hand: (client information, token response)."""
    client = register(server).json()
    verifier, challenge = pkce()
    location = authorize(server, client["client_id"], challenge, "s").headers["location"]
    code = parse_qs(urlsplit(location).query)["code"][0]
    tokens = token(
        server,
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT_URI,
        code_verifier=verifier,
        client_id=client["client_id"],
        client_secret=client["client_secret"],
        resource=server.url,
    )
    assert tokens.status_code == 200, tokens.text
    return client, tokens.json()


def mcp_initialize(server: LocalOAuthUpstream, access_token: str | None) -> httpx2.Response:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if access_token:
        headers["Authorization"] = f"Bearer {access_token}"
    params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
    return httpx2.post(server.url, json=initialize, headers=headers, timeout=5)


@pytest.mark.anyio
async def test_sdk_client_logs_in_then_calls_a_tool(
    server: LocalOAuthUpstream, listener: CallbackListener, tmp_path: Path
) -> None:
    before, log = server.stats(), tmp_path / "browser.log"
    storage = MemoryTokenStorage()
    async with sdk_oauth_client(server.url, storage, listener, log) as (client, _):
        result = await client.call_tool("echo", {"text": "hello"})
        assert result.content[0].text == "guarded: hello"
        result = await client.call_tool("echo", {"text": "again"})
        assert result.content[0].text == "guarded: again"
    after = server.stats()
    assert delta(before, after, "authorize") == 1
    assert delta(before, after, "register") == 1
    assert delta(before, after, "token", "authorization_code") == 1
    assert delta(before, after, "token", "refresh_token") == 0
    opens = browser_opens(log)
    assert len(opens) == 1 and opens[0]["outcome"] == "HTTP 200"
    assert opens[0]["hops"][-1].startswith(listener.redirect_uri + "?")  # the AS redirected to the loopback callback
    assert len(listener.received) == 1 and listener.received[0]["code"]
    assert storage.client_info is not None and storage.client_info.token_endpoint_auth_method == "client_secret_post"
    assert storage.tokens is not None and storage.tokens.expires_in == 3600 and storage.tokens.refresh_token


@pytest.mark.anyio
async def test_expired_access_token_is_refreshed_without_a_second_login(
    short_lived: LocalOAuthUpstream, listener: CallbackListener, tmp_path: Path
) -> None:
    before, log = short_lived.stats(), tmp_path / "browser.log"
    storage = MemoryTokenStorage()
    async with sdk_oauth_client(short_lived.url, storage, listener, log) as (client, _):
        assert (await client.call_tool("echo", {"text": "1"})).content[0].text == "short: 1"
        assert storage.tokens is not None
        first = storage.tokens.model_copy()
        await anyio.sleep(3)  # the 2 s access token has expired
        assert (await client.call_tool("echo", {"text": "2"})).content[0].text == "short: 2"
    after = short_lived.stats()
    assert delta(before, after, "token", "refresh_token") >= 1
    assert delta(before, after, "authorize") == 1
    assert len(browser_opens(log)) == 1
    assert storage.tokens.access_token != first.access_token
    assert storage.tokens.refresh_token != first.refresh_token  # rotated by default
    # the rotated-away refresh token is dead
    reuse = token(
        short_lived,
        grant_type="refresh_token",
        refresh_token=str(first.refresh_token),
        client_id=storage.client_info.client_id,  # type: ignore[union-attr]
        client_secret=str(storage.client_info.client_secret),  # type: ignore[union-attr]
    )
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"


def test_authorize_auto_approves_with_state_pkce_and_revocation(server: LocalOAuthUpstream) -> None:
    before = server.stats()
    client = register(server).json()
    verifier, challenge = pkce()
    response = authorize(server, client["client_id"], challenge, "state-123")
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    query = parse_qs(location.query)
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    assert query["state"] == ["state-123"] and query["code"][0]
    form = {
        "grant_type": "authorization_code",
        "code": query["code"][0],
        "redirect_uri": REDIRECT_URI,
        "client_id": client["client_id"],
        "client_secret": client["client_secret"],
        "resource": server.url,
    }
    wrong = token(server, **form, code_verifier=pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    good = token(server, **form, code_verifier=verifier)
    assert good.status_code == 200
    tokens = good.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600 and tokens["scope"] == "mcp"
    again = token(server, **form, code_verifier=verifier)  # codes are single use
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"

    unauthenticated = mcp_initialize(server, None)
    assert unauthenticated.status_code == 401
    www = unauthenticated.headers["www-authenticate"]
    assert f'resource_metadata="{server.issuer}/.well-known/oauth-protected-resource/mcp"' in www
    prm = httpx2.get(f"{server.issuer}/.well-known/oauth-protected-resource/mcp", timeout=5).json()
    assert prm["resource"] == server.url and prm["authorization_servers"] == [server.issuer]
    assert mcp_initialize(server, tokens["access_token"]).status_code == 200

    revoke = httpx2.post(
        f"{server.issuer}/revoke",
        data={
            "token": tokens["access_token"],
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
        timeout=5,
    )
    assert revoke.status_code == 200
    assert mcp_initialize(server, tokens["access_token"]).status_code == 401
    refresh = token(
        server,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
        client_id=client["client_id"],
        client_secret=client["client_secret"],
    )
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"  # revoked with its access token
    after = server.stats()
    assert delta(before, after, "revoke") == 1 and delta(before, after, "revoked_tokens") == 2
    assert delta(before, after, "token", "authorization_code") == 3


def test_forget_clients_makes_the_old_client_invalid(server: LocalOAuthUpstream) -> None:
    client, tokens = raw_login(server)
    assert server.forget_clients() >= 1
    assert server.stats()["clients"] == 0
    refresh = token(
        server,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
        client_id=client["client_id"],
        client_secret=client["client_secret"],
    )
    assert refresh.status_code == 401
    assert refresh.json() == {"error": "invalid_client", "error_description": "Invalid client_id"}
    # A new login with the old client: /authorize answers 400 JSON, no redirect, so no callback ever comes.
    response = authorize(server, client["client_id"], pkce()[1], "s")
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert "location" not in response.headers
    # issued tokens live on until they expire (unless forget_clients(tokens=True))
    assert mcp_initialize(server, tokens["access_token"]).status_code == 200


def test_registration_can_omit_token_endpoint_auth_method(tmp_path: Path, server: LocalOAuthUpstream) -> None:
    normal = register(server)
    assert normal.status_code == 201 and normal.json()["token_endpoint_auth_method"] == "client_secret_post"
    with LocalOAuthUpstream("quirky", tmp_path, auth_method_in_registration=False) as quirky:
        response = register(quirky)
        assert response.status_code == 201
        raw = response.json()  # the raw JSON on the wire
        assert "token_endpoint_auth_method" not in raw
        assert raw["client_secret"] and raw["client_id"]
        # The server still wants the secret (stored as client_secret_post); a client sending none is refused.
        verifier, challenge = pkce()
        code = parse_qs(urlsplit(authorize(quirky, raw["client_id"], challenge, "s").headers["location"]).query)
        form = {
            "grant_type": "authorization_code",
            "code": code["code"][0],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
            "client_id": raw["client_id"],
            "resource": quirky.url,
        }
        refused = token(quirky, **form)
        assert refused.status_code == 401
        assert refused.json() == {"error": "invalid_client", "error_description": "Client secret is required"}
        assert token(quirky, **form, client_secret=raw["client_secret"]).status_code == 200


def test_fake_browser_refuses_non_http_urls(tmp_path: Path) -> None:
    log = tmp_path / "browser.log"
    env = {**os.environ, "FAKE_BROWSER_LOG": str(log)}
    for url in ("file:///etc/passwd", "javascript:alert(1)"):
        done = subprocess.run([sys.executable, str(FAKE_BROWSER), url], env=env, capture_output=True, timeout=15)
        assert done.returncode == 2 and done.stdout == b""
    outcomes = [o["outcome"] for o in browser_opens(log)]
    assert len(outcomes) == 2 and all(o.startswith("refused") for o in outcomes)


def test_browser_value_works_with_pythons_webbrowser(tmp_path: Path, listener: CallbackListener) -> None:
    log = tmp_path / "browser.log"
    env = {**os.environ, "BROWSER": BROWSER, "FAKE_BROWSER_LOG": str(log)}
    opener = "import sys, webbrowser; sys.exit(0 if webbrowser.open(sys.argv[1]) else 1)"
    url = f"{listener.redirect_uri}?code=abc&state=a%20b"
    done = subprocess.run([sys.executable, "-c", opener, url], env=env, capture_output=True, timeout=15)
    assert done.returncode == 0 and done.stdout == b"", done.stderr
    assert listener.received == [{"code": "abc", "state": "a b"}]
    assert [o["url"] for o in browser_opens(log)] == [url]
