"""Startup and quick latency benchmark of the bridge (a benchmark, not a test: nothing here is asserted).

Run from the repository root::

    .venv/bin/python bench/latency.py [--sizes 1,10,50] [--spawns 5] [--calls 500] [--rounds 3] [--no-latency]
        [--eras 2025-11-25,2026-07-28]

It measures on this machine, in one run, in each protocol era (``common.ERAS``: the IDE and the upstreams both speak
it, so the bridge does on both sides; 2026-07-28 is an IDE in the SDK's default ``auto`` mode):

1. startup: for 1, 10 and 50 upstreams, spawn → ``initialize`` (2026-07-28: ``server/discover``) of the bridge and
   spawn → first full merged ``tools/list``, with a cold disk cache (a fresh ``MCP_BRIDGE_HOME`` per spawn) and a warm
   one (one home reused after a first, uncounted spawn), cold and warm spawns interleaved; plus the import times that
   bound it;
2. per-call latency of ``echo`` on one local upstream, directly (SDK client over streamable HTTP, same era) and
   through the bridge, alternating paths round by round (a quick check; ``bench/peers.py`` adds the peers).

It prints one markdown table and appends it to ``bench/RESULTS.md``. Upstreams are real
``mcp_bridge.sandbox.localservers`` subprocesses on 127.0.0.1; every subprocess is killed at the end, even on error or
Ctrl-C. The bridge's stderr goes to a temporary file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from common import (
    ERAS,
    WARMUP_CALLS,
    Processes,
    ToolsChanged,
    Upstream,
    add_common_args,
    append_results,
    bridge_client_in,
    bridge_env,
    direct_client,
    install_signal_handlers,
    list_tool_names,
    listening,
    load_average,
    machine_line,
    markdown_table,
    med,
    ms,
    parse_eras,
    percentile,
    quiet_note,
    spread,
    timed_calls,
    title_line,
    verdict,
    wait_full_list,
    workdir,
    write_config,
)

TARGET_INITIALIZE_S = 1.0
TARGET_COLD_10_S = 1.5
TARGET_WARM_OVER_INIT_S = 0.1
TARGET_RATIO_P50 = 1.2
IMPORT_RUNS = 5
FULL_LIST_TIMEOUT = 60.0
EARLY_OFF = {"MCP_BRIDGE_EARLY_INITIALIZE": "0"}
PRE_ANSWER_IMPORTS = "import mcp_bridge.cli, mcp_bridge.ide.handshake, mcp_bridge.governance.allowlist"
"""What ``serve`` imports before it answers ``initialize``."""


# ---------------------------------------------------------------------------------------------- 1. startup


@dataclass
class Spawn:
    initialize: float
    first_list: float = 0.0
    first_list_count: int = 0
    full_list: float = 0.0
    close: float = 0.0


async def spawn_once(
    config: Path,
    home: Path,
    stderr_path: Path,
    expected: set[str],
    mode: str,
    env_extra: dict[str, str] | None = None,
) -> Spawn:
    """One bridge spawn: spawn → initialize (or discover) → first ``tools/list`` → first *full* ``tools/list`` (in
    the 2026-07-28 era the list-change stream is opened after the first ``tools/list`` if that was not full yet, and
    the tools listed again once it is acknowledged, so that no change is missed)."""
    handler = ToolsChanged()
    t0 = time.perf_counter()
    async with bridge_client_in(config, home, stderr_path, mode, handler, env_extra) as client:
        session = client.session
        spawn = Spawn(initialize=time.perf_counter() - t0)
        names = await list_tool_names(session)
        spawn.first_list = time.perf_counter() - t0
        spawn.first_list_count = len(names & expected)
        if expected <= names:
            spawn.full_list = spawn.first_list
        else:
            async with listening(client, handler):
                await wait_full_list(session, handler, expected, FULL_LIST_TIMEOUT)
            spawn.full_list = time.perf_counter() - t0
        t_close = time.perf_counter()
    spawn.close = time.perf_counter() - t_close
    return spawn


@dataclass
class StartupResult:
    era: str
    size: int
    expected_tools: int
    cold: list[Spawn] = field(default_factory=list)
    warm: list[Spawn] = field(default_factory=list)
    by_sdk: list[Spawn] = field(default_factory=list)
    """Cold spawns with the early answer off (``MCP_BRIDGE_EARLY_INITIALIZE=0``): ``initialize`` answered by the SDK."""
    warm_cache_written: bool = True


async def run_startup(upstreams: list[Upstream], size: int, work: Path, spawns: int, era: str) -> StartupResult:
    mode = ERAS[era][0]
    chosen = upstreams[:size]
    tag = f"{era}-{size}"
    config = write_config(work / f"startup-{tag}.yaml", chosen)
    async with direct_client(chosen[0].url, mode) as probe:
        listed = await list_tool_names(probe.session)
    expected = {f"{u.name}__{tool}" for u in chosen for tool in listed}
    result = StartupResult(era, size, len(expected))
    stderr_path = work / f"bridge-startup-{tag}.stderr.log"
    warm_home = work / f"warm-home-{tag}"
    await spawn_once(config, warm_home, stderr_path, expected, mode)  # fills the cache; not counted
    result.warm_cache_written = (warm_home / "catalog.json").exists()
    for i in range(spawns):  # interleaved, so drift in the machine's load hits both alike
        result.cold.append(await spawn_once(config, work / f"cold-home-{tag}-{i}", stderr_path, expected, mode))
        result.warm.append(await spawn_once(config, warm_home, stderr_path, expected, mode))
        if size == 1:  # the same run, alternating: what answering before the SDK loads saves
            home = work / f"sdk-home-{tag}-{i}"
            result.by_sdk.append(await spawn_once(config, home, stderr_path, expected, mode, EARLY_OFF))
        print(
            f"  {era}, {size} upstreams, spawn {i + 1}/{spawns}: cold init {ms(result.cold[-1].initialize):.0f} ms "
            f"full {ms(result.cold[-1].full_list):.0f} ms; warm init {ms(result.warm[-1].initialize):.0f} ms "
            f"full {ms(result.warm[-1].full_list):.0f} ms",
            file=sys.stderr,
        )
    return result


def time_imports(env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Median wall time of ``python -c CODE`` over IMPORT_RUNS fresh interpreters, per code snippet."""
    snippets = [
        "pass",
        "import mcp.server.lowlevel",
        PRE_ANSWER_IMPORTS,
        "import mcp_bridge.bridge, mcp_bridge.ide.front",
    ]
    out = {}
    for code in snippets:
        runs = []
        for _ in range(IMPORT_RUNS):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, check=True, stdin=subprocess.DEVNULL)
            runs.append(time.perf_counter() - t0)
        out[code] = med(runs)
    return out


