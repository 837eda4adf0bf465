"""Where OAuth state lives: secrets in the OS keyring (or, on explicit opt-in, one 0600 file); the rest beside it.

Per server (keyed by its URL):

* **secrets** (keyring service ``mcp-bridge``, user ``oauth:<server url>``): the tokens and the client registration
  (which may hold a ``client_secret``), as one JSON blob;
* **state** (``$MCP_BRIDGE_HOME/oauth/<hash>.json``, mode 0600, no secrets): when the access token expires, the
  discovered protected-resource and authorization-server metadata, the issuer, the loopback callback port the client
  was registered with, and when a browser was last opened for it.

The SDK stores neither the expiry nor the metadata; without them a restarted bridge sends an expired token and falls
back to a full browser login instead of refreshing. :class:`ServerTokenStorage` implements the SDK's ``TokenStorage``
and keeps both.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from mcp_bridge.files import read_json_object, write_private_json
from mcp_bridge.keyring_store import KeyringBackend
from mcp_bridge.logs import get_logger, register_secrets

log = get_logger(__name__)

SECRETS_FILE = "oauth-secrets.json"


class SecretBackend(Protocol):
    def get(self, key: str) -> str | None: ...
    def set(self, key: str, value: str) -> None: ...
    def delete(self, key: str) -> None: ...


class FileBackend:
    """``token_store: file``: every secret in one JSON file, mode 0600. An explicit, weaker opt-in."""

    _lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, str]:
        data = read_json_object(self.path, "OAuth secrets file") or {}
        return {k: v for k, v in data.items() if isinstance(v, str)}

    def get(self, key: str) -> str | None:
        return self._read().get(key)

    def set(self, key: str, value: str) -> None:
        with self._lock:
            data = self._read()
            data[key] = value
            write_private_json(self.path, data)

    def delete(self, key: str) -> None:
        with self._lock:
            data = self._read()
            if data.pop(key, None) is not None:
                write_private_json(self.path, data)


def secret_backend(token_store: str, home: Path) -> SecretBackend:
    if token_store == "file":  # noqa: S105 - the name of a store, not a password
        return FileBackend(home / SECRETS_FILE)
    return KeyringBackend()


def state_path(home: Path, server_url: str) -> Path:
    digest = hashlib.sha256(server_url.encode("utf-8")).hexdigest()[:24]
    return home / "oauth" / f"{digest}.json"


@dataclass
class OAuthState:
    """The non-secret OAuth state of one server (see the module docstring)."""

    server_url: str
    expires_at: float | None = None
    issuer: str | None = None
    protected_resource_metadata: dict[str, Any] | None = None
    oauth_metadata: dict[str, Any] | None = None
    auth_server_url: str | None = None
    redirect_port: int | None = None
    last_browser_open: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ServerTokenStorage:
    """The SDK's ``TokenStorage`` for one server, plus the state the SDK does not keep."""

    def __init__(self, server_url: str, secrets: SecretBackend, home: Path) -> None:
        self.server_url = server_url
        self._secrets = secrets
        self.state_path = state_path(home, server_url)
        self._key = f"oauth:{server_url}"

    # -- secrets

    def _blob(self) -> dict[str, Any]:
        raw = self._secrets.get(self._key)
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            log.warning("oauth.secret_unreadable", server_url=self.server_url)
            return {}
        return data if isinstance(data, dict) else {}

    def _put(self, blob: dict[str, Any]) -> None:
        if blob:
            self._secrets.set(self._key, json.dumps(blob, separators=(",", ":")))
        else:
            self._secrets.delete(self._key)

    async def get_tokens(self) -> OAuthToken | None:
        raw = self._blob().get("tokens")
        if not isinstance(raw, dict):
            return None
        tokens = OAuthToken.model_validate(raw)
        register_secrets([tokens.access_token, tokens.refresh_token or ""])
        return tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        register_secrets([tokens.access_token, tokens.refresh_token or ""])
        blob = self._blob()
        blob["tokens"] = tokens.model_dump(mode="json", exclude_none=True)
        self._put(blob)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        raw = self._blob().get("client_info")
        if not isinstance(raw, dict):
            return None
        info = OAuthClientInformationFull.model_validate(raw)
        if info.client_secret:
            register_secrets([info.client_secret])
        return info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        if client_info.client_secret:
            register_secrets([client_info.client_secret])
        blob = self._blob()
        blob["client_info"] = client_info.model_dump(mode="json", exclude_none=True)
        self._put(blob)

    def clear_tokens(self) -> None:
        blob = self._blob()
        blob.pop("tokens", None)
        self._put(blob)

    def clear_client_info(self) -> None:
        blob = self._blob()
        blob.pop("client_info", None)
        self._put(blob)

    def clear_all(self) -> None:
        self._secrets.delete(self._key)
        self.state_path.unlink(missing_ok=True)

    def has_tokens(self) -> bool:
        return isinstance(self._blob().get("tokens"), dict)

    # -- state

    def load_state(self) -> OAuthState:
        data = read_json_object(self.state_path, "OAuth state")
        if data is None or data.get("server_url") != self.server_url:
            return OAuthState(self.server_url)
        known = set(OAuthState.__dataclass_fields__)
        return OAuthState(**{k: v for k, v in data.items() if k in known})

    def save_state(self, state: OAuthState) -> None:
        write_private_json(self.state_path, state.__dict__)
