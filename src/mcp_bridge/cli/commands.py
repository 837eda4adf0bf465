"""``status``, ``tools`` and ``call``: the bridge as the IDE would see it, run once by hand."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from mcp_bridge import risk, telemetry
from mcp_bridge.cli.output import (
    UsageError,
    err,
    out,
    out_json,
    print_table,
    stderr_is_a_terminal,
    stdin_is_a_terminal,
)
from mcp_bridge.config import LoadedConfig, OAuthAuth, home_dir
from mcp_bridge.errors import BridgeError


async def status(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from mcp_bridge.bridge import Bridge
    from mcp_bridge.cli.doctor import listing_checks

    bridge = Bridge(loaded, home_dir(), auth_env=no_browser(loaded))
    async with bridge.running():
        await settle(bridge, loaded)
        rows = bridge.status()
        pinned_out = [e for e in bridge.catalog.entries() if e.blocked]
        checks = listing_checks(bridge.catalog.allowlist, rows, pinned_out, loaded.settings.timeouts.connect)
        allowlist = bridge.catalog.allowlist.describe()
    audit = await _audit_health(loaded)
    # 1 when the bridge fails closed (allowlist or audit) or a server's tools cannot be served (down, no answer,
    # waiting for a login, blocked by their pins): what a script checking the setup needs to know.
    code = 1 if audit["problem"] or any(not c.ok for c in checks) else 0
    exported = telemetry.describe(loaded.settings)
    if args.json:
        out_json({"allowlist": allowlist, "servers": rows, "audit": audit, "telemetry": exported}, indent=2)
        return code
    out(_allowlist_line(allowlist))
    if exported["enabled"]:
        out(
            f"telemetry: traces to {exported['traces']}, metrics every {exported['metrics_interval']:g} s to "
            f"{exported['metrics']} (OTLP/HTTP, service {exported['service_name']})"
        )
    if audit["problem"]:
        out(f"audit: FAILED CLOSED, every tool call is denied\n  {audit['problem']}")
    if not rows:
        if not allowlist["failed_closed"]:
            where = "in Port" if allowlist["source"] == "Port" else "under `servers:` in the config"
            out(f"no servers approved for you ({where})")
        return code
    table = [["SERVER", "STATE", "ERA", "TOOLS", "URL", "TOKEN", "LAST ERROR"]]
    for r in rows:
        tools = f"{r['tools_allowed']} of {r['tools_offered']}"
        token = _token_text(r.get("token_expires_at"))
        table.append([r["server"], r["state"], r.get("era") or "", tools, r["url"], token, r["last_error"] or ""])
    print_table(table)
    for r in rows:
        for name, why in sorted((r.get("unusable_tools") or {}).items()):
            out(f"not offered: {name}: {why}")
    for r in rows:
        classes = r.get("tools_by_class") or {}
        counted = [f"{c} {n['allowed']} of {n['offered']}" for c, n in classes.items() if n["offered"]]
        if counted:
            out(f"risk classes of {r['server']} (allowed of offered): {', '.join(counted)}")
    blocked = [name for r in rows for name in r.get("blocked_tools", [])]
    if blocked:
        out(f"blocked, their definition changed since approval: {', '.join(blocked)}")
        out("  review with `mcp-bridge pins list`, then `mcp-bridge pins approve NAME` (or update tool_pins in Port)")
    return code


async def tools(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from mcp_bridge.bridge import Bridge
    from mcp_bridge.cli.doctor import listing_checks, render

    if args.action is not None:
        return await _narrow(args, loaded)

    if args.search is not None and not args.search.strip():
        raise UsageError("--search needs words: the job to find a tool for")
    if not 1 <= args.limit <= 50:
        raise UsageError("--limit must be from 1 to 50")
    bridge = Bridge(loaded, home_dir(), auth_env=no_browser(loaded))
    async with bridge.running():
        await settle(bridge, loaded)
        entries = sorted(bridge.catalog.entries(), key=lambda e: e.exposed)
        blocked = [e for e in entries if e.blocked]
        rows = bridge.status()
        checks = listing_checks(bridge.catalog.allowlist, rows, blocked, loaded.settings.timeouts.connect)
        if args.search is not None:
            return _search(bridge.listing.find(args.search, None, args.limit), args.json)
    failed = len([c for c in checks if not c.ok])
    code = 1 if failed else 0
    shown = [e for e in entries if args.all or e.denial is None]
    if args.json:
        listed = [
            {
                "name": e.exposed,
                "server": e.server,
                "tool": e.original,
                "description": e.description,
                "classes": risk.classes_of(e.definition.get("annotations")),
                "allowed": e.denial is None,
                **({"denied_because": e.denial} if e.denial else {}),
            }
            for e in shown
        ]
        problems = [{"about": c.name, "failed": not c.ok, "detail": c.detail, "fix": c.fix} for c in checks]
        out_json({"tools": listed, "problems": problems}, indent=2, ensure_ascii=False)
        if failed:
            err(f"mcp-bridge tools: {failed} problem(s) keep tools out of the list (see `problems`)")
        return code
    table = [["NAME", "SERVER", "TOOL", "RISK", "DESCRIPTION"]]
    for e in shown:  # a hidden tool's reason is shown whole: cut, it could lose what to change
        desc = _shorten(e.description) if e.denial is None else f"[hidden: {e.denial}]"
        table.append([e.exposed, e.server, e.original, risk_label(e.definition.get("annotations")), desc])
    print_table(table)
    if checks:
        out("")
        out("Why the list is short:" if shown else "Why the list is empty:")
        out(render(checks))
    if failed:
        err(f"mcp-bridge tools: {failed} problem(s) keep tools out of the list; each has its fix above")
    return code


async def _narrow(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    """``tools disable|enable NAME``: the user's own narrowing (:mod:`mcp_bridge.governance.narrowing`); running
    bridges pick it up within a second. It never widens: enabling only undoes a ``disable``."""
    from mcp_bridge.bridge import load_allowlist
    from mcp_bridge.governance.narrowing import Narrowing

    if args.json or args.all or args.search is not None:
        raise UsageError(f"`tools {args.action}` takes only a NAME (no --json, --all or --search)")
    name = (args.target or "").strip()
    if not name:
        raise UsageError(f"`tools {args.action}` needs the tool's exposed NAME, as `mcp-bridge tools` shows it")
    narrowing = Narrowing(home_dir())
    if args.action == "enable":
        if not narrowing.update(enable=name):
            out(f"{name}: not disabled by you; nothing to enable (the allowlist decides the rest)")
            return 0
        out(f"{name}: enabled again; running bridges list it within a second (if the allowlist allows it)")
        return 0
    sep = loaded.settings.naming.separator
    allowlist = await load_allowlist(loaded.settings, home_dir())
    server = name.split(sep, 1)[0] if sep in name else ""
    if server not in allowlist.servers and name not in narrowing.names:
        known = ", ".join(sorted(allowlist.servers)) or "none"
        raise UsageError(f"{name}: not a tool of a server on your allowlist (servers: {known}); see `mcp-bridge tools`")
    if not narrowing.update(disable=name):
        out(f"{name}: already disabled by you")
        return 0
    out(f"{name}: disabled; running bridges drop it from the IDE's list within a second")
    out(f"  (`mcp-bridge tools enable {name}` turns it on again)")
    return 0


def _search(found: list[dict[str, Any]], as_json: bool) -> int:
    """``tools --search``: the ranking ``find_tools`` gives the model, best first."""
    if as_json:
        out_json({"tools": found}, indent=2, ensure_ascii=False)
        return 0
    if not found:
        out("no tool matches; try other words")
        return 0
    table = [["#", "NAME", "SERVER", "DESCRIPTION"]]
    for rank, tool in enumerate(found, 1):
        table.append([str(rank), tool["name"], tool["server"], _shorten(str(tool.get("description") or ""))])
    print_table(table)
    return 0


def risk_label(annotations: object) -> str:
    """One word for a tool's risk, from its hints with the spec's defaults: read-only, non-destructive or
    destructive."""
    classes = risk.classes_of(annotations)
    if "@read_only" in classes:
        return "read-only"
    return "non-destructive" if "@non_destructive" in classes else "destructive"


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


_STATES = {"needs_auth": "needs connection"}


async def connections(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    """Each server for the user: its state, the account where known, the token's expiry, and its tools enabled (by
    the user's narrowing) of allowed of offered."""
    from mcp_bridge.bridge import Bridge

    bridge = Bridge(loaded, home_dir(), auth_env=no_browser(loaded))
    async with bridge.running():
        await settle(bridge, loaded)
        rows = bridge.status()
        entries = bridge.catalog.entries()
        mine = bridge.narrowing.names
        accounts = {r["server"]: await _account(bridge, r["server"]) for r in rows}
    listed = []
    for r in rows:
        name = r["server"]
        tools = [e for e in entries if e.server == name]
        enabled = sum(1 for e in tools if e.denial is None)
        by_user = sum(1 for e in tools if e.exposed in mine and e.denial is not None and "disabled by you" in e.denial)
        listed.append(
            {
                "name": name,
                "state": r["state"],
                "auth": r.get("auth"),
                "account": accounts.get(name),
                "token_expires_at": r.get("token_expires_at"),
                "tools_enabled": enabled,
                "tools_allowed": enabled + by_user,
                "tools_offered": len(tools),
                "last_error": r.get("last_error"),
            }
        )
    if args.json:
        out_json(listed, indent=2)
        return 0
    if not listed:
        out("no servers approved for you")
        return 0
    table = [["SERVER", "STATE", "ACCOUNT", "TOKEN", "TOOLS (enabled of allowed of offered)"]]
    for c in listed:
        token = _token_text(c["token_expires_at"])
        counts = f"{c['tools_enabled']} of {c['tools_allowed']} of {c['tools_offered']}"
        table.append([c["name"], _STATES.get(c["state"], c["state"]), c["account"] or "", token, counts])
    print_table(table)
    waiting = [c["name"] for c in listed if c["state"] == "needs_auth"]
    for name in waiting:
        out(f"{name}: `mcp-bridge connect {name}` logs in (a browser opens)")
    return 0


