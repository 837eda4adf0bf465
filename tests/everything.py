"""Run the reference third-party MCP server, ``@modelcontextprotocol/server-everything``, and the MCP Inspector
CLI, for interop tests.

The npm packages are pinned in ``tests/interop/package.json`` and its lockfile (with the ``node`` package: the Node
22 the Inspector needs). :func:`everything_server` installs them with ``npm ci`` when ``tests/interop/node_modules``
is missing or holds another version of any (once per test session), starts the server in streamable-HTTP mode on a
free port of 127.0.0.1, and yields the MCP endpoint URL. :func:`inspector_command` is the Inspector's CLI.

The server binds every interface unless forced, and it has no host option, so it is started through
``tests/interop/loopback.mjs``, which pins every TCP listen of the Node process to 127.0.0.1 and exits if the
bound address is anything else.

When Node.js or npm is missing, or the install fails, the test is skipped with the reason. Set
``MCP_BRIDGE_REQUIRE_NODE=1`` (CI) to turn that skip into a failure.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

INTEROP_DIR = Path(__file__).resolve().parent / "interop"
PACKAGE = "@modelcontextprotocol/server-everything"
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
INSTALL_TIMEOUT = 300.0
REQUIRE_ENV = "MCP_BRIDGE_REQUIRE_NODE"

# The outcome of the one install attempt per session: None = not tried, "" = ready, else why not.
_install_problem: str | None = None


def _unavailable(reason: str) -> None:
    """Skip the test (or fail it, when ``$MCP_BRIDGE_REQUIRE_NODE`` is set)."""
    if os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0"):
        pytest.fail(f"{reason} (and ${REQUIRE_ENV} is set)", pytrace=False)
    pytest.skip(reason)


def _pinned() -> dict[str, str]:
    manifest = json.loads((INTEROP_DIR / "package.json").read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in manifest["dependencies"].items()}


def _installed_version(package: str) -> str | None:
    manifest = INTEROP_DIR / "node_modules" / package / "package.json"
    try:
        return str(json.loads(manifest.read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError):
        return None


def _stale() -> list[str]:
    """The pinned packages not installed at their pinned version."""
    return [f"{name}@{version}" for name, version in _pinned().items() if _installed_version(name) != version]


def _install() -> str:
    """Make ``tests/interop/node_modules`` match the lockfile; return "" or the reason it could not."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if path is None)
        return f"{missing} not found on PATH: interop tests with {PACKAGE} need Node.js and npm"
    if not _stale():
        return ""
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=INTEROP_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`npm ci` in {INTEROP_DIR} failed: {exc}"
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-10:])
        return f"`npm ci` in {INTEROP_DIR} exited {done.returncode}:\n{tail}"
    if stale := _stale():
        return f"`npm ci` in {INTEROP_DIR} did not install {', '.join(stale)}"
    return ""


def ensure_installed() -> None:
    """Install the pinned packages once per session; skip the calling test if that is impossible."""
    global _install_problem
    if _install_problem is None:
        _install_problem = _install()
    if _install_problem:
        _unavailable(_install_problem)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server's whole process group and reap it."""
    if proc.poll() is not None:
        return  # already reaped: its pid may be reused, so signal nothing
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _answers(port: int) -> bool:
    """True once the MCP endpoint answers HTTP (a GET without a session gets a JSON-RPC 400)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            pass
    except OSError:
        return False
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/mcp", headers={"Accept": "application/json, text/event-stream"})
        return conn.getresponse().status < 500
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _start(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    node = shutil.which("node")
    assert node is not None  # checked by ensure_installed()
    # A small environment on purpose: the server's `get-env` tool returns its whole environment.
    env = {"PATH": os.environ.get("PATH", os.defpath), "PORT": str(port), "NODE_ENV": "production"}
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [node, str(INTEROP_DIR / "loopback.mjs"), "streamableHttp"],
            cwd=INTEROP_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


@contextmanager
def everything_server(log_dir: Path | None = None, *, timeout: float = STARTUP_TIMEOUT) -> Iterator[str]:
    """Start server-everything on a free 127.0.0.1 port and yield its MCP URL (``http://127.0.0.1:PORT/mcp``).

    Its stdout and stderr go to ``everything-PORT.log`` in ``log_dir`` (a temporary directory, removed
    afterwards, when not given). Skips the test when Node.js/npm or the package cannot be had; fails it when
    the server does not answer within ``timeout`` seconds.
    """
    ensure_installed()
    own_dir = log_dir is None
    directory = Path(tempfile.mkdtemp(prefix="everything-")) if log_dir is None else log_dir
    try:
        for _attempt in range(3):
            port = _free_port()
            log_path = directory / f"everything-{port}.log"
            proc = _start(port, log_path)
            try:
                deadline = time.monotonic() + timeout
                while not _answers(port):
                    if proc.poll() is not None:
                        break
                    if time.monotonic() > deadline:
                        pytest.fail(
                            f"{PACKAGE} did not answer on {HOST}:{port} within {timeout:g} s; "
                            f"log {log_path}:\n{_log_tail(log_path)}",
                            pytrace=False,
                        )
                    time.sleep(0.05)
                else:
                    yield f"http://{HOST}:{port}/mcp"
                    return
            finally:
                _stop(proc)
            # It exited before answering. Another process may have taken the port in between: try another.
            if "EADDRINUSE" not in _log_tail(log_path) and "already in use" not in _log_tail(log_path):
                break
        pytest.fail(
            f"{PACKAGE} exited with {proc.returncode} before answering; log {log_path}:\n{_log_tail(log_path)}",
            pytrace=False,
        )
    finally:
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)


INSPECTOR = "@modelcontextprotocol/inspector"


def inspector_command() -> list[str]:
    """The MCP Inspector's CLI (``mcp-inspector --cli``) on the pinned Node 22 (it needs Node >= 22.19); skips the
    test when they cannot be had."""
    ensure_installed()
    node = INTEROP_DIR / "node_modules" / "node" / "bin" / "node"
    launcher = INTEROP_DIR / "node_modules" / INSPECTOR / "clients" / "launcher" / "build" / "index.js"
    try:
        done = subprocess.run(
            [str(node), "-p", "process.versions.node"], capture_output=True, text=True, timeout=30, check=False
        )
        major = int(done.stdout.strip().split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        major = 0
    if major < 22 or not launcher.is_file():
        _unavailable(f"the pinned Node 22 or {INSPECTOR} is not usable in {INTEROP_DIR / 'node_modules'}")
    return [str(node), str(launcher), "--cli"]
