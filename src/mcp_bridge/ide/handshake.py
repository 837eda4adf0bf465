"""``initialize``, answered before the SDK is imported.

Importing the MCP SDK takes about a second on a small machine, and the IDE waits for the ``initialize`` answer before it
does anything else. So ``serve`` reads the IDE's first line itself, with little more than the standard library loaded,
and when it is a well-formed ``initialize`` request it writes the answer at once, built here by hand; only then does it
import the SDK. The SDK's server is later fed that same request first, so its session is initialized exactly as it
always is, and its own answer to it is dropped by id (:func:`mcp_bridge.ide.front.serve_stdio`). Anything else on the
first line (another method, a notification, a batch, a line that is not JSON, or an ``initialize`` whose shape is in any
doubt) reaches the SDK unchanged and is answered as before.

The hand-built result must be what the SDK-based front sends for the same request: the protocol versions below are
the SDK's handshake versions, the capabilities are the ones the front's server declares, and ``serverInfo`` and the
instructions are the front's. ``tests/test_handshake.py`` holds both paths to each other, and the front logs a
warning should the answer it drops ever differ from the one sent.

Set ``MCP_BRIDGE_EARLY_INITIALIZE=0`` to turn this off: the SDK then reads and answers the first line itself.

Imports only the standard library and :mod:`mcp_bridge.logs` (already loaded by the CLI).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from mcp_bridge import __version__
from mcp_bridge.logs import get_logger

log = get_logger(__name__)

ENV_SWITCH = "MCP_BRIDGE_EARLY_INITIALIZE"
SERVER_NAME = "mcp-bridge"

HANDSHAKE_PROTOCOL_VERSIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
"""The SDK's ``mcp_types.version.HANDSHAKE_PROTOCOL_VERSIONS``, oldest first (a test keeps them equal)."""

LATEST_HANDSHAKE_VERSION = HANDSHAKE_PROTOCOL_VERSIONS[-1]

CAPABILITIES: Mapping[str, Any] = {
    "prompts": {"listChanged": True},
    "resources": {"listChanged": True, "subscribe": False},
    "tools": {"listChanged": True},
}
"""What the front's server declares: its list, call, prompt and resource handlers, with every ``listChanged``."""

_CHUNK = 1 << 16
_REQUEST_KEYS = frozenset({"jsonrpc", "id", "method", "params"})
_CAPABILITY_OBJECTS = ("experimental", "sampling", "elicitation", "roots", "extensions", "tasks")
_OPTIONAL_INFO_STRINGS = ("title", "description", "websiteUrl")


@dataclass(frozen=True)
class EarlyStart:
    """What ``serve`` read from stdin before the SDK was loaded, and what it answered."""

    consumed: bytes = b""
    """Bytes already taken from stdin (the first line and whatever came with it): the SDK's reader gets them first."""
    request_id: int | str | None = None
    """The id of the ``initialize`` request answered early (``None``: nothing was answered)."""
    result: Mapping[str, Any] | None = None
    """The result sent for it."""
    client_name: str | None = None
    """``clientInfo.name`` of the ``initialize`` answered early."""
    lists: tuple[int | str, ...] = ()
    """The ids of ``tools/list`` requests answered from the warm cache (:mod:`mcp_bridge.ide.warmstart`); their lines
    are not in :attr:`consumed`: the SDK never sees them."""
    tools_digest: str | None = None
    """:func:`mcp_bridge.ide.warmstart.tools_digest` of the tools those answers listed."""
    ended: bool = False
    """stdin ended while answering early, and every line read had been answered or was a notification: there is
    nothing left to serve."""

    @property
    def answered(self) -> bool:
        return self.result is not None


def negotiate(requested: str) -> str:
    """The protocol version the SDK agrees to: the client's when it is a handshake version, else the latest."""
    return requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION


def initialize_result(requested_version: str, instructions: str) -> dict[str, Any]:
    """The ``initialize`` result the front sends, as it appears on the wire (camelCase, in the SDK's key order)."""
    return {
        "capabilities": json.loads(json.dumps(CAPABILITIES)),  # a fresh copy: callers may keep or change it
        "instructions": instructions,
        "protocolVersion": negotiate(requested_version),
        "serverInfo": {"name": SERVER_NAME, "version": __version__},
    }


