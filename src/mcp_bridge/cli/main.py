"""The ``mcp-bridge`` command line: parsing, the options each command takes, and the one place where errors become
exit codes: 0 ok, 1 runtime failure, 2 usage/config.

``serve`` (the default) is what an IDE runs: stdout is the protocol, so it prints nothing. The other commands are
for people: they print to stdout and report problems on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Sequence

from mcp_bridge import __version__
from mcp_bridge.cli.accounts import login, logout, secret
from mcp_bridge.cli.commands import call, connections, status, tools
from mcp_bridge.cli.output import err, run
from mcp_bridge.cli.serve import serve_command
from mcp_bridge.cli.state import audit, pins
from mcp_bridge.config import LoadedConfig, load_config
from mcp_bridge.errors import BridgeError, ConfigError
from mcp_bridge.logs import clean, configure, register_secrets

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
    "short when a server is down, needs a login or allows nothing. Exit 1 when a server failed. "
    "`tools disable NAME` turns one tool off for you (never on beyond the allowlist), `tools enable NAME` undoes it; "
    "running bridges follow within a second.",
    "login": "Log in to one OAuth server in the browser and keep its tokens in the OS keyring; running bridges "
    "pick them up within seconds.",
    "logout": "Revoke one server's OAuth tokens (where the server supports revocation) and delete everything "
    "stored for it.",
    "connect": "Connect one server: log in to it in the browser and keep its tokens in the OS keyring (the same as "
    "`login`); running bridges pick them up within seconds.",
    "disconnect": "Disconnect one server: revoke its OAuth tokens where it supports revocation and delete "
    "everything stored for it (the same as `logout`).",
    "connections": "Each approved server for you: its state (connected, needs connection, error), the account "
    "where the token says, the token's expiry, and its tools enabled of allowed of offered.",
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


_HELP = {
    "login": "log in to an OAuth server (opens a browser)",
    "connect": "connect a server: log in to it (opens a browser); the same as `login`",
    "logout": "revoke and delete a server's stored OAuth tokens",
    "disconnect": "disconnect a server: revoke and delete its tokens; the same as `logout`",
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
    p.add_argument(
        "--search", metavar="QUERY", help="rank the tools for QUERY as find_tools does in search mode (best first)"
    )
    p.add_argument("--limit", type=int, default=10, help="with --search: how many (default 10)")
    p.add_argument("action", nargs="?", choices=["disable", "enable"], help="turn one tool off for you, or on again")
    p.add_argument("target", nargs="?", metavar="NAME", help="disable/enable: the tool's exposed name")
    p = command("connections", help="each server: state, account, token expiry, tools enabled")
    p.add_argument("--json", action="store_true", help="machine-readable output (a list of objects)")
    for name, alias in (("login", "connect"), ("logout", "disconnect")):
        p = command(name, help=_HELP[name])
        p.add_argument("server", help="the server's name (its namespace)")
        p = command(alias, help=_HELP[alias])
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
            from mcp_bridge.cli.install import install_command

            return install_command(args)
        if command == "secret":  # no config: a secret is stored before a config refers to it
            configure(level="error")
            return secret(args)
        if command == "doctor":  # before loading the config: a broken config is one of the things it reports
            configure(level=args.log_level or "error", file=args.log_file)
            from mcp_bridge.cli.doctor import doctor_command

            return run(doctor_command, args)
        if command == "demo":  # it writes its own config
            from mcp_bridge.cli import demo

            if not args.serve:
                configure(level=args.log_level or "error", file=args.log_file)
                return demo.run()
            options = [*(["--log-level", args.log_level] if args.log_level else [])]
            options += ["--log-file", args.log_file] if args.log_file else []
            return demo.run(serve=lambda path: serve_config(path, *options))
        loaded = load_config(args.config)
        register_secrets(loaded.secrets)
        level = args.log_level or loaded.settings.log.level
        if command != "serve" and not args.log_level:
            level = "error" if level == "info" else level  # hand-run commands: stderr keeps to real errors
        configure(level=level, file=args.log_file or loaded.settings.log.file, defer=command == "serve")
        if command == "serve":
            return serve_command(loaded, headless_browser=headless_browser)
        handler: Callable[[argparse.Namespace, LoadedConfig], Awaitable[int]] = _COMMANDS[command]
        return run(handler, args, loaded)
    except BridgeError as exc:
        err(f"mcp-bridge: {clean(str(exc))}")
        if isinstance(exc, ConfigError) and exc.fix:
            err(f"  fix: {clean(exc.fix)}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def serve_config(path: str, *options: str) -> int:
    """Serve on stdio with the config at ``path`` (``demo --serve``): the same path as ``mcp-bridge serve``;
    ``options``: its ``--log-level`` and ``--log-file``. The demo's headless browser does its logins, so no login
    URL is announced (a person need not open it)."""
    return _guarded(lambda: _main(["serve", "--config", path, *options], headless_browser=True))


_COMMANDS: dict[str, Callable[[argparse.Namespace, LoadedConfig], Awaitable[int]]] = {
    "status": status,
    "tools": tools,
    "call": call,
    "login": login,
    "logout": logout,
    "connect": login,
    "disconnect": logout,
    "connections": connections,
    "audit": audit,
    "pins": pins,
}
