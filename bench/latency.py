"""Latency and startup benchmark of the bridge (a benchmark, not a test: nothing here is asserted).

Run from the repository root::

    .venv/bin/python bench/latency.py [--calls 500] [--rounds 3] [--startup-only]

It measures on this machine, in one run:

1. per-call latency of ``echo`` on one local upstream, directly (SDK client over streamable HTTP) and through the
   bridge (``python -m mcp_bridge serve`` over stdio, calling ``local__echo``), alternating paths round by round;
2. startup: spawn → ``initialize`` of the bridge (answered early, before the SDK loads, and, alternating with it,
   answered by the SDK with ``MCP_BRIDGE_EARLY_INITIALIZE=0``), and spawn → first full ``tools/list`` over 10
   upstreams with a cold and a warm disk cache, plus the import times that bound it.

``--startup-only`` skips part 1 (the table then has no latency rows).

It prints one markdown table and appends it to ``bench/RESULTS.md``. Upstreams are real
``mcp_bridge.localservers`` subprocesses on 127.0.0.1; every subprocess is killed at the end, even on error or
Ctrl-C. The bridge's stderr goes to a temporary file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import yaml
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from pydantic import RootModel

from common import git_commit, load_average

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TARGET_ADDED_P50_MS = 1.0
WARMUP_CALLS = 20
STARTUP_SPAWNS = 5
IMPORT_RUNS = 5
N_UPSTREAMS = 10
FULL_LIST_TIMEOUT = 30.0
EARLY_OFF = {"MCP_BRIDGE_EARLY_INITIALIZE": "0"}
PRE_ANSWER_IMPORTS = "import mcp_bridge.cli, mcp_bridge.handshake, mcp_bridge.policy"
"""What ``serve`` imports before it answers ``initialize``."""

RESULTS_HEADER = """\
# Bridge benchmark results

Produced by `bench/latency.py` (a benchmark, not a test). Run it from the repository root with

    .venv/bin/python bench/latency.py [--calls 500] [--rounds 3] [--startup-only]

Each run appends one table below: per-call `echo` latency directly vs. through the bridge (median across rounds of
each round's p50/p99), and bridge startup (spawn → `initialize`, spawn → full `tools/list` over 10 upstreams with a
cold and a warm catalog cache) next to the import times that bound it. Numbers are measured, never edited.
"""


class Raw(RootModel[dict[str, Any]]):
    """A result as the raw camelCase dict on the wire."""


# ---------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"upstream on port {port} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Upstream:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


@dataclass
class Processes:
    """Every upstream this script started; :meth:`kill_all` kills their process groups."""

    log_dir: Path
    upstreams: list[Upstream] = field(default_factory=list)

    def start_upstreams(self, names: list[str]) -> list[Upstream]:
        started = []
        for name in names:  # spawn all, then wait: they boot in parallel
            port = free_port()
            cmd = [sys.executable, "-m", "mcp_bridge.localservers", "--port", str(port), "--name", name]
            with open(self.log_dir / f"upstream-{name}.log", "ab") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
            upstream = Upstream(name, port, proc)
            self.upstreams.append(upstream)
            started.append(upstream)
        for upstream in started:
            wait_port(upstream.port, upstream.proc)
        return started

    def kill_all(self) -> None:
        for upstream in self.upstreams:
            _kill_group(upstream.proc.pid)
            with contextlib.suppress(Exception):
                upstream.proc.wait(5)
        self.upstreams.clear()
        # The SDK's stdio client kills the bridges it spawned on exit; a bridge orphaned by a hard interrupt is
        # still our child: find those through /proc (Linux) and kill their groups too.
        for pid in _own_children():
            _kill_group(pid)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _own_children() -> list[int]:
    me, children = os.getpid(), []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        # fields: state ppid pgrp ...; only children that lead their own session (start_new_session) are killed
        if len(fields) > 2 and int(fields[1]) == me and int(fields[2]) == int(entry.name):
            children.append(int(entry.name))
    return children


def write_config(path: Path, upstreams: list[Upstream]) -> Path:
    servers = {u.name: {"url": u.url, "allowed_tools": ["*"]} for u in upstreams}
    path.write_text(yaml.safe_dump({"servers": servers}, sort_keys=False), encoding="utf-8")
    return path


def bridge_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_BRIDGE_")}
    user_home = home / "user-home"
    user_home.mkdir(parents=True, exist_ok=True)
    env.update({"MCP_BRIDGE_HOME": str(home), "HOME": str(user_home), "PYTHONUNBUFFERED": "1"})
    return env


class ToolsChanged:
    """message_handler that flags ``notifications/tools/list_changed``."""

    def __init__(self) -> None:
        self.event = anyio.Event()

    async def __call__(self, message: Any) -> None:
        root = getattr(message, "root", message)
        if isinstance(root, types.ToolListChangedNotification):
            self.event.set()

    def rearm(self) -> None:
        self.event = anyio.Event()


@asynccontextmanager
async def bridge_session(
    config: Path,
    home: Path,
    stderr_path: Path,
    handler: ToolsChanged | None = None,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[ClientSession]:
    """Spawn ``python -m mcp_bridge serve`` and open an (uninitialized) SDK session over its stdio."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_bridge", "serve", "--config", str(config)],
        env={**bridge_env(home), **(extra_env or {})},
        cwd=str(home),
    )
    with open(stderr_path, "a", encoding="utf-8") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(
                read,
                write,
                message_handler=handler,
                client_info=types.Implementation(name="bench-ide", version="1.0"),
            ) as session,
        ):
            yield session


