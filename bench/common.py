"""What the benchmarks share: the run header (commit, machine, load), local upstream processes, sessions over stdio
and streamable HTTP, timing and statistics helpers, process-tree memory, and appending a table to ``RESULTS.md``.

Every process started here leads its own session (process group), so :meth:`Processes.kill_all` and the SDK's stdio
client can kill whole trees; nothing here touches a process it did not start.
"""

from __future__ import annotations

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
from collections.abc import AsyncIterator, Iterator, Sequence
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

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "RESULTS.md"
WARMUP_CALLS = 20

ERAS: dict[str, tuple[str, str]] = {
    "2025-11-25": ("legacy", "handshake"),
    "2026-07-28": ("auto", "modern"),
}
"""The protocol eras a benchmark can run in: era → (the IDE's SDK client mode, the upstreams' ``--era``). In an era
both sides speak it: the handshake era is an IDE in ``legacy`` mode and upstreams that speak only the handshake era;
2026-07-28 is an IDE in ``auto`` mode (the SDK's default: ``server/discover`` first) and upstreams that speak only
2026-07-28, so the bridge speaks that era on both of its sides too."""


def parse_eras(text: str) -> list[str]:
    """``--eras`` (comma-separated, in :data:`ERAS`' order); ValueError names an unknown one."""
    wanted = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in wanted if e not in ERAS]
    if unknown or not wanted:
        raise ValueError(f"unknown era {', '.join(unknown) or '(none)'}; known: {', '.join(ERAS)}")
    return [e for e in ERAS if e in wanted]


RESULTS_HEADER = """\
# Benchmark results

Benchmarks, not tests: nothing is asserted. Run each from the repository root with the project's virtualenv
(`.venv/bin/python bench/NAME.py`, `--help` for options, `--no-write` to print without appending here). Each run
appends one table with its date, commit, machine and the 1-min load average before and after; numbers are measured,
never edited, and ratios compare paths measured in the same run.

- `bench/peers.py`: side by side with the peers: per-call `echo` latency (direct SDK client, the bridge,
  `mcp-remote`, `mcp-proxy`) and the memory of one bridge with 10 upstreams against 10 `mcp-remote` (and 10
  `mcp-proxy`) processes. It installs the pinned peers into `bench/.peers/` itself (`bench/peers/`).
- `bench/concurrency.py`: 200 calls with 50 in flight over 4 upstreams, directly and through the bridge; the same
  with one upstream answering in 2 s; 50 calls of 1 s each in flight at once.
- `bench/latency.py`: bridge startup (spawn → `initialize`, spawn → full merged `tools/list` for 1, 10 and 50
  upstreams, cold and warm catalog cache, import times) and a quick direct-vs-bridge `echo` latency.
- `bench/scale.py`: 50 upstreams × 200 tools: `tools/list` of 10,000 tools through the bridge, and the cost of an
  allowlist refresh that changes one tool (end to end through a Port double, and in-process).
- `bench/audit.py`: audit recording cost per call and spool throughput.
- `bench/search.py`: search mode's quality (recall@1, recall@5, MRR@10 of job-phrased queries over real servers'
  tools, `bench/search_data/`) and cost (`find_tools` time, `tools/list` size, index update) at 100 to 10,000 tools.
- `bench/telemetry.py`: per-call latency and the bridge's CPU with telemetry off and on (a live collector, one that
  refuses, one that never answers), in each protocol era, and the event loop's CPU for the telemetry hooks of a call.

The tables whose title names no script come from `bench/latency.py` as it was before `bench/peers.py` existed (then
direct-vs-bridge latency and startup with 10 upstreams only).
"""


class Raw(RootModel[dict[str, Any]]):
    """A result as the raw camelCase dict on the wire."""


