"""The ``mcp-bridge`` command. Errors become exit codes here and only here: 0 ok, 1 runtime failure, 2 usage/config.

``serve`` (the default) is what an IDE runs: stdout is the protocol, so it prints nothing. The other commands are
for people: they print to stdout and report problems on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp_bridge import __version__
from mcp_bridge.config import LoadedConfig, home_dir, load_config
from mcp_bridge.errors import BridgeError, ConfigError
from mcp_bridge.logs import activate, clean, configure, get_logger, register_secrets
from mcp_bridge.terminal import printable, printable_json

if TYPE_CHECKING:
    import anyio

    from mcp_bridge.governance.allowlist import Allowlist
    from mcp_bridge.ide.handshake import EarlyStart

log = get_logger("mcp_bridge.cli")


COMMON_OPTIONS = ("config", "log_level", "log_file")
"""What most commands take: the config file and where their log goes."""

_REFUSED: dict[str, tuple[tuple[str, ...], str]] = {
    # command -> the common options it does not take, and why (the message when one is given anyway)
    "install": (("log_level", "log_file"), "it only edits the IDE's file, and writes no log"),
    "secret": (
        ("config", "log_level", "log_file"),
        "it reads no config and writes no log: a secret is stored in the OS keyring before a config refers to it "
        "as ${keyring:NAME}",
    ),
    "demo": (
        ("config",),
        "the demo runs on a config of its own, in a temporary directory (`mcp-bridge status --config PATH` and "
        "`mcp-bridge tools --config PATH` show yours)",
    ),
}

_ONLY_WITH: dict[tuple[str, str], tuple[str, ...]] = {
    # (command, option) -> the actions that take it; given with another action, it is refused
    ("audit", "json"): ("status",),
    ("audit", "force"): ("reset",),
    ("pins", "json"): ("list",),
    ("pins", "fingerprint"): ("approve",),
    ("pins", "target"): ("approve", "reset"),
    ("secret", "json"): ("list",),
    ("secret", "name"): ("set", "delete"),
}


_DESCRIPTIONS = {
    # What `mcp-bridge COMMAND --help` says the command does, first.
    "serve": "Serve MCP on stdin and stdout: the command Cursor or Claude Desktop runs (also with no command at "
    "all). stdout carries only the protocol; logs go to stderr, or to --log-file.",
    "status": "Where the allowlist came from, and each approved server's state (connected, connecting, needs_auth, "
    "error) with its tools allowed of offered, token expiry and last error. Exit 1 when something fails.",
    "tools": "The tools as the IDE sees them: merged, namespaced, filtered by the allowlist; and why the list is "
    "short when a server is down, needs a login or allows nothing. Exit 1 when a server failed.",
    "login": "Log in to one OAuth server in the browser and keep its tokens in the OS keyring; running bridges "
    "pick them up within seconds.",
    "logout": "Revoke one server's OAuth tokens (where the server supports revocation) and delete everything "
    "stored for it.",
    "doctor": "Check the config, the keyring, Port, the audit spool, the allowlist, each server, the tool names "
    "and the tool count; say how to fix each problem. Exit 1 when a check failed.",
    "install": "Add the bridge to Cursor's or Claude Desktop's MCP servers, pointing at the config: one entry, "
    "every other entry kept, a backup of the previous file written.",
    "audit": "The audit spool: `status` shows the events waiting and the last error, `flush` ships them to Port "
    "now, `reset` moves a damaged spool aside (kept) and starts a fresh one.",
    "demo": "The whole flow offline, on this machine: three local MCP servers, a Port stand-in, the bridge and a "
    "scripted IDE session. With --serve, serve that bridge on stdio for an IDE.",
    "pins": "Tool-definition pins: `list` shows each allowed tool's pin and state, `approve NAME` accepts a "
    "changed tool's new definition, `reset SERVER` forgets a server's local pins.",
    "secret": "Secrets in the OS keyring, for a config to use as ${keyring:NAME} where the IDE does not pass the "
    "environment: `set NAME` (the value from a prompt or stdin, never the command line), `delete NAME`, `list`.",
    "call": "Call one tool by its exposed name through the same allowlist and audit as the IDE, and print the "
    "raw result. Exit 1 when the call failed or its result is an error.",
}


_POSITIONAL = frozenset({"target", "name"})


def _add_common(p: argparse.ArgumentParser, command: str) -> None:
    """The common options ``command`` takes; those it does not take are parsed (hidden) only to be refused with
    the reason (:func:`_check_options`), instead of argparse's bare "unrecognized arguments"."""
    refused = _REFUSED.get(command, ((), ""))[0]
    if "config" in refused:
        p.add_argument("--config", dest="refused_config", help=argparse.SUPPRESS)
    else:
        p.add_argument("--config", metavar="PATH", help="config file (default: $MCP_BRIDGE_CONFIG, then the user dir)")
    if "log_level" in refused:
        p.add_argument("--log-level", dest="refused_log_level", help=argparse.SUPPRESS)
    else:
        p.add_argument(
            "--log-level", choices=["debug", "info", "warning", "error"], help="log level (default: config `log.level`)"
        )
    if "log_file" in refused:
        p.add_argument("--log-file", dest="refused_log_file", help=argparse.SUPPRESS)
    else:
        p.add_argument("--log-file", metavar="PATH", help="also write JSON logs to this file")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each command's own (for errors that show that command's usage)."""
    parser = argparse.ArgumentParser(
        prog="mcp-bridge",
        description="A local MCP gateway: the approved remote MCP servers' tools behind one stdio entry.",
    )
    # Given before the command, these go to the command (which must take them): `mcp-bridge --config X status`.
    parser.add_argument(
        "--config",
        dest="top_config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="config file (for `serve`, "
        "the default command, or the command that follows; default: $MCP_BRIDGE_CONFIG, then the user dir)",
    )
    parser.add_argument(
        "--log-level",
        dest="top_log_level",
        default=argparse.SUPPRESS,
        choices=["debug", "info", "warning", "error"],
        help="log level (default: config `log.level`)",
    )
    parser.add_argument(
        "--log-file", dest="top_log_file", default=argparse.SUPPRESS, metavar="PATH", help="also write JSON logs here"
    )
    parser.set_defaults(config=None, log_level=None, log_file=None)
    parser.add_argument("--version", action="version", version=f"mcp-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs: dict[str, argparse.ArgumentParser] = {}

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=_DESCRIPTIONS[name])
        _add_common(p, name)
        subs[name] = p
        return p

    command("serve", help="serve MCP on stdio (what the IDE runs; the default)")
    p = command("status", help="each server's connection state and tool counts")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("tools", help="the merged tool list as the IDE sees it")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="also show tools the allowlist hides, with the reason")
    p = command("login", help="log in to an OAuth server (opens a browser)")
    p.add_argument("server", help="the server's name (its namespace)")
    p = command("logout", help="revoke and delete a server's stored OAuth tokens")
    p.add_argument("server", help="the server's name (its namespace)")
    command("doctor", help="check the config, keyring, Port, servers and names; say how to fix")
    p = command("install", help="add the bridge to Cursor's or Claude Desktop's MCP servers")
    p.add_argument("--client", required=True, choices=["claude-desktop", "cursor"])
    p.add_argument("--path", metavar="FILE", help="the client's config file (default: its usual place on this OS)")
    p.add_argument("--name", default="bridge", help="the entry's name in mcpServers (default: bridge; keep it short)")
    p.add_argument("--dry-run", action="store_true", help="show the change, write nothing")
    p = command("audit", help="the audit spool: `audit status`, `audit flush`, `audit reset`")
    p.add_argument("action", choices=["status", "flush", "reset"])
    p.add_argument("--json", action="store_true", help="machine-readable output (status)")
    p.add_argument(
        "--force", action="store_true", help="reset: move the spool aside even when it is not damaged (kept)"
    )
    p = command("demo", help="the whole flow offline: local servers, a Port stand-in, a scripted IDE")
    p.add_argument(
        "--serve", action="store_true", help="keep the demo's backends up and serve the bridge on stdio (for an IDE)"
    )
    p = command("pins", help="tool-definition pins: `pins list`, `pins approve NAME`, `pins reset SERVER`")
    p.add_argument("action", choices=["list", "approve", "reset"])
    p.add_argument("target", nargs="?", metavar="NAME|SERVER", help="approve: exposed tool name; reset: server name")
    p.add_argument("--json", action="store_true", help="machine-readable output (list)")
    p.add_argument(
        "--fingerprint", metavar="FP", help="approve: only if the tool's current fingerprint is this one (from list)"
    )
    p = command("secret", help="store a secret in the OS keyring for ${keyring:NAME}: `secret set|delete|list`")
    p.add_argument("action", choices=["set", "delete", "list"])
    p.add_argument("name", nargs="?", metavar="NAME", help="the secret's name (letters, digits, _), as in the config")
    p.add_argument("--json", action="store_true", help="machine-readable output (list)")
    p = command("call", help="call one tool by its exposed name and print the result")
    p.add_argument("name", help="exposed tool name, e.g. docs__search")
    p.add_argument("--args", default="{}", metavar="JSON", help="arguments as a JSON object (default: {})")
    return parser, subs


def _check_options(
    args: argparse.Namespace, parser: argparse.ArgumentParser, subs: dict[str, argparse.ArgumentParser]
) -> None:
    """Refuse an option the command would ignore (exit 2, saying why); hand options given before the command to it."""
    command = args.command or "serve"
    usage = subs.get(command, parser)
    refused, why = _REFUSED.get(command, ((), ""))
    for name in COMMON_OPTIONS:
        flag = "--" + name.replace("_", "-")
        before = getattr(args, f"top_{name}", None)
        if name in refused and (before is not None or getattr(args, f"refused_{name}", None) is not None):
            usage.error(f"`{command}` does not take {flag}: {why}")
        if before is not None and getattr(args, name) is None:
            setattr(args, name, before)
    action = getattr(args, "action", None)
    for (owner, option), actions in _ONLY_WITH.items():
        if owner == command and getattr(args, option, None) not in (None, False) and action not in actions:
            what = "a NAME" if option in _POSITIONAL else "--" + option.replace("_", "-")
            takers = " and ".join(f"`{command} {a}`" for a in actions)
            usage.error(f"`{command} {action}` does not take {what} (only {takers})")


BROKEN_PIPE_EXIT = 128 + 13
"""The exit code when the reader of stdout went away (``mcp-bridge tools | head``): 128 + SIGPIPE, what a shell
shows for any command stopped by a closed pipe."""


def main(argv: Sequence[str] | None = None) -> int:
    return _guarded(lambda: _main(argv))


def _guarded(run: Callable[[], int]) -> int:
    """Run a command; a reader of stdout that went away ends it quietly (:data:`BROKEN_PIPE_EXIT`)."""
    try:
        code = run()
        if sys.stdout is not None:
            sys.stdout.flush()  # here, not at exit: a closed pipe is found while it can still be handled
        return code
    except BaseException as exc:
        if not _broken_pipe(exc):
            raise
        # Nothing more can reach the reader; point stdout at devnull so that Python's own flush at exit does not
        # fail again, and end without a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE_EXIT


def _broken_pipe(exc: BaseException) -> bool:
    """Whether ``exc`` is a closed stdout (alone, or all that a task group's exception group holds)."""
    if isinstance(exc, BrokenPipeError):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_broken_pipe(inner) for inner in exc.exceptions)
    return False


