"""Concurrency benchmark: many calls in flight across upstreams, and one slow upstream among them (a benchmark, not a
test: nothing here is asserted).

Run from the repository root::

    .venv/bin/python bench/concurrency.py [--calls 200] [--in-flight 50] [--rounds 5] [--no-write]

Four local upstreams ``c0``..``c3`` (``mcp_bridge.sandbox.localservers``), plus a second ``c3`` started with
``--echo-delay 2`` (its ``echo`` answers in 2 s). Two paths, each driven by the same SDK client code: direct (one
streamable-HTTP SDK client per upstream, all in this process) and through one bridge over stdio. Per round, path and
variant:

* workload: ``--calls`` ``echo`` calls, call *i* to upstream *i* mod 4, run by ``--in-flight`` workers (so that many
  calls are in flight at once); each call's latency is recorded from send to answer, and checked;
* variant "all fast": the four normal upstreams; variant "c3 slow": ``c3`` replaced by the 2 s one (in the bridge's
  config under the same name). What matters is that the latency of the calls to ``c0``..``c2`` does not move;
* bursts: ``--in-flight`` ``echo`` calls started at once (wall time against one sequential call's p50), and
  ``--in-flight`` calls of ``slow`` with ``delay: 1`` spread over the four upstreams (wall time against 1 s): many
  calls in flight must finish in about one call's time.

Paths and variants alternate in order from round to round. Values are medians across rounds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp.client.session import ClientSession

from common import (
    Processes,
    ToolsChanged,
    Upstream,
    add_common_args,
    append_results,
    bridge_session,
    call_tool,
    check_echo,
    direct_client,
    install_signal_handlers,
    load_average,
    machine_line,
    markdown_table,
    med,
    ms,
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

N_UPSTREAMS = 4
SLOW_ECHO_S = 2.0
SLOW_TOOL_S = 1.0
WARMUP = 30
SEQUENTIAL_PROBE = 30
TARGET_MOVE = 1.2  # "must not move": the others' p50 in the slow variant within this factor of the fast one
TARGET_BURST = 1.5  # "about one call's time": a burst's wall time within this factor of one call

Caller = Callable[[int, str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""(upstream index, tool, arguments) → raw result."""


@dataclass
class Run:
    others: list[float]  # latencies (s) of the calls to c0..c2
    slow_one: list[float]  # latencies (s) of the calls to c3
    wall: float


async def workload(caller: Caller, calls: int, in_flight: int) -> Run:
    samples: list[tuple[int, float]] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < calls:
            i = next_index
            next_index += 1
            target = i % N_UPSTREAMS
            t0 = time.perf_counter()
            result = await caller(target, "echo", {"text": f"m{i}"})
            samples.append((target, time.perf_counter() - t0))
            check_echo(result, "echo", f"c{target}: m{i}")

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(worker)
    wall = time.perf_counter() - t0
    others = [s for t, s in samples if t != N_UPSTREAMS - 1]
    return Run(others, [s for t, s in samples if t == N_UPSTREAMS - 1], wall)


async def burst(caller: Caller, n: int, tool: str, arguments: Callable[[int], dict[str, Any]]) -> float:
    """Wall time of ``n`` calls started at once, spread over the upstreams."""

    async def one(i: int) -> None:
        result = await caller(i % N_UPSTREAMS, tool, arguments(i))
        if result.get("isError"):
            raise RuntimeError(f"{tool} failed: {result!r}")

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return time.perf_counter() - t0


@dataclass
class Cell:
    """One (path, variant): per-round values."""

    others_p50: list[float] = field(default_factory=list)
    others_p99: list[float] = field(default_factory=list)
    slow_p50: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)


@dataclass
class PathResult:
    fast: Cell = field(default_factory=Cell)
    slow: Cell = field(default_factory=Cell)
    one_call: list[float] = field(default_factory=list)  # sequential echo p50 (s)
    echo_burst: list[float] = field(default_factory=list)
    slow_burst: list[float] = field(default_factory=list)


