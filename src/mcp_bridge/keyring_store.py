"""The OS keyring, and the named secrets a config references as ``${keyring:NAME}``.

The keyring is where the bridge keeps what must not sit in a file: OAuth tokens (:mod:`mcp_bridge.auth.store`) and
the secrets a user stores with ``mcp-bridge secret set NAME``. Those are for the IDEs that do not pass a shell's
environment on (Claude Desktop and Cursor started from the Dock or the Start menu): a config can say
``value: "Bearer ${keyring:DOCS_TOKEN}"`` instead of ``${env:DOCS_TOKEN}``.

A named secret lives in the keyring under service ``mcp-bridge``, user ``secret:<NAME>``. A keyring cannot list what
it holds, so the names (never the values) and when each was set are also kept in ``$MCP_BRIDGE_HOME/secrets.json``
(0600), for ``mcp-bridge secret list``. Storing one needs no config file: a secret is stored before a config refers
to it.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

from mcp_bridge.errors import ConfigError
from mcp_bridge.files import read_json_object, write_private_json

KEYRING_SERVICE = "mcp-bridge"
INDEX_FILE = "secrets.json"
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""What a secret may be called: an environment variable's alphabet, so one moves to the other unchanged."""

_OPTIONS = (
    "run a Secret Service (e.g. gnome-keyring) or use macOS Keychain / Windows Credential Locker; or set "
    "PYTHON_KEYRING_BACKEND to a backend you trust"
)


class KeyringUnavailable(ConfigError):
    """No usable keyring backend; the message names the ways out."""


class KeyringBackend:
    """The OS keyring through ``keyring`` (Keychain, Credential Locker, Secret Service, or $PYTHON_KEYRING_BACKEND).

    ``purpose`` and ``fallback`` shape the error when there is none: what was to be stored, and the other way out."""

    def __init__(
        self,
        purpose: str = "OAuth tokens",
        fallback: str = "set `token_store: file` in the config (one plaintext file, mode 0600: weaker)",
    ) -> None:
        import keyring
        import keyring.backends.fail

        backend = keyring.get_keyring()
        if isinstance(backend, keyring.backends.fail.Keyring) or getattr(backend, "priority", 1) <= 0:
            raise KeyringUnavailable(
                f"no usable keyring backend to store {purpose} in (typical on headless Linux and CI). "
                f"Options: {_OPTIONS}; or {fallback}"
            )
        self._keyring = keyring

    @property
    def name(self) -> str:
        """The backend in use, e.g. ``keyring.backends.macOS.Keyring``."""
        backend = type(self._keyring.get_keyring())
        return f"{backend.__module__}.{backend.__name__}"

    def get(self, key: str) -> str | None:
        value = self._keyring.get_password(KEYRING_SERVICE, key)
        return value if isinstance(value, str) else None

    def set(self, key: str, value: str) -> None:
        self._keyring.set_password(KEYRING_SERVICE, key, value)

    def delete(self, key: str) -> None:
        import keyring.errors

        with contextlib.suppress(keyring.errors.PasswordDeleteError):  # nothing stored: already what we want
            self._keyring.delete_password(KEYRING_SERVICE, key)


class NamedSecrets:
    """The secrets stored with ``mcp-bridge secret``: values in the keyring, names in ``secrets.json``."""

    def __init__(self, home: Path, backend: KeyringBackend | None = None) -> None:
        self.index = home / INDEX_FILE
        self._backend = backend

    @property
    def backend(self) -> KeyringBackend:
        if self._backend is None:
            self._backend = KeyringBackend(
                "secrets", "keep the value in the environment the IDE is started with and write ${env:NAME}"
            )
        return self._backend

    @staticmethod
    def check_name(name: str) -> str:
        if not SECRET_NAME.fullmatch(name):
            raise ConfigError(f"{name!r} is not a secret name: use letters, digits and '_', not starting with a digit")
        return name

    def get(self, name: str) -> str | None:
        return self.backend.get(f"secret:{self.check_name(name)}")

    def set(self, name: str, value: str) -> None:
        self.backend.set(f"secret:{self.check_name(name)}", value)
        names = self.names()
        names[name] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_private_json(self.index, {"names": names})

    def delete(self, name: str) -> bool:
        """Forget a secret; whether there was one (in the keyring or the index)."""
        key = f"secret:{self.check_name(name)}"
        had = self.backend.get(key) is not None
        self.backend.delete(key)
        names = self.names()
        if names.pop(name, None) is not None:
            had = True
            write_private_json(self.index, {"names": names})
        return had

    def names(self) -> dict[str, str]:
        """Name → when it was set (UTC), as far as the index knows (the keyring cannot be listed)."""
        data = read_json_object(self.index, "secret names") or {}
        names = data.get("names")
        return {k: v for k, v in names.items() if isinstance(v, str)} if isinstance(names, dict) else {}