# ---------------------------------------------------------------------------------------------- run header


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(  # RESULTS.md itself changes with every run: it says nothing about the code measured
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/RESULTS.md"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} (uncommitted changes in tracked files)" if dirty else commit


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def wait_for_quiet(max_load: float, max_wait: float) -> str:
    """Wait (at most ``max_wait`` seconds) until the 1-min load average is at most ``max_load``; say how it went."""
    t0 = time.monotonic()
    while True:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return "load average unavailable"
        waited = time.monotonic() - t0
        if load <= max_load:
            return f"started at load {load:.2f} (≤ {max_load:g}) after waiting {waited:.0f} s"
        if waited >= max_wait:
            return f"load stayed above {max_load:g} for {waited:.0f} s; started at {load:.2f} anyway (noisy)"
        print(f"  load {load:.2f} > {max_load:g}; waiting ...", file=sys.stderr)
        time.sleep(15)


def title_line(started: dt.datetime, what: str) -> str:
    return f"## {started:%Y-%m-%d %H:%M} UTC — commit {git_commit()} — {what}"


def machine_line(load_start: str, extra: str = "") -> str:
    return (
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}{extra}; "
        f"1-min load average {load_start} before the run, {load_average()} at its end (includes this run's own load)"
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    align = align or "|" + "|".join("---:" if i == 1 else "---" for i in range(len(header))) + "|"
    return [f"| {' | '.join(header)} |", align] + [f"| {' | '.join(r)} |" for r in rows]


def append_results(table: str, write: bool) -> None:
    print(table)
    if not write:
        return
    if not RESULTS.exists():
        RESULTS.write_text(RESULTS_HEADER, encoding="utf-8")
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write("\n" + table)
    print(f"appended to {RESULTS.relative_to(ROOT)}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"upstream on port {port} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
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

    def start_upstreams(self, names: list[str], extra_args: Sequence[str] = ()) -> list[Upstream]:
        """``mcp_bridge.sandbox.localservers`` processes on 127.0.0.1, spawned together (they boot in parallel)."""
        started = []
        for name in names:
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "mcp_bridge.sandbox.localservers",
                "--port",
                str(port),
                "--name",
                name,
                *extra_args,
            ]
            with open(self.log_dir / f"upstream-{name}.log", "ab") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
            upstream = Upstream(name, port, proc)
            self.upstreams.append(upstream)
            started.append(upstream)
        for upstream in started:
            wait_port(upstream.port, upstream.proc, timeout=30 + 2 * len(started))
        return started

    def kill_all(self) -> None:
        for upstream in self.upstreams:
            kill_group(upstream.proc.pid)
            with contextlib.suppress(Exception):
                upstream.proc.wait(5)
        self.upstreams.clear()
        # The SDK's stdio client kills the bridges and peers it spawned on exit; one orphaned by a hard interrupt is
        # still our child: find those through /proc (Linux) and kill their groups too.
        for pid in own_children():
            kill_group(pid)


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _stat_fields(pid: str) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()  # state ppid pgrp ...


def own_children() -> list[int]:
    """This process's children that lead their own process group (what ``start_new_session`` spawned)."""
    me, children = os.getpid(), []
    if not Path("/proc").is_dir():
        return []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields and len(fields) > 2 and int(fields[1]) == me and int(fields[2]) == int(entry.name):
            children.append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields and len(fields) > 1:
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc), seconds."""
    fields = _stat_fields(str(pid))
    if not fields or len(fields) < 13:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu_seconds(pid: int) -> float:
    """CPU time of a process's live threads so far, seconds, in nanoseconds' resolution (Linux
    ``/proc/<pid>/task/*/schedstat``; :func:`cpu_seconds` counts clock ticks of 10 ms, too coarse for a difference of
    microseconds a call over a block of calls). Threads that have exited are not counted; 0.0 where unreadable."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


async def wait_logged(path: Path, needle: str, timeout: float = 60.0) -> None:
    """Wait until a log file (a bridge's stderr) has a line with ``needle`` in it."""
    with anyio.fail_after(timeout):
        while not (path.exists() and needle in path.read_text(encoding="utf-8", errors="replace")):
            await anyio.sleep(0.05)


async def wait_idle(pid: int, window: float = 1.0, busy: float = 0.05, timeout: float = 120.0) -> float:
    """Wait until a process used at most ``busy`` of a core over ``window`` seconds; its CPU seconds by then."""
    with anyio.fail_after(timeout):
        used = cpu_seconds(pid)
        while True:
            await anyio.sleep(window)
            now = cpu_seconds(pid)
            if now - used <= busy * window:
                return now
            used = now


@dataclass
class Memory:
    """Memory of a process tree: summed peak RSS (VmHWM), summed RSS now and summed PSS now, in KiB."""

    processes: int
    peak_rss_kb: int
    rss_kb: int
    pss_kb: int

    def __add__(self, other: Memory) -> Memory:
        return Memory(
            self.processes + other.processes,
            self.peak_rss_kb + other.peak_rss_kb,
            self.rss_kb + other.rss_kb,
            self.pss_kb + other.pss_kb,
        )


def _kb(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_memory(pid: int) -> Memory:
    proc = Path(f"/proc/{pid}")
    status = proc / "status"
    return Memory(1, _kb(status, "VmHWM"), _kb(status, "VmRSS"), _kb(proc / "smaps_rollup", "Pss"))


def tree_memory(root: int) -> Memory:
    total = Memory(0, 0, 0, 0)
    for pid in process_tree(root):
        total += proc_memory(pid)
    return total


def write_config(path: Path, upstreams: list[Upstream], **extra: Any) -> Path:
    """A config of these upstreams, every tool allowed and listed in full (``catalog.mode: full``: the benchmarks
    measure whole lists, past any IDE's budget), unless ``extra`` says otherwise."""
    servers = {u.name: {"url": u.url, "allowed_tools": ["*"]} for u in upstreams}
    settings = {"servers": servers, "catalog": {"mode": "full"}, **extra}
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


def bridge_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_BRIDGE_")}
    user_home = home / "user-home"
    user_home.mkdir(parents=True, exist_ok=True)
    env.update({"MCP_BRIDGE_HOME": str(home), "HOME": str(user_home), "PYTHONUNBUFFERED": "1"})
    return env


def bridge_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "mcp_bridge", "serve", "--config", str(config)]


# ---------------------------------------------------------------------------------------------- sessions


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
async def stdio_session(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    stderr_path: Path,
    handler: ToolsChanged | None = None,
) -> AsyncIterator[ClientSession]:
    """Spawn a stdio MCP server (the bridge or a peer) the way an IDE does; an uninitialized SDK session over it."""
    params = StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=str(cwd))
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
async def bridge_session(
    config: Path,
    home: Path,
    stderr_path: Path,
    handler: ToolsChanged | None = None,
    env_extra: dict[str, str] | None = None,
) -> AsyncIterator[ClientSession]:
    """Spawn ``python -m mcp_bridge serve`` and open an (uninitialized) SDK session over its stdio."""
    env = {**bridge_env(home), **(env_extra or {})}
    async with stdio_session(bridge_command(config), env, home, stderr_path, handler) as session:
        yield session


@asynccontextmanager
async def stdio_client_in(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    stderr_path: Path,
    mode: str,
    handler: ToolsChanged | None = None,
) -> AsyncIterator[Client]:
    """Spawn a stdio MCP server (the bridge or a peer) the way an IDE does and connect in ``mode`` (an SDK
    ``Client`` mode: entered = ``initialize`` or ``server/discover`` answered). ``handler`` hears the handshake
    era's notifications; in the 2026-07-28 era list changes come on a stream :func:`listening` opens."""
    params = StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=str(cwd))
    with open(stderr_path, "a", encoding="utf-8") as errlog:
        async with Client(
            stdio_client(params, errlog=errlog),
            mode=mode,  # type: ignore[arg-type]
            message_handler=handler,
            client_info=types.Implementation(name="bench-ide", version="1.0"),
        ) as client:
            yield client


async def _listen(client: Client, handler: ToolsChanged, *, task_status: Any) -> None:
    from mcp.shared.subscriptions import event_to_notification

    async with client.listen(tools_list_changed=True) as stream:
        task_status.started()
        async for event in stream:
            await handler(event_to_notification(event, {}))


@asynccontextmanager
async def listening(client: Client, handler: ToolsChanged) -> AsyncIterator[None]:
    """In the 2026-07-28 era, a ``subscriptions/listen`` stream (acknowledged before this enters) that feeds
    ``handler`` the tool list changes; in the handshake era nothing (the notifications reach the handler)."""
    if client.protocol_version != "2026-07-28":
        yield
        return
    async with anyio.create_task_group() as tg:
        await tg.start(_listen, client, handler)
        yield
        tg.cancel_scope.cancel()


@asynccontextmanager
async def bridge_client_in(
    config: Path,
    home: Path,
    stderr_path: Path,
    mode: str,
    handler: ToolsChanged | None = None,
    env_extra: dict[str, str] | None = None,
) -> AsyncIterator[Client]:
    """Spawn ``python -m mcp_bridge serve`` and connect to it in ``mode`` (see :func:`stdio_client_in`)."""
    env = {**bridge_env(home), **(env_extra or {})}
    async with stdio_client_in(bridge_command(config), env, home, stderr_path, mode, handler) as client:
        yield client


@asynccontextmanager
async def direct_client(url: str, mode: str = "legacy") -> AsyncIterator[Client]:
    """The SDK client straight to an upstream over streamable HTTP, in ``mode`` (default: the handshake era)."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,  # type: ignore[arg-type]
    ):
        yield client


async def call_tool(session: ClientSession, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """tools/call without the SDK's implicit tools/list or output validation: the raw result."""
    request = types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments=arguments))
    return (await session.send_request(request, Raw)).root


async def call_echo(session: ClientSession, name: str, text: str) -> dict[str, Any]:
    return await call_tool(session, name, {"text": text})


def check_echo(result: dict[str, Any], tool: str, expected: str) -> None:
    text = result["content"][0]["text"] if result.get("content") else ""
    if result.get("isError") or text != expected:
        raise RuntimeError(f"{tool} answered unexpectedly: {result!r}")


async def list_tools(session: ClientSession) -> list[dict[str, Any]]:
    result = await session.send_request(types.ListToolsRequest(), Raw)
    return list(result.root["tools"])


async def list_tool_names(session: ClientSession) -> set[str]:
    return {t["name"] for t in await list_tools(session)}


async def wait_full_list(session: ClientSession, handler: ToolsChanged, expected: set[str], timeout: float) -> set[str]:
    """tools/list until every expected name is there (re-listing on each list_changed); the names listed."""
    with anyio.fail_after(timeout):
        names = await list_tool_names(session)
        while not expected <= names:
            await handler.event.wait()
            handler.rearm()
            names = await list_tool_names(session)
    return names


async def timed_calls(session: ClientSession, tool: str, n: int, expect_prefix: str) -> list[float]:
    """``n`` sequential echo calls, each checked; their latencies in seconds."""
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        result = await call_echo(session, tool, f"m{i}")
        samples.append(time.perf_counter() - t0)
        check_echo(result, tool, f"{expect_prefix}: m{i}")
    return samples


# ---------------------------------------------------------------------------------------------- statistics


def percentile(samples: Sequence[float], q: float) -> float:
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


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], fmt: str = ".3f") -> str:
    return f"rounds: {', '.join(format(v, fmt) for v in values)}"


def verdict(ok: bool) -> str:
    return "holds" if ok else "does NOT hold"


# ---------------------------------------------------------------------------------------------- script plumbing


def install_signal_handlers() -> None:
    """Ctrl-C and SIGTERM both raise KeyboardInterrupt in the main thread, so ``finally`` blocks clean up."""

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.raise_signal(signal.SIGINT)  # same path as Ctrl-C: the event loop cancels its main task cleanly

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_sigterm)


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    if keep:
        path = Path(tempfile.mkdtemp(prefix="mcp-bridge-bench-"))
        print(f"work dir (kept): {path}", file=sys.stderr)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mcp-bridge-bench-") as tmp:
        yield Path(tmp)


def add_common_args(parser: Any) -> None:
    parser.add_argument("--no-write", action="store_true", help="print the table only; do not append to RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, stderr logs)")
    parser.add_argument(
        "--max-load",
        type=float,
        default=None,
        metavar="L",
        help="first wait (up to --max-wait seconds) until the 1-min load average is at most L",
    )
    parser.add_argument("--max-wait", type=float, default=300.0, metavar="SECONDS", help="see --max-load (300)")


def quiet_note(args: Any) -> str:
    return "" if args.max_load is None else wait_for_quiet(args.max_load, args.max_wait)
