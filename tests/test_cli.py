"""The debug commands people run by hand, and exit codes: 0 ok, 1 runtime failure, 2 usage or config error."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import LocalUpstream, bridge_env, free_port, run_cli, write_config


@pytest.fixture(scope="module")
def alpha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalUpstream]:
    up = LocalUpstream("alpha", tmp_path_factory.mktemp("logs"), api_key="alpha-key-0001").start()
    yield up
    up.kill()


@pytest.fixture
def config(tmp_path: Path, alpha: LocalUpstream) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        {"alpha": alpha.server_config(["echo", "add", "fail", "slow", "meta", "stats", "add_tool", "wait_forever"])},
    )


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(tmp_path / "home", *args, env=env, timeout=60)


def test_tools_json_lists_exposed_names_with_their_server_and_original(
    tmp_path: Path, config: Path, alpha: LocalUpstream
) -> None:
    done = run(tmp_path, "tools", "--json", "--config", str(config), env=alpha.env())
    assert done.returncode == 0, done.stderr
    tools = {t["name"]: t for t in json.loads(done.stdout)["tools"]}
    assert tools["alpha__echo"]["server"] == "alpha" and tools["alpha__echo"]["tool"] == "echo"
    assert tools["alpha__echo"]["description"].startswith("Echo the text back")
    assert "alpha__delete_everything" not in tools
    everything = run(tmp_path, "tools", "--all", "--config", str(config), env=alpha.env())
    assert "alpha__delete_everything" in everything.stdout and "hidden" in everything.stdout


def test_tools_search_prints_the_ranking_find_tools_gives(tmp_path: Path, config: Path, alpha: LocalUpstream) -> None:
    done = run(tmp_path, "tools", "--search", "sum of two numbers", "--config", str(config), env=alpha.env())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "NAME", "SERVER"] and lines[1].split()[:2] == ["1", "alpha__add"]
    found = run(tmp_path, "tools", "--search", "delete everything", "--json", "--config", str(config), env=alpha.env())
    names = [t["name"] for t in json.loads(found.stdout)["tools"]]
    assert "alpha__delete_everything" not in names  # not allowed: never found
    empty = run(tmp_path, "tools", "--search", " ", "--config", str(config), env=alpha.env())
    assert empty.returncode == 2 and "--search needs words" in empty.stderr


def test_status_shows_state_and_allowed_of_offered(tmp_path: Path, config: Path, alpha: LocalUpstream) -> None:
    done = run(tmp_path, "status", "--json", "--config", str(config), env=alpha.env())
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["servers"]
    assert row["server"] == "alpha" and row["state"] == "connected"
    assert (row["tools_allowed"], row["tools_offered"]) == (8, 10)
    table = run(tmp_path, "status", "--config", str(config), env=alpha.env())
    assert "8 of 10" in table.stdout and "connected" in table.stdout
    assert table.stdout.startswith("allowlist: local config")


def test_status_reports_an_unreachable_server_with_its_error(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        {"gone": {"url": "http://127.0.0.1:9/mcp", "allowed_tools": ["*"]}},
        timeouts={"connect": 1},
    )
    done = run(tmp_path, "status", "--json", "--config", str(config))
    (row,) = json.loads(done.stdout)["servers"]
    assert row["state"] in ("error", "connecting") and row["last_error"]
    assert done.returncode == 1  # a server in error: the setup does not work
    assert run(tmp_path, "status", "--config", str(config)).returncode == 1


def test_call_prints_the_result_and_exits_by_is_error(tmp_path: Path, config: Path, alpha: LocalUpstream) -> None:
    ok = run(tmp_path, "call", "alpha__add", "--args", '{"a": 1, "b": 2}', "--config", str(config), env=alpha.env())
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["structuredContent"] == {"sum": 3}
    failed = run(tmp_path, "call", "alpha__fail", "--config", str(config), env=alpha.env())
    assert failed.returncode == 1 and json.loads(failed.stdout)["isError"] is True


def test_call_of_a_denied_or_unknown_tool_exits_1_with_a_reason(
    tmp_path: Path, config: Path, alpha: LocalUpstream
) -> None:
    denied = run(tmp_path, "call", "alpha__delete_everything", "--config", str(config), env=alpha.env())
    assert denied.returncode == 1 and "not allowed" in denied.stderr and denied.stdout == ""
    unknown = run(tmp_path, "call", "nope__nope", "--config", str(config), env=alpha.env())
    assert unknown.returncode == 1 and "unknown tool" in unknown.stderr


def _confirming_config(tmp_path: Path, alpha: LocalUpstream) -> Path:
    return write_config(tmp_path / "confirm.yaml", {"alpha": {**alpha.server_config(["echo"]), "confirm": "all"}})


def _in_a_terminal(tmp_path: Path, args: list[str], env: dict[str, str], answer: bytes) -> tuple[int, str]:
    """``mcp-bridge ARGS`` with its stdin, stdout and stderr on a pseudo-terminal, as a person runs it: ``answer`` is
    typed once the ``[y/N]`` prompt shows. Its exit code and all it wrote to the terminal."""
    import os
    import select

    leader, follower = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_bridge", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=bridge_env(tmp_path / "home", env),
        close_fds=True,
    )
    os.close(follower)
    seen = b""
    answered = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the other side closed (Linux: EIO)
                    break
                if not chunk:
                    break
                seen += chunk
            if not answered and b"[y/N]" in seen:
                os.write(leader, answer)
                answered = True
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert answered, seen.decode(errors="replace")
    return code, seen.decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.parametrize("answer", [b"y\n", b"n\n", b"\n"])
def test_call_in_a_terminal_asks_the_confirm_question_there(
    tmp_path: Path, alpha: LocalUpstream, answer: bytes
) -> None:
    """A server whose ``confirm`` holds the call back: ``mcp-bridge call`` run by a person at a terminal asks them
    there (what, on which server, with what) and runs it only on ``y``; Enter alone is no."""
    config = _confirming_config(tmp_path, alpha)
    args = ["call", "alpha__echo", "--args", '{"text": "asked first"}', "--config", str(config)]
    code, seen = _in_a_terminal(tmp_path, args, alpha.env(), answer)
    assert "Run tool 'echo' on server 'alpha'?" in seen
    assert 'Arguments: {"text": "asked first"}' in seen
    if answer == b"y\n":
        assert code == 0, seen
        assert "alpha: asked first" in seen  # the result, on stdout
    else:
        assert code == 1, seen
        assert "declined" in seen and "alpha: asked first" not in seen


def test_call_without_a_terminal_is_denied_by_confirm_saying_how_to_be_asked(
    tmp_path: Path, alpha: LocalUpstream
) -> None:
    """No terminal (a script, a pipe) and no IDE: a call that ``confirm`` holds back is denied, never run unasked,
    and the message says where it can be asked."""
    config = _confirming_config(tmp_path, alpha)
    done = run(tmp_path, "call", "alpha__echo", "--args", '{"text": "x"}', "--config", str(config), env=alpha.env())
    assert done.returncode == 1
    assert "confirm" in done.stderr and "in a terminal" in done.stderr, done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("bad", ["[1", '"text"', "[1, 2]"])
def test_call_with_bad_args_is_a_usage_error(tmp_path: Path, config: Path, alpha: LocalUpstream, bad: str) -> None:
    done = run(tmp_path, "call", "alpha__echo", "--args", bad, "--config", str(config), env=alpha.env())
    assert done.returncode == 2 and "--args" in done.stderr


def test_bad_config_exits_2_with_one_message_naming_file_key_and_reason(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("servers:\n  docs:\n    url: https://x.example/mcp\n    alowed_tools: [a]\n")
    for command in ("serve", "status", "tools"):
        done = run(tmp_path, command, "--config", str(config))
        assert done.returncode == 2
        assert done.stdout == ""  # in serve mode stdout is the protocol: nothing else goes there
        assert f"{config}: servers.docs.alowed_tools: unknown key" in done.stderr


def test_missing_environment_variable_is_named(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        {"d": {"url": "https://x.example/mcp", "auth": {"type": "api_key", "value": "${env:NOT_SET_ANYWHERE}"}}},
    )
    done = run(tmp_path, "status", "--config", str(config))
    assert done.returncode == 2 and "NOT_SET_ANYWHERE" in done.stderr and "servers.d.auth.value" in done.stderr


def test_missing_config_file_and_bad_usage(tmp_path: Path) -> None:
    missing = run(tmp_path, "status", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
    usage = run(tmp_path, "frobnicate")
    assert usage.returncode == 2
    version = run(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.startswith("mcp-bridge ")


def test_the_version_literal_is_the_installed_packages_version() -> None:
    """``__version__`` is written once, in the package (pyproject reads it there): the metadata must agree."""
    from importlib.metadata import version

    import mcp_bridge

    assert mcp_bridge.__version__ == version("mcp-bridge")


def test_console_script_and_module_entry_point_are_the_same_command(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("mcp-bridge")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False, timeout=30)
    assert done.returncode == 0 and "serve" in done.stdout and "status" in done.stdout


def test_doctor_reports_a_broken_config_with_its_fix_and_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("servers:\n  docs:\n    url: https://x.example/mcp\n    alowed_tools: [a]\n")
    done = run(tmp_path, "doctor", "--config", str(config))
    assert done.returncode == 1
    assert "✗ config" in done.stdout and "alowed_tools" in done.stdout and "fix:" in done.stdout


def test_doctor_passes_a_healthy_config(tmp_path: Path, config: Path, alpha: LocalUpstream) -> None:
    done = run(tmp_path, "doctor", "--config", str(config), env=alpha.env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✗" not in done.stdout and "✓ server alpha: connected" in done.stdout


def test_call_waits_for_a_server_that_comes_up_after_it_started(tmp_path: Path) -> None:
    """A fresh state directory (no cached listing): the call waits, bounded by timeouts.connect, for the server."""
    late = LocalUpstream("late", tmp_path)
    cfg = write_config(tmp_path / "config.yaml", {"late": late.server_config(["add"])}, timeouts={"connect": 30})
    log = tmp_path / "bridge.log"
    args = ["call", "late__add", "--args", '{"a": 2, "b": 3}', "--config", str(cfg), "--log-file", str(log)]
    args += ["--log-level", "info"]
    with subprocess.Popen(
        [sys.executable, "-m", "mcp_bridge", *args],
        env=bridge_env(tmp_path / "home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        deadline = time.monotonic() + 30
        while "upstream.failed" not in (log.read_text() if log.exists() else ""):  # it tried once, and failed
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.05)
        with late:
            out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["structuredContent"] == {"sum": 5}


def test_call_to_a_server_that_is_not_there_names_it_and_its_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    cfg = write_config(
        tmp_path / "config.yaml", {"gone": {"url": url, "allowed_tools": ["add"]}}, timeouts={"connect": 2}
    )
    done = run(tmp_path, "call", "gone__add", "--args", "{}", "--config", str(cfg))
    assert done.returncode == 1
    assert "server 'gone': not reachable: could not connect" in done.stderr, done.stderr
    assert "unknown tool" not in done.stderr


def test_a_key_given_twice_is_a_config_error_naming_both_lines(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "servers:\n  a:\n    url: http://127.0.0.1:1/mcp\n    allowed_tools: [echo]\n    allowed_tools: ['*']\n",
        encoding="utf-8",
    )
    done = run(tmp_path, "tools", "--config", str(cfg))
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"mcp-bridge: {cfg}: line 5: duplicate key 'allowed_tools' (also on line 4); keep one of them"
    )
    merged = tmp_path / "merged.yaml"  # YAML merge keys still override what they merge in
    merged.write_text(
        "base: &base {url: 'http://127.0.0.1:1/mcp', allowed_tools: [echo]}\n"
        "servers:\n  a:\n    <<: *base\n    allowed_tools: [add]\n",
        encoding="utf-8",
    )
    done = run(tmp_path, "tools", "--config", str(merged))
    assert done.returncode == 2 and "base: unknown key" in done.stderr and "duplicate" not in done.stderr


@pytest.mark.anyio
async def test_http_failures_of_a_server_read_as_http_with_one_line_of_explanation(tmp_path: Path) -> None:
    """404, 500, a web page and JSON that is not MCP: `status` names the HTTP status or what the URL answered, in one
    line; a 413 on a large argument says so in the call's error."""
    import anyio

    from hostile import Canned, Hostile, serving, tool

    missing = Canned(404, b"Not Found")
    broken = Canned(500, b"<html>oops</html>", "text/html")
    page = Canned(200, b"<html>Welcome</html>", "text/html; charset=utf-8")
    other = Canned(200, b'{"hello": "world"}', "application/json")
    small = Hostile("small", tools=[tool("echo", "Echo.")])
    servers = {"missing": missing, "broken": broken, "page": page, "other": other, "small": small}
    cfg = write_config(
        tmp_path / "config.yaml",
        {name: {"url": s.url, "allowed_tools": ["*"]} for name, s in servers.items()},
        timeouts={"connect": 5},
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run(tmp_path, *args, "--config", str(cfg))

    async with serving(*servers.values(), body_limit=64 * 1024):
        status = await anyio.to_thread.run_sync(cli, "status", "--json")
        errors = {row["server"]: row["last_error"] for row in json.loads(status.stdout)["servers"]}
        assert errors["missing"] == (
            "the URL answered HTTP 404 (Not Found): nothing serves MCP at this URL; is the path /mcp right?"
        )
        assert errors["broken"].startswith("the URL answered HTTP 500 (Internal Server Error): the server failed")
        assert errors["page"] == "the URL answered with text/html, not MCP; is it the server's MCP endpoint?"
        assert errors["other"] == (
            "the URL answered with JSON that is not an MCP message; is it the server's MCP endpoint?"
        )
        table = await anyio.to_thread.run_sync(cli, "status")
        assert "pydantic" not in table.stdout and "-32601" not in table.stdout
        big = json.dumps({"text": "x" * 100_000})
        call = await anyio.to_thread.run_sync(cli, "call", "small__echo", "--args", big)
        assert call.returncode == 1
        assert "HTTP 413 (Content Too Large): the server refused a request this large" in call.stderr, call.stderr
        assert small.calls == []


def test_doctor_says_how_to_fix_a_missing_file_and_an_unset_variable(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config.yaml"
    done = run(tmp_path, "doctor", "--config", str(missing))
    assert done.returncode == 1
    assert f"fix: create it: `mkdir -p {missing.parent}`, then write {missing}" in done.stdout
    cfg = write_config(
        tmp_path / "config.yaml",
        {"docs": {"url": "http://127.0.0.1:1/mcp", "auth": {"type": "api_key", "value": "${env:NOPE_TOKEN}"}}},
    )
    done = run(tmp_path, "doctor", "--config", str(cfg))
    assert done.returncode == 1
    assert "fix: export NOPE_TOKEN in the environment the bridge starts in;" in done.stdout
    assert "`mcp-bridge secret set NOPE_TOKEN` and write ${keyring:NOPE_TOKEN}" in done.stdout
    assert "edit the file named above" not in done.stdout


def closed_early(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``mcp-bridge ARGS | head -c 1``: the reader takes one byte of stdout and goes away while the command still
    writes (its output is larger than a pipe holds, so it is blocked writing when the pipe closes)."""
    with subprocess.Popen(
        [sys.executable, "-m", "mcp_bridge", *args],
        env=bridge_env(tmp_path / "home", env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(1)
        proc.stdout.close()
        err = proc.stderr.read().decode("utf-8", "replace")
        return proc.wait(60), err


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path, config: Path, alpha: LocalUpstream) -> None:
    """`mcp-bridge call ... | head`: no BrokenPipeError traceback; the exit code a shell shows for SIGPIPE."""
    big = json.dumps({"text": "x" * 100_000})
    code, err = closed_early(tmp_path, "call", "alpha__echo", "--args", big, "--config", str(config), env=alpha.env())
    assert (code, err) == (141, "")  # nothing on stderr: no traceback, no "Exception ignored"
    ide = tmp_path / "mcp.json"  # `install --dry-run | head`: a diff longer than a pipe holds
    ide.write_text(json.dumps({"mcpServers": {}, "note": "y" * 200_000}), encoding="utf-8")
    args = ["install", "--dry-run", "--client", "cursor", "--path", str(ide), "--config", str(config)]
    code, err = closed_early(tmp_path, *args, env=alpha.env())
    assert code == 141 and "Traceback" not in err and "Error" not in err and "Exception" not in err, err
    assert err.startswith("mcp-bridge install: warning: the config takes TEST_UPSTREAM_KEY_ALPHA")  # its warning


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--config", "/nonexistent.yaml"],
        ["demo", "--serve", "--config", "/nonexistent.yaml"],
        ["--config", "/nonexistent.yaml", "demo"],
        ["install", "--client", "cursor", "--log-level", "debug"],
        ["install", "--client", "cursor", "--log-file", "install.log"],
        ["audit", "flush", "--json"],
        ["audit", "status", "--force"],
        ["pins", "list", "docs__search"],
        ["pins", "approve", "docs__search", "--json"],
        ["pins", "list", "--fingerprint", "sha256:00"],
    ],
)
def test_an_option_the_command_would_ignore_is_refused_with_the_reason(tmp_path: Path, args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_bridge", *args],
        env=bridge_env(tmp_path / "home"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == "", done.stderr
    command = next(a for a in args if not a.startswith("-") and "." not in a)
    assert f"mcp-bridge {command}: error: `{command}" in done.stderr and "does not take" in done.stderr
    assert not (tmp_path / "home" / "user-home" / ".cursor").exists()  # install wrote nothing


def test_options_before_the_command_go_to_it(tmp_path: Path, config: Path, alpha: LocalUpstream) -> None:
    log = tmp_path / "tools.log"
    done = run(
        tmp_path,
        "--config",
        str(config),
        "--log-level",
        "info",
        "--log-file",
        str(log),
        "tools",
        "--json",
        env=alpha.env(),
    )
    assert done.returncode == 0, done.stderr
    assert "alpha__echo" in done.stdout and "upstream.state" in log.read_text(encoding="utf-8")


def test_doctor_takes_the_log_options(tmp_path: Path, config: Path, alpha: LocalUpstream) -> None:
    log = tmp_path / "doctor.log"
    args = ["doctor", "--config", str(config), "--log-level", "info", "--log-file", str(log)]
    done = run(tmp_path, *args, env=alpha.env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "upstream.state" in log.read_text(encoding="utf-8")


def test_tools_says_why_the_list_is_short_and_exits_1_when_a_server_failed(
    tmp_path: Path, alpha: LocalUpstream
) -> None:
    gone = f"http://127.0.0.1:{free_port()}/mcp"
    quiet = {k: v for k, v in alpha.server_config().items() if k != "allowed_tools"}  # no allowed_tools
    servers = {"alpha": alpha.server_config(["echo"]), "gone": {"url": gone, "allowed_tools": ["*"]}, "quiet": quiet}
    cfg = write_config(tmp_path / "config.yaml", servers, timeouts={"connect": 3})
    done = run(tmp_path, "tools", "--config", str(cfg), env=alpha.env())
    assert done.returncode == 1
    listed, why = done.stdout.split("Why the list is short:\n")
    assert "alpha__echo" in listed and "quiet__" not in listed
    assert f"✗ server gone: cannot connect to {gone}: could not connect" in why
    assert "    fix: check the URL and that the server is up" in why
    assert f"! server quiet: connected ({alpha.url}); it has no `allowed_tools`, so none of its 10 tools" in why
    assert "1 problem(s) keep tools out of the list" in done.stderr
    as_json = run(tmp_path, "tools", "--json", "--config", str(cfg), env=alpha.env())
    assert as_json.returncode == 1
    problems = {p["about"]: p for p in json.loads(as_json.stdout)["problems"]}
    assert problems["server gone"]["failed"] is True and "could not connect" in problems["server gone"]["detail"]
    assert problems["server quiet"]["failed"] is False and "allowed_tools" in problems["server quiet"]["fix"]
    # A server without allowed_tools is a choice, not a failure: said, exit 0 (and status is 0 too).
    del servers["gone"]
    write_config(cfg, servers)
    done = run(tmp_path, "tools", "--config", str(cfg), env=alpha.env())
    assert done.returncode == 0 and "! server quiet: connected" in done.stdout and done.stderr == ""
    assert run(tmp_path, "status", "--config", str(cfg), env=alpha.env()).returncode == 0


def test_tools_all_cuts_descriptions_at_a_word_and_shows_hidden_reasons_whole(
    tmp_path: Path, alpha: LocalUpstream
) -> None:
    cfg = write_config(tmp_path / "config.yaml", {"alpha": alpha.server_config(["redefine"])})
    done = run(tmp_path, "tools", "--all", "--config", str(cfg), env=alpha.env())
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()}
    # "Changes another tool's description at runtime and sends tools/list_changed (a 'rug pull')." is 90 characters
    assert rows["alpha__redefine"].endswith("at runtime and sends tools/list_changed (a…")
    reason = "tool 'delete_everything' of server 'alpha' is not on the allowlist (local config)"
    assert rows["alpha__delete_everything"].endswith(f"[hidden: {reason}]")


def test_each_command_help_says_what_the_command_does(capsys: pytest.CaptureFixture[str]) -> None:
    from mcp_bridge.cli import main

    assert main(["--help"]) == 0
    commands = re.findall(r"^    ([a-z]+)  +", capsys.readouterr().out, re.MULTILINE)
    assert {"serve", "status", "tools", "call", "demo", "install", "doctor"} <= set(commands)
    for command in commands:
        assert main([command, "--help"]) == 0
        usage, first = capsys.readouterr().out.split("\n\n")[:2]
        assert usage.startswith(f"usage: mcp-bridge {command}")
        assert not first.endswith(":") and len(first.split()) >= 8, f"`{command} --help` has no description: {first}"


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal is POSIX")
def test_serve_started_on_a_terminal_says_what_it_is_for_and_still_serves(tmp_path: Path) -> None:
    import os
    import pty
    import select

    cfg = write_config(tmp_path / "config.yaml", {})
    master, terminal = pty.openpty()
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "mcp_bridge", "serve", "--config", str(cfg)],
            env=bridge_env(tmp_path / "home"),
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            assert proc.stderr is not None
            said = b""
            deadline = time.monotonic() + 30
            while b"Ctrl-D or Ctrl-C ends it." not in said and time.monotonic() < deadline:
                if select.select([proc.stderr], [], [], 0.5)[0]:
                    chunk = os.read(proc.stderr.fileno(), 65536)
                    if not chunk:
                        break
                    said += chunk
            assert proc.poll() is None  # still serving: an IDE could still speak to it
            proc.terminate()
            out, rest = proc.communicate(timeout=30)
    finally:
        os.close(terminal)
        os.close(master)
    err = (said + rest).decode()
    assert proc.returncode == 0 and out == b""  # stdout stays the protocol's
    assert err.startswith("mcp-bridge serve: this speaks MCP (JSON-RPC) on stdin and stdout, for an IDE"), err
    assert "`mcp-bridge demo`" in err and "`mcp-bridge tools`" in err


def test_serve_on_a_pipe_says_nothing_of_terminals(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", {})
    done = subprocess.run(
        [sys.executable, "-m", "mcp_bridge", "serve", "--config", str(cfg)],
        env=bridge_env(tmp_path / "home"),
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "") and "this speaks MCP" not in done.stderr
