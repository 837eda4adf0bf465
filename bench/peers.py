"""The bridge side by side with its peers: per-call latency and memory (a benchmark, not a test: nothing asserted).

Run from the repository root::

    .venv/bin/python bench/peers.py [--calls 500] [--rounds 5] [--memory-rounds 3] [--paths ...] [--no-write]
        [--eras 2025-11-25,2026-07-28]

Peers, installed by this script (pinned, into ``bench/.peers/``, which git ignores):

* ``mcp-remote`` (npm, the most used stdio → remote bridge): ``npm ci --prefix bench/.peers/npm`` from the committed
  ``bench/peers/package.json`` and ``package-lock.json``; run as users run it, ``npx mcp-remote URL`` (with
  ``--allow-http --transport http-only --silent``: plain http on loopback, no SSE fallback probing, no per-message
  log lines on stderr);
* ``mcp-proxy`` (PyPI) in its own virtualenv ``bench/.peers/mcp-proxy-venv`` (it pins an older ``mcp``) from the
  committed ``bench/peers/mcp-proxy-requirements.txt``; run as ``mcp-proxy --transport streamablehttp URL
  --log-level WARNING`` (its default INFO logs every HTTP request with its headers).

A peer that cannot be installed or run is reported as such in the table, with the reason.

1. Latency, in each protocol era (``common.ERAS``: the IDE client and the upstream both speak it; 2026-07-28 is an
   SDK client in its default ``auto`` mode and an upstream that speaks only 2026-07-28): one local upstream
   (``mcp_bridge.sandbox.localservers``); each path is driven by the same SDK client code: the direct path over
   streamable HTTP, the others spawned over stdio as an IDE spawns them. Per round and path: spawn (or connect) →
   ``initialize`` (or ``server/discover``), ``tools/list``, 50 warm-up calls, then ``--calls`` sequential ``echo``
   calls, each answer checked; the path order rotates every round. Values are medians across rounds of each round's
   p50/p99. A peer that cannot serve an era is reported with what went wrong.
   The bridge runs three ways: as it is (the upstream in its local ``servers:`` list, events logged); as
   ``bridge-port``, with a local Port stand-in (``mcp_bridge.sandbox.port_standin``) as its allowlist and audit sink,
   as an organisation runs it (every call's event spooled in SQLite, two commits on the call's path, and shipped);
   and as ``bridge-httpx2`` with ``MCP_BRIDGE_LEAN_HTTP=0`` (its direct tool calls through httpx2 as every other
   request, instead of its own HTTP/1.1 connections: ``mcp_bridge.upstream.lean``); ratios from the same run.
2. Memory (handshake era): 10 local upstreams. One bridge serving all 10, against 10 ``mcp-remote`` processes (one
   per server, which is what users run today) and 10 ``mcp-proxy`` processes: each spawned, initialized,
   ``tools/list``-ed and driven with 20 ``echo`` calls per server, then measured while still running: the sum over
   every process of each tree (the ``npx`` → ``sh`` → ``node`` tree counts as ``mcp-remote``'s) of the peak RSS
   (``VmHWM``), and of the PSS, which shares the pages the processes share (Linux ``/proc``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp.client.session import ClientSession

from common import (
    BENCH,
    ERAS,
    Memory,
    Processes,
    ToolsChanged,
    Upstream,
    add_common_args,
    append_results,
    bridge_command,
    bridge_env,
    call_echo,
    check_echo,
    direct_client,
    install_signal_handlers,
    list_tool_names,
    load_average,
    machine_line,
    markdown_table,
    med,
    ms,
    own_children,
    parse_eras,
    percentile,
    proc_memory,
    process_tree,
    quiet_note,
    spread,
    stdio_client_in,
    stdio_session,
    timed_calls,
    title_line,
    tree_memory,
    verdict,
    wait_full_list,
    workdir,
    write_config,
)

PEERS_SRC = BENCH / "peers"
PEERS_DIR = BENCH / ".peers"
NPM_DIR = PEERS_DIR / "npm"
PROXY_VENV = PEERS_DIR / "mcp-proxy-venv"
PROXY_REQUIREMENTS = PEERS_SRC / "mcp-proxy-requirements.txt"

PATHS = ["direct", "bridge", "bridge-port", "bridge-httpx2", "mcp-remote", "mcp-proxy"]
BRIDGE_VARIANTS = {"bridge": {}, "bridge-port": {}, "bridge-httpx2": {"MCP_BRIDGE_LEAN_HTTP": "0"}}
"""The bridge as it is; with Port (a local stand-in) as its allowlist and audit sink, so that every call's audit event
is spooled (two SQLite commits on the call's path) and shipped; and with its direct calls sent through httpx2 as
every other request (latency only, these two)."""
PEER_PATHS = ["mcp-remote", "mcp-proxy"]
WARMUP = 50
MEMORY_UPSTREAMS = 10
MEMORY_CALLS = 20
INSTALL_TIMEOUT = 600

TARGET_RATIO_DIRECT = 1.2
TARGET_MEMORY_FRACTION = 0.25
PORT_SECRET_ENV = "BENCH_PORT_SECRET"  # noqa: S105 (the variable's name, not a secret)
_port_standin: tuple[str, subprocess.Popen[str], str] | None = None
"""(the upstream it holds, its process, its base URL)"""
_STANDIN = """
import sys, time
from mcp_bridge.sandbox.port_shapes import MCP_SERVER_BLUEPRINT, mcp_server_entity
from mcp_bridge.sandbox.port_standin import PortStandIn
port = PortStandIn().start()
port.add_client("bench", "bench-secret")
port.upsert_entity(MCP_SERVER_BLUEPRINT, mcp_server_entity(sys.argv[1], sys.argv[2], ["*"], auth_type="none"))
print(port.base_url, flush=True)
while True:
    time.sleep(3600)
"""


def _port_for(upstream: Upstream) -> dict[str, Any]:
    """The ``port:`` section of a bridge whose allowlist is a local Port stand-in holding ``upstream``: in a process of
    its own (in this one, its request handling would take the measuring client's interpreter lock), started once per
    upstream."""
    global _port_standin
    if _port_standin is None or _port_standin[0] != upstream.url:
        _stop_port()
        proc = subprocess.Popen(
            [sys.executable, "-c", _STANDIN, upstream.name, upstream.url], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        _port_standin = (upstream.url, proc, proc.stdout.readline().strip())
    return {"base_url": _port_standin[2], "client_id": "bench", "client_secret": "${env:" + PORT_SECRET_ENV + "}"}


def _stop_port() -> None:
    global _port_standin
    if _port_standin is not None:
        _port_standin[1].kill()
        _port_standin[1].wait()
        _port_standin = None


# ---------------------------------------------------------------------------------------------- peers


@dataclass
class Peer:
    name: str
    version: str = ""
    problem: str | None = None
    make_command: Callable[[str], list[str]] | None = None

    def command(self, url: str) -> list[str]:
        assert self.make_command is not None
        return self.make_command(url)


def _clean(text: str, limit: int = 300) -> str:
    """One line of a tool's output for the table: hosts of URLs blanked out, pipes escaped, cut."""
    text = re.sub(r"([a-z][a-z0-9+.-]*://)[^\s/\"']+", r"\1<host>", text)
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _why(exc: BaseException) -> str:
    """What went wrong, from the innermost exceptions of a group (the SDK's task groups wrap them)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_why(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def _run(cmd: list[str], timeout: float = INSTALL_TIMEOUT) -> str | None:
    """Run an install step; None when it worked, else why not."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{' '.join(cmd[:3])} …` failed: {_clean(str(exc))}"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return f"`{' '.join(cmd[:3])} …` exited {done.returncode}: {_clean(' / '.join(tail))}"
    return None


def install_mcp_remote() -> Peer:
    peer = Peer("mcp-remote")
    npm, npx = shutil.which("npm"), shutil.which("npx")
    if npm is None or npx is None:
        peer.problem = "npm/npx not found on PATH (Node.js is needed)"
        return peer
    NPM_DIR.mkdir(parents=True, exist_ok=True)
    manifest = NPM_DIR / "node_modules" / "mcp-remote" / "package.json"
    wanted = [PEERS_SRC / "package.json", PEERS_SRC / "package-lock.json"]
    current = all((NPM_DIR / f.name).exists() and filecmp.cmp(f, NPM_DIR / f.name, shallow=False) for f in wanted)
    if not (current and manifest.exists()):
        print("installing mcp-remote (npm ci) ...", file=sys.stderr)
        for f in wanted:
            shutil.copyfile(f, NPM_DIR / f.name)
        problem = _run([npm, "ci", "--prefix", str(NPM_DIR), "--ignore-scripts", "--no-audit", "--no-fund"])
        if problem:
            peer.problem = problem
            return peer
    try:
        peer.version = json.loads(manifest.read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError) as exc:
        peer.problem = f"installed, but its package.json is unreadable: {_clean(str(exc))}"
        return peer
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    peer.version += f" (Node {node})"

    def command(url: str) -> list[str]:
        return [
            npx,
            "--prefix",
            str(NPM_DIR),
            "--no",
            "mcp-remote",
            url,
            "--allow-http",
            "--transport",
            "http-only",
            "--silent",
        ]

    peer.make_command = command
    return peer


def install_mcp_proxy() -> Peer:
    peer = Peer("mcp-proxy")
    exe = PROXY_VENV / "bin" / "mcp-proxy"
    stamp = PROXY_VENV / "installed-requirements.txt"
    if not (exe.exists() and stamp.exists() and filecmp.cmp(PROXY_REQUIREMENTS, stamp, shallow=False)):
        print("installing mcp-proxy into its own virtualenv ...", file=sys.stderr)
        base = getattr(sys, "_base_executable", sys.executable)
        problem = _run([base, "-m", "venv", "--clear", str(PROXY_VENV)]) or _run(
            [str(PROXY_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(PROXY_REQUIREMENTS)]
        )
        if problem:
            peer.problem = problem
            return peer
        shutil.copyfile(PROXY_REQUIREMENTS, stamp)
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        peer.problem = f"`mcp-proxy --version` exited {done.returncode}: {_clean(done.stderr)}"
        return peer
    mcp = subprocess.run(
        [str(PROXY_VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('mcp'))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    peer.version = f"{done.stdout.split()[-1]} (mcp {mcp})"

    def command(url: str) -> list[str]:
        return [str(exe), "--transport", "streamablehttp", url, "--log-level", "WARNING"]

    peer.make_command = command
    return peer


def peer_env(home: Path) -> dict[str, str]:
    """A peer's environment: this one's, with HOME (mcp-remote keeps ~/.mcp-auth there) in the run's work dir."""
    env = dict(os.environ)
    home.mkdir(parents=True, exist_ok=True)
    env.update({"HOME": str(home), "MCP_REMOTE_CONFIG_DIR": str(home / ".mcp-auth"), "NO_UPDATE_NOTIFIER": "1"})
    return env


# ---------------------------------------------------------------------------------------------- one path


@dataclass
class Opened:
    session: ClientSession
    tool: str
    expect: str
    pid: int | None  # the process tree this path spawned (None: the direct path)
    initialize: float  # spawn (or connect) → initialize response, seconds
    version: str = ""  # the protocol version the IDE's client negotiated with this path


@asynccontextmanager
async def open_path(
    path: str, upstream: Upstream, work: Path, peers: dict[str, Peer], tag: str, mode: str = "legacy"
) -> AsyncIterator[Opened]:
    """Spawn (or connect) one path to ``upstream`` and connect to it in ``mode`` (an SDK client mode: initialize, or
    discover first); yields the session and what to call."""
    before = set(own_children())
    t0 = time.perf_counter()
    if path == "direct":
        async with direct_client(upstream.url, mode) as client:  # Client initializes (or discovers) on entry
            elapsed = time.perf_counter() - t0
            yield Opened(client.session, "echo", upstream.name, None, elapsed, client.protocol_version)
        return
    home = work / f"{path}-{tag}"
    stderr_path = work / f"{path}.stderr.log"
    if path in BRIDGE_VARIANTS:
        if path == "bridge-port":
            config = write_config(work / f"bridge-port-{upstream.name}.yaml", [], port=_port_for(upstream))
        else:
            config = write_config(work / f"bridge-{upstream.name}.yaml", [upstream])
        env = {**bridge_env(home), **BRIDGE_VARIANTS[path], PORT_SECRET_ENV: "bench-secret"}
        command, tool = bridge_command(config), f"{upstream.name}__echo"
    else:
        command, env, tool = peers[path].command(upstream.url), peer_env(home), "echo"
    async with stdio_client_in(command, env, home, stderr_path, mode) as client:
        elapsed = time.perf_counter() - t0
        spawned = set(own_children()) - before
        pid = spawned.pop() if len(spawned) == 1 else None
        yield Opened(client.session, tool, upstream.name, pid, elapsed, client.protocol_version)


# ---------------------------------------------------------------------------------------------- 1. latency


@dataclass
class PathLatency:
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    initialize: list[float] = field(default_factory=list)
    problem: str | None = None
    versions: set[str] = field(default_factory=set)


async def run_latency(
    upstream: Upstream, work: Path, peers: dict[str, Peer], paths: list[str], calls: int, rounds: int, era: str
) -> dict[str, PathLatency]:
    mode = ERAS[era][0]
    results = {p: PathLatency(problem=peers[p].problem if p in peers else None) for p in paths}
    for r in range(rounds):
        order = paths[r % len(paths) :] + paths[: r % len(paths)]
        for path in order:
            res = results[path]
            if res.problem:
                continue
            try:
                async with open_path(path, upstream, work, peers, f"lat-{era}-{r}", mode) as opened:
                    if opened.tool not in await list_tool_names(opened.session):
                        raise RuntimeError(f"{path} does not list {opened.tool}")
                    await timed_calls(opened.session, opened.tool, WARMUP, opened.expect)
                    samples = await timed_calls(opened.session, opened.tool, calls, opened.expect)
            except Exception as exc:  # a peer that breaks is reported, not fatal
                res.problem = f"round {r + 1} failed: {_clean(_why(exc))}"
                print(f"  {era} {path}: {res.problem}", file=sys.stderr)
                continue
            res.initialize.append(opened.initialize)
            res.versions.add(opened.version)
            res.p50.append(ms(percentile(samples, 50)))
            res.p99.append(ms(percentile(samples, 99)))
            print(
                f"  {era} round {r + 1}/{rounds} {path:10}: init {ms(opened.initialize):6.0f} ms  "
                f"p50 {res.p50[-1]:.3f} ms  p99 {res.p99[-1]:.3f} ms",
                file=sys.stderr,
            )
    return results


# ---------------------------------------------------------------------------------------------- 2. memory


@dataclass
class PathMemory:
    total: list[Memory] = field(default_factory=list)
    node_only: list[Memory] = field(default_factory=list)  # mcp-remote: its node processes without npx and sh
    initialize: list[float] = field(default_factory=list)  # spawn → initialize of each process
    processes: int = 0
    problem: str | None = None


def _is_node(pid: int) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return os.path.basename(argv0) == b"node"


async def _drive(opened: Opened, upstreams: list[Upstream], bridged: bool) -> None:
    names = await list_tool_names(opened.session)
    for upstream in upstreams:
        tool = f"{upstream.name}__echo" if bridged else "echo"
        if tool not in names:
            raise RuntimeError(f"{tool} is not listed")
        for i in range(MEMORY_CALLS):
            check_echo(await call_echo(opened.session, tool, f"m{i}"), tool, f"{upstream.name}: m{i}")


async def memory_round(upstreams: list[Upstream], work: Path, peers: dict[str, Peer], path: str, r: int) -> PathMemory:
    out = PathMemory()
    if path == "bridge":
        config = write_config(work / "memory.yaml", upstreams)
        home = work / f"memory-bridge-{r}"
        before = set(own_children())
        handler = ToolsChanged()
        t0 = time.perf_counter()
        async with stdio_session(
            bridge_command(config), bridge_env(home), home, work / "bridge.stderr.log", handler
        ) as session:
            await session.initialize()
            out.initialize.append(time.perf_counter() - t0)
            (pid,) = set(own_children()) - before
            expected = {f"{u.name}__echo" for u in upstreams}
            await wait_full_list(session, handler, expected, 60)
            await _drive(Opened(session, "", "", pid, 0), upstreams, bridged=True)
            out.total.append(tree_memory(pid))
            out.processes = len(process_tree(pid))
        return out
    async with AsyncExitStack() as stack:  # one process per server, all alive at once, as in an IDE's config
        opened_all = []
        for upstream in upstreams:
            opened = await stack.enter_async_context(open_path(path, upstream, work, peers, f"mem{r}-{upstream.name}"))
            if opened.pid is None:
                raise RuntimeError(f"could not find the {path} process for {upstream.name}")
            out.initialize.append(opened.initialize)
            opened_all.append(opened)
        for opened, upstream in zip(opened_all, upstreams, strict=True):
            await _drive(opened, [upstream], bridged=False)
        total, node, count = Memory(0, 0, 0, 0), Memory(0, 0, 0, 0), 0
        for opened in opened_all:
            assert opened.pid is not None
            tree = process_tree(opened.pid)
            count += len(tree)
            total += tree_memory(opened.pid)
            for pid in tree:
                if _is_node(pid):
                    node += proc_memory(pid)
        out.total.append(total)
        if node.processes:
            out.node_only.append(node)
        out.processes = count
    return out


async def run_memory(
    upstreams: list[Upstream], work: Path, peers: dict[str, Peer], paths: list[str], rounds: int
) -> dict[str, PathMemory]:
    results = {
        p: PathMemory(problem=peers[p].problem if p in peers else None)
        for p in paths
        if p not in ("direct", "bridge-httpx2", "bridge-port")
    }
    for r in range(rounds):
        for path, res in results.items():
            if res.problem:
                continue
            try:
                one = await memory_round(upstreams, work, peers, path, r)
            except Exception as exc:
                res.problem = f"round {r + 1} failed: {_clean(f'{type(exc).__name__}: {exc}')}"
                print(f"  {path}: {res.problem}", file=sys.stderr)
                continue
            res.total += one.total
            res.node_only += one.node_only
            res.initialize += one.initialize
            res.processes = one.processes
            m = one.total[-1]
            print(
                f"  round {r + 1}/{rounds} {path:10}: {one.processes} processes, peak RSS sum "
                f"{m.peak_rss_kb / 1024:.0f} MiB, PSS {m.pss_kb / 1024:.0f} MiB",
                file=sys.stderr,
            )
    return results


# ---------------------------------------------------------------------------------------------- report

LABELS = {
    "direct": "direct SDK client",
    "bridge": "mcp-bridge",
    "bridge-port": "mcp-bridge with Port (allowlist and audit spool)",
    "bridge-httpx2": "mcp-bridge, calls through httpx2 (`MCP_BRIDGE_LEAN_HTTP=0`)",
    "mcp-remote": "mcp-remote",
    "mcp-proxy": "mcp-proxy",
}


def mib(kb: float) -> str:
    return f"{kb / 1024:.0f} MiB"


def _latency_rows(by_path: dict[str, PathLatency], labels: dict[str, str], era: str) -> list[list[str]]:
    """One era's latency rows (metric, value, notes)."""
    rows: list[list[str]] = []
    d50 = med(by_path["direct"].p50) if "direct" in by_path and by_path["direct"].p50 else None
    d99 = med(by_path["direct"].p99) if "direct" in by_path and by_path["direct"].p99 else None
    for path, res in by_path.items():
        if not res.p50:
            rows.append([f"{labels[path]}: `echo` p50 / p99", "not measured", res.problem or "no samples"])
            continue
        p50, p99 = med(res.p50), med(res.p99)
        note = spread(res.p50)
        if res.problem:
            note = f"{res.problem}; {note}"
        rows.append([f"{labels[path]}: `echo` p50 / p99", f"{p50:.3f} / {p99:.3f} ms", f"p50 {note}"])
    for path, res in by_path.items():
        if path == "direct" or not res.p50 or d50 is None or d99 is None:
            continue
        ratio = med(res.p50) / d50
        note = f"p99 ratio {med(res.p99) / d99:.2f}x"
        if path == "bridge":
            note += f"; target ≤ {TARGET_RATIO_DIRECT:g}x — {verdict(ratio <= TARGET_RATIO_DIRECT)}"
        rows.append([f"{labels[path]} / direct, p50", f"{ratio:.2f}x", note])
    bridge = by_path.get("bridge")
    for peer in PEER_PATHS:
        other = by_path.get(peer)
        if bridge is None or other is None or not bridge.p50:
            continue
        if not other.p50:
            rows.append([f"mcp-bridge / {peer}, p50", "not measured", f"{peer}: {other.problem}"])
            continue
        ratio = med(bridge.p50) / med(other.p50)
        note = f"p99 ratio {med(bridge.p99) / med(other.p99):.2f}x"
        if peer == "mcp-remote":
            note += f"; target ≤ 1x — {verdict(ratio <= 1.0)}"
        rows.append([f"mcp-bridge / {peer}, p50", f"{ratio:.2f}x", note])
    for path, res in by_path.items():
        if res.initialize:
            first = "`initialize`" if era == "2025-11-25" else "connected (`auto`)"
            what = f"connect → {first}" if path == "direct" else f"spawn → {first}"
            values = [ms(v) for v in res.initialize]
            note = f"{spread(values, '.0f')}; negotiated {', '.join(sorted(res.versions))}"
            rows.append([f"{labels[path]}: {what}", f"{med(values):.0f} ms", note])
    return rows


def render(
    lats: dict[str, dict[str, PathLatency]] | None,
    mem: dict[str, PathMemory] | None,
    peers: dict[str, Peer],
    args: argparse.Namespace,
    started: dt.datetime,
    load_start: str,
    quiet: str,
) -> str:
    rows: list[list[str]] = []
    labels = LABELS
    for era, by_path in (lats or {}).items():
        rows.extend([era, *r] for r in _latency_rows(by_path, labels, era))
    mem_rows: list[list[str]] = []
    if mem is not None:
        bridge_peak = (
            med([m.peak_rss_kb for m in mem["bridge"].total]) if mem.get("bridge") and mem["bridge"].total else None
        )
        for path, res in mem.items():
            n = MEMORY_UPSTREAMS
            label = f"one {labels[path]}, {n} upstreams" if path == "bridge" else f"{n} × {labels[path]}"
            if not res.total:
                mem_rows.append([f"{label}: peak RSS", "not measured", res.problem or "no samples"])
                continue
            peak = med([m.peak_rss_kb for m in res.total])
            pss = med([m.pss_kb for m in res.total])
            note = (
                f"{res.processes} processes; summed VmHWM; {spread([m.peak_rss_kb / 1024 for m in res.total], '.0f')}"
            )
            if path != "bridge" and bridge_peak is not None:
                frac = bridge_peak / peak
                note += f"; bridge = {frac:.2f} of this"
                if path == "mcp-remote":
                    note += f" (target ≤ {TARGET_MEMORY_FRACTION:g} — {verdict(frac <= TARGET_MEMORY_FRACTION)})"
            mem_rows.append([f"{label}: peak RSS", mib(peak), note])
            mem_rows.append([f"{label}: PSS", mib(pss), "proportional set size at the end (shared pages divided)"])
            if res.node_only:
                node = med([m.peak_rss_kb for m in res.node_only])
                mem_rows.append([f"{label}: peak RSS of the `node` processes alone", mib(node), "without npx and sh"])
            values = [ms(v) for v in res.initialize]
            spawns = f"median of {len(values)} spawns, one at a time, min {min(values):.0f}, max {max(values):.0f}"
            mem_rows.append([f"{label}: spawn → `initialize`", f"{med(values):.0f} ms", spawns])

    rows.extend(["2025-11-25", *r] for r in mem_rows)

    versions = ", ".join(
        f"`{p.name}` {p.version}" if p.version else f"`{p.name}` not installed" for p in peers.values()
    )
    header = [
        title_line(started, "side by side with the peers (`bench/peers.py`)"),
        "",
        machine_line(load_start) + (f"; {quiet}" if quiet else ""),
        f"- peers: {versions}; bridge: `python -m mcp_bridge serve` (logs at its default level)",
    ]
    if lats:
        header.append(
            f"- latency: one local upstream; {args.calls} sequential `echo` calls per path per round after {WARMUP} "
            f"warm-up calls, {args.rounds} rounds, a fresh process (or connection) per path and round, path order "
            "rotating; each path driven by the same SDK client code (stdio for the bridge and peers, streamable HTTP "
            "for direct); medians across rounds of each round's p50/p99"
        )
    if mem is not None:
        header.append(
            f"- memory: {MEMORY_UPSTREAMS} local upstreams; one bridge for all, or one peer process per upstream, all "
            f"alive at once; each listed and driven with {MEMORY_CALLS} `echo` calls per upstream, then measured "
            f"while running; {args.memory_rounds} rounds, medians; peak RSS summed over every process of each tree "
            "(npx → sh → node for mcp-remote)"
        )
    header.append(
        "- era: the protocol era of the IDE's client and of the upstream: 2025-11-25 = an SDK client in `legacy` mode "
        "and a handshake-only upstream; 2026-07-28 = an SDK client in its default `auto` mode (`server/discover` "
        "first, `initialize` where the path does not discover) and an upstream that speaks only 2026-07-28"
    )
    header.append("")
    table = markdown_table(["era", "metric", "value", "notes"], rows, "|---|---|---:|---|")
    return "\n".join(header + table) + "\n"


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="sequential calls per path per round (default 500)")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds (default 5)")
    parser.add_argument("--memory-rounds", type=int, default=3, help="memory rounds (default 3; 0 skips memory)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"subset of {','.join(PATHS)}")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency section")
    parser.add_argument("--eras", default=",".join(ERAS), help=f"latency in these eras (default {','.join(ERAS)})")
    add_common_args(parser)
    args = parser.parse_args()
    try:
        eras = parse_eras(args.eras)
    except ValueError as exc:
        parser.error(str(exc))
    paths = [p for p in PATHS if p in args.paths.split(",")]
    if args.calls < 1 or args.rounds < 1 or args.memory_rounds < 0 or "bridge" not in paths:
        parser.error("--calls and --rounds must be at least 1, --memory-rounds at least 0; --paths needs bridge")
    if not args.no_latency and "direct" not in paths:
        parser.error("the latency section needs the direct path (ratios are to it)")

    install_signal_handlers()
    peers: dict[str, Peer] = {}
    if "mcp-remote" in paths:
        peers["mcp-remote"] = install_mcp_remote()
    if "mcp-proxy" in paths:
        peers["mcp-proxy"] = install_mcp_proxy()
    for peer in peers.values():
        print(f"{peer.name}: {peer.version or peer.problem}", file=sys.stderr)
    quiet = quiet_note(args)
    started = dt.datetime.now(dt.UTC)
    load_start = load_average()
    t_start = time.perf_counter()
    lats: dict[str, dict[str, PathLatency]] = {}
    mem = None
    with workdir(args.keep) as work:
        procs = Processes(work)
        try:
            for era in [] if args.no_latency else eras:
                print(f"{era}: per-call latency ...", file=sys.stderr)
                (local,) = procs.start_upstreams(["local"], ["--era", ERAS[era][1]])
                lats[era] = anyio.run(run_latency, local, work, peers, paths, args.calls, args.rounds, era)
                procs.kill_all()
            if args.memory_rounds:
                print("memory ...", file=sys.stderr)
                names = [f"m{i}" for i in range(MEMORY_UPSTREAMS)]
                upstreams = procs.start_upstreams(names, ["--era", ERAS["2025-11-25"][1]])
                mem = anyio.run(run_memory, upstreams, work, peers, paths, args.memory_rounds)
        except KeyboardInterrupt:
            print("interrupted; cleaning up", file=sys.stderr)
            return 130
        finally:
            procs.kill_all()
            _stop_port()
    append_results(render(lats, mem, peers, args, started, load_start, quiet), not args.no_write)
    print(f"total runtime {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
