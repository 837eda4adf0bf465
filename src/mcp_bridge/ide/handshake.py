"""``initialize`` (or ``server/discover``), answered before the SDK is imported.

Importing the MCP SDK takes about a second on a small machine, and the IDE waits for the ``initialize`` answer before it
does anything else. So ``serve`` reads the IDE's first line itself, with little more than the standard library loaded,
and when it is a well-formed ``initialize`` request it writes the answer at once, built here by hand; only then does it
import the SDK. The SDK's server is later fed that same request first, so its session is initialized exactly as it
always is, and its own answer to it is dropped by id (:func:`mcp_bridge.ide.connection.serve_stdio`). Anything else
on the first line (another method, a notification, a batch, a line that is not JSON, or an ``initialize`` whose shape
is in any doubt) reaches the SDK unchanged and is answered as before.

The hand-built result must be what the SDK-based front sends for the same request: the protocol versions below are
the SDK's handshake versions, the capabilities are the ones the front's server declares, and ``serverInfo`` and the
instructions are the front's. ``tests/test_handshake.py`` holds both paths to each other, and the front logs a
warning should the answer it drops ever differ from the one sent.

An IDE of the 2026-07-28 era opens with ``server/discover`` instead (the SDK client's default, ``auto``): that probe is
answered early the same way, when its ``_meta`` envelope is one the SDK certainly accepts at a version the bridge
serves; the SDK is fed it too (it is what makes the SDK serve the connection in that era) and its answer is dropped.

Set ``MCP_BRIDGE_EARLY_INITIALIZE=0`` to turn this off: the SDK then reads and answers the first line itself.

Imports only the standard library and :mod:`mcp_bridge.logs` (already loaded by the CLI).
"""

from __future__ import annotations

import json
import os
import sys
import time
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
    "completions": {},
    "logging": {},
    "prompts": {"listChanged": True},
    "resources": {"listChanged": True, "subscribe": True},
    "tools": {"listChanged": True},
}
"""What the front's server declares: its list, call, prompt, resource and completion handlers, with every
``listChanged``."""

MODERN_VERSIONS: tuple[str, ...] = ("2026-07-28",)
"""The SDK's ``mcp_types.version.MODERN_PROTOCOL_VERSIONS`` (a test keeps them equal)."""

MODERN_CAPABILITIES: Mapping[str, Any] = {
    "completions": {},
    "logging": {},
    "prompts": {"listChanged": True},
    "resources": {"listChanged": True, "subscribe": True},
    "tools": {"listChanged": True},
}
"""What the front's ``server/discover`` declares (list changes and resource updates on ``subscriptions/listen``)."""

ENVELOPE = "io.modelcontextprotocol/"
_LOG_LEVELS = frozenset({"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"})

_CHUNK = 1 << 16
_REQUEST_KEYS = frozenset({"jsonrpc", "id", "method", "params"})
_CAPABILITY_OBJECTS = ("experimental", "sampling", "elicitation", "roots", "extensions", "tasks")
_OPTIONAL_INFO_STRINGS = ("title", "description", "websiteUrl")


@dataclass(frozen=True)
class Answered:
    """A request answered before the SDK (and telemetry) was loaded: what its span needs once telemetry is up."""

    method: str
    request_id: int | str
    start_ns: int
    """When its line had been read (wall clock, ns since the epoch)."""
    end_ns: int
    """When its answer had been written."""
    trace: Mapping[str, str] | None = None
    """The W3C trace context (``traceparent``, ``tracestate``) of the request's ``_meta``, when it had one."""


def trace_context(line: bytes) -> dict[str, str] | None:
    """``traceparent`` and ``tracestate`` from a request line's ``params._meta`` (only when the line names one)."""
    if b"traceparent" not in line:
        return None
    message = _request(line)
    params = message.get("params") if message is not None else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        return None
    found = {k: v for k in ("traceparent", "tracestate") if isinstance(v := meta.get(k), str)}
    return found or None


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
    client_capabilities: dict[str, Any] | None = None
    """The capabilities the IDE declared in its first request (``initialize``, or a 2026-07-28 envelope), when the
    first line told them: the servers are offered those input capabilities from their first session on."""
    lists: tuple[int | str, ...] = ()
    """The ids of ``tools/list`` requests answered from the warm cache (:mod:`mcp_bridge.ide.warmstart`); their lines
    are not in :attr:`consumed`: the SDK never sees them."""
    tools_digest: str | None = None
    """:func:`mcp_bridge.ide.warmstart.tools_digest` of the tools those answers listed."""
    version: str | None = None
    """The protocol version of the connection, when the first line told it (``initialize`` answered early: the one
    agreed; a 2026-07-28 request: its envelope's)."""
    ended: bool = False
    """stdin ended while answering early, and every line read had been answered or was a notification: there is
    nothing left to serve."""
    answers: tuple[Answered, ...] = ()
    """Each request answered early (the ``initialize`` or ``server/discover``, the lists), with its times: their
    spans are made once telemetry is up (:meth:`mcp_bridge.telemetry.Hooks.answered_early`)."""
    first_read_ns: int = 0
    """When the first line had been read (wall clock, ns; 0: nothing read here)."""

    @property
    def answered(self) -> bool:
        return self.result is not None

    @property
    def modern(self) -> bool:
        return self.version in MODERN_VERSIONS


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


