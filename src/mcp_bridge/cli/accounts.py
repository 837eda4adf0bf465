"""Credentials: ``login`` and ``logout`` of an OAuth server, and ``secret`` (named secrets in the OS keyring)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from mcp_bridge.cli.output import UsageError, err, out, out_json, print_table, stdin_is_a_terminal
from mcp_bridge.config import LoadedConfig, home_dir
from mcp_bridge.errors import BridgeError
from mcp_bridge.logs import clean, register_secrets


def secret(args: argparse.Namespace) -> int:
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
            raise UsageError(f"`secret {args.action}` needs a NAME, e.g. `mcp-bridge secret {args.action} DOCS_TOKEN`")
        name = NamedSecrets.check_name(args.name)
        backend = secrets.backend  # no keyring: say so before asking for the value
        if args.action == "delete":
            if secrets.delete(name):
                out(f"{name}: deleted from the keyring; a config that refers to ${{keyring:{name}}} now stops with")
                out(f"  an error until `mcp-bridge secret set {name}` stores it again")
            else:
                out(f"{name}: no such secret (see `mcp-bridge secret list`); nothing to delete")
            return 0
        value = _read_secret(name)
        register_secrets([value])
        secrets.set(name, value)
    except KeyringUnavailable as exc:
        raise BridgeError(str(exc)) from None
    except keyring.errors.KeyringError as exc:
        raise BridgeError(f"the keyring refused: {type(exc).__name__}: {clean(str(exc))}") from None
    out(f"{name}: stored in the keyring ({backend.name}). Refer to it in the config as ${{keyring:{name}}},")
    out(f'  e.g. `value: "Bearer ${{keyring:{name}}}"`; running bridges read it when they next load the config.')
    return 0


def _read_secret(name: str) -> str:
    """The value: from a prompt without echo when stdin is a terminal, else all of stdin less one line end."""
    if stdin_is_a_terminal():
        import getpass

        try:
            value = getpass.getpass(f"Value of {name} (not shown): ")
        except EOFError:
            value = ""
    else:
        value = sys.stdin.read()
        value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
    if not value.strip():
        raise UsageError(f"{name}: the value is empty; nothing stored (type it at the prompt, or pipe it in)")
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
        out_json({"secrets": rows}, indent=2)
    elif not rows:
        out(f"no secrets stored with `mcp-bridge secret set` (the names are kept in {secrets.index})")
    else:
        table = [["NAME", "SET (UTC)", "IN THE KEYRING"]]
        for r in rows:
            there = {True: "yes", False: "no: gone from the keyring; set it again", None: "unknown"}[r["in_keyring"]]
            table.append([r["name"], r["set_at"], there])
        print_table(table)
    if problem is not None:
        raise BridgeError(problem)
    return 0


async def _oauth_server(loaded: LoadedConfig, name: str) -> Any:
    """The approved server ``name`` (from Port or the config); a usage error when it is unknown or not OAuth."""
    from mcp_bridge.bridge import load_allowlist
    from mcp_bridge.config import OAuthAuth

    allowlist = await load_allowlist(loaded.settings, home_dir())
    server = allowlist.servers.get(name)
    if server is None:
        known = ", ".join(sorted(allowlist.servers)) or "none"
        extra = f" ({allowlist.note})" if allowlist.note else ""
        raise UsageError(f"{name!r} is not an approved server (approved: {known}){extra}")
    if not isinstance(server.auth, OAuthAuth):
        raise UsageError(f"{name!r} does not use OAuth (auth: {server.auth.type}); there is nothing to log in to")
    return server


async def login(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    import anyio

    from mcp_bridge.auth import AuthEnv
    from mcp_bridge.auth.oauth import LoginPolicy
    from mcp_bridge.upstream.supervisor import Upstream

    server = await _oauth_server(loaded, args.server)
    opened: list[str] = []

    def announce(name: str, url: str) -> None:
        opened.append(url)
        err(f"Opening a browser to log in to {name}. If it does not open, visit:\n  {url}")
        err(f"Waiting for the login to finish (up to {loaded.settings.timeouts.login:g} s; Ctrl-C to cancel)...")

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
    out(f"{args.server}: {how}; {tools} tools offered{left}")
    return 0


async def logout(args: argparse.Namespace, loaded: LoadedConfig) -> int:
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
    out(f"{args.server}: logged out; stored tokens deleted" + ("; the server revoked them" if revoked else ""))
    return 0


def _note(loaded: LoadedConfig, kind: str, server: str, *, ok: bool, error: str | None) -> None:
    """Record a login or logout in the audit trail (shipped by the next bridge that ships)."""
    from mcp_bridge.audit.trail import AuditTrail

    trail = AuditTrail(loaded.settings, home_dir())
    try:
        trail.note(kind, server=server, status="Completed" if ok else "Failed", error=error)
    finally:
        trail.close()
