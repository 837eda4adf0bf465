"""`mcp-bridge install`: the IDE's file gains one entry and loses nothing; idempotent; dry runs write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import bridge_env, write_config
from mcp_bridge.cli.install import default_path


def install(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_bridge", "install", *args],
        env=bridge_env(tmp_path / "home", env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "bridge.yaml",
        {"docs": {"url": "https://docs.example.com/mcp", "auth": {"type": "api_key", "value": "Bearer s3cr3t-v4lue"}}},
    )


def test_the_entry_is_added_other_entries_are_kept_and_a_backup_is_written(tmp_path: Path, config: Path) -> None:
    ide = tmp_path / "claude_desktop_config.json"
    original = {"mcpServers": {"other": {"command": "npx", "args": ["x"]}}, "globalShortcut": "Ctrl+Space"}
    ide.write_text(json.dumps(original))
    done = install(tmp_path, "--client", "claude-desktop", "--path", str(ide), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{ide}: added the 'bridge' entry\n")  # it was not there: not "updated"
    data = json.loads(ide.read_text())
    assert data["mcpServers"]["other"] == original["mcpServers"]["other"] and data["globalShortcut"] == "Ctrl+Space"
    entry = data["mcpServers"]["bridge"]
    assert Path(entry["command"]).is_absolute() and entry["args"][-3:] == ["serve", "--config", str(config.resolve())]
    backups = list(tmp_path.glob("claude_desktop_config.json.bak-*"))
    assert len(backups) == 1 and json.loads(backups[0].read_text()) == original
    assert "s3cr3t-v4lue" not in ide.read_text()  # no secret ever goes into the IDE's file


def test_a_second_run_changes_nothing(tmp_path: Path, config: Path) -> None:
    ide = tmp_path / "mcp.json"
    assert install(tmp_path, "--client", "cursor", "--path", str(ide), "--config", str(config)).returncode == 0
    first = ide.read_text()
    again = install(tmp_path, "--client", "cursor", "--path", str(ide), "--config", str(config))
    assert again.returncode == 0 and "already up to date" in again.stdout
    assert ide.read_text() == first and not list(tmp_path.glob("mcp.json.bak-*"))  # no write, no new backup


def test_a_dry_run_shows_the_change_and_writes_nothing(tmp_path: Path, config: Path) -> None:
    ide = tmp_path / "mcp.json"
    ide.write_text('{"mcpServers": {}}')
    done = install(tmp_path, "--client", "cursor", "--path", str(ide), "--config", str(config), "--dry-run")
    assert done.returncode == 0 and '"bridge"' in done.stdout and "dry run" in done.stdout
    assert ide.read_text() == '{"mcpServers": {}}' and not list(tmp_path.glob("mcp.json.bak-*"))


@pytest.mark.parametrize("content", ['{"mcpServers": {', "[1, 2]", '{"mcpServers": [1]}'])
def test_a_malformed_file_is_a_clear_error_and_left_untouched(tmp_path: Path, config: Path, content: str) -> None:
    ide = tmp_path / "mcp.json"
    ide.write_text(content)
    done = install(tmp_path, "--client", "cursor", "--path", str(ide), "--config", str(config))
    assert done.returncode == 2 and str(ide) in done.stderr and "untouched" in done.stderr
    assert ide.read_text() == content and not list(tmp_path.glob("mcp.json.bak-*"))


def test_a_missing_or_broken_config_is_refused(tmp_path: Path) -> None:
    ide = tmp_path / "mcp.json"
    missing = install(tmp_path, "--client", "cursor", "--path", str(ide), "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr and not ide.exists()
    broken = tmp_path / "broken.yaml"
    broken.write_text("servers: {a: {url: ftp://x}}\n")
    refused = install(tmp_path, "--client", "cursor", "--path", str(ide), "--config", str(broken))
    assert refused.returncode == 2 and "not an http(s) URL" in refused.stderr and not ide.exists()


def test_each_client_has_its_default_file_on_each_os() -> None:
    env = {"HOME": "/home/u", "APPDATA": "C:/Users/u/AppData/Roaming"}
    assert default_path("cursor", platform="linux", environ=env) == Path("/home/u/.cursor/mcp.json")
    mac = default_path("claude-desktop", platform="darwin", environ=env)
    assert mac == Path("/home/u/Library/Application Support/Claude/claude_desktop_config.json")
    win = default_path("claude-desktop", platform="win32", environ=env)
    assert win == Path("C:/Users/u/AppData/Roaming/Claude/claude_desktop_config.json")
    linux = default_path("claude-desktop", platform="linux", environ=env)
    assert linux == Path("/home/u/.config/Claude/claude_desktop_config.json")


def test_the_message_says_whether_the_file_was_created_or_the_entry_updated(tmp_path: Path, config: Path) -> None:
    ide = tmp_path / "new" / "mcp.json"
    created = install(tmp_path, "--client", "cursor", "--path", str(ide), "--config", str(config))
    assert created.returncode == 0 and created.stdout.startswith(f"{ide}: created, with the 'bridge' entry\n")
    data = json.loads(ide.read_text())
    data["mcpServers"]["bridge"]["args"] = ["serve"]  # an older entry, to be replaced
    ide.write_text(json.dumps(data))
    updated = install(tmp_path, "--client", "cursor", "--path", str(ide), "--config", str(config))
    assert updated.returncode == 0 and updated.stdout.startswith(f"{ide}: updated the 'bridge' entry\n")


def test_a_config_that_reads_the_environment_gets_a_warning_naming_the_variables(tmp_path: Path, config: Path) -> None:
    ide = tmp_path / "mcp.json"
    quiet = install(tmp_path, "--client", "cursor", "--path", str(ide), "--config", str(config))
    assert quiet.returncode == 0 and quiet.stderr == ""  # no ${env:...}: nothing to warn about
    assert "mcp-bridge secret set NAME" in quiet.stdout and "${keyring:NAME}" in quiet.stdout
    env_config = tmp_path / "env.yaml"
    env_config.write_text(
        "# ${env:ONLY_IN_A_COMMENT} does not count\n"
        "servers:\n"
        "  docs:\n"
        "    url: https://docs.example.com/mcp\n"
        "    auth: {type: api_key, value: 'Bearer ${env:DOCS_TOKEN}'}\n"
        "  wiki:\n"
        "    url: https://wiki.example.com/mcp\n"
        "    auth: {type: oauth, client_secret: '${env:WIKI_SECRET}'}\n",
        encoding="utf-8",
    )
    values = {"DOCS_TOKEN": "docs-value-0001", "WIKI_SECRET": "wiki-value-0001"}
    done = install(tmp_path, "--client", "cursor", "--path", str(ide), "--config", str(env_config), env=values)
    assert done.returncode == 0, done.stderr
    assert "warning: the config takes DOCS_TOKEN, WIKI_SECRET from the environment" in done.stderr
    assert "ONLY_IN_A_COMMENT" not in done.stderr
    assert "`mcp-bridge secret set DOCS_TOKEN`" in done.stderr and "${keyring:DOCS_TOKEN}" in done.stderr
    assert "do not get a" in done.stderr and "Dock" in done.stderr
    assert not any(v in done.stdout + done.stderr + ide.read_text() for v in values.values())