def discover_result(instructions: str) -> dict[str, Any]:
    """The ``server/discover`` result the front sends, as on the wire (the SDK's key order)."""
    return {
        "cacheScope": "private",
        "capabilities": json.loads(json.dumps(MODERN_CAPABILITIES)),
        "instructions": instructions,
        "resultType": "complete",
        "supportedVersions": list(MODERN_VERSIONS),
        "ttlMs": 0,
        "_meta": {ENVELOPE + "serverInfo": {"name": SERVER_NAME, "version": __version__}},
    }


def modern_envelope(params: object) -> tuple[str, str | None] | None:
    """``(protocol version, client name or None)`` when ``params._meta`` is a 2026-07-28 envelope the SDK certainly
    accepts at a version the bridge serves; ``None`` for anything else (no envelope, a malformed one, another
    version: the SDK answers those itself)."""
    if not isinstance(params, dict):
        return None
    meta = params.get("_meta")
    if not isinstance(meta, dict):
        return None
    version, capabilities = meta.get(ENVELOPE + "protocolVersion"), meta.get(ENVELOPE + "clientCapabilities")
    if version not in MODERN_VERSIONS or not isinstance(capabilities, dict) or not _capabilities_ok(capabilities):
        return None
    info = meta.get(ENVELOPE + "clientInfo")
    if info is not None and not _client_info_ok(info):
        return None
    level = meta.get(ENVELOPE + "logLevel")
    if level is not None and level not in _LOG_LEVELS:
        return None
    known = {ENVELOPE + k for k in ("protocolVersion", "clientCapabilities", "clientInfo", "logLevel")}
    if any(str(k).startswith(ENVELOPE) and k not in known for k in meta):
        return None
    return str(version), (info["name"] if isinstance(info, dict) else None)


UNSUPPORTED_PROTOCOL_VERSION = -32022
"""The error a server gives a request in an era it does not speak (``data.supported`` lists what it does)."""


def era_refusal(method: str, params: object, forced: str) -> dict[str, Any] | None:
    """The JSON-RPC error for an IDE request in the era ``protocol.ide`` shuts out (``forced``: ``legacy`` or a
    2026-07-28 version; ``auto`` shuts out nothing), as a server of the other era alone answers it: the SDK's
    ``auto`` client then falls back to ``initialize`` (to a handshake-only bridge) or gives up with a clear error."""
    if forced == "legacy":
        meta = params.get("_meta") if isinstance(params, dict) else None
        requested = meta.get(ENVELOPE + "protocolVersion") if isinstance(meta, dict) else None
        if method != "server/discover" and requested is None:
            return None
        supported = list(HANDSHAKE_PROTOCOL_VERSIONS)
        message = "mcp-bridge speaks only the handshake era to the IDE (protocol.ide: legacy): send initialize"
    elif forced in MODERN_VERSIONS:
        if method != "initialize":
            return None
        requested = params.get("protocolVersion") if isinstance(params, dict) else None
        supported = [forced]
        message = f"mcp-bridge speaks only {forced} to the IDE (protocol.ide): send server/discover"
    else:
        return None
    data: dict[str, Any] = {"supported": supported}
    if isinstance(requested, str):
        data["requested"] = requested
    return {"code": UNSUPPORTED_PROTOCOL_VERSION, "message": message, "data": data}


def parse_discover(line: bytes) -> tuple[int | str, str, str | None] | None:
    """``(id, protocol version, client name)`` when ``line`` is a ``server/discover`` request the SDK certainly
    answers with the bridge's discovery result; ``None`` for anything else."""
    message = _request(line, "server/discover")
    if message is None:
        return None
    params = message.get("params")
    if not isinstance(params, dict) or not params.keys() <= {"_meta"}:
        return None
    envelope = modern_envelope(params)
    return None if envelope is None else (message["id"], *envelope)


def _request(line: bytes, method: str | None = None) -> dict[str, Any] | None:
    """``line`` as a JSON-RPC request (for ``method``, or any) with an id the SDK takes and no other keys; else
    ``None``."""
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or not message.keys() <= _REQUEST_KEYS:
        return None
    if message.get("jsonrpc") != "2.0" or not isinstance(message.get("method"), str):
        return None
    if (method is not None and message["method"] != method) or not request_id_ok(message.get("id")):
        return None
    return message


def _capabilities_ok(capabilities: dict[str, Any]) -> bool:
    if not all(isinstance(capabilities.get(key), dict | None) for key in _CAPABILITY_OBJECTS):
        return False
    return all(isinstance(v, dict) for v in (capabilities.get("experimental") or {}).values())


