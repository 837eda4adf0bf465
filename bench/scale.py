"""Scale benchmark: 50 upstreams × 200 tools behind one bridge (a benchmark, not a test: nothing here is asserted).

Run from the repository root::

    .venv/bin/python bench/scale.py [--servers 50] [--tools 200] [--lists 20] [--refreshes 6] [--no-write]

It measures on this machine, in one run:

1. end to end, through a real bridge (``mcp-bridge serve`` over stdio) whose allowlist comes from a Port double
   (``tests/port_double.py``, in this process) listing ``--servers`` local upstreams with explicit ``allowed_tools``
   of ``--tools`` names each (``mcp_bridge.sandbox.localservers --extra-tools``):
   spawn → ``initialize``, → full merged ``tools/list`` and → idle (no more CPU used), with a cold and a warm disk
   cache; once the cold bridge is idle, ``--lists`` sequential ``tools/list`` calls, and an allowlist refresh that
   changes one tool: Port's entity for one server loses (or regains) one tool, the bridge gets SIGHUP (ask Port
   now), and the time to ``tools/list_changed`` and to a ``tools/list`` that reflects it is measured,
   ``--refreshes`` times;
2. as a floor, ``tools/list`` of one SDK stdio server that has all ``servers × tools`` tools itself, from the same
   SDK client code (what the SDK costs for that many tools on the IDE's side, without the bridge);
3. in this process, with the bridge's own ``Catalog``: merging the listings as they arrive one by one, one
   ``set_allowlist`` that changes one tool, encoding the merged list as JSON, and writing the disk cache.

It prints one markdown table and appends it to ``bench/RESULTS.md``. Every subprocess is killed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import yaml

from common import (
    BENCH,
    ROOT,
    Processes,
    ToolsChanged,
    Upstream,
    add_common_args,
    append_results,
    bridge_command,
    bridge_env,
    direct_client,
    install_signal_handlers,
    list_tools,
    load_average,
    machine_line,
    markdown_table,
    med,
    ms,
    own_children,
    percentile,
    quiet_note,
    spread,
    stdio_session,
    title_line,
    verdict,
    wait_full_list,
    wait_idle,
    workdir,
)

sys.path.insert(0, str(ROOT / "tests"))  # the Port double lives with the tests
from mcp_bridge.config import NamingConfig, ServerConfig
from mcp_bridge.governance.allowlist import Allowlist
from mcp_bridge.governance.catalog import Catalog, CatalogCache, Listing
from port_double import PortDouble, mcp_server_entity

BASE_TOOLS = 9  # what localservers has without --extra-tools
SECRET = "bench-port-secret-0001"  # noqa: S105 - the Port double's, in this process
BLUEPRINT = "_mcp_server"
TARGET_LIST_MS = 50.0
TARGET_FIND_MS = 5.0
CHANGED_SERVER = "s00"
FULL_LIST_TIMEOUT = 120.0
REFRESH_TIMEOUT = 30.0
IDLE_WINDOW = 1.0


STDIO_SERVER = """
import anyio
from mcp.server.stdio import stdio_server
from mcp_bridge.sandbox.localservers import build_server

async def main():
    server = build_server("big", extra_tools={extra_tools})
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())

