"""``mcp-bridge doctor``: check the setup end to end and say, for each problem, exactly what to do.

:func:`run_checks` runs the checks in order (config, keyring, Port, the audit spool, allowlist, each server, tool
names, tool count), each bounded in time, and returns one :class:`Check` per finding; :func:`render` turns them into
lines for a person.
Nothing here prints (the CLI prints ``render(...)``) or opens a browser (logins are non-interactive), and every
message built from an exception goes through :func:`~mcp_bridge.logs.clean`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from mcp_bridge.audit.spoolcheck import RESET_COMMAND, spool_path, spools
from mcp_bridge.cli.output import err, out
from mcp_bridge.config import CatalogConfig, LoadedConfig, OAuthAuth, Settings, home_dir, load_config
from mcp_bridge.errors import ConfigError
from mcp_bridge.governance.allowlist import Allowlist
from mcp_bridge.logs import clean, register_secrets

IDE_ENTRY = "mcp-bridge"
"""The IDE entry name assumed when estimating what Cursor counts into a tool name's length."""
CURSOR_NAME_LIMIT = 60
_KEYRING_SECONDS = 10.0
_SETTLE_MARGIN = 15.0
_SPOOL_SECONDS = 30.0


@dataclass(frozen=True)
class Check:
    name: str
    """What was checked: ``config``, ``keyring``, ``port``, ``allowlist``, ``server NAME``, ``names``, ..."""
    ok: bool
    detail: str
    """One line: what was found."""
    fix: str | None
    """For a failed check (or a warning): exactly what to do."""
    warning: bool = False
    """OK but worth attention (shown with ``!``), not a failure."""


def render(checks: list[Check]) -> str:
    """One line per check (``✓``, ``✗`` or ``!``); a failed check or warning with a fix gets an indented ``fix:``."""
    lines = []
    for c in checks:
        mark = "✗" if not c.ok else ("!" if c.warning else "✓")
        lines.append(f"{mark} {c.name}: {c.detail}")
        if c.fix and (not c.ok or c.warning):
            lines.append(f"    fix: {c.fix}")
    return "\n".join(lines)


def _quiet_stdout() -> None:
    """structlog's unconfigured default prints to stdout: route logs to stderr (errors only) unless already set."""
    import structlog

    if not structlog.is_configured():
        from mcp_bridge.logs import configure

        configure(level="error")


def _line(text: str) -> str:
    """Secret-free and on one line."""
    return " ".join(clean(text).split())


def _ok(name: str, detail: str) -> Check:
    return Check(name, True, _line(detail), None)


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, False, _line(detail), _line(fix))


def _warn(name: str, detail: str, fix: str | None) -> Check:
    return Check(name, True, _line(detail), _line(fix) if fix else None, warning=True)


async def run_checks(
    config_path: str | None,
    *,
    environ: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Check]:
    """Run every check and return the findings in order. ``environ`` is what ``${env:...}`` in the config reads
    (default: the process's environment); the keyring and ``$MCP_BRIDGE_HOME`` always come from the process."""
    say = progress or (lambda _message: None)
    checks: list[Check] = []
    _quiet_stdout()

    try:
        loaded = load_config(config_path, environ)
    except ConfigError as exc:
        checks.append(_fail("config", str(exc), exc.fix or "edit the file named above"))
        return checks
    register_secrets(loaded.secrets)
    settings = loaded.settings
    where = str(loaded.path) if loaded.path else "<config>"
    checks.append(_ok("config", f"{where} is valid"))
    home = home_dir()

    port_check: Check | None = None
    if settings.port is not None:
        say("checking Port...")
        port_check = await _check_port(settings, home)

    say("loading the allowlist...")
    allowlist, allowlist_checks = await _check_allowlist(settings, home)

    keyring_check = await _check_keyring(settings, allowlist, say)
    checks.append(keyring_check)
    if port_check is not None:
        checks.append(port_check)
    if spools(settings):
        say("checking the audit spool...")
        checks.append(await _check_audit_spool(home))
    if settings.telemetry.enabled:
        say("checking the telemetry collector...")
        checks.append(await _check_telemetry(settings))
    checks.extend(allowlist_checks)

    usable = {n for n in allowlist.servers if n not in allowlist.problems}
    if allowlist.failed_closed or not usable:
        return checks
    say(f"connecting to {len(usable)} server(s)...")
    checks.extend(await _check_servers(loaded, home, allowlist, keyring_ok=keyring_check.ok))
    return checks


