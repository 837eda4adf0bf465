"""`mcp-bridge secret set|delete|list`: secrets in the OS keyring for a config's ``${keyring:NAME}``, for IDEs that do
not pass a shell's environment. The keyring is the file backend of keyrings.alt, isolated per test."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import LocalUpstream, bridge_client, bridge_env, raw_call, write_config

KEYRING = "keyrings.alt.file.PlaintextKeyring"
KEY = "alpha-key-from-the-keyring-0001"


@pytest.fixture(scope="module")
def alpha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalUpstream]:
    up = LocalUpstream("alpha", tmp_path_factory.mktemp("logs"), api_key=KEY).start()
    yield up
    up.kill()


def keyring_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The file keyring, kept outside the bridge's home (so a search of the home for the value is meaningful)."""
    return {"PYTHON_KEYRING_BACKEND": KEYRING, "XDG_DATA_HOME": str(tmp_path / "xdg-data"), **extra}


def cli(tmp_path: Path, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_bridge", *args],
        env=bridge_env(tmp_path / "home", keyring_env(tmp_path, **env)),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def stored(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """What the file keyring holds for ``name`` (read the way the bridge reads it)."""
    from keyrings.alt.file import PlaintextKeyring

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    return PlaintextKeyring().get_password("mcp-bridge", f"secret:{name}")  # type: ignore[no-any-return]


@pytest.mark.anyio
async def test_a_secret_set_from_stdin_serves_a_keyring_reference_and_deleting_it_breaks_the_config(
    tmp_path: Path, alpha: LocalUpstream
) -> None:
    import anyio

    done = await anyio.to_thread.run_sync(lambda: cli(tmp_path, "secret", "set", "ALPHA_KEY", stdin=KEY + "\n"))
    assert done.returncode == 0, done.stderr
    assert "ALPHA_KEY: stored in the keyring (keyrings.alt.file.PlaintextKeyring)" in done.stdout
    assert "${keyring:ALPHA_KEY}" in done.stdout
    outputs = [done.stdout + done.stderr]

    servers = {"alpha": {"url": alpha.url, "allowed_tools": ["echo"], "auth": {"type": "api_key"}}}
    servers["alpha"]["auth"]["value"] = "Bearer ${keyring:ALPHA_KEY}"  # type: ignore[index]
    cfg = write_config(tmp_path / "config.yaml", servers, timeouts={"connect": 5})
    log = tmp_path / "bridge.log"
    args = ["call", "alpha__echo", "--args", '{"text": "via the keyring"}', "--config", str(cfg)]
    call = await anyio.to_thread.run_sync(lambda: cli(tmp_path, *args, "--log-level", "debug", "--log-file", str(log)))
    assert call.returncode == 0, call.stderr
    assert json.loads(call.stdout)["content"][0]["text"] == "alpha: via the keyring"  # the key was right
    outputs.append(call.stdout + call.stderr)

    stderr = tmp_path / "serve-stderr.log"  # serve, as the IDE runs it
    async with bridge_client(cfg, tmp_path / "home", env=keyring_env(tmp_path), stderr_path=stderr) as client:
        assert (await raw_call(client, "alpha__echo", {"text": "ide"}))["content"][0]["text"] == "alpha: ide"

    listed = await anyio.to_thread.run_sync(lambda: cli(tmp_path, "secret", "list"))
    as_json = await anyio.to_thread.run_sync(lambda: cli(tmp_path, "secret", "list", "--json"))
    assert listed.returncode == 0 and listed.stdout.split("\n")[1].split()[::2] == ["ALPHA_KEY", "yes"]
    (row,) = json.loads(as_json.stdout)["secrets"]
    assert row["name"] == "ALPHA_KEY" and row["in_keyring"] is True and row["set_at"].endswith("Z")
    outputs += [listed.stdout + listed.stderr, as_json.stdout + as_json.stderr]

    deleted = await anyio.to_thread.run_sync(lambda: cli(tmp_path, "secret", "delete", "ALPHA_KEY"))
    assert deleted.returncode == 0 and "ALPHA_KEY: deleted from the keyring" in deleted.stdout
    for command in (["call", "alpha__echo"], ["serve"]):
        broken = await anyio.to_thread.run_sync(lambda c=command: cli(tmp_path, *c, "--config", str(cfg)))
        assert broken.returncode == 2 and broken.stdout == ""
        assert "servers.alpha.auth.value: no secret ALPHA_KEY in the keyring" in broken.stderr
        assert "  fix: store it with `mcp-bridge secret set ALPHA_KEY`" in broken.stderr
        outputs.append(broken.stderr)
    assert json.loads((await anyio.to_thread.run_sync(lambda: cli(tmp_path, "secret", "list", "--json"))).stdout) == {
        "secrets": []
    }

    # The value appears in no output, no log, and no file under the bridge's home.
    texts = [*outputs, log.read_text(encoding="utf-8"), stderr.read_text(encoding="utf-8")]
    texts += [p.read_text(errors="replace") for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert log.stat().st_size > 0
    for text in texts:
        assert KEY not in text


def test_the_value_comes_from_stdin_less_one_line_end_and_an_empty_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli(tmp_path, "secret", "set", "LF", stdin="v1\n").returncode == 0
    assert cli(tmp_path, "secret", "set", "CRLF", stdin="v2\r\n").returncode == 0
    assert cli(tmp_path, "secret", "set", "PEM", stdin="line 1\nline 2\n\n").returncode == 0
    assert [stored(tmp_path, n, monkeypatch) for n in ("LF", "CRLF", "PEM")] == ["v1", "v2", "line 1\nline 2\n"]
    for empty in ("", "\n", "  \n"):
        refused = cli(tmp_path, "secret", "set", "EMPTY", stdin=empty)
        assert refused.returncode == 2 and "EMPTY: the value is empty; nothing stored" in refused.stderr
    assert stored(tmp_path, "EMPTY", monkeypatch) is None


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["secret", "set", "NAME", "the-value"], "unrecognized arguments: the-value"),  # never from argv
        (["secret", "set"], "`secret set` needs a NAME"),
        (["secret", "delete"], "`secret delete` needs a NAME"),
        (["secret", "set", "1BAD"], "'1BAD' is not a secret name"),
        (["secret", "list", "NAME"], "`secret list` does not take a NAME"),
        (["secret", "set", "NAME", "--json"], "`secret set` does not take --json"),
        (["secret", "list", "--config", "c.yaml"], "`secret` does not take --config: it reads no config"),
        (["--config", "c.yaml", "secret", "list"], "`secret` does not take --config: it reads no config"),
        (["secret", "list", "--log-level", "debug"], "`secret` does not take --log-level"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], says: str) -> None:
    done = cli(tmp_path, *args, stdin="the-value\n")
    assert done.returncode == 2 and says in done.stderr and done.stdout == ""


def test_without_a_keyring_backend_it_says_so_and_names_the_options(tmp_path: Path) -> None:
    fail = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    for args in (["secret", "set", "X"], ["secret", "delete", "X"]):
        done = cli(tmp_path, *args, stdin="v\n", **fail)
        assert done.returncode == 1 and "no usable keyring backend to store secrets in" in done.stderr
        assert "PYTHON_KEYRING_BACKEND" in done.stderr and "Traceback" not in done.stderr
    assert cli(tmp_path, "secret", "set", "KEPT", stdin="v\n").returncode == 0
    listed = cli(tmp_path, "secret", "list", **fail)  # the names are known; whether the keyring has them is not
    assert listed.returncode == 1 and "KEPT" in listed.stdout and "unknown" in listed.stdout
    assert "no usable keyring backend" in listed.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal is POSIX")
def test_on_a_terminal_the_value_is_asked_for_without_echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pty

    master, terminal = pty.openpty()
    # A session leader that opens its terminal makes it its controlling terminal (/dev/tty), as in a real shell.
    acquire = (
        "import os, sys; os.close(os.open(os.ttyname(0), os.O_RDWR)); "
        "os.execv(sys.executable, [sys.executable, '-m', 'mcp_bridge', *sys.argv[1:]])"
    )
    shown = b""
    try:
        with subprocess.Popen(
            [sys.executable, "-c", acquire, "secret", "set", "TYPED"],
            env=bridge_env(tmp_path / "home", keyring_env(tmp_path)),
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        ) as proc:
            deadline = time.monotonic() + 30
            while b"(not shown): " not in shown and time.monotonic() < deadline:
                if select.select([master], [], [], 0.5)[0]:
                    shown += os.read(master, 4096)
            assert b"Value of TYPED (not shown): " in shown, shown
            os.write(master, b"typed-secret-0001\n")
            out, err = proc.communicate(timeout=30)
            while select.select([master], [], [], 0.2)[0]:
                try:
                    shown += os.read(master, 4096)
                except OSError:  # the terminal closed with the process
                    break
    finally:
        os.close(terminal)
        os.close(master)
    assert proc.returncode == 0, err
    assert b"typed-secret-0001" not in shown + out + err  # not echoed, not printed
    assert b"TYPED: stored in the keyring" in out
    assert stored(tmp_path, "TYPED", monkeypatch) == "typed-secret-0001"