# ---------------------------------------------------------------------------------------------- 2. latency


@dataclass
class LatencyResult:
    era: str
    calls: int
    rounds: int
    direct_p50: list[float] = field(default_factory=list)
    direct_p99: list[float] = field(default_factory=list)
    bridge_p50: list[float] = field(default_factory=list)
    bridge_p99: list[float] = field(default_factory=list)


async def run_latency(upstream: Upstream, work: Path, calls: int, rounds: int, era: str) -> LatencyResult:
    mode = ERAS[era][0]
    home = work / f"latency-home-{era}"
    config = write_config(work / f"latency-{era}.yaml", [upstream])
    result = LatencyResult(era, calls, rounds)
    async with (
        direct_client(upstream.url, mode) as direct,
        bridge_client_in(config, home, work / f"bridge-latency-{era}.stderr.log", mode) as bridge,
    ):
        if bridge.protocol_version != direct.protocol_version:
            raise RuntimeError(f"eras differ: bridge {bridge.protocol_version}, direct {direct.protocol_version}")
        bridged = bridge.session
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
                print(f"  {era} round {r + 1}/{rounds} {path:6}: p50 {p50:.3f} ms  p99 {p99:.3f} ms", file=sys.stderr)
    return result


# ---------------------------------------------------------------------------------------------- report