def _main(argv: Sequence[str] | None, *, headless_browser: bool = False) -> int:
    """The command line ``argv``; ``headless_browser``: logins are done by a program, not a person (``demo
    --serve``), so ``serve`` announces no login URL."""
    parser, subs = _parser()
    try:
        args = parser.parse_args(argv)
        _check_options(args, parser, subs)
    except SystemExit as exc:  # argparse already printed usage; keep its code (2 for usage errors)
        return int(exc.code or 0)
    command = args.command or "serve"
    try:
        if command == "install":
            return _install(args)
        if command == "secret":  # no config: a secret is stored before a config refers to it
            configure(level="error")
            return _secret(args)
        if command == "doctor":  # before loading the config: a broken config is one of the things it reports
            configure(level=args.log_level or "error", file=args.log_file)
            return _run(_doctor, args)
        if command == "demo":  # it writes its own config
            from mcp_bridge import demo

            if not args.serve:
                configure(level=args.log_level or "error", file=args.log_file)
                return demo.run()
            options = [*(["--log-level", args.log_level] if args.log_level else [])]
            options += ["--log-file", args.log_file] if args.log_file else []
            return demo.run(serve=True, serve_options=options)
        loaded = load_config(args.config)
        register_secrets(loaded.secrets)
        level = args.log_level or loaded.settings.log.level
        if command != "serve" and not args.log_level:
            level = "error" if level == "info" else level  # hand-run commands: stderr keeps to real errors
        configure(level=level, file=args.log_file or loaded.settings.log.file, defer=command == "serve")
        if command == "serve":
            return _serve_command(loaded, headless_browser=headless_browser)
        handler: Callable[[argparse.Namespace, LoadedConfig], Awaitable[int]] = _COMMANDS[command]
        return _run(handler, args, loaded)
    except BridgeError as exc:
        _err(f"mcp-bridge: {clean(str(exc))}")
        if isinstance(exc, ConfigError) and exc.fix:
            _err(f"  fix: {clean(exc.fix)}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _out(text: str, end: str = "\n") -> None:
    """Print for a person. What commands print holds text from servers, Port and browsers: it goes through the one
    sanitiser (:func:`~mcp_bridge.terminal.printable`), never to the terminal as is."""
    print(printable(text), end=end)


def _out_json(data: Any, **dumps: Any) -> None:
    """Print JSON: as ``json.dumps(data, **dumps)`` makes it, with what JSON leaves unescaped (DEL, C1 controls,
    format characters...) escaped too (:func:`~mcp_bridge.terminal.printable_json`): the same data."""
    print(printable_json(json.dumps(data, **dumps)))


def _err(message: str) -> None:
    print(printable(message), file=sys.stderr)


def serve_config(path: str, *options: str) -> int:
    """Serve on stdio with the config at ``path`` (``demo --serve``): the same path as ``mcp-bridge serve``;
    ``options``: its ``--log-level`` and ``--log-file``. The demo's headless browser does its logins, so no login
    URL is announced (a person need not open it)."""
    return _guarded(lambda: _main(["serve", "--config", path, *options], headless_browser=True))


def _run(func: Callable[..., Awaitable[int]], *args: Any) -> int:
    import anyio  # imported here, not at the top: ``serve`` answers ``initialize`` before it needs anyio

    return anyio.run(func, *args)


class _Terminated(BaseException):
    """SIGTERM while ``serve`` is still starting (before the event loop handles signals)."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated(signum)


def _serve_command(loaded: LoadedConfig, *, headless_browser: bool = False) -> int:
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
    if _stdin_is_a_terminal():  # a person, not an IDE: say what this is, then serve as ever (an IDE may follow)
        _err(
            "mcp-bridge serve: this speaks MCP (JSON-RPC) on stdin and stdout, for an IDE such as Cursor or Claude "
            "Desktop to run as its command; it is waiting for one now.\n"
            "  To try the bridge by hand: `mcp-bridge demo` (offline, everything on this machine), or "
            "`mcp-bridge tools` and `mcp-bridge status` for your config.\n"
            "  Ctrl-D or Ctrl-C ends it."
        )
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        early = answer_initialize(instructions)
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
    return _run(_serve, loaded, home, allowlist, early, headless_browser)


def _stdin_is_a_terminal() -> bool:
    try:
        return os.isatty(0)
    except OSError:
        return False


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

    prepared = warmstart.prepare(loaded.settings, home, allowlist, str(early.version))
    if prepared is None:
        return early
    return warmstart.answer_lists_while_loading(early, prepared, _load_front)


async def _serve(
    loaded: LoadedConfig, home: Path, allowlist: Allowlist | None, early: EarlyStart, headless_browser: bool
) -> int:
    import anyio

    from mcp_bridge.auth import AuthEnv
    from mcp_bridge.bridge import Bridge
    from mcp_bridge.ide.front import serve_stdio

    def logged_only(server: str, url: str) -> None:
        log.info("serve.login_in_headless_browser", server=server)

    auth_env = AuthEnv.for_serve(loaded.settings, home, announce=logged_only if headless_browser else None)
    bridge = Bridge(loaded, home, initial=allowlist, auth_env=auth_env)
    log.info("serve.start", version=__version__, config=str(loaded.path), servers=sorted(loaded.settings.servers))
    async with bridge.running(), anyio.create_task_group() as tg:
        tg.start_soon(_handle_signals, tg.cancel_scope, bridge)
        await serve_stdio(bridge, early)
        tg.cancel_scope.cancel()
    log.info("serve.stop")
    return 0


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


async def _status(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from mcp_bridge.bridge import Bridge
    from mcp_bridge.doctor import listing_checks

    bridge = Bridge(loaded, home_dir(), auth_env=_no_browser(loaded))
    async with bridge.running():
        await _settle(bridge, loaded)
        rows = bridge.status()
        pinned_out = [e for e in bridge.catalog.entries() if e.blocked]
        checks = listing_checks(bridge.catalog.allowlist, rows, pinned_out, loaded.settings.timeouts.connect)
        allowlist = bridge.catalog.allowlist.describe()
    audit = await _audit_health(loaded)
    # 1 when the bridge fails closed (allowlist or audit) or a server's tools cannot be served (down, no answer,
    # waiting for a login, blocked by their pins): what a script checking the setup needs to know.
    code = 1 if audit["problem"] or any(not c.ok for c in checks) else 0
    if args.json:
        _out_json({"allowlist": allowlist, "servers": rows, "audit": audit}, indent=2)
        return code
    _out(_allowlist_line(allowlist))
    if audit["problem"]:
        _out(f"audit: FAILED CLOSED, every tool call is denied\n  {audit['problem']}")
    if not rows:
        if not allowlist["failed_closed"]:
            where = "in Port" if allowlist["source"] == "Port" else "under `servers:` in the config"
            _out(f"no servers approved for you ({where})")
        return code
    table = [["SERVER", "STATE", "TOOLS", "URL", "TOKEN", "LAST ERROR"]]
    for r in rows:
        tools = f"{r['tools_allowed']} of {r['tools_offered']}"
        token = ""
        if r.get("token_expires_at"):
            left = r["token_expires_at"] - time.time()
            token = f"expires in {left / 60:.0f} min" if left > 0 else "expired (refreshes on use)"
        table.append([r["server"], r["state"], tools, r["url"], token, r["last_error"] or ""])
    _print_table(table)
    blocked = [name for r in rows for name in r.get("blocked_tools", [])]
    if blocked:
        _out(f"blocked, their definition changed since approval: {', '.join(blocked)}")
        _out("  review with `mcp-bridge pins list`, then `mcp-bridge pins approve NAME` (or update tool_pins in Port)")
    return code


async def _tools(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from mcp_bridge.bridge import Bridge
    from mcp_bridge.doctor import listing_checks, render

    bridge = Bridge(loaded, home_dir(), auth_env=_no_browser(loaded))
    async with bridge.running():
        await _settle(bridge, loaded)
        entries = sorted(bridge.catalog.entries(), key=lambda e: e.exposed)
        blocked = [e for e in entries if e.blocked]
        rows = bridge.status()
        checks = listing_checks(bridge.catalog.allowlist, rows, blocked, loaded.settings.timeouts.connect)
    failed = len([c for c in checks if not c.ok])
    code = 1 if failed else 0
    shown = [e for e in entries if args.all or e.denial is None]
    if args.json:
        out = [
            {
                "name": e.exposed,
                "server": e.server,
                "tool": e.original,
                "description": e.description,
                "allowed": e.denial is None,
                **({"denied_because": e.denial} if e.denial else {}),
            }
            for e in shown
        ]
        problems = [{"about": c.name, "failed": not c.ok, "detail": c.detail, "fix": c.fix} for c in checks]
        _out_json({"tools": out, "problems": problems}, indent=2, ensure_ascii=False)
        if failed:
            _err(f"mcp-bridge tools: {failed} problem(s) keep tools out of the list (see `problems`)")
        return code
    table = [["NAME", "SERVER", "TOOL", "DESCRIPTION"]]
    for e in shown:  # a hidden tool's reason is shown whole: cut, it could lose what to change
        desc = _shorten(e.description) if e.denial is None else f"[hidden: {e.denial}]"
        table.append([e.exposed, e.server, e.original, desc])
    _print_table(table)
    if checks:
        _out("")
        _out("Why the list is short:" if shown else "Why the list is empty:")
        _out(render(checks))
    if failed:
        _err(f"mcp-bridge tools: {failed} problem(s) keep tools out of the list; each has its fix above")
    return code


def _shorten(text: str, width: int = 80) -> str:
    """``text`` in at most ``width`` characters: cut at a word boundary (mid-word only for a word longer than half
    the width), ending with an ellipsis."""
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    if space > width // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


async def _call(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from mcp_bridge.bridge import Bridge

    try:
        arguments = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise _UsageError(f"--args is not valid JSON: {exc.msg} (at position {exc.pos})") from None
    if not isinstance(arguments, dict):
        raise _UsageError('--args must be a JSON object, e.g. \'{"query": "x"}\'')
    bridge = Bridge(loaded, home_dir(), auth_env=_no_browser(loaded))
    async with bridge.running():
        await _settle(bridge, loaded)
        try:
            result: dict[str, Any] = await bridge.call_tool(args.name, arguments)
        except Exception as exc:
            from mcp.shared.exceptions import MCPError

            if isinstance(exc, MCPError):
                raise BridgeError(f"{args.name}: error {exc.error.code}: {exc.error.message}") from None
            raise
    _out_json(result, indent=2, ensure_ascii=False)
    return 1 if result.get("isError") else 0


async def _settle(bridge: Any, loaded: LoadedConfig) -> None:
    """For hand-run commands: the allowlist's first answer (Port gets its full retry budget), then the servers."""
    port = loaded.settings.port
    if port is not None:
        await bridge.wait_allowlist(port.timeout * 4 + 15)
    await bridge.wait_settled(loaded.settings.timeouts.connect)


async def _audit_health(loaded: LoadedConfig) -> dict[str, Any]:
    """The audit spool as a call would meet it (``status``): its state, and the problem with its fix."""
    import anyio

    from mcp_bridge.audit.spool import check
    from mcp_bridge.audit.spoolcheck import spool_path, spools

    if not spools(loaded.settings):
        return {"spool": None, "state": "local", "problem": None, "pending": 0}
    health = await anyio.to_thread.run_sync(check, spool_path(home_dir()))
    problem = str(health.problem) if health.problem is not None else None
    return {"spool": str(health.path), "state": health.state, "problem": problem, "pending": health.pending}


def _allowlist_line(allowlist: dict[str, Any]) -> str:
    line = f"allowlist: {allowlist['source']}"
    if allowlist["fetched_at"]:
        age = max(0.0, time.time() - allowlist["fetched_at"])
        line += f", fetched {age:.0f}s ago" if age < 120 else f", fetched {age / 60:.0f} min ago"
    if allowlist["failed_closed"]:
        line += " — FAILED CLOSED, no tools are allowed"
    if allowlist["note"]:
        line += f"\n  {allowlist['note']}"
    return line


class _UsageError(ConfigError):
    """Bad command-line input (exit 2)."""


def _print_table(rows: list[list[str]]) -> None:
    """Aligned columns; each cell on one line, sanitised (a line feed in a server's text cannot forge a row)."""
    cells = [[printable(str(c), newlines=False) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    for r in cells:
        _out("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


async def _doctor(args: argparse.Namespace) -> int:
    from mcp_bridge.doctor import render, run_checks

    checks = await run_checks(args.config, progress=lambda message: _err(f"... {message}"))
    _out(render(checks))
    broken = [c for c in checks if not c.ok]
    if broken:
        _err(f"mcp-bridge doctor: {len(broken)} problem(s); each has its fix above")
    return 1 if broken else 0


def _install(args: argparse.Namespace) -> int:
    """Not async and no bridge: it only edits the IDE's file (the config must exist, it is what the entry points at)."""
    from mcp_bridge.config import env_references, resolve_config_path
    from mcp_bridge.install import apply, default_path, plan

    config = resolve_config_path(args.config)
    if not config.is_file():
        raise _UsageError(f"{config}: no config file there; create it first (see config.example.yaml)")
    load_config(str(config))  # a broken config would only fail later, inside the IDE: refuse it now
    variables = env_references(config.read_text(encoding="utf-8"))
    if variables:  # this shell has them (the config loaded); the IDE started from the Dock or a menu will not
        listed = ", ".join(variables)
        _err(f"mcp-bridge install: warning: the config takes {listed} from the environment (${{env:...}}).")
        _err("  Claude Desktop and Cursor started from the Dock, the Start menu or a desktop launcher do not get a")
        _err("  shell's environment, so the bridge they start would stop at the first missing variable. Store each in")
        first = variables[0]
        _err(f"  the OS keyring instead, e.g. `mcp-bridge secret set {first}` (it asks for the value), and write")
        _err(f"  ${{keyring:{first}}} where the config says ${{env:{first}}}.")
    path = Path(args.path).expanduser() if args.path else default_path(args.client)
    change = plan(path, args.name, config)
    if not change.changed:
        _out(f"{path}: the {args.name!r} entry is already up to date; nothing written")
        return 0
    if args.dry_run:
        _out(change.diff(), end="")
        _out(f"(dry run: {path} not written)")
        return 0
    backup = apply(change)
    if change.outcome == "created":
        _out(f"{path}: created, with the {args.name!r} entry")
    else:
        _out(f"{path}: {change.outcome} the {args.name!r} entry")
    if backup is not None:
        _out(f"  backup of the previous file: {backup}")
    _out("  no secret was written there: keep credentials in the OS keyring (`mcp-bridge secret set NAME`, written")
    _out("  ${keyring:NAME} in the config; OAuth tokens go there by themselves). Restart the IDE to pick the entry up.")
    return 0


def _secret(args: argparse.Namespace) -> int:
    """``secret set|delete|list``: named secrets in the OS keyring (:class:`~mcp_bridge.keyring_store.NamedSecrets`).
    A value is read from a prompt that does not echo (stdin a terminal) or from stdin, never from the command line
    (which other users' ``ps`` and the shell's history show); no value is ever printed."""
    import keyring.errors

    from mcp_bridge.keyring_store import KeyringUnavailable, NamedSecrets

    secrets = NamedSecrets(home_dir())
    try:
        if args.action == "list":
            return _secret_list(secrets, args.json)
        if not args.name:
            raise _UsageError(f"`secret {args.action}` needs a NAME, e.g. `mcp-bridge secret {args.action} DOCS_TOKEN`")
        name = NamedSecrets.check_name(args.name)
        backend = secrets.backend  # no keyring: say so before asking for the value
        if args.action == "delete":
            if secrets.delete(name):
                _out(f"{name}: deleted from the keyring; a config that refers to ${{keyring:{name}}} now stops with")
                _out(f"  an error until `mcp-bridge secret set {name}` stores it again")
            else:
                _out(f"{name}: no such secret (see `mcp-bridge secret list`); nothing to delete")
            return 0
        value = _read_secret(name)
        register_secrets([value])
        secrets.set(name, value)
    except KeyringUnavailable as exc:
        raise BridgeError(str(exc)) from None
    except keyring.errors.KeyringError as exc:
        raise BridgeError(f"the keyring refused: {type(exc).__name__}: {clean(str(exc))}") from None
    _out(f"{name}: stored in the keyring ({backend.name}). Refer to it in the config as ${{keyring:{name}}},")
    _out(f'  e.g. `value: "Bearer ${{keyring:{name}}}"`; running bridges read it when they next load the config.')
    return 0


def _read_secret(name: str) -> str:
    """The value: from a prompt without echo when stdin is a terminal, else all of stdin less one line end."""
    if _stdin_is_a_terminal():
        import getpass

        try:
            value = getpass.getpass(f"Value of {name} (not shown): ")
        except EOFError:
            value = ""
    else:
        value = sys.stdin.read()
        value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
    if not value.strip():
        raise _UsageError(f"{name}: the value is empty; nothing stored (type it at the prompt, or pipe it in)")
    return value


def _secret_list(secrets: Any, as_json: bool) -> int:
    """The names stored with ``secret set``, when, and whether the keyring still holds each; never a value."""
    from mcp_bridge.keyring_store import KeyringUnavailable

    names = secrets.names()
    problem = None
    try:
        held = {name: secrets.get(name) is not None for name in names}
    except KeyringUnavailable as exc:
        problem, held = str(exc), {}
    rows = [{"name": n, "set_at": when, "in_keyring": held.get(n)} for n, when in sorted(names.items())]
    if as_json:
        _out_json({"secrets": rows}, indent=2)
    elif not rows:
        _out(f"no secrets stored with `mcp-bridge secret set` (the names are kept in {secrets.index})")
    else:
        table = [["NAME", "SET (UTC)", "IN THE KEYRING"]]
        for r in rows:
            there = {True: "yes", False: "no: gone from the keyring; set it again", None: "unknown"}[r["in_keyring"]]
            table.append([r["name"], r["set_at"], there])
        _print_table(table)
    if problem is not None:
        raise BridgeError(problem)
    return 0


async def _pins(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from mcp_bridge.bridge import Bridge
    from mcp_bridge.governance.pins import PinStore, definition_of, short

    if args.action == "reset":
        if not args.target:
            raise _UsageError("pins reset needs a SERVER")
        dropped = PinStore(home_dir() / "pins.json").update(reset=args.target)
        if not dropped:
            _out(f"{args.target}: no local pins; nothing to reset")
            return 0
        _out(f"{args.target}: removed {dropped} local pin(s); its tools are pinned again as next seen")
        _out("  (trust on first use; pins from the allowlist, e.g. Port's tool_pins, are not local and stay)")
        return 0
    if args.action == "approve" and not args.target:
        raise _UsageError("pins approve needs a tool NAME (as `mcp-bridge tools --all` shows it)")
    bridge = Bridge(loaded, home_dir(), auth_env=_no_browser(loaded))
    async with bridge.running():
        await _settle(bridge, loaded)
        entries = {e.exposed: e for e in bridge.catalog.entries()}
        verdicts = {(v.server, v.tool): v for per in bridge.pins.verdicts.values() for v in per.values()}
        if args.action == "list":
            rows: list[dict[str, Any]] = []
            for exposed, e in sorted(entries.items()):
                v = verdicts.get((e.server, e.original))
                if v is None:
                    continue  # not allowed: nothing to pin
                state = "ok" if not v.changed else ("BLOCKED" if v.blocked else "changed")
                rows.append(
                    {
                        "name": exposed,
                        "server": e.server,
                        "tool": e.original,
                        "state": state,
                        "pinned": v.pinned,
                        "pinned_by": v.source,
                        "current": v.fingerprint,
                        "reason": v.reason,
                    }
                )
            if args.json:
                _out_json({"pins": rows}, indent=2)
                return 0
            table = [["NAME", "STATE", "PINNED", "BY", "CURRENT"]]
            table += [[r["name"], r["state"], short(r["pinned"]), r["pinned_by"], short(r["current"])] for r in rows]
            _print_table(table)
            for r in rows:
                if r["reason"]:
                    _out(f"{r['name']}: {r['reason']}")
            return 0
        entry = entries.get(args.target)
        if entry is None:
            raise _UsageError(f"unknown tool {args.target!r} (see `mcp-bridge tools --all`; is its server connected?)")
        verdict = verdicts.get((entry.server, entry.original))
        if verdict is None:
            raise BridgeError(f"{args.target}: not allowed by the allowlist, so there is no pin to approve")
        if args.fingerprint and args.fingerprint != verdict.fingerprint:
            raise BridgeError(
                f"{args.target}: its definition is now {verdict.fingerprint}, not the {args.fingerprint} you reviewed"
            )
        if verdict.duplicated:
            raise BridgeError(f"{args.target}: cannot be approved: {verdict.reason}")
        if not verdict.changed:
            _out(f"{args.target}: already matches its pin ({short(verdict.pinned)}, by {verdict.source})")
            return 0
        if verdict.source == "allowlist":
            raise BridgeError(
                f"{args.target}: pinned by the allowlist (Port's tool_pins), which cannot be overridden locally; "
                f"ask its admin to set tool_pins.{entry.original} to {verdict.fingerprint}"
            )
        definition = definition_of({**entry.definition, "name": entry.original})
        bridge.pins.store.update({(entry.server, entry.original): definition})
        bridge.audit.note(
            "tool_pin_approved",
            server=entry.server,
            tool=entry.original,
            detail=f"pinned {verdict.pinned} -> {verdict.fingerprint} by `mcp-bridge pins approve`",
        )
    _out(f"{args.target}: approved; pinned {verdict.fingerprint} (was {verdict.pinned})")
    _out("  running bridges pick the new pin up within a second")
    return 0


def _no_browser(loaded: LoadedConfig) -> Any:
    """Hand-run commands other than ``login`` never open a browser: a server that needs one shows ``needs_auth``."""
    from mcp_bridge.auth import AuthEnv
    from mcp_bridge.auth.oauth import LoginPolicy

    policy = LoginPolicy(interactive=False, cooldown=0, timeout=loaded.settings.timeouts.login)
    return AuthEnv(home_dir(), loaded.settings.token_store, policy)


async def _oauth_server(loaded: LoadedConfig, name: str) -> Any:
    """The approved server ``name`` (from Port or the config); a usage error when it is unknown or not OAuth."""
    from mcp_bridge.bridge import load_allowlist
    from mcp_bridge.config import OAuthAuth

    allowlist = await load_allowlist(loaded.settings, home_dir())
    server = allowlist.servers.get(name)
    if server is None:
        known = ", ".join(sorted(allowlist.servers)) or "none"
        extra = f" ({allowlist.note})" if allowlist.note else ""
        raise _UsageError(f"{name!r} is not an approved server (approved: {known}){extra}")
    if not isinstance(server.auth, OAuthAuth):
        raise _UsageError(f"{name!r} does not use OAuth (auth: {server.auth.type}); there is nothing to log in to")
    return server


async def _login(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    import anyio

    from mcp_bridge.auth import AuthEnv
    from mcp_bridge.auth.oauth import LoginPolicy
    from mcp_bridge.upstream.supervisor import Upstream

    server = await _oauth_server(loaded, args.server)
    opened: list[str] = []

    def announce(name: str, url: str) -> None:
        opened.append(url)
        _err(f"Opening a browser to log in to {name}. If it does not open, visit:\n  {url}")
        _err(f"Waiting for the login to finish (up to {loaded.settings.timeouts.login:g} s; Ctrl-C to cancel)...")

    policy = LoginPolicy(interactive=True, cooldown=0, timeout=loaded.settings.timeouts.login, announce=announce)
    env = AuthEnv(home_dir(), loaded.settings.token_store, policy)
    upstream = Upstream(args.server, server, loaded.settings.timeouts, lambda *_: None, auth_env=env)
    async with anyio.create_task_group() as tg:
        tg.start_soon(upstream.run)
        await upstream.settled.wait()
        state, error, listing = upstream.state, upstream.last_error, upstream.listing  # before stopping it
        tg.cancel_scope.cancel()
    _note(loaded, "login", args.server, ok=state == "connected", error=error)
    if state != "connected":
        raise BridgeError(f"login to {args.server!r} failed: {error}")
    tools = len(listing.tools) if listing else 0
    how = "logged in" if opened else "already logged in (stored tokens work)"
    expires = upstream.token_expires_at()
    left = f"; the access token is valid for {max(0, expires - time.time()) / 60:.0f} more min" if expires else ""
    _out(f"{args.server}: {how}; {tools} tools offered{left}")
    return 0


async def _logout(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from mcp_bridge.auth import AuthEnv
    from mcp_bridge.auth.oauth import revoke_tokens
    from mcp_bridge.keyring_store import KeyringUnavailable

    server = await _oauth_server(loaded, args.server)
    env = AuthEnv.for_serve(loaded.settings, home_dir())
    try:
        storage = env.storage(server.endpoint)
    except KeyringUnavailable as exc:
        raise BridgeError(str(exc)) from None
    revoked = await revoke_tokens(storage, server.auth)
    storage.clear_all()
    _note(loaded, "logout", args.server, ok=True, error=None)
    _out(f"{args.server}: logged out; stored tokens deleted" + ("; the server revoked them" if revoked else ""))
    return 0


def _note(loaded: LoadedConfig, kind: str, server: str, *, ok: bool, error: str | None) -> None:
    """Record a login or logout in the audit trail (shipped by the next bridge that ships)."""
    from mcp_bridge.audit.trail import AuditTrail

    trail = AuditTrail(loaded.settings, home_dir())
    try:
        trail.note(kind, server=server, status="Completed" if ok else "Failed", error=error)
    finally:
        trail.close()


async def _audit(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    import anyio

    from mcp_bridge.audit.shipper import Shipper
    from mcp_bridge.audit.spoolcheck import spool_path
    from mcp_bridge.audit.trail import AuditTrail

    if args.action == "reset":  # the file itself, whatever the config says (it may be left from another one)
        return await anyio.to_thread.run_sync(_audit_reset, spool_path(home_dir()), args.force)
    trail = AuditTrail(loaded.settings, home_dir())
    try:
        if trail.spool is None:
            _out("audit: events stay local (no `port:` or `port.audit_blueprint: null`); nothing is spooled")
            return 0
        port = loaded.settings.port
        assert port is not None and port.audit_blueprint is not None
        if args.action == "flush":
            from mcp_bridge.governance.port import PortClient

            async with PortClient(port) as client:
                shipper = Shipper(trail, client, port.audit_blueprint, loaded.settings.timeouts.call + 30)
                left = await shipper.flush(30.0)
            _out(f"audit: shipped {shipper.shipped} events to Port; {left} waiting")
            if left:
                last = trail.spool.stats().last_error
                _err(f"mcp-bridge: {left} events are still waiting" + (f" (last error: {last})" if last else ""))
            return 1 if left else 0
        stats = trail.spool.stats()
        if args.json:
            _out_json(stats.__dict__, indent=2)
            return 0
        age = f"{stats.oldest_age:.0f}s" if stats.oldest_age is not None else "-"
        _out(f"pending: {stats.pending} (calls in progress: {stats.in_progress}); oldest: {age}")
        _out(f"last error: {stats.last_error or '-'}; dropped (spool full): {stats.dropped}")
        return 0
    finally:
        trail.close()


def _audit_reset(path: Path, force: bool) -> int:
    """``audit reset``: a damaged spool (or any, with ``--force``) is moved aside, kept, and a fresh one started."""
    from filelock import Timeout

    from mcp_bridge.audit.spool import SpoolChanged, check, move_aside

    health = check(path)
    if health.state == "missing":
        _out(f"audit: no spool at {path}; nothing to reset (the first event creates it)")
        return 0
    if health.state == "ok" and not force:
        raise _UsageError(
            f"the audit spool {path} is healthy ({health.pending} event(s) waiting to be shipped); nothing to reset. "
            "`mcp-bridge audit reset --force` moves it aside all the same (kept; the events in it are then not shipped)"
        )
    if health.state == "unwritable" and not force:
        assert health.problem is not None
        raise BridgeError(
            f"the audit spool {path} cannot be written ({health.problem.reason}), but the file is not damaged, so it "
            "stays where it is: free space on the disk that holds it and check that it is writable. "
            "`mcp-bridge audit reset --force` moves it aside all the same (kept; the events in it are then not shipped)"
        )
    try:
        moved, fresh_problem = move_aside(path, health.identity)
    except SpoolChanged as exc:
        raise BridgeError(f"{exc}; nothing was moved: run `mcp-bridge audit reset` again") from None
    except Timeout:
        raise BridgeError(f"{path}: another mcp-bridge process holds {path}.lock; try again") from None
    except OSError as exc:
        hint = " (on Windows, quit the IDEs whose bridges use it first)" if sys.platform == "win32" else ""
        raise BridgeError(f"could not move {path} aside: {exc.strerror or exc}{hint}") from None
    if health.problem is not None:
        _out(f"audit: the spool was {health.state}: {health.problem.reason}")
    else:
        _out(f"audit: the spool was healthy; moved aside as asked (--force) with {health.pending} event(s) in it")
    for source, target in moved:
        _out(f"  moved aside (kept): {source} -> {target}")
    if fresh_problem is not None:
        raise BridgeError(f"could not start a fresh spool: {fresh_problem}")
    _out(f"  started a fresh spool: {path}")
    _out("  running bridges use the fresh spool from their next call; events left in the old file are not shipped")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, LoadedConfig], Awaitable[int]]] = {
    "status": _status,
    "tools": _tools,
    "call": _call,
    "login": _login,
    "logout": _logout,
    "audit": _audit,
    "pins": _pins,
}
