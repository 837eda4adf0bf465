"""``tools/list`` answered from the warm disk cache while the SDK is still loading.

``serve`` answers ``initialize`` before the SDK is imported (:mod:`mcp_bridge.ide.handshake`); the IDE's next request is
``tools/list``, and the SDK takes about a second to load. When the disk caches already describe every approved
server, the first list need not wait for that: the catalog the bridge would serve from those caches is rebuilt here
(with the bridge's own :class:`~mcp_bridge.governance.catalog.Catalog` and
:class:`~mcp_bridge.governance.pins.Pins`, neither of which needs the SDK), and when its tools are exactly the
tools of an answer the SDK made before, that answer's bytes go out again under the new request's id.

The SDK's answers are kept by the front (:class:`AnswerKeeper`): one file per protocol version, ``tools-answer-
<version>`` in ``$MCP_BRIDGE_HOME``, holding the ``result`` as the SDK's stdio writer encoded it and the SHA-256 of
the catalog's tools it was made from. The SDK shapes a result from those tools and the protocol version alone, so an
equal digest means an equal answer; a different bridge or SDK version, a changed catalog, a changed allowlist, a pin
that no longer holds: any of these changes the digest or the header, and the list takes the ordinary path.

What is answered early is what the ordinary path would answer before any upstream is back: the last catalog on disk,
under the allowlist known now (the config's, or Port's cached one if it is younger than ``port.refresh_interval``),
never a definition that fails its pin. A list answered here is taken out of what the SDK reads. Once the bridge runs and
its servers are back (or ``timeouts.startup_wait`` has passed), the front compares the catalog's tools with the ones
listed early, and when they differ (a server changed its tools, Port changed the allowlist) the IDE gets
``notifications/tools/list_changed`` (:meth:`mcp_bridge.ide.front.Front.check_early_list`). Calls are checked against
the live allowlist and pins as always. Claude Desktop ignores that notification, so its first list is never answered
here (:data:`IGNORES_LIST_CHANGED`).

Only a well-formed ``tools/list`` without a cursor is answered, and only while every line before it was one this
module understands (the ``initialized`` notification, or another such list); the first line of any other kind ends
early answering, so that no answer overtakes the answer to a request sent before it. ``MCP_BRIDGE_EARLY_INITIALIZE=0``
turns this off too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mcp_bridge import __version__
from mcp_bridge.ide.handshake import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    MODERN_VERSIONS,
    Answered,
    EarlyStart,
    modern_envelope,
    request_id_ok,
    trace_context,
    write_all,
)
from mcp_bridge.logs import get_logger

log = get_logger(__name__)

FORMAT = 1

IGNORES_LIST_CHANGED = frozenset({"claude-ai"})
"""``clientInfo.name`` of IDEs that ignore ``notifications/tools/list_changed`` (Claude Desktop): their first list is
the one they keep, so it waits for the servers as usual instead of coming from the cache; restarting such an IDE is
how its users pick up a change, and must show it."""
_PREFIX = "tools-answer-"
_CHUNK = 1 << 16
_MODERN_META_PREFIX = "io.modelcontextprotocol/"  # a 2026-07-28 envelope: only at that version
_VERSIONS = frozenset(HANDSHAKE_PROTOCOL_VERSIONS) | frozenset(MODERN_VERSIONS)


def answer_path(home: Path, protocol_version: str) -> Path:
    return home / f"{_PREFIX}{protocol_version}"


def tools_digest(tools: Sequence[Any]) -> str:
    """SHA-256 of the catalog's tools as JSON, in their own key order (which the SDK's encoding keeps)."""
    text = json.dumps(tools, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sdk_version() -> str:
    """The installed ``mcp`` and ``mcp-types``: between them they shape a ``tools/list`` answer."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"mcp {version('mcp')}, mcp-types {version('mcp-types')}"
    except PackageNotFoundError:  # pragma: no cover - the bridge does not run without them
        return "unknown"