anyio.run(main)
"""
"""The ``localservers`` tools over stdio: the SDK's floor for listing that many tools on the IDE's side of the bridge
(over streamable HTTP the SDK client refuses an SSE event above 1 MiB, which a list of 10,000 tools is)."""


def server_names(n: int) -> list[str]:
    return [f"s{i:02d}" for i in range(n)]


def tool_names(tools: int) -> list[str]:
    base = ["echo", "add", "fail", "meta", "slow", "wait_forever", "stats", "add_tool", "delete_everything"]
    return base + [f"tool_{i:04d}" for i in range(1, tools - BASE_TOOLS + 1)]


# ---------------------------------------------------------------------------------------------- end to end


@dataclass
class Phase:
    """One bridge spawn, seconds from spawn: initialize, first list (and its count of expected tools), full list,
    and when it went idle (stopped using CPU) with the CPU seconds it had used by then."""

    initialize: float
    first_list: float
    first_count: int
    full_list: float
    idle: float
    cpu: float


@dataclass
class EndToEnd:
    phases: dict[str, Phase] = field(default_factory=dict)
    tools_listed: int = 0
    list_bytes: int = 0
    lists: list[float] = field(default_factory=list)
    to_notification: list[float] = field(default_factory=list)
    to_new_list: list[float] = field(default_factory=list)
    refresh_problem: str | None = None
    direct_big: list[float] = field(default_factory=list)
    direct_big_bytes: int = 0
    raw_lists: list[float] = field(default_factory=list)
    raw_parse: list[float] = field(default_factory=list)
    raw_after_change: list[float] = field(default_factory=list)
    raw_problem: str | None = None
    raw_finds: list[float] = field(default_factory=list)
    """Search mode: ``find_tools`` over the same tools, raw pipe client (request line → answer line)."""
    search_list_bytes: int = 0
    search_problem: str | None = None


def publish(double: PortDouble, upstreams: list[Upstream], tools: list[str], drop: str | None = None) -> None:
    for u in upstreams:
        allowed = [t for t in tools if not (u.name == CHANGED_SERVER and t == drop)]
        double.upsert_entity(BLUEPRINT, mcp_server_entity(u.name, u.url, allowed, auth_type="none"))


def write_port_config(path: Path, double: PortDouble, mode: str = "full") -> Path:
    config = {
        "port": {
            "base_url": double.base_url,
            "client_id": "bench",
            "client_secret": "${env:BENCH_PORT_SECRET}",
            "refresh_interval": 3600,
            "audit_blueprint": None,
        },
        "catalog": {"mode": mode},  # full: the whole 10,000-tool list is what is measured
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


async def run_end_to_end(
    upstreams: list[Upstream], double: PortDouble, work: Path, args: argparse.Namespace
) -> EndToEnd:
    out = EndToEnd()
    tools = tool_names(args.tools)
    expected = {f"{u.name}__{t}" for u in upstreams for t in tools}
    # The floor: the SDK alone, one stdio server with every tool, listed by the same client code.
    n_big = args.servers * args.tools - BASE_TOOLS
    floor = [sys.executable, "-c", STDIO_SERVER.format(extra_tools=n_big)]
    async with stdio_session(floor, dict(os.environ), work, work / "floor.stderr.log") as direct:
        await direct.initialize()
        listed = await list_tools(direct)
        out.direct_big_bytes = len(json.dumps({"tools": listed}))
        for _ in range(args.lists):
            t0 = time.perf_counter()
            await list_tools(direct)
            out.direct_big.append(time.perf_counter() - t0)
    print(f"  floor, one stdio server with {len(listed)} tools: p50 {ms(med(out.direct_big)):.0f} ms", file=sys.stderr)

    publish(double, upstreams, tools)
    config = write_port_config(work / "scale.yaml", double)
    home = work / "home"
    env = {**bridge_env(home), "BENCH_PORT_SECRET": SECRET}
    stderr_path = work / "bridge.stderr.log"

    for phase in ("cold", "warm"):
        handler = ToolsChanged()
        before = set(own_children())
        t0 = time.perf_counter()
        async with stdio_session(bridge_command(config), env, home, stderr_path, handler) as session:
            await session.initialize()
            t_init = time.perf_counter() - t0
            (pid,) = set(own_children()) - before
            first = {t["name"] for t in await list_tools(session)}
            t_first = time.perf_counter() - t0
            await wait_full_list(session, handler, expected, FULL_LIST_TIMEOUT)
            t_full = time.perf_counter() - t0
            cpu = await wait_idle(pid, timeout=FULL_LIST_TIMEOUT)
            t_idle = time.perf_counter() - t0 - IDLE_WINDOW
            print(
                f"  {phase}: initialize {ms(t_init):.0f} ms, first list {ms(t_first):.0f} ms ({len(first & expected)}"
                f" tools), full list {ms(t_full):.0f} ms, idle after {t_idle:.1f} s and {cpu:.1f} CPU s",
                file=sys.stderr,
            )
            out.phases[phase] = Phase(t_init, t_first, len(first & expected), t_full, t_idle, cpu)
            if phase == "warm":
                continue

            for _ in range(args.lists):
                t0 = time.perf_counter()
                listed = await list_tools(session)
                out.lists.append(time.perf_counter() - t0)
            out.tools_listed = len(listed)
            out.list_bytes = len(json.dumps({"tools": listed}))
            print(f"  tools/list of {len(listed)} tools: p50 {ms(med(out.lists)):.0f} ms", file=sys.stderr)

            changed_tool = f"{CHANGED_SERVER}__tool_0001"
            for r in range(args.refreshes):
                drop = "tool_0001" if r % 2 == 0 else None
                publish(double, upstreams[:1], tools, drop)
                handler.rearm()
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGHUP)
                try:
                    with anyio.fail_after(REFRESH_TIMEOUT):
                        await handler.event.wait()
                        t_note = time.perf_counter() - t0
                        while True:
                            names = {t["name"] for t in await list_tools(session)}
                            if (changed_tool in names) == (drop is None):
                                break
                            handler.rearm()
                            await handler.event.wait()
                except TimeoutError:
                    out.refresh_problem = f"refresh {r + 1}: no list change within {REFRESH_TIMEOUT:g} s"
                    break
                out.to_notification.append(t_note)
                out.to_new_list.append(time.perf_counter() - t0)
                print(
                    f"  refresh {r + 1}: notification {ms(t_note):.0f} ms, new list {ms(out.to_new_list[-1]):.0f} ms",
                    file=sys.stderr,
                )
                await wait_idle(pid, timeout=REFRESH_TIMEOUT)  # the next one starts from a quiet bridge
            if args.refreshes % 2:  # leave the allowlist whole for the phases after this one
                publish(double, upstreams[:1], tools, None)
                os.kill(pid, signal.SIGHUP)
                await wait_idle(pid, timeout=REFRESH_TIMEOUT)

    try:

        def change(r: int) -> None:
            publish(double, upstreams[:1], tools, "tool_0001" if r % 2 == 0 else None)

        await raw_lists(
            bridge_command(config), env, home, stderr_path, len(expected), args.lists, out, change, args.refreshes
        )
    except (TimeoutError, RuntimeError, OSError) as exc:
        out.raw_problem = f"{type(exc).__name__}: {exc}"
    try:
        searching = write_port_config(work / "scale-search.yaml", double, mode="search")
        await raw_finds(bridge_command(searching), env, home, stderr_path, upstreams[-1].name, args.lists * 10, out)
    except (TimeoutError, RuntimeError, OSError, KeyError, ValueError) as exc:
        out.search_problem = f"{type(exc).__name__}: {exc}"
    return out


SEARCH_QUERIES = BENCH / "search_data" / "queries.json"


class RawPipe:
    """The bridge over its pipes, driven by a client that parses nothing but the ids of the answers: what a timing
    between writing a request line and reading its answer line measures is the bridge's share."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.last_id = 0
        self._pending = bytearray()

    async def next_line(self) -> bytes:
        while True:
            end = self._pending.find(b"\n")
            if end >= 0:
                line = bytes(self._pending[:end])
                del self._pending[: end + 1]
                return line
            self._pending.extend(await self.proc.stdout.receive(1 << 20))

    async def ask(self, method: str, params: dict[str, Any] | None = None) -> bytes:
        """One request; its answer line (a notification in between, list_changed, is not the answer)."""
        self.last_id += 1
        line = {"jsonrpc": "2.0", "id": self.last_id, "method": method, "params": params or {}}
        await self.proc.stdin.send(json.dumps(line).encode() + b"\n")
        while True:
            answer = await self.next_line()
            if re.search(rb'"id":\s*%d\s*[,}]' % self.last_id, answer[:64]):
                return answer

    async def initialize(self) -> None:
        init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        await self.ask("initialize", init)
        await self.proc.stdin.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')