def parse_initialize(line: bytes) -> tuple[int | str, str] | None:
    """``(id, requested protocol version)`` when ``line`` is an ``initialize`` request the SDK certainly accepts;
    ``None`` for anything else, which then takes the ordinary path.

    The checks are a strict subset of the SDK's validation: an id that is an integer (not a boolean or a float) or a
    string, no keys beside the four of a request, and params with the types ``InitializeRequestParams`` requires.
    """
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or not message.keys() <= _REQUEST_KEYS:
        return None
    if message.get("jsonrpc") != "2.0" or message.get("method") != "initialize":
        return None
    request_id = message.get("id")
    if not request_id_ok(request_id):
        return None
    params = message.get("params")
    if not isinstance(params, dict):
        return None
    version, capabilities, info = params.get("protocolVersion"), params.get("capabilities"), params.get("clientInfo")
    if not (isinstance(version, str) and isinstance(capabilities, dict) and isinstance(info, dict)):
        return None
    if not isinstance(params.get("_meta", {}), dict):
        return None
    if not all(isinstance(capabilities.get(key), dict | None) for key in _CAPABILITY_OBJECTS):
        return None
    if not all(isinstance(v, dict) for v in (capabilities.get("experimental") or {}).values()):
        return None
    if not (isinstance(info.get("name"), str) and isinstance(info.get("version"), str)):
        return None
    if not all(isinstance(info.get(key), str | None) for key in _OPTIONAL_INFO_STRINGS):
        return None
    if not isinstance(info.get("icons", []), list):
        return None
    return request_id, version


def request_id_ok(request_id: object) -> TypeGuard[int | str]:
    """An id the SDK takes as it is: an integer (not a boolean or a float) or a string."""
    return not isinstance(request_id, bool) and isinstance(request_id, int | str)


def answer_initialize(instructions: str, *, stdin_fd: int = 0, stdout_fd: int = 1) -> EarlyStart:
    """Read the IDE's first line; when it is ``initialize``, answer it on ``stdout_fd`` at once.

    Blocks until the first line (or end of input) arrives. Whatever was read is handed back in
    :attr:`EarlyStart.consumed` for the SDK's reader, answered or not.
    """
    if os.environ.get(ENV_SWITCH) == "0":
        return EarlyStart()
    log.debug("serve.awaiting_first_message")
    consumed = _read_first_line(stdin_fd)
    line, newline, _ = consumed.partition(b"\n")
    parsed = parse_initialize(line) if newline else None
    if parsed is None:
        return EarlyStart(consumed=consumed)
    request_id, requested = parsed
    result = initialize_result(requested, instructions)
    frame = {"jsonrpc": "2.0", "id": request_id, "result": result}
    data = (json.dumps(frame, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    try:
        write_all(stdout_fd, data)
    except OSError as exc:  # the IDE is gone or stdout is unusable: let the ordinary path meet the same fate
        log.warning("serve.early_initialize_failed", error=f"{type(exc).__name__}: {exc}")
        return EarlyStart(consumed=consumed)
    log.debug("serve.initialize_answered_early", protocol_version=result["protocolVersion"])
    client_name = json.loads(line)["params"]["clientInfo"]["name"]  # a string: parse_initialize checked it
    return EarlyStart(consumed=consumed, request_id=request_id, result=result, client_name=client_name)


def _read_first_line(fd: int) -> bytes:
    """Everything read up to and including the chunk that completes the first line (or up to end of input)."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:  # stdin came non-blocking: leave the waiting to the ordinary (event-loop) reader
            break
        except OSError as exc:  # e.g. no stdin at all: the ordinary path reports it as it always did
            log.debug("serve.early_read_failed", error=f"{type(exc).__name__}: {exc}")
            break
        if not chunk:
            break
        chunks.append(chunk)
        if b"\n" in chunk:
            break
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:  # stdout came non-blocking and the pipe is full: wait, then write the rest
            _wait_writable(fd)
            continue
        view = view[written:]


def _wait_writable(fd: int) -> None:
    if sys.platform == "win32":  # select() takes only sockets there; a short sleep is enough for a rare case
        import time

        time.sleep(0.001)
        return
    import select

    select.select([], [fd], [])
