"""Test plumbing: local upstream servers as subprocesses, config files, and a bridge spawned over stdio.

The bridge is always a real ``python -m mcp_bridge serve`` subprocess driven by the SDK's stdio client, the way an
IDE drives it. Upstreams are real SDK streamable-HTTP servers (``mcp_bridge.sandbox.localservers``) on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Self

import anyio
import anyio.abc
import mcp_types as types
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.dispatcher import ProgressFnT
from pydantic import RootModel


class Raw(RootModel[dict[str, Any]]):
    """A result as the raw camelCase dict on the wire."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class LocalUpstream:
    """One ``mcp_bridge.sandbox.localservers`` process; can be killed and restarted on the same port."""

    def __init__(
        self,
        name: str,
        log_dir: Path,
        *,
        api_key: str | None = None,
        weird_names: bool = False,
        extra_tools: int = 0,
        port: int = 0,
        era: str = "both",
    ) -> None:
        self.name = name
        self.api_key = api_key
        self.weird_names = weird_names
        self.extra_tools = extra_tools
        self.era = era
        """The protocol eras it speaks (``localservers --era``): both, modern or handshake; may change between
        restarts."""
        self.port = port or free_port()
        self.log_path = log_dir / f"upstream-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "mcp_bridge.sandbox.localservers", "--port", str(self.port), "--name", self.name]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        if self.weird_names:
            cmd.append("--weird-names")
        if self.extra_tools:
            cmd += ["--extra-tools", str(self.extra_tools)]
        if self.era != "both":
            cmd += ["--era", self.era]
        return cmd

    def start(self) -> Self:
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        wait_port(self.port)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def server_config(self, allowed: list[str] | None = None) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "url": self.url,
            "allowed_tools": allowed if allowed is not None else ["*"],
            "allowed_prompts": ["*"],
            "allowed_resources": ["*"],
        }
        if self.api_key:
            cfg["auth"] = {"type": "api_key", "value": "Bearer ${env:TEST_UPSTREAM_KEY_" + self.name.upper() + "}"}
        return cfg

    def env(self) -> dict[str, str]:
        return {f"TEST_UPSTREAM_KEY_{self.name.upper()}": self.api_key} if self.api_key else {}


def write_config(path: Path, servers: dict[str, Any], **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"servers": servers, **extra}, sort_keys=False), encoding="utf-8")
    return path


