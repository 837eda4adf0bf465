"""Port's REST API: one client for the allowlist source and the audit shipper.

Token: ``POST /v1/auth/access_token`` with the configured client credentials, reused until shortly before it
expires and renewed once on a 401. A 429 waits as ``x-ratelimit-reset`` says (seconds until the window resets),
5xx and network errors back off exponentially; both give up after a bounded number of attempts. Port's error body
(``{"ok": false, "error", "message"}``) is surfaced in :class:`PortError`, never a credential.
"""

from __future__ import annotations

import random
import time
from typing import Any

import anyio
import httpx2

from mcp_bridge import __version__
from mcp_bridge.config import PortConfig
from mcp_bridge.errors import BridgeError
from mcp_bridge.logs import clean, get_logger

log = get_logger(__name__)

_RENEW_MARGIN = 0.1
"""Renew the token when less than this share of its lifetime (and at most 5 minutes) is left."""
_MAX_ATTEMPTS = 4
_MAX_RATE_LIMIT_WAIT = 60.0
_PAGE_SIZE = 200
_MAX_PAGES = 500


class PortError(BridgeError):
    """Port answered with an error (or could not be reached); the message is Port's own, cleaned."""

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None) -> None:
        super().__init__(clean(message))
        self.status = status
        self.error = error


class PortUnavailable(PortError):
    """Port could not be reached, or kept failing (5xx, 429) after the retries."""


class PortClient:
    """An authenticated session with Port. Use as an async context manager (it owns its HTTP client)."""

    def __init__(self, config: PortConfig, *, transport: httpx2.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._transport = transport
        self._http: httpx2.AsyncClient | None = None
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = anyio.Lock()

    async def __aenter__(self) -> PortClient:
        timeout = httpx2.Timeout(self.config.timeout)
        self._http = httpx2.AsyncClient(
            base_url=self.config.api_url,
            timeout=timeout,
            transport=self._transport,
            headers={"user-agent": f"mcp-bridge/{__version__}"},
        )
        await self._http.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------------ token

    async def _access_token(self, *, renew: bool = False, stale: str | None = None) -> str:
        async with self._token_lock:
            if renew and self._token is not None and self._token != stale:
                return self._token  # someone else renewed it while we waited
            if not renew and self._token is not None and time.monotonic() < self._token_expires:
                return self._token
            body = {"clientId": self.config.client_id, "clientSecret": self.config.client_secret}
            response = await self._send("POST", "/v1/auth/access_token", json=body, authenticated=False)
            data = _json(response)
            token, expires_in = data.get("accessToken"), data.get("expiresIn")
            if not isinstance(token, str) or not isinstance(expires_in, int | float):
                raise PortError("Port's token response has no accessToken/expiresIn", status=response.status_code)
            margin = min(300.0, expires_in * _RENEW_MARGIN)
            self._token, self._token_expires = token, time.monotonic() + expires_in - margin
            log.debug("port.token_renewed", expires_in=expires_in)
            return token

    async def bearer(self, renew: bool = False) -> str:
        """The access token, for Port's MCP server (``port_token``): ``renew`` after it was refused."""
        if not renew:
            return await self._access_token()
        return await self._access_token(renew=True, stale=self._token)

    # ------------------------------------------------------------------ requests

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        """An authenticated request; renews the token once on a 401. Raises :class:`PortError` on failure."""
        token = await self._access_token()
        response = await self._send(method, path, token=token, **kwargs)
        if response.status_code == 401:
            log.info("port.token_rejected", path=path)
            token = await self._access_token(renew=True, stale=token)
            response = await self._send(method, path, token=token, **kwargs)
        if response.status_code >= 400:
            raise _error(response)
        return response

    async def _send(
        self, method: str, path: str, *, token: str | None = None, authenticated: bool = True, **kwargs: Any
    ) -> httpx2.Response:
        """One logical request with retries for 429, 5xx and network errors. 4xx other than 429 are returned."""
        assert self._http is not None, "PortClient must be used as an async context manager"
        headers = {"authorization": f"Bearer {token}"} if authenticated and token else {}
        delay = 0.5
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                response = await self._http.request(method, path, headers=headers, **kwargs)
            except httpx2.TransportError as exc:
                # Nothing listening: one quick retry, then report (the refresh loop keeps trying, and a caller
                # should fall back to the cache rather than wait).
                refused = isinstance(exc, httpx2.ConnectError)
                if attempt == _MAX_ATTEMPTS or (refused and attempt >= 2):
                    raise PortUnavailable(
                        f"Port is unreachable ({self.config.api_url}): {type(exc).__name__}"
                    ) from None
                wait = delay
            else:
                if response.status_code == 429:
                    wait = _rate_limit_wait(response, delay)
                    if attempt == _MAX_ATTEMPTS or wait > _MAX_RATE_LIMIT_WAIT:
                        raise _error(response, cls=PortUnavailable)
                elif response.status_code >= 500:
                    if attempt == _MAX_ATTEMPTS:
                        raise _error(response, cls=PortUnavailable)
                    wait = delay
                else:
                    if response.status_code >= 400 and not authenticated:
                        raise _error(response)
                    return response
            log.info("port.retry", path=path, attempt=attempt, wait=round(wait, 2))
            await anyio.sleep(wait)
            delay = min(delay * 2, 8.0) * (0.75 + random.random() / 2)  # noqa: S311 - jitter
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ endpoints

    async def search_entities(self, blueprint: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        """Every entity of ``blueprint`` matching ``query`` that these credentials may read (follows ``next``)."""
        entities: list[dict[str, Any]] = []
        body: dict[str, Any] = {"query": query, "limit": _PAGE_SIZE}
        for _ in range(_MAX_PAGES):
            data = _json(await self.request("POST", f"/v1/blueprints/{blueprint}/entities/search", json=body))
            page = data.get("entities")
            if not isinstance(page, list):
                raise PortError("Port's search response has no entities list")
            entities.extend(e for e in page if isinstance(e, dict))
            cursor = data.get("next")
            if not cursor:
                return entities
            body = {**body, "from": cursor}
        raise PortError(f"Port's search of {blueprint!r} did not end after {_MAX_PAGES} pages")

    async def bulk_upsert(self, blueprint: str, entities: list[dict[str, Any]]) -> httpx2.Response:
        """``POST .../entities/bulk?upsert=true&merge=true``; the caller reads 200/207 ``entities`` and ``errors``."""
        return await self.request(
            "POST",
            f"/v1/blueprints/{blueprint}/entities/bulk",
            params={"upsert": "true", "merge": "true"},
            json={"entities": entities},
        )


def _rate_limit_wait(response: httpx2.Response, fallback: float) -> float:
    """Seconds to wait before retrying a 429: ``x-ratelimit-reset`` (seconds until the window resets), or backoff."""
    raw = response.headers.get("x-ratelimit-reset") or response.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else fallback
    except ValueError:
        return fallback


def _json(response: httpx2.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise PortError(f"Port answered HTTP {response.status_code} with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise PortError(f"Port answered HTTP {response.status_code} with unexpected JSON")
    return data


def _error(response: httpx2.Response, cls: type[PortError] = PortError) -> PortError:
    status = response.status_code
    try:
        data = response.json()
    except ValueError:
        data = {}
    error = data.get("error") if isinstance(data, dict) else None
    message = data.get("message") if isinstance(data, dict) else None
    text = f"Port answered HTTP {status}"
    if error:
        text += f" {error}"
    if message:
        text += f": {message}"
    if status == 401:
        text += " (check port.client_id / port.client_secret)"
    return cls(text, status=status, error=error if isinstance(error, str) else None)