def _client_info_ok(info: object) -> bool:
    if not isinstance(info, dict):
        return False
    if not (isinstance(info.get("name"), str) and isinstance(info.get("version"), str)):
        return False
    if not all(isinstance(info.get(key), str | None) for key in _OPTIONAL_INFO_STRINGS):
        return False
    return isinstance(info.get("icons", []), list)


def parse_initialize(line: bytes) -> tuple[int | str, str] | None:
    """``(id, requested protocol version)`` when ``line`` is an ``initialize`` request the SDK certainly accepts;
    ``None`` for anything else, which then takes the ordinary path.

    The checks are a strict subset of the SDK's validation: an id that is an integer (not a boolean or a float) or a
    string, no keys beside the four of a request, and params with the types ``InitializeRequestParams`` requires.
    """
    message = _request(line, "initialize")
    if message is None:
        return None
    request_id = message["id"]
    params = message.get("params")
    if not isinstance(params, dict):
        return None
    version, capabilities, info = params.get("protocolVersion"), params.get("capabilities"), params.get("clientInfo")
    if not (isinstance(version, str) and isinstance(capabilities, dict) and isinstance(info, dict)):
        return None
    if not isinstance(params.get("_meta", {}), dict):
        return None
    if not _capabilities_ok(capabilities) or not _client_info_ok(info):
        return None
    return request_id, version


def request_id_ok(request_id: object) -> TypeGuard[int | str]:
    """An id the SDK takes as it is: an integer (not a boolean or a float) or a string."""
    return not isinstance(request_id, bool) and isinstance(request_id, int | str)


def answer_initialize(
    instructions: str, *, stdin_fd: int = 0, stdout_fd: int = 1, ide_protocol: str = "auto"
) -> EarlyStart:
    """Read the IDE's first line; when it is ``initialize`` or ``server/discover``, answer it on ``stdout_fd`` at
    once (not when ``ide_protocol`` shuts its era out: the error is the connection's to send).

    Blocks until the first line (or end of input) arrives. Whatever was read is handed back in
    :attr:`EarlyStart.consumed` for the SDK's reader, answered or not.
    """
    if os.environ.get(ENV_SWITCH) == "0":
        return EarlyStart()
    log.debug("serve.awaiting_first_message")
    consumed = _read_first_line(stdin_fd)
    received = time.time_ns()
    line, newline, _ = consumed.partition(b"\n")
    if not newline:
        return EarlyStart(consumed=consumed)
    first = _request(line) if ide_protocol != "auto" else None
    if first is not None and era_refusal(str(first.get("method")), first.get("params"), ide_protocol) is not None:
        return EarlyStart(consumed=consumed)
    client_name: str | None
    parsed = parse_initialize(line)
    if parsed is not None:
        request_id, requested = parsed
        result = initialize_result(requested, instructions)
        version = str(result["protocolVersion"])
        client_name = json.loads(line)["params"]["clientInfo"]["name"]  # a string: parse_initialize checked it
    elif (discover := parse_discover(line)) is not None:
        request_id, version, client_name = discover
        result = discover_result(instructions)
    else:  # a 2026-07-28 IDE that opens with a request of another kind still tells its era
        message = _request(line)
        envelope = modern_envelope(message.get("params")) if message is not None else None
        if envelope is None:
            return EarlyStart(consumed=consumed)
        return EarlyStart(
            consumed=consumed,
            version=envelope[0],
            client_name=envelope[1],
            client_capabilities=declared(line),
            first_read_ns=received,
        )
    frame = {"jsonrpc": "2.0", "id": request_id, "result": result}
    data = (json.dumps(frame, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    sent = time.time_ns()
    try:
        write_all(stdout_fd, data)
    except OSError as exc:  # the IDE is gone or stdout is unusable: let the ordinary path meet the same fate
        log.warning("serve.early_initialize_failed", error=f"{type(exc).__name__}: {exc}")
        return EarlyStart(consumed=consumed)
    method = "initialize" if parsed is not None else "server/discover"
    answered = Answered(method, request_id, received, sent, trace_context(line))
    log.debug("serve.discover_answered_early" if parsed is None else "serve.initialize_answered_early", version=version)
    return EarlyStart(
        consumed=consumed,
        request_id=request_id,
        result=result,
        client_name=client_name,
        version=version,
        client_capabilities=declared(line),
        answers=(answered,),
        first_read_ns=received,
    )


def declared(line: bytes) -> dict[str, Any] | None:
    """The client capabilities a first line (already checked by :func:`parse_initialize`, :func:`parse_discover` or
    :func:`modern_envelope`) declares."""
    message = _request(line)
    params = message.get("params") if message is not None else None
    if not isinstance(params, dict):
        return None
    if message is not None and message.get("method") == "initialize":
        found = params.get("capabilities")
    else:
        meta = params.get("_meta")
        found = meta.get(ENVELOPE + "clientCapabilities") if isinstance(meta, dict) else None
    return found if isinstance(found, dict) else None


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
