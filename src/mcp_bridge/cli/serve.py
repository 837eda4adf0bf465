"""``serve``, what the IDE runs: ``initialize`` answered before the SDK loads, then the bridge served on stdio."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp_bridge import __version__
from mcp_bridge.cli.output import err, run, stdin_is_a_terminal
from mcp_bridge.config import LoadedConfig, home_dir
from mcp_bridge.logs import activate, get_logger

if TYPE_CHECKING:
    import anyio

    from mcp_bridge.governance.allowlist import Allowlist
    from mcp_bridge.ide.handshake import EarlyStart

log = get_logger("mcp_bridge.cli")


def serve_command(loaded: LoadedConfig, *, headless_browser: bool = False) -> int:
    """``serve``: answer ``initialize`` first, then load the SDK (about a second) and serve.

    The IDE's first message is read and, when it is ``initialize``, answered before anything heavy is imported
    (:mod:`mcp_bridge.ide.handshake`): the instructions need only the config and the allowlist known now. SIGTERM in
    that window stops cleanly (exit 0), as it does once serving.
    """
    from mcp_bridge.audit.spoolcheck import instructions_note
    from mcp_bridge.governance.allowlist import initial_allowlist, loading_from_port
    from mcp_bridge.ide.handshake import answer_initialize

    home = home_dir()
    allowlist = initial_allowlist(loaded.settings, home)
    offered = allowlist if allowlist is not None else loading_from_port()  # what the bridge will offer at first
    instructions = offered.instructions(loaded.settings.naming.separator) + instructions_note(loaded.settings, home)
    previous = signal.signal(signal.SIGTERM, _terminate)  # first: a SIGTERM right after the note below stops cleanly
    try:
        if stdin_is_a_terminal():  # a person, not an IDE: say what this is, then serve as ever (an IDE may follow)
            err(
                "mcp-bridge serve: this speaks MCP (JSON-RPC) on stdin and stdout, for an IDE such as Cursor or Claude "
                "Desktop to run as its command; it is waiting for one now.\n"
                "  To try the bridge by hand: `mcp-bridge demo` (offline, everything on this machine), or "
                "`mcp-bridge tools` and `mcp-bridge status` for your config.\n"
                "  Ctrl-D or Ctrl-C ends it."
            )
        early = answer_initialize(instructions, ide_protocol=loaded.settings.protocol.ide)
        activate()  # the logging setup, deferred until the IDE had its answer
        early = _answer_lists_while_loading(loaded, home, allowlist, early)
        if early.ended:
            log.info("serve.stop", during="startup", reason="stdin ended; every request was answered")
            return 0
        _load_front()  # the SDK and the rest of the bridge (loaded already, or failing again)
    except _Terminated:
        log.info("serve.stop", signal="SIGTERM", during="startup")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    return run(_serve, loaded, home, allowlist, early, headless_browser)


class _Terminated(BaseException):
    """SIGTERM while ``serve`` is still starting (before the event loop handles signals)."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated(signum)


def _load_front() -> None:
    """The SDK and the rest of the bridge: the IDE side (the front) and the bridge behind it."""
    import mcp_bridge.bridge
    import mcp_bridge.ide.front  # noqa: F401


def _answer_lists_while_loading(
    loaded: LoadedConfig, home: Path, allowlist: Allowlist | None, early: EarlyStart
) -> EarlyStart:
    """Load the SDK; while it loads, answer ``tools/list`` from the warm disk cache when that cache describes every
    approved server (:mod:`mcp_bridge.ide.warmstart`)."""
    if early.version is None or sys.platform == "win32":  # select() on pipes is POSIX only
        return early
    from mcp_bridge.ide import warmstart

    if early.client_name in warmstart.IGNORES_LIST_CHANGED:
        log.debug("warmstart.skipped", reason="the IDE ignores list_changed", client=early.client_name)
        return early

    prepared = warmstart.prepare(loaded.settings, home, allowlist, str(early.version), early.client_name)
    if prepared is None:
        return early
    return warmstart.answer_lists_while_loading(early, prepared, _load_front)


async def _serve(
    loaded: LoadedConfig, home: Path, allowlist: Allowlist | None, early: EarlyStart, headless_browser: bool
) -> int:
    import anyio

    from mcp_bridge import telemetry
    from mcp_bridge.auth import AuthEnv
    from mcp_bridge.bridge import Bridge
    from mcp_bridge.ide.connection import serve_stdio

    def logged_only(server: str, url: str) -> None:
        log.info("serve.login_in_headless_browser", server=server)

    auth_env = AuthEnv.for_serve(loaded.settings, home, announce=logged_only if headless_browser else None)
    bridge = Bridge(
        loaded,
        home,
        initial=allowlist,
        auth_env=auth_env,
        ide_capabilities=_declared(early.client_capabilities),
        connect_tools=True,
    )
    bridge.client_name = early.client_name  # known from the first line: the catalog's mode may depend on it
    log.info("serve.start", version=__version__, config=str(loaded.path), servers=sorted(loaded.settings.servers))
    with telemetry.started(loaded.settings, version=__version__) as hooks:  # off: nothing of OpenTelemetry loads
        hooks.answered_early(early.answers, early.version)  # what was answered before it was up: spans, dated then
        async with bridge.running(), anyio.create_task_group() as tg:
            tg.start_soon(_handle_signals, tg.cancel_scope, bridge)
            tg.start_soon(_freeze_the_start, bridge)
            if hooks.active:
                tg.start_soon(hooks.watch, bridge)
            await serve_stdio(bridge, early, ide_protocol=loaded.settings.protocol.ide)
            tg.cancel_scope.cancel()
    log.info("serve.stop")
    return 0


_SETTLE_SECONDS = 2.0
"""After the start has settled, before the heap is frozen (the first lists and calls set up what they use)."""


async def _freeze_the_start(bridge: Any) -> None:
    """Once the bridge has started (the allowlist loaded, each server's first outcome, then a moment), collect the
    garbage once and move what is left (the modules, the SDK's and the catalog's objects: about 100,000 here) out of
    the collector's sight (``gc.freeze``). Before, each of the interpreter's full collections walked all of them, 20
    to 80 ms of the event loop each (measured here), some in the first seconds and more as the bridge's own objects
    grew: a pause for any call that met one. What is made later is collected as ever; what the start made and drops
    later stays if it was in a reference cycle (bounded by the start's own size: an early session replaced, say)."""
    import gc

    import anyio

    await bridge.wait_settled(bridge.settings.timeouts.startup_wait + 30)
    await anyio.sleep(_SETTLE_SECONDS)
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info("serve.heap_frozen", objects=gc.get_freeze_count(), ms=round((time.perf_counter() - started) * 1000))


def _declared(capabilities: dict[str, Any] | None) -> Any:
    """The IDE's capabilities from its first line, as the SDK's model (``None`` when unknown or not valid)."""
    import mcp_types as types
    from pydantic import ValidationError

    if capabilities is None:
        return None
    try:
        return types.ClientCapabilities.model_validate(capabilities, by_name=False)
    except ValidationError:
        return None


async def _handle_signals(scope: anyio.CancelScope, bridge: Any) -> None:
    """SIGTERM/SIGINT stop serving; SIGHUP asks the allowlist source again at once (POSIX; on Windows the IDE
    closing stdin is what stops the bridge)."""
    if sys.platform == "win32":
        return
    import anyio

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("serve.signal", signal=signal.Signals(signum).name)
            if signum == signal.SIGHUP:
                bridge.refresh_now()
                continue
            scope.cancel()
            return