# ---------------------------------------------------------------------------------------------------------- keyring


async def _check_keyring(settings: Settings, allowlist: Allowlist, say: Callable[[str], None]) -> Check:
    oauth = sorted(
        {n for n, s in settings.servers.items() if isinstance(s.auth, OAuthAuth)}
        | {n for n, s in allowlist.servers.items() if isinstance(s.auth, OAuthAuth)}
    )
    if not oauth:
        return _ok("keyring", "not needed (no server uses OAuth)")
    if settings.token_store == "file":  # noqa: S105 - a store name, not a password
        return _ok("keyring", "not needed (`token_store: file`: OAuth tokens in one 0600 file)")
    say("checking the keyring...")
    from mcp_bridge.keyring_store import KeyringBackend, KeyringUnavailable

    fix = (
        "set PYTHON_KEYRING_BACKEND to a keyring backend you trust (or run a Secret Service), "
        "or set `token_store: file` in the config (weaker: one plaintext 0600 file)"
    )
    try:
        with anyio.fail_after(_KEYRING_SECONDS):
            await anyio.to_thread.run_sync(KeyringBackend, abandon_on_cancel=True)
    except KeyringUnavailable as exc:
        return _fail("keyring", str(exc), fix)
    except TimeoutError:
        return _fail("keyring", f"the keyring did not answer within {_KEYRING_SECONDS:g}s", fix)
    except Exception as exc:  # a broken backend: report it, never crash the doctor
        return _fail("keyring", f"the keyring failed: {type(exc).__name__}: {exc}", fix)
    import keyring

    backend = type(keyring.get_keyring())
    return _ok("keyring", f"{backend.__module__}.{backend.__name__} (for {', '.join(oauth)})")


# ---------------------------------------------------------------------------------------------------------- Port


async def _check_port(settings: Settings, home: Path) -> Check:
    from mcp_bridge.governance.allowlist import PortSource
    from mcp_bridge.governance.port import PortClient, PortError, PortUnavailable

    port = settings.port
    assert port is not None
    blueprint = port.effective_blueprint
    network_fix = "check the network / port.region / port.base_url"
    try:
        with anyio.fail_after(port.timeout * 4 + _SETTLE_MARGIN):
            async with PortClient(port) as client:
                query = PortSource(settings, client, home).query()
                entities = await client.search_entities(blueprint, query)
    except TimeoutError:
        return _fail("port", f"Port ({port.api_url}) did not answer in time", network_fix)
    except PortUnavailable as exc:
        return _fail("port", str(exc), network_fix)
    except PortError as exc:
        if exc.status in (401, 403):
            return _fail("port", str(exc), "check port.client_id / port.client_secret (Port → Settings → Credentials)")
        if exc.status == 404:
            return _fail("port", str(exc), f"check port.preset / port.blueprint: {blueprint!r} must exist in Port")
        return _fail("port", str(exc), "fix what Port's message above says, then run `mcp-bridge doctor` again")
    return _ok("port", f"{port.api_url}: credentials accepted; {len(entities)} approved entities in {blueprint!r}")


# ---------------------------------------------------------------------------------------------------------- telemetry


