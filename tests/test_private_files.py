"""Files the bridge writes beside its state are private (0600) like the state: the log file (``log.file``,
``--log-file``) and the audit JSONL copy, rotated ones included. Such a file found readable by others is narrowed,
and the log says so."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import LocalUpstream, bridge_client, raw_call, run_cli, write_config


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The umask most users have (files 0644 unless created otherwise); the bridges spawned here inherit it."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.anyio
async def test_serve_creates_its_log_file_private(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "bridge.jsonl"
    log_file.parent.mkdir()
    cfg = write_config(tmp_path / "config.yaml", {}, log={"level": "info", "file": str(log_file)})
    async with bridge_client(cfg, tmp_path / "home") as client:
        await client.session.list_tools()
        assert mode(log_file) == 0o600
    events = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
    assert "serve.start" in events  # the file really is the log
    assert mode(log_file) == 0o600


def test_a_log_file_readable_by_others_is_narrowed_and_the_log_says_so(tmp_path: Path) -> None:
    log_file = tmp_path / "bridge.log"
    log_file.write_text('{"event": "from an earlier run"}\n')
    log_file.chmod(0o644)
    cfg = write_config(tmp_path / "config.yaml", {})
    done = run_cli(tmp_path / "home", "tools", "--config", str(cfg), "--log-file", str(log_file), "--log-level", "info")
    assert done.returncode == 0, done.stderr
    assert mode(log_file) == 0o600
    lines = log_file.read_text().splitlines()
    assert lines[0] == '{"event": "from an earlier run"}'  # appended to, not replaced
    notes = [json.loads(line) for line in lines[1:] if json.loads(line)["event"] == "log.file_permissions"]
    assert len(notes) == 1 and "0644" in notes[0]["note"] and "0600" in notes[0]["note"]
    assert "log.file_permissions" in done.stderr  # also where the user looks first


@pytest.mark.anyio
async def test_the_audit_jsonl_copy_and_its_rotated_files_are_private(tmp_path: Path) -> None:
    jsonl = tmp_path / "audit.jsonl"
    jsonl.write_text('{"id": "from an earlier run"}\n')
    jsonl.chmod(0o644)
    older = tmp_path / "audit.jsonl.2"
    older.write_text('{"id": "older"}\n')
    older.chmod(0o644)
    with LocalUpstream("alpha", tmp_path) as alpha:
        cfg = write_config(
            tmp_path / "config.yaml",
            {"alpha": alpha.server_config(["echo"])},
            audit={"arguments": "full", "jsonl": str(jsonl), "jsonl_max_bytes": 1024},
        )
        async with bridge_client(cfg, tmp_path / "home") as client:
            await raw_call(client, "alpha__echo", {"text": "first"})
            assert mode(jsonl) == 0o600  # narrowed at the first event written
            await raw_call(client, "alpha__echo", {"text": "second " + "x" * 400})  # past 1024 bytes: rotated
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("audit.jsonl"))
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.3"]
    assert {name: mode(tmp_path / name) for name in files} == dict.fromkeys(files, 0o600)
    assert "from an earlier run" in (tmp_path / "audit.jsonl.1").read_text()
    assert "older" in (tmp_path / "audit.jsonl.3").read_text()
    assert "second" in jsonl.read_text()