@asynccontextmanager
async def direct_client(url: str) -> AsyncIterator[Client]:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        yield client


async def call_echo(session: ClientSession, name: str, text: str) -> dict[str, Any]:
    request = types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments={"text": text}))
    return (await session.send_request(request, Raw)).root


async def list_tool_names(session: ClientSession) -> set[str]:
    result = await session.send_request(types.ListToolsRequest(), Raw)
    return {t["name"] for t in result.root["tools"]}


# ---------------------------------------------------------------------------------------------- statistics


def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ms(seconds: float) -> float:
    return seconds * 1000


# ---------------------------------------------------------------------------------------------- 1. latency


@dataclass
class LatencyResult:
    calls: int
    rounds: int
    direct_p50: list[float] = field(default_factory=list)
    direct_p99: list[float] = field(default_factory=list)
    bridge_p50: list[float] = field(default_factory=list)
    bridge_p99: list[float] = field(default_factory=list)


async def timed_calls(session: ClientSession, tool: str, n: int, expect_prefix: str) -> list[float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        result = await call_echo(session, tool, f"m{i}")
        samples.append(time.perf_counter() - t0)
        text = result["content"][0]["text"] if result.get("content") else ""
        if result.get("isError") or text != f"{expect_prefix}: m{i}":
            raise RuntimeError(f"{tool} answered unexpectedly: {result!r}")
    return samples


async def run_latency(upstream: Upstream, work: Path, calls: int, rounds: int) -> LatencyResult:
    home = work / "latency-home"
    config = write_config(work / "latency.yaml", [upstream])
    result = LatencyResult(calls, rounds)
    async with (
        direct_client(upstream.url) as direct,
        bridge_session(config, home, work / "bridge-latency.stderr.log") as bridged,
    ):
        await bridged.initialize()
        names = await list_tool_names(bridged)
        if f"{upstream.name}__echo" not in names:
            raise RuntimeError(f"the bridge does not list {upstream.name}__echo: {sorted(names)}")
        paths = {
            "direct": (direct.session, "echo"),
            "bridge": (bridged, f"{upstream.name}__echo"),
        }
        for session, tool in paths.values():
            await timed_calls(session, tool, WARMUP_CALLS, upstream.name)
        for r in range(rounds):
            order = ["direct", "bridge"] if r % 2 == 0 else ["bridge", "direct"]
            for path in order:
                session, tool = paths[path]
                samples = await timed_calls(session, tool, calls, upstream.name)
                p50, p99 = ms(percentile(samples, 50)), ms(percentile(samples, 99))
                getattr(result, f"{path}_p50").append(p50)
                getattr(result, f"{path}_p99").append(p99)
                print(f"  round {r + 1}/{rounds} {path:6}: p50 {p50:.3f} ms  p99 {p99:.3f} ms", file=sys.stderr)
    return result


# ---------------------------------------------------------------------------------------------- 2. startup


@dataclass
class Spawn:
    initialize: float
    first_list: float | None = None
    first_list_count: int = 0
    full_list: float | None = None
    close: float = 0.0


async def spawn_once(
    config: Path, home: Path, stderr_path: Path, expected: set[str] | None, extra_env: dict[str, str] | None = None
) -> Spawn:
    """One bridge spawn: spawn → initialize, then (with ``expected``) → first and first *full* tools/list."""
    handler = ToolsChanged()
    t0 = time.perf_counter()
    async with bridge_session(config, home, stderr_path, handler, extra_env) as session:
        await session.initialize()
        spawn = Spawn(initialize=time.perf_counter() - t0)
        if expected is not None:
            with anyio.fail_after(FULL_LIST_TIMEOUT):
                names = await list_tool_names(session)
                spawn.first_list = time.perf_counter() - t0
                spawn.first_list_count = len(names & expected)
                while not expected <= names:
                    await handler.event.wait()
                    handler.rearm()
                    names = await list_tool_names(session)
                spawn.full_list = time.perf_counter() - t0
        t_close = time.perf_counter()
    spawn.close = time.perf_counter() - t_close
    return spawn


@dataclass
class StartupResult:
    initialize: list[Spawn]
    initialize_by_sdk: list[Spawn]
    cold: list[Spawn]
    warm: list[Spawn]
    expected_tools: int


async def run_startup(local: Upstream, many: list[Upstream], work: Path) -> StartupResult:
    one_config = write_config(work / "one.yaml", [local])
    many_config = write_config(work / "many.yaml", many)
    async with direct_client(many[0].url) as probe:
        listed = await list_tool_names(probe.session)
    expected = {f"{u.name}__{tool}" for u in many for tool in listed}
    stderr_path = work / "bridge-startup.stderr.log"

    init_runs, by_sdk = [], []
    for i in range(STARTUP_SPAWNS):  # alternating: the same machine load for both
        init_runs.append(await spawn_once(one_config, work / f"init-home-{i}", stderr_path, None))
        by_sdk.append(await spawn_once(one_config, work / f"sdk-home-{i}", stderr_path, None, EARLY_OFF))
    cold = []
    for i in range(STARTUP_SPAWNS):
        cold.append(await spawn_once(many_config, work / f"cold-home-{i}", stderr_path, expected))
    warm_home = work / "warm-home"
    await spawn_once(many_config, warm_home, stderr_path, expected)  # fills the cache; not counted
    if not (warm_home / "catalog.json").exists():
        print("  warning: the warm-up spawn left no catalog.json in MCP_BRIDGE_HOME", file=sys.stderr)
    warm = []
    for _ in range(STARTUP_SPAWNS):
        warm.append(await spawn_once(many_config, warm_home, stderr_path, expected))
    return StartupResult(init_runs, by_sdk, cold, warm, len(expected))


def time_imports(env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Median wall time of ``python -c CODE`` over IMPORT_RUNS fresh interpreters, per code snippet."""
    snippets = [
        "pass",
        "import mcp.server.lowlevel",
        "import mcp_bridge.cli",
        PRE_ANSWER_IMPORTS,
        "import mcp_bridge.front",
    ]
    out = {}
    for code in snippets:
        runs = []
        for _ in range(IMPORT_RUNS):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, check=True, stdin=subprocess.DEVNULL)
            runs.append(time.perf_counter() - t0)
        out[code] = statistics.median(runs)
    return out


# ---------------------------------------------------------------------------------------------- report


def render(
    lat: LatencyResult | None, start: StartupResult, imports: dict[str, float], started: dt.datetime, load_start: str
) -> str:
    med = statistics.median

    def spread(values: list[float]) -> str:
        return f"rounds: {', '.join(f'{v:.3f}' for v in values)}"

    def startup_row(label: str, spawns: list[Spawn], attr: str) -> list[str]:
        values = [ms(getattr(s, attr)) for s in spawns]
        return [label, f"{med(values):.0f} ms", f"min {min(values):.0f}, max {max(values):.0f} (n={len(values)})"]

    def first_list_note(spawns: list[Spawn]) -> str:
        counts = [s.first_list_count for s in spawns]
        return f"tools in the first list: {', '.join(map(str, counts))} of {start.expected_tools}"

    rows: list[list[str]] = []
    if lat is not None:
        d50, d99 = med(lat.direct_p50), med(lat.direct_p99)
        b50, b99 = med(lat.bridge_p50), med(lat.bridge_p99)
        added = b50 - d50
        verdict = "holds" if added <= TARGET_ADDED_P50_MS else "does NOT hold"
        rows += [
            ["direct `echo` p50", f"{d50:.3f} ms", spread(lat.direct_p50)],
            ["bridge `local__echo` p50", f"{b50:.3f} ms", spread(lat.bridge_p50)],
            ["direct `echo` p99", f"{d99:.3f} ms", spread(lat.direct_p99)],
            ["bridge `local__echo` p99", f"{b99:.3f} ms", spread(lat.bridge_p99)],
            ["ratio bridge/direct p50", f"{b50 / d50:.2f}x", f"p99 ratio {b99 / d99:.2f}x"],
            [
                "added by the bridge, p50",
                f"{added:+.3f} ms",
                f"target: at most {TARGET_ADDED_P50_MS:g} ms at p50 — {verdict}",
            ],
        ]
    rows += [
        startup_row("bridge spawn → `initialize` (1 upstream)", start.initialize, "initialize"),
        startup_row(
            "same, answered by the SDK (`MCP_BRIDGE_EARLY_INITIALIZE=0`)", start.initialize_by_sdk, "initialize"
        ),
        startup_row("spawn → `initialize`, 10 upstreams, cold cache", start.cold, "initialize"),
        startup_row("spawn → first `tools/list`, cold cache", start.cold, "first_list"),
        ["", "", first_list_note(start.cold)],
        startup_row(f"spawn → full `tools/list` ({start.expected_tools} tools), cold cache", start.cold, "full_list"),
        startup_row("spawn → first `tools/list`, warm cache", start.warm, "first_list"),
        ["", "", first_list_note(start.warm)],
        startup_row(f"spawn → full `tools/list` ({start.expected_tools} tools), warm cache", start.warm, "full_list"),
        startup_row("bridge close (stdin EOF → exited), 10 upstreams", start.cold + start.warm, "close"),
    ]
    for code, seconds in imports.items():
        rows.append([f'`python -c "{code}"`', f"{ms(seconds):.0f} ms", f"median of {IMPORT_RUNS} fresh processes"])

    latency_note = (
        f"- latency: {lat.calls} sequential `echo` calls per path per round, {lat.rounds} rounds alternating paths, "
        f"{WARMUP_CALLS} warm-up calls per path; values are the median across rounds of each round's p50/p99"
        if lat is not None
        else "- latency: not measured in this run (`--startup-only`)"
    )
    header = [
        f"## {started:%Y-%m-%d %H:%M} UTC — commit {git_commit()}" + (" — startup only" if lat is None else ""),
        "",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"1-min load average {load_start} before the run, {load_average()} at its end (includes this run's own load)",
        latency_note,
        f"- startup: median of {STARTUP_SPAWNS} spawns each; cold = fresh `MCP_BRIDGE_HOME` (no `catalog.json`) "
        f"per spawn, warm = one home reused after a first (uncounted) run; "
        f"{N_UPSTREAMS} local upstreams, `allowed_tools: ['*']`",
        "",
        "| metric | value | notes |",
        "|---|---:|---|",
    ]
    return "\n".join(header + [f"| {' | '.join(r)} |" for r in rows]) + "\n"


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="sequential calls per path per round (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating paths (default 3)")
    parser.add_argument(
        "--startup-only", action="store_true", help="measure startup and import times only (skip per-call latency)"
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only; do not append to RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, stderr logs)")
    args = parser.parse_args()
    if args.calls < 1 or args.rounds < 1:
        parser.error("--calls and --rounds must be at least 1")

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.raise_signal(signal.SIGINT)  # same path as Ctrl-C: the event loop cancels its main task cleanly

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_sigterm)
    started = dt.datetime.now(dt.UTC)
    load_start = load_average()
    t_start = time.perf_counter()
    with _workdir(args.keep) as work:
        procs = Processes(work)
        try:
            print("import times ...", file=sys.stderr)
            imports = time_imports(bridge_env(work / "import-home"), work)
            (local,) = procs.start_upstreams(["local"])
            latency = None
            if not args.startup_only:
                print("per-call latency ...", file=sys.stderr)
                latency = anyio.run(run_latency, local, work, args.calls, args.rounds)
            print("startup ...", file=sys.stderr)
            many = procs.start_upstreams([f"u{i}" for i in range(N_UPSTREAMS)])
            startup = anyio.run(run_startup, local, many, work)
        except KeyboardInterrupt:
            print("interrupted; cleaning up", file=sys.stderr)
            return 130
        finally:
            procs.kill_all()
    table = render(latency, startup, imports, started, load_start)
    print(table)
    if not args.no_write:
        if not RESULTS.exists():
            RESULTS.write_text(RESULTS_HEADER, encoding="utf-8")
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n" + table)
        print(f"appended to {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    print(f"total runtime {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _workdir(keep: bool) -> Iterator[Path]:
    if keep:
        path = Path(tempfile.mkdtemp(prefix="mcp-bridge-bench-"))
        print(f"work dir (kept): {path}", file=sys.stderr)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mcp-bridge-bench-") as tmp:
        yield Path(tmp)


if __name__ == "__main__":
    raise SystemExit(main())
