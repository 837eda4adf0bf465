"""The JSON-RPC errors the bridge and the SDK raise for themselves, told apart from a server's answers.

Some of them carry codes a server may answer with too: ``-32000`` (the SDK's "connection closed") is the code many
servers give any failure, ``-32001`` the SDK's timeout, and the bridge's own ``NOT_SENT`` (``-32099``, the request
never left this machine: it is sent again) and ``HTTP_ERROR`` (``-32098``) lie in the range JSON-RPC leaves to
servers. Taken by its code alone, a server's ``-32099`` would have its call run twice, and its ``-32000`` would read
as a lost connection (the session dropped, the server's own message lost). So the errors the bridge writes itself
carry this process's own token in their ``data`` (:func:`local_error`, :func:`local_data`), which no server can
know; the SDK's own (a closed connection, a timeout) are known by their exact shape: the code, no ``data``, and the
SDK's message. :func:`ours` tells them apart.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

MARK = "mcpBridgeLocal"
_TOKEN = secrets.token_hex(8)
_SDK_MESSAGES = {
    types.CONNECTION_CLOSED: re.compile(r"Connection closed|SSE stream (failed: .*|ended .*)", re.DOTALL),
    types.REQUEST_TIMEOUT: re.compile(r"Request '[^']*' timed out|Timed out after .* waiting for '[^']*'", re.DOTALL),
}
"""The messages ``mcp`` 2.3 gives the errors it raises for itself: a closed connection (its dispatchers, and its
streamable-HTTP client for a request whose answer can no longer come: "SSE stream failed: ...", "SSE stream ended
..."), a timeout (its dispatchers). A server that answers with one of these word for word is taken for a lost
connection or a timeout: the call is not sent again either way."""


def local_data(data: dict[str, Any] | None = None) -> dict[str, Any]:
    """``data`` for an error the bridge writes itself: marked as this process's."""
    return {**(data or {}), MARK: _TOKEN}


def local_error(code: int, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-RPC ``error`` object the bridge writes itself (into the SDK's stream, as if the server had said it)."""
    return {"code": code, "message": message, "data": local_data(data)}


def ours(exc: MCPError, code: int) -> bool:
    """Whether ``exc`` is error ``code`` as the bridge or the SDK raised it for itself, not a server's answer."""
    error = exc.error
    if error.code != code:
        return False
    data = error.data
    if isinstance(data, dict) and data.get(MARK) == _TOKEN:
        return True
    pattern = _SDK_MESSAGES.get(code)
    return data is None and pattern is not None and pattern.fullmatch(error.message) is not None