def _header(protocol_version: str, digest: str, size: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "bridge": __version__,
        "sdk": sdk_version(),
        "protocol": protocol_version,
        "tools": digest,
        "bytes": size,
    }


# ---------------------------------------------------------------------- keeping the SDK's answers (front, after load)


@dataclass(frozen=True)
class _Kept:
    home: Path
    protocol_version: str
    tools: Sequence[Any]
    result: str


class AnswerKeeper:
    """Writes the SDK's ``tools/list`` results to disk from a worker thread, the latest one winning (hashing and
    writing 10,000 tools takes about a tenth of a second: not on the event loop, not once per answer). The thread
    waits ``delay`` seconds first, so that it does not compete (for the GIL) with sending the answer it keeps, and
    answers made in a burst are written once; :meth:`wait` (shutdown) ends the delay."""

    def __init__(self, delay: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._next: _Kept | None = None
        self._running = False
        self._thread: threading.Thread | None = None
        self._delay = delay
        self._hurry = threading.Event()

    def keep(self, home: Path, protocol_version: str, tools: Sequence[Any], result: str) -> None:
        """``tools``: the catalog's tools the answer was made from (never changed in place); ``result``: the
        answer's ``result`` as the SDK's stdio writer encoded it."""
        if protocol_version not in _VERSIONS:
            return
        with self._lock:
            self._next = _Kept(home, protocol_version, tools, result)
            if self._running:
                return
            self._running = True
            self._thread = threading.Thread(target=self._drain, name="mcp-bridge-keep-tools-answer", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        self._hurry.wait(self._delay)
        while True:
            with self._lock:
                kept, self._next = self._next, None
                if kept is None:
                    self._running = False
                    return
            try:
                write_answer(kept.home, kept.protocol_version, kept.tools, kept.result)
            except Exception as exc:  # a cache: failing to keep it only costs the next start its early answer
                log.warning("warmstart.keep_failed", error=f"{type(exc).__name__}: {exc}")

    def wait(self, timeout: float = 5.0) -> None:
        """Until what was handed over is written (tests, and a clean shutdown)."""
        self._hurry.set()
        if self._thread is not None:
            self._thread.join(timeout)


def write_answer(home: Path, protocol_version: str, tools: Sequence[Any], result: str) -> None:
    """One file: a JSON header line, then the result's bytes. Atomic replace, mode 0600."""
    import tempfile

    body = result.encode("utf-8")
    header = json.dumps(_header(protocol_version, tools_digest(tools), len(body)), separators=(",", ":"))
    path = answer_path(home, protocol_version)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.encode("utf-8") + b"\n" + body)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_answer(home: Path, protocol_version: str, digest: str) -> bytes | None:
    """The kept result for these tools, or ``None`` (no file, another digest or version, a damaged file)."""
    try:
        data = answer_path(home, protocol_version).read_bytes()
    except OSError:
        return None
    head, newline, body = data.partition(b"\n")
    try:
        header = json.loads(head)
    except ValueError:
        return None
    if not newline or header != _header(protocol_version, digest, len(body)):
        return None
    return body


# ---------------------------------------------------------------------- answering before the SDK is loaded


def cached_tools(settings: Any, home: Path, allowlist: Any) -> list[dict[str, Any]] | None:
    """The tools the bridge would list from its disk caches alone, before any upstream is back; ``None`` when the
    caches do not cover every approved server (the ordinary path then waits for them, as it should)."""
    from mcp_bridge.governance.catalog import CACHE_FILE, Catalog, CatalogCache
    from mcp_bridge.governance.pins import Pins

    cached = CatalogCache(home / CACHE_FILE).load()
    catalog = Catalog(settings.naming, allowlist)
    pins = Pins(home, settings.on_tool_change)  # checks cached listings only: it writes and reports nothing
    for name, server in sorted(allowlist.servers.items()):
        entry = cached.get(name)
        if entry is None or entry[0] != server.url:
            return None
        blocked = pins.check(name, server, entry[1].tools, live=False)
        catalog.set_listing(name, entry[1], cached=True, blocked=blocked, rebuild=False)
    return catalog.tools()


def prepare(
    settings: Any, home: Path, allowlist: Any, protocol_version: str, client_name: str | None = None
) -> tuple[bytes, str] | None:
    """The encoded ``result`` to answer ``tools/list`` with before the SDK is loaded, and the digest of the tools it
    lists; or ``None`` (also when this IDE gets search mode: its list is not the catalog's, see
    :mod:`mcp_bridge.governance.listing`)."""
    if allowlist is None or protocol_version not in _VERSIONS:
        return None
    stale = _stale_port_allowlist(settings, allowlist)
    if stale:
        log.debug("warmstart.allowlist_not_fresh", reason=stale)
        return None
    try:
        tools = cached_tools(settings, home, allowlist)
    except Exception as exc:  # a damaged cache must never stop serve: the ordinary path copes with it
        log.warning("warmstart.cache_unusable", error=f"{type(exc).__name__}: {exc}")
        return None
    if tools is None:
        log.debug("warmstart.cache_incomplete")
        return None
    from mcp_bridge.governance import budget

    catalog = settings.catalog
    if budget.resolve(catalog.mode, catalog.max_tools, client_name, len(tools)) == "search":
        log.debug("warmstart.search_mode", tools=len(tools))
        return None
    digest = tools_digest(tools)
    result = read_answer(home, protocol_version, digest)
    log.debug("warmstart.prepared", tools=len(tools), answer=result is not None)
    return None if result is None else (result, digest)


def _stale_port_allowlist(settings: Any, allowlist: Any) -> str | None:
    """Why Port's cached allowlist is not good enough to list from before Port is asked (``None``: it is).

    A running bridge serves an answer from Port for ``port.refresh_interval`` before it asks again, so a cache younger
    than that (another window's bridge keeps it so) is as current as the list a running bridge gives. An older one
    is not: the ordinary path first waits (briefly) for Port, and an IDE that ignores ``list_changed`` would otherwise
    keep yesterday's list for the whole session."""
    if settings.port is None:
        return None  # the config's own servers: nothing to ask
    import time

    if allowlist.failed_closed or allowlist.fetched_at is None:
        return "no usable allowlist from Port cached"
    age = time.time() - allowlist.fetched_at
    if not 0 <= age <= settings.port.refresh_interval:
        return f"the cached allowlist is {age:.0f} s old, past port.refresh_interval"
    return None


def classify(line: bytes, protocol_version: str | None = None) -> tuple[str, int | str | None]:
    """``("initialized", None)``, ``("list", id)`` for a ``tools/list`` this module may answer, or ``("other",
    None)`` for anything else (which ends early answering). In the 2026-07-28 era (``protocol_version``) a list
    must carry a well-formed envelope at that version; in the handshake era it must carry none."""
    modern = protocol_version in MODERN_VERSIONS
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "other", None
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return "other", None
    method, params = message.get("method"), message.get("params")
    if method == "notifications/initialized" and not modern and message.keys() <= {"jsonrpc", "method", "params"}:
        if params is None or (isinstance(params, dict) and params.keys() <= {"_meta"}):
            return "initialized", None
        return "other", None
    if method != "tools/list" or not message.keys() <= {"jsonrpc", "id", "method", "params"}:
        return "other", None
    request_id = message.get("id")
    if not request_id_ok(request_id):
        return "other", None
    if params is not None:
        if not isinstance(params, dict) or not params.keys() <= {"_meta"}:
            return "other", None  # a cursor, or anything else: the ordinary path
        meta = params.get("_meta", {})
        if not isinstance(meta, dict) or (not modern and any(str(k).startswith(_MODERN_META_PREFIX) for k in meta)):
            return "other", None
    if modern and (envelope := modern_envelope(params)) is not None and envelope[0] == protocol_version:
        return "list", request_id
    return ("other", None) if modern else ("list", request_id)


def response_line(request_id: int | str, result: bytes) -> bytes:
    """The response as the SDK's stdio writer lays it out: ``{"jsonrpc":"2.0","id":…,"result":…}``."""
    encoded_id = json.dumps(request_id, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return b'{"jsonrpc":"2.0","id":' + encoded_id + b',"result":' + result + b"}\n"


def answer_lists_while_loading(
    early: EarlyStart,
    prepared: tuple[bytes, str],
    load: Callable[[], object],
    *,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
) -> EarlyStart:
    """Run ``load`` (the SDK's import) in a thread; meanwhile answer each ``tools/list`` the IDE sends with the
    prepared result, until ``load`` is done, another kind of message arrives, or stdin ends. Returns ``early`` with
    what the SDK is still to read (everything read, less the lists answered) and those lists. ``load``'s own failure
    is left for the caller to meet again. At the end of stdin with nothing left to serve, ``load`` is not waited
    for."""
    result, digest = prepared
    done_r, done_w = os.pipe()

    def run_load() -> None:
        try:
            load()
        except BaseException as exc:  # the caller imports again on the main thread and meets the error there
            log.debug("warmstart.load_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(OSError):
                os.write(done_w, b"x")

    loader = threading.Thread(target=run_load, name="mcp-bridge-load", daemon=True)
    loader.start()
    buffer = early.consumed
    # The first line was the initialize (or discovery) answered already; a 2026-07-28 IDE may also open with a list.
    pos = buffer.find(b"\n") + 1 if early.answered else 0
    kept = [buffer[:pos]]  # what the SDK reads: the initialize, the notifications; not the lists answered here
    answered: list[int | str] = []
    spans: list[Answered] = []
    arrived = early.first_read_ns or time.time_ns()  # when the lines in the buffer had been read
    ended = False
    try:
        while True:
            stop = False
            while True:
                end = buffer.find(b"\n", pos)
                if end < 0:
                    break
                kind, request_id = classify(buffer[pos:end], early.version)
                if kind == "other":
                    stop = True
                    break
                if kind == "list" and request_id is not None:
                    # the time it is answered: taken before the write, as after it the loader (the SDK's import)
                    # may hold the interpreter lock for a while
                    sent = time.time_ns()
                    write_all(stdout_fd, response_line(request_id, result))
                    answered.append(request_id)
                    spans.append(Answered("tools/list", request_id, arrived, sent, trace_context(buffer[pos:end])))
                    log.debug("warmstart.tools_list_answered", bytes=len(result))
                else:
                    kept.append(buffer[pos : end + 1])
                pos = end + 1
            if stop:
                break
            chunk = _read_or_done(stdin_fd, done_r)
            arrived = time.time_ns()
            if chunk is None:  # loaded
                break
            if not chunk:
                ended = pos == len(buffer)  # and no request left unanswered, not even half a line
                break
            buffer += chunk
    except OSError as exc:  # stdin or stdout unusable: the ordinary path meets the same and reports it
        log.debug("warmstart.io_failed", error=f"{type(exc).__name__}: {exc}")
    kept.append(buffer[pos:])
    early = replace(
        early,
        consumed=b"".join(kept),
        lists=tuple(answered),
        tools_digest=digest,
        ended=ended,
        answers=(*early.answers, *spans),
    )
    if ended:
        return early  # the IDE has gone and nothing is left to do: no need to wait for the SDK
    # Not in a `finally`: on SIGTERM (an exception here) the process is ending, and the pipe must stay open for as
    # long as the loader may still write to it.
    loader.join()
    os.close(done_r)
    os.close(done_w)
    return early


def _read_or_done(fd: int, done: int) -> bytes | None:
    """The next chunk of stdin (``b""`` at its end), or ``None`` once the load is done."""
    import select

    while True:
        ready, _, _ = select.select([fd, done], [], [])
        if done in ready:
            return None
        try:
            return os.read(fd, _CHUNK)
        except BlockingIOError:
            continue