async def run_all(fast: list[Upstream], slow_c3: Upstream, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    results = {"direct": PathResult(), "bridge": PathResult()}
    async with AsyncExitStack() as stack:
        # direct: one SDK client per upstream; the slow variant swaps c3's client
        direct = [(await stack.enter_async_context(direct_client(u.url))).session for u in [*fast, slow_c3]]
        # bridge: one bridge per variant, kept for the whole run
        bridges: dict[str, ClientSession] = {}
        for variant, ups in (("fast", fast), ("slow", [*fast[:-1], slow_c3])):
            config = write_config(work / f"bridge-{variant}.yaml", ups)
            handler = ToolsChanged()
            session = await stack.enter_async_context(
                bridge_session(config, work / f"home-{variant}", work / f"bridge-{variant}.stderr.log", handler)
            )
            await session.initialize()
            await wait_full_list(session, handler, {f"c{i}__echo" for i in range(N_UPSTREAMS)}, 60)
            bridges[variant] = session

        def caller(path: str, variant: str) -> Caller:
            if path == "direct":
                sessions = direct[:N_UPSTREAMS] if variant == "fast" else [*direct[: N_UPSTREAMS - 1], direct[-1]]

                async def call_direct(target: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
                    return await call_tool(sessions[target], tool, arguments)

                return call_direct
            session = bridges[variant]

            async def call_bridge(target: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
                return await call_tool(session, f"c{target}__{tool}", arguments)

            return call_bridge

        for path in results:  # warm-up
            for variant in ("fast", "slow"):
                for target in range(N_UPSTREAMS if variant == "fast" else N_UPSTREAMS - 1):
                    for i in range(WARMUP // N_UPSTREAMS):
                        await caller(path, variant)(target, "echo", {"text": f"w{i}"})

        for r in range(args.rounds):
            paths = ["direct", "bridge"] if r % 2 == 0 else ["bridge", "direct"]
            variants = ["fast", "slow"] if r % 2 == 0 else ["slow", "fast"]
            for path in paths:
                res = results[path]
                # one sequential call's latency, on c0 of the all-fast setup
                if path == "direct":
                    seq = await timed_calls(direct[0], "echo", SEQUENTIAL_PROBE, "c0")
                else:
                    seq = await timed_calls(bridges["fast"], "c0__echo", SEQUENTIAL_PROBE, "c0")
                res.one_call.append(percentile(seq, 50))
                for variant in variants:
                    run = await workload(caller(path, variant), args.calls, args.in_flight)
                    cell = res.fast if variant == "fast" else res.slow
                    cell.others_p50.append(percentile(run.others, 50))
                    cell.others_p99.append(percentile(run.others, 99))
                    cell.slow_p50.append(percentile(run.slow_one, 50))
                    cell.wall.append(run.wall)
                    print(
                        f"  round {r + 1}/{args.rounds} {path:6} {variant}: c0-c2 p50 {ms(cell.others_p50[-1]):.1f} ms "
                        f"p99 {ms(cell.others_p99[-1]):.1f} ms, c3 p50 {ms(cell.slow_p50[-1]):.1f} ms, "
                        f"wall {ms(run.wall):.0f} ms",
                        file=sys.stderr,
                    )
                call = caller(path, "fast")
                res.echo_burst.append(await burst(call, args.in_flight, "echo", lambda i: {"text": f"b{i}"}))
                res.slow_burst.append(
                    await burst(call, args.in_flight, "slow", lambda i: {"steps": 1, "delay": SLOW_TOOL_S})
                )
                print(
                    f"  round {r + 1}/{args.rounds} {path:6} bursts: {args.in_flight} echo {ms(res.echo_burst[-1]):.0f}"
                    f" ms (one call {ms(res.one_call[-1]):.1f} ms), {args.in_flight} × slow 1 s "
                    f"{ms(res.slow_burst[-1]):.0f} ms",
                    file=sys.stderr,
                )
    return results


def render(
    results: dict[str, PathResult], args: argparse.Namespace, started: dt.datetime, load_start: str, quiet: str
) -> str:
    rows: list[list[str]] = []
    labels = {"direct": "direct", "bridge": "bridge"}
    for path, res in results.items():
        f50, f99 = med(res.fast.others_p50), med(res.fast.others_p99)
        s50, s99 = med(res.slow.others_p50), med(res.slow.others_p99)
        moved = s50 / f50
        rows += [
            [
                f"{labels[path]}, all fast: c0–c2 p50 / p99",
                f"{ms(f50):.1f} / {ms(f99):.1f} ms",
                f"wall for {args.calls} calls {ms(med(res.fast.wall)):.0f} ms "
                f"(≈ {args.calls / med(res.fast.wall):.0f} calls/s); "
                f"p50 {spread([ms(v) for v in res.fast.others_p50], '.1f')}",
            ],
            [
                f"{labels[path]}, c3 slow: c0–c2 p50 / p99",
                f"{ms(s50):.1f} / {ms(s99):.1f} ms",
                f"c3 p50 {ms(med(res.slow.slow_p50)):.0f} ms; wall {ms(med(res.slow.wall)):.0f} ms; "
                f"p50 {spread([ms(v) for v in res.slow.others_p50], '.1f')}",
            ],
            [
                f"{labels[path]}: c0–c2 p50, c3 slow / all fast",
                f"{moved:.2f}x",
                f"p99 {s99 / f99:.2f}x; target: does not move up (≤ {TARGET_MOVE:g}x) — {verdict(moved <= TARGET_MOVE)}"
                " (below 1: the slow calls hold their slots without using the CPU, so fewer calls compete)",
            ],
        ]
        one, eb, sb = med(res.one_call), med(res.echo_burst), med(res.slow_burst)
        rows += [
            [
                f"{labels[path]}: {args.in_flight} `echo` at once, wall",
                f"{ms(eb):.0f} ms",
                f"= {eb / one:.1f} × one sequential call ({ms(one):.2f} ms p50; the calls share 2 cores); "
                f"{spread([ms(v) for v in res.echo_burst], '.0f')}",
            ],
            [
                f"{labels[path]}: {args.in_flight} × `slow` (1 s) at once, wall",
                f"{ms(sb):.0f} ms",
                f"= {sb / SLOW_TOOL_S:.2f} × one call; target ≈ one call's time (≤ {TARGET_BURST:g}x) — "
                f"{verdict(sb / SLOW_TOOL_S <= TARGET_BURST)}; {spread([ms(v) for v in res.slow_burst], '.0f')}",
            ],
        ]
    d, b = results["direct"], results["bridge"]
    rows.append(
        [
            "bridge / direct, all fast: c0–c2 p50",
            f"{med(b.fast.others_p50) / med(d.fast.others_p50):.2f}x",
            f"p99 {med(b.fast.others_p99) / med(d.fast.others_p99):.2f}x; "
            f"wall {med(b.fast.wall) / med(d.fast.wall):.2f}x",
        ]
    )
    header = [
        title_line(started, "concurrency (`bench/concurrency.py`)"),
        "",
        machine_line(load_start) + (f"; {quiet}" if quiet else ""),
        f"- {N_UPSTREAMS} local upstreams; {args.calls} `echo` calls per run, call i to upstream i mod 4, "
        f'{args.in_flight} in flight; "c3 slow" = c3\'s `echo` answers in {SLOW_ECHO_S:g} s; direct = one SDK '
        "client per upstream in the bench process, bridge = one `mcp-bridge serve` over stdio for all four; "
        f"{args.rounds} rounds alternating path and variant order; medians across rounds of each run's p50/p99",
        "",
    ]
    return "\n".join(header + markdown_table(["metric", "value", "notes"], rows)) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per run (default 200)")
    parser.add_argument("--in-flight", type=int, default=50, help="calls in flight at once (default 50)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    add_common_args(parser)
    args = parser.parse_args()
    if args.calls < N_UPSTREAMS or args.in_flight < 1 or args.rounds < 1:
        parser.error(f"--calls must be at least {N_UPSTREAMS}; --in-flight and --rounds at least 1")

    install_signal_handlers()
    quiet = quiet_note(args)
    started = dt.datetime.now(dt.UTC)
    load_start = load_average()
    t_start = time.perf_counter()
    with workdir(args.keep) as work:
        procs = Processes(work)
        try:
            fast = procs.start_upstreams([f"c{i}" for i in range(N_UPSTREAMS)])
            (slow_c3,) = procs.start_upstreams([f"c{N_UPSTREAMS - 1}"], ["--echo-delay", str(SLOW_ECHO_S)])
            results = anyio.run(run_all, fast, slow_c3, work, args)
        except KeyboardInterrupt:
            print("interrupted; cleaning up", file=sys.stderr)
            return 130
        finally:
            procs.kill_all()
    append_results(render(results, args, started, load_start, quiet), not args.no_write)
    print(f"total runtime {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