@asynccontextmanager
async def raw_pipe(command: list[str], env: dict[str, str], home: Path, stderr_path: Path) -> AsyncIterator[RawPipe]:
    """The bridge spawned with raw pipes (stderr to the file), killed on the way out."""
    with open(stderr_path, "a", encoding="utf-8") as errlog:
        async with await anyio.open_process(command, env=env, cwd=home, stderr=errlog) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                yield RawPipe(proc)
            finally:
                proc.kill()


async def raw_finds(
    command: list[str], env: dict[str, str], home: Path, stderr_path: Path, last: str, n: int, out: EndToEnd
) -> None:
    """Search mode over the same servers: ``find_tools`` timed from writing the request line to reading the answer
    line (the bridge's share), once every server is connected; the queries of ``bench/search.py``, in turn."""
    queries = [q["query"] for q in json.loads(SEARCH_QUERIES.read_text(encoding="utf-8"))["queries"]]

    def find(query: str, server: str | None = None) -> dict[str, Any]:
        arguments: dict[str, Any] = {"query": query, **({"server": server} if server else {})}
        return {"name": "find_tools", "arguments": arguments}

    async with raw_pipe(command, env, home, stderr_path) as pipe:
        with anyio.fail_after(FULL_LIST_TIMEOUT):
            await pipe.initialize()
            out.search_list_bytes = len(json.dumps(json.loads(await pipe.ask("tools/list"))["result"]))
            while True:  # until the last server's tools can be found: every server is connected
                answer = json.loads(await pipe.ask("tools/call", find("tool 200 records", last)))
                if answer["result"]["structuredContent"]["tools"]:
                    break
                await anyio.sleep(0.5)
            await wait_idle(pipe.proc.pid, timeout=FULL_LIST_TIMEOUT)
            for i in range(n):
                t0 = time.perf_counter()
                await pipe.ask("tools/call", find(queries[i % len(queries)]))
                out.raw_finds.append(time.perf_counter() - t0)