def render(
    startups: list[StartupResult],
    lats: list[LatencyResult],
    imports: dict[str, float],
    started: dt.datetime,
    load_start: str,
    quiet: str,
    spawns: int,
) -> str:
    era = ""

    def row(label: str, spawns_: list[Spawn], attr: str, note: str = "") -> list[str]:
        values = [ms(getattr(s, attr)) for s in spawns_]
        notes = f"min {min(values):.0f}, max {max(values):.0f} (n={len(values)})"
        return [era, label, f"{med(values):.0f} ms", f"{note}; {notes}" if note else notes]

    rows: list[list[str]] = []
    for st in startups:
        era = st.era
        n = st.size
        plural = "upstream" if n == 1 else "upstreams"
        init = "`initialize`" if st.era == "2025-11-25" else "`server/discover`"
        init_cold = med([s.initialize for s in st.cold])
        init_warm = med([s.initialize for s in st.warm])
        full_cold = med([s.full_list for s in st.cold])
        full_warm = med([s.full_list for s in st.warm])
        t_init = f"target ≤ {TARGET_INITIALIZE_S:g} s — {verdict(init_cold <= TARGET_INITIALIZE_S)}"
        rows.append(row(f"{n} {plural}: spawn → {init}, cold cache", st.cold, "initialize", t_init))
        t_init = f"target ≤ {TARGET_INITIALIZE_S:g} s — {verdict(init_warm <= TARGET_INITIALIZE_S)}"
        rows.append(row(f"{n} {plural}: spawn → {init}, warm cache", st.warm, "initialize", t_init))
        if st.by_sdk:
            note = "answered by the SDK (`MCP_BRIDGE_EARLY_INITIALIZE=0`), alternating with the cold spawns"
            rows.append(row(f"{n} {plural}: spawn → {init}, early answer off", st.by_sdk, "initialize", note))
        cold_note = ""
        if n == 10:
            cold_note = f"target ≤ {TARGET_COLD_10_S:g} s — {verdict(full_cold <= TARGET_COLD_10_S)}"
        rows.append(
            row(
                f"{n} {plural}: spawn → full `tools/list` ({st.expected_tools} tools), cold",
                st.cold,
                "full_list",
                cold_note,
            )
        )
        over = full_warm - init_warm
        warm_note = (
            f"= warm {init} {over * 1000:+.0f} ms; target ≤ {init} + {TARGET_WARM_OVER_INIT_S * 1000:.0f} "
            f"ms — {verdict(over <= TARGET_WARM_OVER_INIT_S)}"
        )
        if not st.warm_cache_written:
            warm_note += "; WARNING: the warm-up spawn left no catalog.json"
        rows.append(row(f"{n} {plural}: spawn → full `tools/list`, warm", st.warm, "full_list", warm_note))
        counts = [s.first_list_count for s in st.cold + st.warm]
        rows.append(
            row(
                f"{n} {plural}: spawn → first `tools/list`, warm",
                st.warm,
                "first_list",
                f"tools in the first list (cold, then warm): {', '.join(map(str, counts))} of {st.expected_tools}",
            )
        )
        rows.append(row(f"{n} {plural}: bridge close (stdin EOF → exited)", st.cold + st.warm, "close"))
    for code, seconds in imports.items():
        rows.append(["", f'`python -c "{code}"`', f"{ms(seconds):.0f} ms", f"median of {IMPORT_RUNS} fresh processes"])
    for lat in lats:
        d50, d99 = med(lat.direct_p50), med(lat.direct_p99)
        b50, b99 = med(lat.bridge_p50), med(lat.bridge_p99)
        ok = b50 / d50 <= TARGET_RATIO_P50
        rows += [
            [lat.era, "direct `echo` p50 / p99", f"{d50:.3f} / {d99:.3f} ms", spread(lat.direct_p50)],
            [lat.era, "bridge `local__echo` p50 / p99", f"{b50:.3f} / {b99:.3f} ms", spread(lat.bridge_p50)],
            [
                lat.era,
                "ratio bridge/direct p50",
                f"{b50 / d50:.2f}x",
                f"p99 ratio {b99 / d99:.2f}x; target ≤ {TARGET_RATIO_P50:g}x — {verdict(ok)}",
            ],
        ]

    header = [
        title_line(started, "startup (`bench/latency.py`)"),
        "",
        machine_line(load_start) + (f"; {quiet}" if quiet else ""),
        f"- startup: {spawns} cold and {spawns} warm spawns per size, interleaved; cold = fresh `MCP_BRIDGE_HOME` "
        "(no `catalog.json`) per spawn, warm = one home reused after a first (uncounted) spawn; local upstreams "
        f"with {startups[0].expected_tools // startups[0].size if startups else 0} tools each, `allowed_tools: ['*']`; "
        "full = every upstream's tools listed (re-listing on each "
        "`tools/list_changed`, in 2026-07-28 an event on the `subscriptions/listen` stream); values are medians",
        "- era: the protocol era of the IDE and of the upstreams, so of the bridge on both sides: 2025-11-25 = an "
        "SDK client in `legacy` mode and handshake-only upstreams; 2026-07-28 = an SDK client in its default `auto` "
        "mode (`server/discover` first) and upstreams that speak only 2026-07-28",
    ]
    if lats:
        header.append(
            f"- latency: {lats[0].calls} sequential `echo` calls per path per round, {lats[0].rounds} rounds "
            f"alternating paths, {WARMUP_CALLS} warm-up calls per path; the median across rounds of each round's "
            "p50/p99; direct = the SDK client of the same era over streamable HTTP"
        )
    header.append("")
    align = "|---|---|---:|---|"
    return "\n".join(header + markdown_table(["era", "metric", "value", "notes"], rows, align)) + "\n"


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,50", help="upstream counts for startup (default 1,10,50)")
    parser.add_argument("--spawns", type=int, default=5, help="cold and warm spawns per size (default 5)")
    parser.add_argument("--calls", type=int, default=500, help="sequential calls per path per round (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds, alternating paths (default 3)")
    parser.add_argument("--no-latency", action="store_true", help="skip the direct-vs-bridge latency section")
    parser.add_argument("--eras", default=",".join(ERAS), help=f"protocol eras to run in (default {','.join(ERAS)})")
    add_common_args(parser)
    args = parser.parse_args()
    try:
        eras = parse_eras(args.eras)
    except ValueError as exc:
        parser.error(str(exc))
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if args.calls < 1 or args.rounds < 1 or args.spawns < 1 or not sizes or sizes[0] < 1:
        parser.error("--calls, --rounds, --spawns and every size must be at least 1")

    install_signal_handlers()
    quiet = quiet_note(args)
    started = dt.datetime.now(dt.UTC)
    load_start = load_average()
    t_start = time.perf_counter()
    latencies: list[LatencyResult] = []
    startups: list[StartupResult] = []
    with workdir(args.keep) as work:
        procs = Processes(work)
        try:
            print("import times ...", file=sys.stderr)
            imports = time_imports(bridge_env(work / "import-home"), work)
            for era in eras:
                era_args = ["--era", ERAS[era][1]]
                print(f"{era}: starting {sizes[-1]} upstreams ...", file=sys.stderr)
                upstreams = procs.start_upstreams([f"u{i:02d}" for i in range(sizes[-1])], era_args)
                for size in sizes:
                    print(f"{era}: startup, {size} upstreams ...", file=sys.stderr)
                    startups.append(anyio.run(run_startup, upstreams, size, work, args.spawns, era))
                if not args.no_latency:
                    print(f"{era}: per-call latency ...", file=sys.stderr)
                    (local,) = procs.start_upstreams(["local"], era_args)
                    latencies.append(anyio.run(run_latency, local, work, args.calls, args.rounds, era))
                procs.kill_all()
        except KeyboardInterrupt:
            print("interrupted; cleaning up", file=sys.stderr)
            return 130
        finally:
            procs.kill_all()
    append_results(render(startups, latencies, imports, started, load_start, quiet, args.spawns), not args.no_write)
    print(f"total runtime {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
