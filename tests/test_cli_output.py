"""What commands print from servers reaches the terminal escaped: a hostile server's names, descriptions, results and
errors cannot recolour, clear, retitle or rewrite the terminal, nor hide or reorder text (``mcp_bridge.terminal``)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import LocalUpstream, run_cli, write_config
from mcp_bridge.sandbox.localservers import HOSTILE_TEXT

UNSAFE = ["\x1b", "\x07", "\x00", "\x7f", "\x9b", "\r", "\u202e", "\u2066", "\u200b", "\U000e0041"]
"""What HOSTILE_TEXT holds that must never reach a terminal as is."""
SHOWN = "\\x1b[31mred\\x1b[0m \\x1b]0;owned\\x07 \\x1b[2J cleared\\x00 nul \\x7f del \\x9b31m c1"
"""How its start is shown instead: visible escapes (and the ordinary text around them)."""
SHOWN_REST = (
    "\\x0d overwritten \\u202eevil\\u202c \\u2066iso\\u2069 zero\\u200bwidth \\U000e0041\\U000e0042 tags; ünïcødé ✓"
)
"""And its rest (which descriptions do not show: their first line ends at the carriage return)."""


class HostileUpstream(LocalUpstream):
    def __init__(self, name: str, log_dir: Path, *flags: str) -> None:
        super().__init__(name, log_dir)
        self.flags = flags

    def command(self) -> list[str]:
        return [*super().command(), *self.flags]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    logs = tmp_path_factory.mktemp("hostile")
    with (
        HostileUpstream("hostile", logs, "--hostile") as hostile,
        HostileUpstream("broken", logs, "--hostile-listing") as broken,
    ):
        yield write_config(
            logs / "config.yaml",
            {"hostile": hostile.server_config(), "broken": broken.server_config()},
            timeouts={"connect": 5, "startup_wait": 5},
        )


def run(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = run_cli(tmp_path / "home", *args, "--config", str(config), timeout=60)
    for output in (done.stdout, done.stderr):
        for char in UNSAFE:
            assert char not in output, f"{char!r} reached the terminal from `mcp-bridge {' '.join(args)}`"
    return done


def test_tools_shows_names_and_descriptions_escaped_and_json_keeps_the_data(tmp_path: Path, config: Path) -> None:
    table = run(tmp_path, config, "tools")
    assert table.returncode == 1, table.stderr  # the server `broken` cannot list: said, escaped (run checks)
    assert "✗ server broken: cannot connect to" in table.stdout
    (row,) = [line for line in table.stdout.splitlines() if "First line" in line]
    assert row.split()[1:3] == ["hostile", "hostile\\x1b[31m_name\\x07\\u202e\\x1b[31mred\\x1b[0m"]  # the original
    assert f"First line {SHOWN}"[:80] in row  # the description's first line, cut as always
    assert "second line" not in table.stdout
    listed = run(tmp_path, config, "tools", "--json")
    tools = {t["tool"]: t for t in json.loads(listed.stdout)["tools"]}  # valid JSON, with the same data
    assert tools["hostile_text"]["description"] == "Answers with hostile text. " + HOSTILE_TEXT.split("\r")[0]


def test_status_shows_a_servers_error_escaped(tmp_path: Path, config: Path) -> None:
    table = run(tmp_path, config, "status")
    (row,) = [line for line in table.stdout.splitlines() if line.startswith("broken")]
    assert "error" in row and f"cannot list: {SHOWN} {SHOWN_REST}" in row  # ordinary Unicode is not escaped
    rows = {r["server"]: r for r in json.loads(run(tmp_path, config, "status", "--json").stdout)["servers"]}
    assert f"cannot list: {HOSTILE_TEXT}" in rows["broken"]["last_error"]


def test_call_prints_results_and_errors_escaped(tmp_path: Path, config: Path) -> None:
    called = run(tmp_path, config, "call", "hostile__hostile_text")
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["structuredContent"] == {"text": HOSTILE_TEXT}  # the same data
    assert "ünïcødé ✓" in called.stdout
    failed = run(tmp_path, config, "call", "hostile__hostile_error")
    assert failed.returncode == 1 and f"failed: {SHOWN}" in failed.stderr


def test_doctor_and_pins_show_server_text_escaped(tmp_path: Path, config: Path) -> None:
    doctor = run(tmp_path, config, "doctor")
    assert doctor.returncode == 1 and f"cannot list: {SHOWN}" in doctor.stdout
    described = json.dumps({"tool": "echo", "description": HOSTILE_TEXT})
    assert run(tmp_path, config, "pins", "list").returncode == 0  # pinned as first seen
    assert run(tmp_path, config, "call", "hostile__redefine", "--args", described).returncode == 0
    pins = run(tmp_path, config, "pins", "list")
    assert "hostile__echo: " in pins.stdout and "BLOCKED" in pins.stdout