async def raw_lists(
    command: list[str],
    env: dict[str, str],
    home: Path,
    stderr_path: Path,
    n_tools: int,
    n: int,
    out: EndToEnd,
    change: Callable[[int], None],
    refreshes: int,
) -> None:
    """``tools/list`` timed from writing the request line to reading the answer's last byte off the pipe, by a client
    that parses nothing meanwhile: the bridge's share of a list, without the SDK client's (parsing and validating the
    4.9 MB answer). The same home again: the catalog cache makes the list full sooner. Then the first list after each
    of ``refreshes`` allowlist refreshes that change one tool (``change(r)`` publishes it; SIGHUP asks Port at once)."""
    async with raw_pipe(command, env, home, stderr_path) as pipe:
        try:
            with anyio.fail_after(FULL_LIST_TIMEOUT):
                await pipe.initialize()
                while len(json.loads(await pipe.ask("tools/list"))["result"]["tools"]) < n_tools:
                    await anyio.sleep(0.5)
                await wait_idle(pipe.proc.pid, timeout=FULL_LIST_TIMEOUT)
                for _ in range(n):
                    t0 = time.perf_counter()
                    answer = await pipe.ask("tools/list")
                    out.raw_lists.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    listed = json.loads(answer)["result"]["tools"]
                    out.raw_parse.append(time.perf_counter() - t0)
                    if len(listed) != n_tools:
                        raise RuntimeError(f"raw list {pipe.last_id}: {len(listed)} tools, not {n_tools}")
            for r in range(refreshes):
                await wait_idle(pipe.proc.pid, timeout=REFRESH_TIMEOUT)
                change(r)
                os.kill(pipe.proc.pid, signal.SIGHUP)
                while b'"notifications/tools/list_changed"' not in await pipe.next_line():
                    pass
                t0 = time.perf_counter()
                answer = await pipe.ask("tools/list")
                out.raw_after_change.append(time.perf_counter() - t0)
                expected = n_tools - 1 if r % 2 == 0 else n_tools
                if len(json.loads(answer)["result"]["tools"]) != expected:
                    raise RuntimeError(f"list after refresh {r + 1}: not {expected} tools")
        finally:
            if refreshes % 2:
                change(1)  # the allowlist whole again