async def _check_telemetry(settings: Settings) -> Check:
    """With telemetry on: the OpenTelemetry SDK is installed, and the collector takes an (empty) OTLP/HTTP export
    of traces, sent with the headers the exporter would send (``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS``, never
    shown)."""
    import os
    from urllib.parse import unquote

    import httpx2

    from mcp_bridge import telemetry

    missing = [m for m in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http") if not _installed(m)]
    if missing:
        return _fail(
            "telemetry",
            f"telemetry is enabled but {', '.join(missing)} is not installed",
            "pip install 'mcp-bridge[otel]'",
        )
    url = telemetry.signal_endpoint(settings.telemetry, "traces")
    shown = telemetry.shown(url)
    headers = {"content-type": "application/x-protobuf"}
    for variable in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
        for pair in (os.environ.get(variable) or "").split(","):
            key, sep, value = pair.partition("=")
            if sep and key.strip():
                headers[unquote(key.strip()).lower()] = unquote(value.strip())
    env_fix = "check telemetry.endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) and that the collector runs"
    try:
        async with httpx2.AsyncClient(timeout=5.0) as http:
            response = await http.post(url, content=b"", headers=headers)
    except httpx2.HTTPError as exc:
        return _fail("telemetry", f"the collector at {shown} cannot be reached: {type(exc).__name__}", env_fix)
    if response.status_code in (401, 403):
        return _fail(
            "telemetry",
            f"the collector at {shown} refused the export (HTTP {response.status_code})",
            "check the credentials in OTEL_EXPORTER_OTLP_HEADERS",
        )
    if response.status_code >= 300:
        return _fail("telemetry", f"the collector at {shown} answered HTTP {response.status_code}", env_fix)
    return _ok("telemetry", f"the collector at {shown} takes OTLP/HTTP exports (traces and metrics)")


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------------------- audit


async def _check_audit_spool(home: Path) -> Check:
    """The spool as a call meets it: opened, verified and written once (:func:`mcp_bridge.audit.spool.check`)."""
    from mcp_bridge.audit.spool import check

    path = spool_path(home)
    name = "audit spool"
    try:
        with anyio.fail_after(_SPOOL_SECONDS):
            health = await anyio.to_thread.run_sync(check, path, abandon_on_cancel=True)
    except TimeoutError:
        return _fail(
            name,
            f"{path} did not answer within {_SPOOL_SECONDS:g}s",
            "check the disk that holds it; if the file is damaged, run `mcp-bridge audit reset`",
        )
    if health.state == "missing":
        return _ok(name, f"{path}: none yet (the first event creates it)")
    if health.state == "ok":
        return _ok(name, f"{path}: healthy; {health.pending} event(s) waiting to be shipped")
    assert health.problem is not None
    if health.state == "damaged":
        return _fail(
            name,
            f"{path} is damaged ({health.problem.reason}); every tool call is denied (no call may go unaudited)",
            f"run `{RESET_COMMAND}`: it moves the damaged file aside (kept) and starts a fresh spool",
        )
    return _fail(
        name,
        f"{path} cannot be written ({health.problem.reason}); every tool call is denied (no call may go unaudited)",
        f"free space on the disk that holds it and check that the file is writable; if it is damaged, run "
        f"`{RESET_COMMAND}`",
    )


# ---------------------------------------------------------------------------------------------------------- allowlist


async def _check_allowlist(settings: Settings, home: Path) -> tuple[Allowlist, list[Check]]:
    from mcp_bridge.bridge import load_allowlist

    limit = (settings.port.timeout * 4 + _SETTLE_MARGIN) if settings.port is not None else _SETTLE_MARGIN
    try:
        with anyio.fail_after(limit):
            allowlist = await load_allowlist(settings, home)
    except TimeoutError:
        allowlist = Allowlist(source="Port", note=f"no answer within {limit:g}s", failed_closed=True)
    checks: list[Check] = []
    count = len(allowlist.servers)
    detail = f"{count} server{'s' if count != 1 else ''} approved ({allowlist.source})"
    if allowlist.failed_closed:
        checks.append(
            _fail(
                "allowlist",
                f"FAILED CLOSED, no tools are allowed: {allowlist.note}",
                "fix the Port check above (network, credentials), then run `mcp-bridge doctor` again",
            )
        )
        return allowlist, checks
    if count == 0:
        fix = _NO_SERVERS_FIX_PORT if allowlist.source == "Port" else _NO_SERVERS_FIX_LOCAL
        checks.append(_warn("allowlist", detail, fix))
    elif allowlist.note:
        checks.append(
            _warn("allowlist", f"{detail}; {allowlist.note}", "fix the Port check above so the allowlist is fresh")
        )
    else:
        checks.append(_ok("allowlist", detail))
    for name, problem in sorted(allowlist.problems.items()):
        checks.append(_fail(f"server {name}", "approved but cannot be used yet", problem))
    return allowlist, checks


class _FixedSource:
    """The allowlist already loaded, served as is (the doctor asks Port once, not again per step)."""

    refresh_interval: float | None = None

    def __init__(self, allowlist: Allowlist) -> None:
        self._allowlist = allowlist

    def initial(self) -> Allowlist:
        return self._allowlist

    async def load(self) -> Allowlist:
        return self._allowlist

    def fresh(self) -> bool:
        return True


# ---------------------------------------------------------------------------------------------------------- servers


def _no_browser_env(loaded: LoadedConfig, home: Path) -> Any:
    """Like the CLI's hand-run commands: a server that needs a login shows ``needs_auth``; no browser ever opens."""
    from mcp_bridge.auth import AuthEnv
    from mcp_bridge.auth.oauth import LoginPolicy

    policy = LoginPolicy(interactive=False, cooldown=0, timeout=loaded.settings.timeouts.login)
    return AuthEnv(home, loaded.settings.token_store, policy)


async def _check_servers(loaded: LoadedConfig, home: Path, allowlist: Allowlist, *, keyring_ok: bool) -> list[Check]:
    from mcp_bridge.bridge import Bridge

    settings = loaded.settings
    bridge = Bridge(loaded, home, source=_FixedSource(allowlist), auth_env=_no_browser_env(loaded, home))
    connect = settings.timeouts.connect
    rows: list[dict[str, Any]] = []
    listed: list[Any] = []
    blocked: list[Any] = []
    tool_count = 0
    with anyio.move_on_after(connect + _SETTLE_MARGIN):
        async with bridge.running():
            await bridge.wait_settled(connect)
            rows = bridge.status()
            listed = [e for e in bridge.catalog.entries() if e.denial is None]
            blocked = [e for e in bridge.catalog.entries() if e.blocked]
            tool_count = len(bridge.catalog.tools())
    checks: list[Check] = []
    seen: set[str] = set()
    for row in rows:
        name = row["server"]
        seen.add(name)
        if name in allowlist.problems:
            continue  # already reported with the allowlist
        checks.append(_server_check(name, row, connect, keyring_ok=keyring_ok))
    for name in sorted(set(allowlist.servers) - seen - set(allowlist.problems)):
        checks.append(
            _fail(f"server {name}", f"no answer within {connect:g}s", "check the URL and that the server is up")
        )
    checks.append(_names_check(settings, [e.exposed for e in listed]))
    checks.append(_count_check(tool_count, settings.catalog))
    if listed:
        checks.append(_schemas_check(listed))
    if rows:
        checks.append(_pins_check(blocked))
    return checks


def listing_checks(allowlist: Allowlist, rows: list[dict[str, Any]], blocked: list[Any], connect: float) -> list[Check]:
    """What keeps tools out of a running bridge's list, worded as the doctor words it (failures and warnings only):
    the allowlist failed closed or approves nothing; a server approved but unusable, down, silent, waiting for a
    login or with no tool allowed; tools blocked by their pins. ``rows``: :meth:`Bridge.status`; ``blocked``: the
    catalog's blocked entries. For ``mcp-bridge tools`` and ``status``."""
    if allowlist.failed_closed:
        fix = "run `mcp-bridge doctor`: it checks Port (network, credentials) and says what to fix"
        return [_fail("allowlist", f"FAILED CLOSED, no tools are allowed: {allowlist.note}", fix)]
    checks: list[Check] = []
    if not allowlist.servers:
        if allowlist.source == "Port":
            checks.append(_warn("allowlist", "no servers approved for you in Port", _NO_SERVERS_FIX_PORT))
        else:
            checks.append(_warn("allowlist", "no servers under `servers:` in the config", _NO_SERVERS_FIX_LOCAL))
    for name, problem in sorted(allowlist.problems.items()):
        checks.append(_fail(f"server {name}", "approved but cannot be used yet", problem))
    for row in rows:
        name = row["server"]
        if name in allowlist.problems:
            continue
        check = _server_check(name, row, connect, keyring_ok=True)
        server = allowlist.servers.get(name)
        if check.warning and server is not None and not server.allowed_tools:
            check = _warn(
                check.name,
                f"connected ({row.get('url') or ''}); it has no `allowed_tools`, so none of its "
                f"{row.get('tools_offered', 0)} tools is listed",
                check.fix,
            )
        if not check.ok or check.warning:
            checks.append(check)
    if blocked:
        checks.append(_pins_check(blocked))
    return checks


_NO_SERVERS_FIX_PORT = "ask your Port admin to approve MCP servers for you (or check port.preset / port.approved_when)"
_NO_SERVERS_FIX_LOCAL = "add servers under `servers:` in the config"


def _pins_check(blocked: list[Any]) -> Check:
    if not blocked:
        return _ok("tool pins", "every allowed tool matches its approved definition")
    changed = [e.exposed for e in blocked if not e.duplicated]
    duplicated = [e.exposed for e in blocked if e.duplicated]
    found, fixes = [], []
    if changed:
        found.append(
            f"{len(changed)} tool(s) blocked because their definition changed since approval: " + ", ".join(changed)
        )
        fixes.append(
            "review the change (`mcp-bridge pins list`, the audit event `tool_definition_changed`), then "
            "`mcp-bridge pins approve NAME`; a tool pinned in Port needs its `tool_pins` updated there"
        )
    if duplicated:
        found.append(
            f"{len(duplicated)} tool(s) refused because their server lists the name with different "
            "definitions: " + ", ".join(duplicated)
        )
        fixes.append("the server must list each tool once; ask its owner (nothing to approve here)")
    return _fail("tool pins", "; ".join(found), "; ".join(fixes))


def _server_check(name: str, row: Mapping[str, Any], connect: float, *, keyring_ok: bool) -> Check:
    label = f"server {name}"
    state = row.get("state")
    error = row.get("last_error") or ""
    url = row.get("url") or ""
    allowed, offered = row.get("tools_allowed", 0), row.get("tools_offered", 0)
    if state == "connected":
        detail = f"connected ({url}{era_words(row)}); {allowed} of {offered} tools allowed"
        if allowed == 0:
            return _warn(
                label, detail, f'set `allowed_tools` for {name} (tool names, or ["*"] for all); missing means none'
            )
        return _ok(label, detail)
    if state == "needs_auth":
        if not keyring_ok and "keyring" in error:
            fix = f"fix the keyring check above, then run `mcp-bridge login {name}`"
            return _fail(label, f"needs a login ({url}) but no keyring can hold its tokens", fix)
        return _fail(label, f"needs a login ({url}): {error}", f"run `mcp-bridge login {name}`")
    if state == "error":
        return _fail(label, f"cannot connect to {url}: {error}", "check the URL and that the server is up")
    return _fail(label, f"{state} ({url}): no answer within {connect:g}s", "check the URL and that the server is up")


_ERA_SOURCES = {
    "probed": "found by asking it",
    "remembered": "remembered from an earlier start",
    "configured": "set by protocol.upstream",
}


def era_words(row: Mapping[str, Any]) -> str:
    """``, speaks 2026-07-28 (found by asking it)``: the protocol era the bridge speaks with a server, and how it
    came to; empty while unknown."""
    era = row.get("era")
    if not era:
        return ""
    how = _ERA_SOURCES.get(str(row.get("era_source") or ""))
    return f", speaks {era}" + (f" ({how})" if how else "")


def _names_check(settings: Settings, names: list[str]) -> Check:
    limit = settings.naming.max_length
    if not names:
        return _ok("names", "no tools listed")
    longest = max(names, key=len)
    detail = f"longest tool name {len(longest)} chars ({longest}); naming.max_length {limit}"
    if len(longest) > limit:
        return _fail("names", detail, "lower naming.max_length or shorten the server names")
    cursor = len(longest) + len(IDE_ENTRY) + 2
    if cursor > CURSOR_NAME_LIMIT:
        return _warn(
            "names",
            f"{detail}; Cursor counts the IDE entry name too ({cursor} > {CURSOR_NAME_LIMIT})",
            "lower naming.max_length (e.g. 50) or shorten the IDE entry name",
        )
    return _ok("names", detail)


def _schemas_check(listed: list[Any]) -> Check:
    """Input schemas a client may not manage and the bridge cannot repair (an array without ``items`` is repaired
    in the list: :mod:`mcp_bridge.governance.schemas`)."""
    from mcp_bridge.governance.schemas import problems

    found = []
    for e in listed:
        for problem in problems(e.definition.get("inputSchema")):
            found.append(f"{e.exposed}: {problem}")
    if not found:
        return _ok("schemas", f"every listed tool's input schema is one clients take ({len(listed)} tools)")
    shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
    return _warn(
        "schemas",
        f"{len(found)} input schema problem(s) some clients reject: {shown}",
        "ask the server's owner to fix the schema, or leave the tool out of allowed_tools",
    )


def _count_check(count: int, catalog: CatalogConfig | None = None) -> Check:
    """The number of allowed tools against the IDEs' budgets (:mod:`mcp_bridge.governance.budget`): in full mode
    a list past the budget is a warning (clients cap what they take, and every tool costs the model context); in
    auto mode the IDEs it does not fit get search mode, which is said."""
    from mcp_bridge.governance import budget

    catalog = catalog or CatalogConfig()
    detail = f"{count} tool{'s' if count != 1 else ''} allowed"
    limit = catalog.max_tools or budget.DEFAULT_BUDGET
    if catalog.mode == "search":
        return _ok("tool count", f"{detail}; catalog.mode search: the IDE gets find_tools and call_tool")
    if catalog.mode == "full":
        if count > limit:
            where = "catalog.max_tools" if catalog.max_tools else f"{limit}, the most some clients take"
            return _warn(
                "tool count",
                f"{detail}, listed in full (catalog.mode full): more than the budget ({where})",
                "set catalog.mode to auto (search mode above the IDE's budget), or narrow allowed_tools",
            )
        return _ok("tool count", f"{detail}, listed in full (catalog.mode full)")
    if catalog.max_tools is not None:
        mode = "search" if count > catalog.max_tools else "full"
        return _ok("tool count", f"{detail}; catalog.max_tools {catalog.max_tools}: {mode} mode for every IDE")
    over = [f"{c.label} ({c.budget})" for c in budget.KNOWN_CLIENTS if c.budget is not None and count > c.budget]
    if count > budget.DEFAULT_BUDGET:
        return _ok("tool count", f"{detail}: more than any IDE takes, so every IDE but Claude Code gets search mode")
    if over:
        return _ok("tool count", f"{detail}; search mode for the IDEs with a lower budget: {', '.join(over)}")
    return _ok("tool count", f"{detail}; every known IDE takes them all")


__all__ = ["Check", "listing_checks", "render", "run_checks"]


async def doctor_command(args: argparse.Namespace) -> int:

    checks = await run_checks(args.config, progress=lambda message: err(f"... {message}"))
    out(render(checks))
    broken = [c for c in checks if not c.ok]
    if broken:
        err(f"mcp-bridge doctor: {len(broken)} problem(s); each has its fix above")
    return 1 if broken else 0
