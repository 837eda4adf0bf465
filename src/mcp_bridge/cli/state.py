"""The bridge's local state, by hand: ``pins`` (tool-definition pins) and ``audit`` (the spool of audit events)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mcp_bridge.cli.commands import no_browser, settle
from mcp_bridge.cli.output import UsageError, err, out, out_json, print_table
from mcp_bridge.config import LoadedConfig, home_dir
from mcp_bridge.errors import BridgeError


async def pins(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from mcp_bridge.bridge import Bridge
    from mcp_bridge.governance.pins import PinStore, definition_of, short

    if args.action == "reset":
        if not args.target:
            raise UsageError("pins reset needs a SERVER")
        dropped = PinStore(home_dir() / "pins.json").update(reset=args.target)
        if not dropped:
            out(f"{args.target}: no local pins; nothing to reset")
            return 0
        out(f"{args.target}: removed {dropped} local pin(s); its tools are pinned again as next seen")
        out("  (trust on first use; pins from the allowlist, e.g. Port's tool_pins, are not local and stay)")
        return 0
    if args.action == "approve" and not args.target:
        raise UsageError("pins approve needs a tool NAME (as `mcp-bridge tools --all` shows it)")
    bridge = Bridge(loaded, home_dir(), auth_env=no_browser(loaded))
    async with bridge.running():
        await settle(bridge, loaded)
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
                out_json({"pins": rows}, indent=2)
                return 0
            table = [["NAME", "STATE", "PINNED", "BY", "CURRENT"]]
            table += [[r["name"], r["state"], short(r["pinned"]), r["pinned_by"], short(r["current"])] for r in rows]
            print_table(table)
            for r in rows:
                if r["reason"]:
                    out(f"{r['name']}: {r['reason']}")
            return 0
        entry = entries.get(args.target)
        if entry is None:
            raise UsageError(f"unknown tool {args.target!r} (see `mcp-bridge tools --all`; is its server connected?)")
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
            out(f"{args.target}: already matches its pin ({short(verdict.pinned)}, by {verdict.source})")
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
    out(f"{args.target}: approved; pinned {verdict.fingerprint} (was {verdict.pinned})")
    out("  running bridges pick the new pin up within a second")
    return 0


async def audit(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    import anyio

    from mcp_bridge.audit.shipper import Shipper
    from mcp_bridge.audit.spoolcheck import spool_path
    from mcp_bridge.audit.trail import AuditTrail

    if args.action == "reset":  # the file itself, whatever the config says (it may be left from another one)
        return await anyio.to_thread.run_sync(_audit_reset, spool_path(home_dir()), args.force)
    trail = AuditTrail(loaded.settings, home_dir())
    try:
        if trail.spool is None:
            out("audit: events stay local (no `port:` or `port.audit_blueprint: null`); nothing is spooled")
            return 0
        port = loaded.settings.port
        assert port is not None and port.audit_blueprint is not None
        if args.action == "flush":
            from mcp_bridge.governance.port import PortClient

            async with PortClient(port) as client:
                shipper = Shipper(trail, client, port.audit_blueprint, loaded.settings.timeouts.call + 30)
                left = await shipper.flush(30.0)
            out(f"audit: shipped {shipper.shipped} events to Port; {left} waiting")
            if left:
                last = trail.spool.stats().last_error
                err(f"mcp-bridge: {left} events are still waiting" + (f" (last error: {last})" if last else ""))
            return 1 if left else 0
        stats = trail.spool.stats()
        if args.json:
            out_json(stats.__dict__, indent=2)
            return 0
        age = f"{stats.oldest_age:.0f}s" if stats.oldest_age is not None else "-"
        out(f"pending: {stats.pending} (calls in progress: {stats.in_progress}); oldest: {age}")
        out(f"last error: {stats.last_error or '-'}; dropped (spool full): {stats.dropped}")
        return 0
    finally:
        trail.close()


def _audit_reset(path: Path, force: bool) -> int:
    """``audit reset``: a damaged spool (or any, with ``--force``) is moved aside, kept, and a fresh one started."""
    from filelock import Timeout

    from mcp_bridge.audit.spool import SpoolChanged, check, move_aside

    health = check(path)
    if health.state == "missing":
        out(f"audit: no spool at {path}; nothing to reset (the first event creates it)")
        return 0
    if health.state == "ok" and not force:
        raise UsageError(
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
        out(f"audit: the spool was {health.state}: {health.problem.reason}")
    else:
        out(f"audit: the spool was healthy; moved aside as asked (--force) with {health.pending} event(s) in it")
    for source, target in moved:
        out(f"  moved aside (kept): {source} -> {target}")
    if fresh_problem is not None:
        raise BridgeError(f"could not start a fresh spool: {fresh_problem}")
    out(f"  started a fresh spool: {path}")
    out("  running bridges use the fresh spool from their next call; events left in the old file are not shipped")
    return 0