# ---------------------------------------------------------------------------------------------- in process


@dataclass
class InProcess:
    merge_one_by_one: float = 0.0
    merge_last: float = 0.0
    set_allowlist: list[float] = field(default_factory=list)
    encode: list[float] = field(default_factory=list)
    cache_save: list[float] = field(default_factory=list)
    cache_bytes: int = 0


async def run_in_process(upstream: Upstream, servers: list[str], tools: list[str], work: Path) -> InProcess:
    out = InProcess()
    async with direct_client(upstream.url) as direct:
        definitions = await list_tools(direct.session)

    def allowlist(drop: str | None) -> Allowlist:
        configs = {}
        for s in servers:
            allowed = [t for t in tools if not (s == CHANGED_SERVER and t == drop)]
            configs[s] = ServerConfig(url=f"http://127.0.0.1:9/{s}", allowed_tools=allowed)
        return Allowlist(servers=configs, source="Port")

    catalog = Catalog(NamingConfig(), allowlist(None))
    t0 = time.perf_counter()
    last = 0.0
    for s in servers:  # as the upstreams' listings arrive, one by one
        t1 = time.perf_counter()
        catalog.set_listing(s, Listing(tools=[dict(t) for t in definitions]))
        last = time.perf_counter() - t1
    out.merge_one_by_one, out.merge_last = time.perf_counter() - t0, last
    for r in range(10):
        new = allowlist("tool_0001" if r % 2 == 0 else None)
        t0 = time.perf_counter()
        catalog.set_allowlist(new)
        out.set_allowlist.append(time.perf_counter() - t0)
    for _ in range(10):
        t0 = time.perf_counter()
        json.dumps({"tools": catalog.tools()})
        out.encode.append(time.perf_counter() - t0)
    cache = CatalogCache(work / "catalog.json")
    entries = {s: (f"http://127.0.0.1:9/{s}", Listing(tools=definitions)) for s in servers}
    for _ in range(5):
        t0 = time.perf_counter()
        cache.save(entries)
        out.cache_save.append(time.perf_counter() - t0)
    out.cache_bytes = cache.path.stat().st_size
    return out


# ---------------------------------------------------------------------------------------------- report