async def _account(bridge: Any, server: str) -> str | None:
    """Who the server knows the user as, where the stored token says so (a JWT's ``email``, ``preferred_username``
    or ``sub``; read for display, not verified); ``None`` otherwise."""
    upstream = bridge.upstreams.get(server)
    if upstream is None or upstream.auth_env is None or not isinstance(upstream.config.auth, OAuthAuth):
        return None
    try:
        tokens = await upstream.auth_env.storage(upstream.config.endpoint).get_tokens()
    except Exception:  # no keyring, unreadable store: nothing to show
        return None
    return jwt_subject(tokens.access_token) if tokens is not None else None


def jwt_subject(token: str) -> str | None:
    """The ``email``, ``preferred_username`` or ``sub`` claim of a JWT, unverified; ``None`` for any other token."""
    import base64

    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    if not isinstance(payload, dict):
        return None
    for claim in ("email", "preferred_username", "sub"):
        value = payload.get(claim)
        if isinstance(value, str) and value:
            return value[:120]
    return None


async def call(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from mcp_bridge.bridge import Bridge

    try:
        arguments = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--args is not valid JSON: {exc.msg} (at position {exc.pos})") from None
    if not isinstance(arguments, dict):
        raise UsageError('--args must be a JSON object, e.g. \'{"query": "x"}\'')
    bridge = Bridge(loaded, home_dir(), auth_env=no_browser(loaded))
    if stdin_is_a_terminal() and stderr_is_a_terminal():  # a person at a terminal: confirm asks them
        bridge.confirm_in_terminal = ask_in_terminal
    async with bridge.running():
        await settle(bridge, loaded)
        try:
            result: dict[str, Any] = await bridge.call_tool(args.name, arguments)
        except Exception as exc:
            from mcp.shared.exceptions import MCPError

            if isinstance(exc, MCPError):
                raise BridgeError(f"{args.name}: error {exc.error.code}: {exc.error.message}") from None
            raise
    out_json(result, indent=2, ensure_ascii=False)
    return 1 if result.get("isError") else 0


async def ask_in_terminal(question: str) -> bool:
    """A server's ``confirm`` question, asked on the terminal (stderr, then a line from stdin): ``y`` or ``yes``
    runs the call; anything else, or the end of input, does not."""
    import anyio

    def ask() -> bool:
        err(question)
        sys.stderr.write("Run it? [y/N] ")
        sys.stderr.flush()
        return sys.stdin.readline().strip().lower() in ("y", "yes")

    return await anyio.to_thread.run_sync(ask, abandon_on_cancel=True)


async def settle(bridge: Any, loaded: LoadedConfig) -> None:
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


def _token_text(expires_at: float | None) -> str:
    """When a server's access token expires, for a table (empty when there is none)."""
    if not expires_at:
        return ""
    left = expires_at - time.time()
    return f"expires in {left / 60:.0f} min" if left > 0 else "expired (refreshes on use)"


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


def no_browser(loaded: LoadedConfig) -> Any:
    """Hand-run commands other than ``login`` never open a browser: a server that needs one shows ``needs_auth``."""
    from mcp_bridge.auth import AuthEnv
    from mcp_bridge.auth.oauth import LoginPolicy

    policy = LoginPolicy(interactive=False, cooldown=0, timeout=loaded.settings.timeouts.login)
    return AuthEnv(home_dir(), loaded.settings.token_store, policy)
