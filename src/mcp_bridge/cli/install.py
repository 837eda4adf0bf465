"""``mcp-bridge install``: put the bridge into Cursor's or Claude Desktop's ``mcpServers``, keeping everything else.

The entry carries only the absolute command and ``serve --config <absolute path>``: never a secret (those belong in
the environment or the keyring, referenced from the config as ``${env:NAME}``). The change is written atomically,
after a backup of the previous file, and only when something changes; ``--dry-run`` shows it without writing.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mcp_bridge.cli.output import UsageError, err, out
from mcp_bridge.config import load_config
from mcp_bridge.errors import ConfigError

Client = Literal["claude-desktop", "cursor"]
CLIENTS: tuple[Client, ...] = ("claude-desktop", "cursor")


def default_path(client: Client, *, platform: str | None = None, environ: dict[str, str] | None = None) -> Path:
    """Where each client keeps its MCP servers, per OS."""
    platform = platform or sys.platform
    env = os.environ if environ is None else environ
    home = Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())
    if client == "cursor":
        return home / ".cursor" / "mcp.json"
    if platform == "darwin":
        return home / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
    if platform == "win32":
        appdata = env.get("APPDATA") or str(home / "AppData" / "Roaming")
        return Path(appdata) / "Claude" / "claude_desktop_config.json"
    config_home = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(config_home) / "Claude" / "claude_desktop_config.json"


def bridge_command() -> tuple[str, list[str]]:
    """The absolute command that starts this installation of mcp-bridge (the console script, else the module)."""
    script = Path(sys.executable).with_name("mcp-bridge.exe" if sys.platform == "win32" else "mcp-bridge")
    if script.exists():
        return str(script.resolve()), []
    found = shutil.which("mcp-bridge")
    if found:
        return str(Path(found).resolve()), []
    return str(Path(sys.executable).resolve()), ["-m", "mcp_bridge"]


@dataclass(frozen=True)
class Plan:
    path: Path
    before: str | None
    after: str
    changed: bool
    existed: bool
    """The file already had an entry of this name (changed: it is updated; otherwise it is added)."""

    @property
    def outcome(self) -> str:
        """What writing it does, in words: ``created`` (the file), ``added`` or ``updated`` (the entry)."""
        if self.before is None:
            return "created"
        return "updated" if self.existed else "added"

    def diff(self) -> str:
        old = (self.before or "").splitlines(keepends=True)
        new = self.after.splitlines(keepends=True)
        return "".join(difflib.unified_diff(old, new, f"{self.path} (now)", f"{self.path} (after install)"))


def plan(path: Path, name: str, config: Path) -> Plan:
    """The file as it would be with the entry ``name`` added or updated (nothing written)."""
    before = path.read_text(encoding="utf-8") if path.exists() else None
    data: dict[str, Any] = {}
    if before is not None and before.strip():
        try:
            loaded = json.loads(before)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                "left it untouched: fix it, or point --path at another file"
            ) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level is not a JSON object; left it untouched")
        data = loaded
    servers = data.setdefault("mcpServers", {})
    if not isinstance(servers, dict):
        raise ConfigError(f"{path}: `mcpServers` is not a JSON object; left it untouched")
    command, prefix = bridge_command()
    entry = {"command": command, "args": [*prefix, "serve", "--config", str(config.resolve())]}
    existed = name in servers
    changed = servers.get(name) != entry
    servers[name] = entry
    after = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return Plan(path=path, before=before, after=after, changed=changed, existed=existed)


def apply(p: Plan) -> Path | None:
    """Write the plan (backup first); the backup's path, or ``None`` when there was no file before."""
    p.path.parent.mkdir(parents=True, exist_ok=True)
    backup = None
    if p.before is not None:
        backup = p.path.with_name(f"{p.path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(p.path, backup)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.path.name}.", dir=p.path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(p.after)
        if p.path.exists():
            os.chmod(tmp, p.path.stat().st_mode & 0o777)
        os.replace(tmp, p.path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return backup


def install_command(args: argparse.Namespace) -> int:
    """Not async and no bridge: it only edits the IDE's file (the config must exist, it is what the entry points at)."""
    from mcp_bridge.config import env_references, resolve_config_path

    config = resolve_config_path(args.config)
    if not config.is_file():
        raise UsageError(f"{config}: no config file there; create it first (see config.example.yaml)")
    load_config(str(config))  # a broken config would only fail later, inside the IDE: refuse it now
    variables = env_references(config.read_text(encoding="utf-8"))
    if variables:  # this shell has them (the config loaded); the IDE started from the Dock or a menu will not
        listed = ", ".join(variables)
        err(f"mcp-bridge install: warning: the config takes {listed} from the environment (${{env:...}}).")
        err("  Claude Desktop and Cursor started from the Dock, the Start menu or a desktop launcher do not get a")
        err("  shell's environment, so the bridge they start would stop at the first missing variable. Store each in")
        first = variables[0]
        err(f"  the OS keyring instead, e.g. `mcp-bridge secret set {first}` (it asks for the value), and write")
        err(f"  ${{keyring:{first}}} where the config says ${{env:{first}}}.")
    path = Path(args.path).expanduser() if args.path else default_path(args.client)
    change = plan(path, args.name, config)
    if not change.changed:
        out(f"{path}: the {args.name!r} entry is already up to date; nothing written")
        return 0
    if args.dry_run:
        out(change.diff(), end="")
        out(f"(dry run: {path} not written)")
        return 0
    backup = apply(change)
    if change.outcome == "created":
        out(f"{path}: created, with the {args.name!r} entry")
    else:
        out(f"{path}: {change.outcome} the {args.name!r} entry")
    if backup is not None:
        out(f"  backup of the previous file: {backup}")
    out("  no secret was written there: keep credentials in the OS keyring (`mcp-bridge secret set NAME`, written")
    out("  ${keyring:NAME} in the config; OAuth tokens go there by themselves). Restart the IDE to pick the entry up.")
    return 0
