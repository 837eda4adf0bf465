"""OAuth test plumbing: the OAuth-protected local upstream as a subprocess, the fake browser, a loopback callback
listener and an in-memory token store for the SDK's ``OAuthClientProvider``.

To make a program under test "open the browser" into the fake one, give it ``browser_env(log_path)``: ``$BROWSER`` is
``BROWSER`` below (``"<python> <abs>/tests/fake_browser.py %s"``) and ``$FAKE_BROWSER_LOG`` gets one JSON line per
browser open (``browser_opens(log_path)`` reads them back).
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthToken

from harness import LocalUpstream

FAKE_BROWSER = Path(__file__).with_name("fake_browser.py").resolve()
BROWSER = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_BROWSER))} %s"
"""The value for ``$BROWSER``: ``webbrowser`` shlex-splits it and replaces ``%s`` with the URL (no shell)."""


def browser_env(log_path: Path) -> dict[str, str]:
    return {"BROWSER": BROWSER, "FAKE_BROWSER_LOG": str(log_path)}


def browser_opens(log_path: Path) -> list[dict[str, Any]]:
    """One record per fake-browser invocation: ``{"url", "outcome", "hops"}``."""
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]


class LocalOAuthUpstream(LocalUpstream):
    """``python -m mcp_bridge.sandbox.localservers --oauth`` as a subprocess: authorization server and ``/mcp`` on one
    port.

    Its state (clients, tokens, counters) is in memory: ``restart()`` forgets everything.
    """

    def __init__(
        self,
        name: str,
        log_dir: Path,
        *,
        token_lifetime: int = 3600,
        auth_method_in_registration: bool = True,
        rotate_refresh_tokens: bool = True,
        port: int = 0,
    ) -> None:
        super().__init__(name, log_dir, port=port)
        self.token_lifetime = token_lifetime
        self.auth_method_in_registration = auth_method_in_registration
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.log_path = log_dir / f"oauth-upstream-{name}.log"

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.issuer}/mcp"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "mcp_bridge.sandbox.localservers", "--oauth", "--port", str(self.port)]
        cmd += ["--name", self.name, "--token-lifetime", str(self.token_lifetime)]
        if not self.auth_method_in_registration:
            cmd.append("--no-auth-method-in-registration")
        if not self.rotate_refresh_tokens:
            cmd.append("--no-refresh-rotation")
        return cmd

    def _request(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{self.issuer}{path}", method=method)  # noqa: S310 (http://127.0.0.1 only)
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        """``GET /_test/stats``: authorize/register/revoke/mcp counts, ``token`` by grant type, ``token_errors``..."""
        result: dict[str, Any] = self._request("GET", "/_test/stats")
        return result

    def forget_clients(self, *, tokens: bool = False) -> int:
        """``POST /_test/forget_clients``: the server drops every registered client (and its tokens if asked)."""
        return int(self._request("POST", "/_test/forget_clients" + ("?tokens=1" if tokens else ""))["forgotten"])


class MemoryTokenStorage:
    """The SDK's ``TokenStorage`` protocol, in memory (what a client keeps between runs)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class CallbackListener:
    """A loopback HTTP listener standing in for a client's redirect URI (``redirect_uri``); records every hit."""

    def __init__(self, path: str = "/callback") -> None:
        self.path = path
        self.hits: queue.Queue[dict[str, str]] = queue.Queue()
        self.received: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != outer.path:
                    self.send_error(404)
                    return
                params = {k: v[0] for k, v in parse_qs(parts.query).items()}
                outer.received.append(params)
                outer.hits.put(params)
                body = b"Signed in. You can close this window."
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def __enter__(self) -> CallbackListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    async def wait(self, timeout: float = 15.0) -> AuthorizationCodeResult:
        """The next callback's code and state (an SDK ``callback_handler``); ``TimeoutError`` if none comes."""
        try:
            params = await anyio.to_thread.run_sync(lambda: self.hits.get(timeout=timeout), abandon_on_cancel=True)
        except queue.Empty:
            raise TimeoutError(f"no OAuth callback within {timeout}s") from None
        if "code" not in params:
            raise RuntimeError(f"OAuth callback without a code: {params}")
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))


def fake_browser_opener(log_path: Path) -> Callable[[str], Awaitable[None]]:
    """An SDK ``redirect_handler``: runs tests/fake_browser.py on the URL (logging to ``log_path``)."""

    async def open_url(url: str) -> None:
        env = {**os.environ, "FAKE_BROWSER_LOG": str(log_path)}
        await anyio.run_process([sys.executable, str(FAKE_BROWSER), url], env=env, check=False)

    return open_url


@asynccontextmanager
async def sdk_oauth_client(
    url: str,
    storage: MemoryTokenStorage,
    listener: CallbackListener,
    browser_log: Path,
    *,
    callback_timeout: float = 15.0,
    **metadata: Any,
) -> AsyncIterator[Any]:
    """``mcp.Client`` (handshake era) over streamable HTTP, authenticated by the SDK's ``OAuthClientProvider``.

    ``metadata`` overrides fields of the ``OAuthClientMetadata`` it registers with (such as
    ``token_endpoint_auth_method``). Yields ``(client, provider)``.
    """
    import httpx2
    from mcp import Client
    from mcp.client.auth import OAuthClientProvider
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.auth import OAuthClientMetadata

    client_metadata = OAuthClientMetadata.model_validate(
        {
            "client_name": "pytest-oauth",
            "redirect_uris": [listener.redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            **metadata,
        }
    )
    provider = OAuthClientProvider(
        url,
        client_metadata,
        storage,
        redirect_handler=fake_browser_opener(browser_log),
        callback_handler=lambda: listener.wait(callback_timeout),
    )
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy", read_timeout_seconds=30) as client,
    ):
        yield client, provider