def render(
    e2e: EndToEnd, inproc: InProcess, args: argparse.Namespace, started: dt.datetime, load_start: str, quiet: str
) -> str:
    n_tools = args.servers * args.tools
    p50, p99 = ms(med(e2e.lists)), ms(percentile(e2e.lists, 99))
    rows = [
        [
            f"bridge: `tools/list` of {e2e.tools_listed:,} tools, p50 / p99",
            f"{p50:.0f} / {p99:.0f} ms",
            f"target ≤ {TARGET_LIST_MS:g} ms — {verdict(p50 <= TARGET_LIST_MS)}; "
            f"{e2e.list_bytes / 1e6:.1f} MB of JSON; "
            f"{len(e2e.lists)} sequential lists, min {ms(min(e2e.lists)):.0f}, max {ms(max(e2e.lists)):.0f}",
        ],
        [
            f"floor: SDK client → one SDK stdio server with {n_tools:,} tools, `tools/list` p50",
            f"{ms(med(e2e.direct_big)):.0f} ms",
            f"no bridge: the SDK's own cost for this many tools over stdio (server + client); "
            f"{e2e.direct_big_bytes / 1e6:.1f} MB; min {ms(min(e2e.direct_big)):.0f}",
        ],
        [
            "bridge / floor, `tools/list` p50",
            f"{med(e2e.lists) / med(e2e.direct_big):.2f}x",
            "",
        ],
    ]
    for name, ph in e2e.phases.items():
        what = "fresh `MCP_BRIDGE_HOME`" if name == "cold" else "the same home again (allowlist and catalog caches)"
        rows += [
            [f"bridge, {name}: spawn → `initialize`", f"{ms(ph.initialize):.0f} ms", f"{what}; n=1"],
            [
                f"bridge, {name}: spawn → full `tools/list` ({args.servers} upstreams)",
                f"{ms(ph.full_list):.0f} ms",
                f"first list after {ms(ph.first_list):.0f} ms with {ph.first_count:,} of {n_tools:,} tools",
            ],
            [
                f"bridge, {name}: spawn → idle",
                f"{ph.idle:.1f} s",
                f"until the bridge used < 5% of a core for {IDLE_WINDOW:g} s; it had used {ph.cpu:.1f} CPU s by then",
            ],
        ]
    if e2e.to_notification:
        rows += [
            [
                "allowlist refresh changing one tool: SIGHUP → `tools/list_changed`",
                f"{ms(med(e2e.to_notification)):.0f} ms",
                f"the Port double answers the search ({args.servers} entities) in this process; "
                f"{spread([ms(v) for v in e2e.to_notification], '.0f')}",
            ],
            [
                "allowlist refresh changing one tool: SIGHUP → `tools/list` without (or with) it",
                f"{ms(med(e2e.to_new_list)):.0f} ms",
                f"includes one `tools/list` of {n_tools:,} tools; {spread([ms(v) for v in e2e.to_new_list], '.0f')}",
            ],
        ]
    if e2e.refresh_problem:
        rows.append(["allowlist refresh", "problem", e2e.refresh_problem])
    if e2e.raw_lists:
        raw50 = ms(med(e2e.raw_lists))
        rows.append(
            [
                f"bridge: `tools/list` of {n_tools:,} tools, raw pipe client, p50 / p99",
                f"{raw50:.1f} / {ms(percentile(e2e.raw_lists, 99)):.1f} ms",
                f"target ≤ {TARGET_LIST_MS:g} ms — {verdict(raw50 <= TARGET_LIST_MS)}; request line written → answer's "
                f"last byte read, nothing parsed meanwhile (the bridge's share); warm home; {len(e2e.raw_lists)} "
                f"sequential lists, min {ms(min(e2e.raw_lists)):.1f}, max {ms(max(e2e.raw_lists)):.1f}; "
                f"`json.loads` of the answer afterwards: {ms(med(e2e.raw_parse)):.0f} ms",
            ]
        )
    if e2e.raw_after_change:
        after50 = ms(med(e2e.raw_after_change))
        rows.append(
            [
                "bridge: first `tools/list` after a refresh that changed one tool, raw pipe client, p50",
                f"{after50:.1f} ms",
                f"target ≤ {TARGET_LIST_MS:g} ms — {verdict(after50 <= TARGET_LIST_MS)}; as above, the first list once "
                f"`list_changed` arrived; rounds: {', '.join(f'{ms(x):.1f}' for x in e2e.raw_after_change)}",
            ]
        )
    if e2e.raw_problem:
        rows.append(["raw pipe client", "problem", e2e.raw_problem])
    if e2e.raw_finds:
        f50 = ms(med(e2e.raw_finds))
        rows.append(
            [
                f"bridge, search mode: `find_tools` over {n_tools:,} tools, raw pipe client, p50 / p99",
                f"{f50:.1f} / {ms(percentile(e2e.raw_finds, 99)):.1f} ms",
                f"target ≤ {TARGET_FIND_MS:g} ms — {verdict(f50 <= TARGET_FIND_MS)}; request line written → answer "
                f"line read (the bridge's share); {len(e2e.raw_finds)} sequential searches, the queries of "
                f"`bench/search.py` in turn; `tools/list` in search mode: {e2e.search_list_bytes:,} bytes",
            ]
        )
    if e2e.search_problem:
        rows.append(["search mode", "problem", e2e.search_problem])
    rows += [
        [
            f"in process: `Catalog.set_listing` × {args.servers} (listings arriving one by one)",
            f"{ms(inproc.merge_one_by_one):.0f} ms",
            f"a full rebuild per arrival (the bridge batches arrivals): the last one {ms(inproc.merge_last):.0f} ms",
        ],
        [
            "in process: `Catalog.set_allowlist` changing one tool",
            f"{ms(med(inproc.set_allowlist)):.1f} ms",
            f"the bridge's CPU cost of the refresh itself (rebuild + denial checks); "
            f"{spread([ms(v) for v in inproc.set_allowlist], '.1f')}",
        ],
        [
            f"in process: `json.dumps` of the merged list ({n_tools:,} tools)",
            f"{ms(med(inproc.encode)):.1f} ms",
            "a floor for putting the list on the wire",
        ],
        [
            "in process: `CatalogCache.save` (all servers)",
            f"{ms(med(inproc.cache_save)):.0f} ms",
            f"{inproc.cache_bytes / 1e6:.1f} MB file; the bridge writes it at most once a second, from a thread",
        ],
    ]
    header = [
        title_line(started, "scale (`bench/scale.py`)"),
        "",
        machine_line(load_start) + (f"; {quiet}" if quiet else ""),
        f"- {args.servers} local upstreams × {args.tools} tools (`localservers --extra-tools`), allowlist from a Port "
        f"double with explicit `allowed_tools` lists; {n_tools:,} tools in the merged list; `tools/list` "
        f"latency = {args.lists} sequential lists over stdio once the cold-spawned bridge is idle, "
        f"refresh = {args.refreshes} SIGHUPs alternately dropping and restoring `{CHANGED_SERVER}`'s `tool_0001`",
        "",
    ]
    return "\n".join(header + markdown_table(["metric", "value", "notes"], rows)) + "\n"


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=50, help="upstreams (default 50)")
    parser.add_argument("--tools", type=int, default=200, help=f"tools per upstream, at least {BASE_TOOLS} (200)")
    parser.add_argument("--lists", type=int, default=20, help="sequential tools/list calls (default 20)")
    parser.add_argument("--refreshes", type=int, default=6, help="allowlist refreshes (default 6)")
    add_common_args(parser)
    args = parser.parse_args()
    if args.servers < 1 or args.tools < BASE_TOOLS + 1 or args.lists < 1 or args.refreshes < 0:
        parser.error(f"--servers and --lists must be at least 1, --tools at least {BASE_TOOLS + 1}")

    install_signal_handlers()
    quiet = quiet_note(args)
    started = dt.datetime.now(dt.UTC)
    load_start = load_average()
    t_start = time.perf_counter()
    extra = args.tools - BASE_TOOLS
    with workdir(args.keep) as work, PortDouble() as double:
        double.add_client("bench", SECRET)
        procs = Processes(work)
        try:
            print(f"starting {args.servers} upstreams with {args.tools} tools each ...", file=sys.stderr)
            upstreams = procs.start_upstreams(server_names(args.servers), ["--extra-tools", str(extra)])
            print(f"  started in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
            e2e = anyio.run(run_end_to_end, upstreams, double, work, args)
            inproc = anyio.run(run_in_process, upstreams[0], server_names(args.servers), tool_names(args.tools), work)
        except KeyboardInterrupt:
            print("interrupted; cleaning up", file=sys.stderr)
            return 130
        finally:
            procs.kill_all()
    append_results(render(e2e, inproc, args, started, load_start, quiet), not args.no_write)
    print(f"total runtime {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