def bridge_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_BRIDGE_", "TEST_UPSTREAM_KEY_"))}
    env.update({"MCP_BRIDGE_HOME": str(home), "HOME": str(home / "user-home"), "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def run_cli(
    home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """``mcp-bridge ARGS`` as a user runs it, with ``MCP_BRIDGE_HOME=home``; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "mcp_bridge", *args],
        env=bridge_env(home, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Notifications:
    """Collects what the bridge sends the IDE unprompted; ``tools_changed`` fires on each tools/list_changed."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.tools_changed = anyio.Event()

    async def __call__(self, message: Any) -> None:
        if isinstance(message, Exception):
            return
        root = getattr(message, "root", message)
        self.received.append(root)
        if isinstance(root, types.ToolListChangedNotification):
            self.tools_changed.set()

    def rearm(self) -> None:
        self.tools_changed = anyio.Event()

    async def listen(self, client: Client, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """A modern IDE's list changes: they come on a ``subscriptions/listen`` stream, recorded here as the
        handshake era's ``list_changed`` notifications they stand for (the stream is acknowledged before this
        returns to ``start``, so no change after it is missed)."""
        from mcp.shared.subscriptions import event_to_notification

        async with client.listen(tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True) as s:
            task_status.started()
            async for event in s:
                await self(event_to_notification(event, {}))


IDE_MODES = ("legacy", "auto", "2026-07-28")
"""The SDK client's modes: the handshake era, discovery first (the SDK's default), and the 2026-07-28 era pinned."""

ide_mode = "legacy"
"""The mode :func:`bridge_client` connects in unless told otherwise; the ``ide_mode`` fixture (conftest.py) sets it
for a test run in each mode."""


def is_modern(client: Client) -> bool:
    return client.protocol_version == "2026-07-28"


def era_neutral(result: dict[str, Any]) -> dict[str, Any]:
    """A result without what only its era adds (2026-07-28: ``resultType``, the cache fields, the answering
    server's identity stamp in ``_meta``): what a pass-through comparison across eras compares."""
    out = {k: v for k, v in result.items() if k not in ("resultType", "ttlMs", "cacheScope")}
    meta = out.get("_meta")
    if isinstance(meta, dict):
        rest = {k: v for k, v in meta.items() if not k.startswith("io.modelcontextprotocol/")}
        if rest:
            out["_meta"] = rest
        else:
            del out["_meta"]
    return out


@asynccontextmanager
async def bridge_process(
    config: Path, home: Path, stderr_path: Path, *, env: dict[str, str] | None = None
) -> AsyncIterator[Any]:
    """``mcp-bridge serve`` as a bare subprocess with raw pipes (for byte-level protocol tests); stderr to a file."""
    with open(stderr_path, "wb") as errlog:
        async with await anyio.open_process(
            [sys.executable, "-m", "mcp_bridge", "serve", "--config", str(config)],
            env=bridge_env(home, env),
            stderr=errlog,
        ) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            yield proc


@asynccontextmanager
async def bridge_client(
    config: Path,
    home: Path,
    *,
    env: dict[str, str] | None = None,
    notifications: Notifications | None = None,
    stderr_path: Path | None = None,
    mode: str | None = None,
    client_name: str = "pytest-ide",
    **client_options: Any,
) -> AsyncIterator[Client]:
    """Spawn ``mcp-bridge serve`` and connect to it as an IDE would, over stdio, in ``mode`` (default
    :data:`ide_mode`). With ``notifications`` in the modern era, a listen stream feeds them. ``client_options``: more
    of the SDK ``Client``'s options (say, the callbacks that declare elicitation, sampling or roots)."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_bridge", "serve", "--config", str(config)],
        env=bridge_env(home, env),
    )
    errlog_path = stderr_path or home / "bridge-stderr.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(errlog_path, "a", encoding="utf-8") as errlog:
        async with Client(
            stdio_client(params, errlog=errlog),  # a transport: the bridge's stderr goes to the file
            mode=mode or ide_mode,  # type: ignore[arg-type]
            message_handler=notifications,
            client_info=types.Implementation(name=client_name, version="1.0"),
            **client_options,
        ) as client:
            if notifications is None or not is_modern(client):
                yield client
                return
            async with anyio.create_task_group() as tg:
                await tg.start(notifications.listen, client)
                yield client
                tg.cancel_scope.cancel()


async def raw_call(
    client: Client, name: str, arguments: dict[str, Any] | None = None, progress: ProgressFnT | None = None
) -> dict[str, Any]:
    """tools/call without the SDK's implicit tools/list or output-schema validation: the raw result."""
    request = types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments=arguments or {}))
    result = await client.session.send_request(request, Raw, progress_callback=progress)
    return result.root


async def wait_for(predicate: Any, what: str, timeout: float = 15.0) -> None:
    """Poll an async ``predicate`` until it holds (``what`` it waits for shows in the failure)."""
    try:
        with anyio.fail_after(timeout):
            while not await predicate():
                await anyio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


def audit_jsonl(path: Path, kind: str) -> list[dict[str, Any]]:
    """The events of one kind in the bridge's local audit copy (``audit.jsonl``)."""
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    return [x for x in lines if x["kind"] == kind]


async def tool_names(client: Client) -> list[str]:
    result = await client.session.send_request(types.ListToolsRequest(), Raw)
    return [t["name"] for t in result.root["tools"]]


@asynccontextmanager
async def direct_client(upstream: LocalUpstream, mode: str = "legacy") -> AsyncIterator[Client]:
    """The SDK client talking straight to an upstream (the "direct" side of differential tests)."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(upstream.url, http_client=http), mode=mode) as client,  # type: ignore[arg-type]
    ):
        yield client


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a hung upstream)."""

    def __init__(self, port: int = 0) -> None:
        import threading

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self.sock.close()


@contextmanager
def upstream_pair(log_dir: Path, beta_key: str) -> Iterator[dict[str, LocalUpstream]]:
    """Two running upstreams: ``alpha`` (no auth) and ``beta`` (API key ``beta_key``)."""
    alpha = LocalUpstream("alpha", log_dir).start()
    beta = LocalUpstream("beta", log_dir, api_key=beta_key).start()
    try:
        yield {"alpha": alpha, "beta": beta}
    finally:
        alpha.kill()
        beta.kill()
