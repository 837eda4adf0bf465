"""The errors mcp-bridge raises on purpose.

Every error a user can meet is a ``BridgeError``; the CLI maps them to exit codes (and nothing else does)::

    BridgeError                 base; exit code 1 unless a subclass says otherwise
    ├── ConfigError             the config file or the environment it names is wrong (exit 2)
    ├── PolicyDenied            the allowlist or the user's ``disabled_tools`` does not allow this name
    │   └── NeedsConnection     its server needs a connection first (``<server>__connect``)
    ├── UnknownName             no exposed tool, prompt or resource has this name (or, for a resource, several)
    ├── AuditUnavailable        the audit spool cannot record events (damaged, disk full): calls are denied
    └── UpstreamError           something went wrong talking to one remote server (carries ``server``)
        ├── UpstreamUnavailable not connected (connecting, reconnecting, or failed); the call never left
        ├── UpstreamTimeout     the server accepted the call but did not answer in ``timeouts.call``
        └── AuthRequired        the server needs a login before it can be used

Messages name what the user needs (which file and key, which server) and never carry a secret: upstream
messages are cleaned by :func:`mcp_bridge.redact.clean` before they get here.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error mcp-bridge raises on purpose."""

    exit_code = 1


class ConfigError(BridgeError):
    """The configuration is invalid: the message names the file, the key path and the reason; ``fix``, when the
    remedy is more than editing that key, says what to do (``doctor`` shows it)."""

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix


class PolicyDenied(BridgeError):
    """A name exists upstream but the allowlist (or the user's ``disabled_tools``) does not allow it."""

    def __init__(self, name: str, reason: str, *, server: str | None = None, tool: str | None = None) -> None:
        super().__init__(f"{name!r} is not allowed: {reason}")
        self.name = name
        self.reason = reason
        self.server = server  # the upstream and its original tool name, when the name routes to one
        self.tool = tool


class NeedsConnection(PolicyDenied):
    """A tool of a server that needs a connection (a login) first: the message names its ``<server>__connect``."""

    def __init__(self, name: str, reason: str, *, server: str | None = None, tool: str | None = None) -> None:
        super().__init__(name, reason, server=server, tool=tool)
        self.args = (f"{name!r} is not available yet: {reason}",)


class UnknownName(BridgeError):
    """No exposed tool, prompt or resource is known by this name."""

    def __init__(self, kind: str, name: str, message: str | None = None) -> None:
        super().__init__(message or f"unknown {kind} {name!r}")
        self.kind = kind
        self.name = name


class AuditUnavailable(BridgeError):
    """The audit spool cannot record an event: no call may go unaudited, so calls are denied until it can.

    The message names the file, what is wrong and the fix (``mcp-bridge audit reset`` for a damaged file, free
    space for a full disk)."""

    def __init__(self, message: str, *, path: str, reason: str, damaged: bool) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason
        """What is wrong, in a few words (SQLite's or the operating system's)."""
        self.damaged = damaged
        """The file itself is damaged (``audit reset`` is the fix), rather than unwritable for now."""


class UpstreamError(BridgeError):
    """A failure talking to one upstream server."""

    def __init__(self, server: str, message: str) -> None:
        super().__init__(f"server {server!r}: {message}")
        self.server = server


class UpstreamUnavailable(UpstreamError):
    """The server is not connected; the request was not sent."""


class UpstreamTimeout(UpstreamError):
    """The server did not answer in time; the request may have had effects."""


class AuthRequired(UpstreamError):
    """The server needs a login (``mcp-bridge login SERVER``)."""
