"""Per-call cost of telemetry (issue 20): the bridge with telemetry off and on, in one run (a benchmark, not a test).

Run from the repository root (needs the ``otel`` extra, which ``.[test]`` includes)::

    .venv/bin/python bench/telemetry.py [--calls 1000] [--rounds 3] [--eras 2026-07-28,2025-11-25]
        [--paths on,not-propagated,refused,silent] [--upstream untraced|sdk] [--no-write]

Issue 20's target: with telemetry on, at most 50 µs more per call at p50 (spans batched), and an unreachable
collector never slows or fails a call. Paths, each a ``mcp-bridge serve`` subprocess over stdio with one local
upstream (``mcp_bridge.sandbox.localservers``), the same ``echo`` call as ``bench/floor.py``. The upstream is, by
default, an SDK server without the OpenTelemetry middleware the SDK puts on every server (``--untraced``): it passes
the trace context over, so that on less off is what telemetry costs the bridge. An SDK server as shipped
(``--upstream sdk``) reads the context the bridge sends it and opens a span parented by it, its own telemetry, at a
cost of its own: "server alone" below measures it.

* off: ``telemetry`` absent (nothing of OpenTelemetry's SDK is loaded);
* on: ``telemetry: {enabled: true, endpoint: ...}`` to a live collector: a subprocess of this file
  (``--collector PORT``) that answers every OTLP/HTTP POST with 200 and an empty protobuf answer;
* on, not propagated: the same with ``propagate: false`` (no trace context goes to the server: what the server's
  handling of it costs is the difference from ``on``);
* on, collector refused: the endpoint is a port nobody listens on;
* on, collector silent: a subprocess of this file (``--silent PORT``) accepts connections and never answers.

Per era and round: a fresh bridge per path (a process's own luck, where its memory lies and which core it shares,
weighs on all its calls: it is drawn anew each round, as ``bench/peers.py`` does), connect, 20 warm-up calls, then
``--calls`` sequential calls per path, each answer checked; the paths take turns every 25 calls (the order rotating),
so that the machine's drift within a round (other processes, clock frequency) falls on every path alike. Values are
medians across rounds of each round's p50/p90; a path's overhead is the median across rounds of its p50 less off's
in the same round (paired). CPU per call: the bridge's threads over the round (``/proc/<pid>/task/*/schedstat``,
nanoseconds; the export threads included) divided by the calls, and the server's a call in a path's turns (the
median turn: a garbage collection falls on one). After the paths, the server alone: the same call posted straight to
it with and without trace context, what its handling of the trace context costs without the bridge (an SDK server as
shipped, a second upstream when the paths' is untraced). Also, per path:
spawn → first call answered (the telemetry start included). It prints one markdown table and appends it to
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import socket
import sys
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common import Upstream

TARGET_OVERHEAD_US = 50.0
BLOCK = 25
"""Calls a path makes before the next path's turn (within a round)."""
PATHS = {
    "off": "off",
    "on": "on",
    "not-propagated": "on, not propagated",
    "refused": "on, collector refused",
    "silent": "on, collector silent",
}
"""The paths, by their ``--paths`` key."""
UPSTREAMS = {
    "untraced": "an SDK server without the SDK's OpenTelemetry middleware: it passes the trace context over, so on "
    "less off is the bridge's own",
    "sdk": "an SDK server as shipped: its OpenTelemetry middleware reads the trace context and opens a span of its own",
}
"""The paths' upstream, by ``--upstream``."""


# ---------------------------------------------------------------------------------------------- collectors


def collector_main(port: int) -> int:
    """A collector's front door that takes everything: 200 and an empty (valid) protobuf answer to every POST."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    return 0


def silent_main(port: int) -> int:
    """Accepts connections and never answers (a hung collector)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    held = []
    while True:
        conn, _ = sock.accept()
        held.append(conn)


# ---------------------------------------------------------------------------------------------- the benchmark


@dataclass
class PathResult:
    p50: list[float] = field(default_factory=list)
    p90: list[float] = field(default_factory=list)
    bridge_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    """The upstream server's CPU per call (it parses what the bridge sends it: with telemetry on, trace context): per
    round, the median of the path's turns."""
    first_call_ms: list[float] = field(default_factory=list)
    """Spawn → the first call answered, per round."""


@dataclass
class EraResult:
    paths: dict[str, PathResult] = field(default_factory=dict)
    share: ServerShare | None = None


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants (their live threads, nanosecond resolution)."""
    from common import process_tree, threads_cpu_seconds

    return sum(threads_cpu_seconds(p) for p in process_tree(pid))


# ---------------------------------------------------------------------------------------------- the server's share


@dataclass
class ServerShare:
    """What an SDK server's handling of trace context costs a call, measured without the bridge: p50 and the
    server's CPU per call, with and without trace context, per round."""

    plain_p50: list[float] = field(default_factory=list)
    traced_p50: list[float] = field(default_factory=list)
    plain_cpu: list[float] = field(default_factory=list)
    traced_cpu: list[float] = field(default_factory=list)


def server_share(era: str, upstream: Upstream, calls: int, rounds: int) -> ServerShare:
    """The same ``echo`` call posted straight to ``upstream`` over two keep-alive HTTP connections (``http.client``:
    no SDK client in the way), one without trace context and one with it as the bridge sends it (``traceparent`` in
    ``_meta`` and as an HTTP header), taking turns every :data:`BLOCK` calls. At 2025-11-25 each connection has its
    own session (``initialize``, ``notifications/initialized``); at 2026-07-28 each request carries the era's
    ``_meta``, as the bridge's do."""
    import http.client

    from common import WARMUP_CALLS, percentile

    modern = era != "2025-11-25"
    base_headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    era_meta: dict[str, Any] = {}
    if modern:
        base_headers.update({"mcp-protocol-version": era, "mcp-method": "tools/call", "mcp-name": "echo"})
        era_meta = {
            "io.modelcontextprotocol/protocolVersion": era,
            "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
            "io.modelcontextprotocol/clientCapabilities": {},
        }

    def post(conn: http.client.HTTPConnection, headers: dict[str, str], message: dict[str, Any]) -> bytes:
        conn.request("POST", "/mcp", json.dumps(message, separators=(",", ":")).encode(), headers)
        response = conn.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{upstream.name} answered {response.status}: {data[:200]!r}")
        if not modern and response.getheader("mcp-session-id"):
            headers["mcp-session-id"] = response.getheader("mcp-session-id") or ""
        return data

    ways: dict[str, tuple[http.client.HTTPConnection, dict[str, str]]] = {}
    for way in ("plain", "traced"):
        conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=30)
        headers = dict(base_headers)
        if not modern:
            hello = {"protocolVersion": era, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}
            post(conn, headers, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
            headers["mcp-protocol-version"] = era
            post(conn, headers, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        ways[way] = (conn, headers)
    ids = iter(range(1, 1 << 40))
    expected = f'"{upstream.name}: m"'.encode()

    def timed(way: str, n: int) -> list[float]:
        conn, headers = ways[way]
        samples = []
        for _ in range(n):
            params: dict[str, Any] = {"name": "echo", "arguments": {"text": "m"}}
            meta = era_meta
            if way == "traced":  # a span of its own each time, as the bridge's
                traceparent = f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-01"
                headers["traceparent"] = traceparent
                meta = {"traceparent": traceparent, **era_meta}
            if meta:
                params["_meta"] = meta
            t0 = time.perf_counter()
            data = post(conn, headers, {"jsonrpc": "2.0", "id": next(ids), "method": "tools/call", "params": params})
            samples.append(time.perf_counter() - t0)
            if b'"isError":true' in data or expected not in data:
                raise RuntimeError(f"{upstream.name} answered unexpectedly: {data[:200]!r}")
        return samples

    share = ServerShare()
    for way in ways:
        timed(way, WARMUP_CALLS)
    blocks = max(1, calls // BLOCK)
    for r in range(rounds):
        samples: dict[str, list[float]] = {"plain": [], "traced": []}
        cpu: dict[str, list[float]] = {"plain": [], "traced": []}
        for b in range(blocks):
            for way in ("plain", "traced") if (r + b) % 2 == 0 else ("traced", "plain"):
                server0 = tree_cpu(upstream.proc.pid)
                samples[way] += timed(way, BLOCK)
                cpu[way].append((tree_cpu(upstream.proc.pid) - server0) / BLOCK)
        share.plain_p50.append(percentile(samples["plain"], 50) * 1000)
        share.traced_p50.append(percentile(samples["traced"], 50) * 1000)
        share.plain_cpu.append(percentile(cpu["plain"], 50) * 1000)
        share.traced_cpu.append(percentile(cpu["traced"], 50) * 1000)
        print(
            f"  {era} round {r + 1}/{rounds} server alone: p50 {share.plain_p50[-1]:.3f} ms without trace context, "
            f"{share.traced_p50[-1]:.3f} ms with it",
            file=sys.stderr,
        )
    for conn, _headers in ways.values():
        conn.close()
    return share


async def run_era(
    era: str, upstream: Upstream, work: Path, calls: int, rounds: int, sections: dict[str, dict[str, Any] | None]
) -> EraResult:
    from contextlib import AsyncExitStack

    from common import (
        ERAS,
        WARMUP_CALLS,
        bridge_client_in,
        call_echo,
        ms,
        own_children,
        percentile,
        timed_calls,
        wait_idle,
        wait_logged,
        write_config,
    )

    mode = ERAS[era][0]
    result = EraResult(paths={path: PathResult() for path in sections})
    tool = f"{upstream.name}__echo"
    names = list(sections)
    blocks = max(1, calls // BLOCK)
    for r in range(rounds):
        # A fresh bridge per path and round: a process's own luck (where its memory lies, which core it shares with
        # whom) can weigh on all of its calls, so it is drawn anew each round, as bench/peers.py does.
        async with AsyncExitStack() as stack:
            clients: dict[str, Any] = {}
            pids: dict[str, int] = {}
            for i, (path, section) in enumerate(sections.items()):
                extra: dict[str, Any] = {}
                if section is not None:
                    extra["telemetry"] = section
                config = write_config(work / f"{era}-{i}.yaml", [upstream], **extra)
                before = set(own_children())
                t0 = time.perf_counter()
                clients[path] = await stack.enter_async_context(
                    bridge_client_in(
                        config, work / f"home-{era}-{i}-{r}", work / f"bridge-{era}-{i}-{r}.stderr.log", mode
                    )
                )
                await call_echo(clients[path].session, tool, "first")
                result.paths[path].first_call_ms.append(ms(time.perf_counter() - t0))
                (pids[path],) = set(own_children()) - before
                if clients[path].protocol_version != era:
                    raise RuntimeError(f"{path} connected at {clients[path].protocol_version}, not {era}")
                await timed_calls(clients[path].session, tool, WARMUP_CALLS, upstream.name)
            for i, pid in enumerate(pids.values()):
                # A bridge collects and freezes its start's heap a moment after it settles (serve.heap_frozen): before
                # it, a full collection of 20-80 ms fell on one path's calls. Each is then quiet before the round.
                await wait_logged(work / f"bridge-{era}-{i}-{r}.stderr.log", "serve.heap_frozen")
                await wait_idle(pid, window=0.3, busy=0.02)
            # The paths take turns every BLOCK calls (in an order that rotates), so that a drift of the machine's
            # speed within a round (other processes, frequency) falls on every path alike.
            samples: dict[str, list[float]] = {path: [] for path in names}
            # A bridge's CPU over the whole round: its export threads work when they will, in other paths' turns too
            # (the others are idle then but for their own threads). The server's, in each path's turns.
            bridge_cpu = {path: -tree_cpu(pids[path]) for path in names}
            server_cpu: dict[str, list[float]] = {path: [] for path in names}
            for b in range(blocks):
                turn = (r + b) % len(names)
                for path in names[turn:] + names[:turn]:
                    n = calls // blocks + (1 if b < calls % blocks else 0)
                    server0 = tree_cpu(upstream.proc.pid)
                    samples[path] += await timed_calls(clients[path].session, tool, n, upstream.name)
                    server_cpu[path].append((tree_cpu(upstream.proc.pid) - server0) / n)
            for path in names:
                bridge_cpu[path] += tree_cpu(pids[path])
            for path in names:
                res = result.paths[path]
                res.bridge_cpu.append(ms(bridge_cpu[path]) / calls)
                res.server_cpu.append(ms(percentile(server_cpu[path], 50)))
                res.p50.append(ms(percentile(samples[path], 50)))
                res.p90.append(ms(percentile(samples[path], 90)))
                print(
                    f"  {era} round {r + 1}/{rounds} {path:24}: p50 {res.p50[-1]:.3f} ms  p90 {res.p90[-1]:.3f} ms",
                    file=sys.stderr,
                )
    return result


async def hooks_in_process(endpoint: str, calls: int, rounds: int) -> dict[str, list[float]]:
    """What the hooks of one call cost the event loop, in this process: the IDE request's middleware around a
    request to a server (its span, ``_meta`` injection, the HTTP header from the body) and the audit event's end, with
    the no-op hooks and with the live ones exporting to ``endpoint``; p50 of the event loop thread's CPU time per
    call (``time.thread_time``), per round. Calls are 1 ms apart, as calls are in practice, so the export threads
    work between them as they do in the bridge (their CPU is in the end-to-end table's bridge CPU)."""
    from types import SimpleNamespace

    import anyio
    import mcp_types as types

    from common import percentile
    from mcp_bridge import telemetry
    from mcp_bridge.config import Settings

    settings = Settings.model_validate({"telemetry": {"enabled": True, "endpoint": endpoint}})
    request = types.CallToolRequest(params=types.CallToolRequestParams(name="echo", arguments={"text": "x"}))
    ide_meta = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    ctx = SimpleNamespace(
        request_id=1, method="tools/call", params={"name": "local__echo"}, protocol_version="2026-07-28", meta=ide_meta
    )

    async def one(hooks: telemetry.Hooks) -> float:
        event = SimpleNamespace(
            kind="call", server="local", tool="echo", exposed_name="local__echo", status="Completed",
            error_class=None, arguments=None, asked_at=0.0, replied_at=0.001,
        )  # fmt: skip

        async def call_next(ctx: Any) -> dict[str, Any]:
            with hooks.upstream("local", request, "2026-07-28", "http://127.0.0.1:1/mcp"):
                meta: dict[str, Any] = {}
                hooks.inject(meta)
                body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"_meta": meta}})
                headers = {"content-type": "application/json", "content-length": str(len(body))}
                hooks.headers(headers)  # the direct call's headers, written by the bridge (upstream/lean.py)
            hooks.finished(event)
            return {}

        middleware = hooks.front_middleware()
        t0 = time.thread_time()  # this thread's CPU: the export threads' work is not the call's, wake-ups neither
        await (call_next(ctx) if middleware is None else middleware(ctx, call_next))
        return time.thread_time() - t0

    results: dict[str, list[float]] = {"off": [], "on": []}
    live = telemetry.start(settings, version="bench")
    try:
        for _ in range(rounds):
            for path, hooks in (("off", telemetry.Hooks()), ("on", live)):
                samples = []
                for _ in range(calls):
                    samples.append(await one(hooks))
                    await anyio.sleep(0.001)
                results[path].append(percentile(samples, 50) * 1e6)
                print(f"  in process, {path:3}: p50 {results[path][-1]:.1f} µs", file=sys.stderr)
    finally:
        telemetry.stop()
    return results


def render(
    results: dict[str, EraResult],
    hooks: dict[str, list[float]],
    calls: int,
    rounds: int,
    started: dt.datetime,
    load_start: str,
    quiet: str,
    upstream: str,
) -> str:
    from common import WARMUP_CALLS, machine_line, markdown_table, med, percentile, spread, title_line, verdict

    rows = []
    verdicts = []
    for era, result in results.items():
        off = result.paths["off"]
        o50 = med(off.p50)

        def differences(values: list[float], offs: list[float]) -> list[float]:
            """µs: each round's value less off's in the same round (ms)."""
            return [(a - b) * 1000 for a, b in zip(values, offs, strict=True)]

        def paired(values: list[float], offs: list[float]) -> float:
            """µs: the median across rounds of :func:`differences`."""
            return med(differences(values, offs))

        for path, res in result.paths.items():
            p50, p90, cpu, server = med(res.p50), med(res.p90), med(res.bridge_cpu), med(res.server_cpu)
            # paired: the paths' turns interleave within a round, so a round's difference is free of the drift
            # between rounds (on this machine a round's p50 can move by 0.3 ms)
            over, over90 = paired(res.p50, off.p50), paired(res.p90, off.p90)
            rows.append(
                [
                    era,
                    path,
                    f"{p50:.3f}",
                    f"{p90:.3f}",
                    f"{p50 / o50:.3f}x",
                    "—" if path == "off" else f"{over:+.0f}",
                    f"{cpu:.3f}" + ("" if path == "off" else f" ({paired(res.bridge_cpu, off.bridge_cpu):+.0f} µs)"),
                    f"{server:.3f}" + ("" if path == "off" else f" ({paired(res.server_cpu, off.server_cpu):+.0f} µs)"),
                    f"{med(res.first_call_ms):.0f}",
                    spread(res.p50),
                ]
            )
            if path != "off":
                each = differences(res.p50, off.p50)
                quartiles = f"{percentile(each, 25):+.0f} to {percentile(each, 75):+.0f} µs" if len(each) >= 4 else ""
                verdicts.append(
                    f"- {era}, {path}: {over:+.0f} µs per call at p50 (p90 {over90:+.0f} µs"
                    + (f"; the rounds' middle half {quartiles}" if quartiles else "")
                    + f") — target ≤ {TARGET_OVERHEAD_US:g} µs {verdict(over <= TARGET_OVERHEAD_US)}"
                )
        share = result.share
        if share is not None:
            added, added_cpu = paired(share.traced_p50, share.plain_p50), paired(share.traced_cpu, share.plain_cpu)
            rows.append(
                [era, "server alone, without trace context", f"{med(share.plain_p50):.3f}", "", "", "", "",
                 f"{med(share.plain_cpu):.3f}", "", spread(share.plain_p50)]
            )  # fmt: skip
            rows.append(
                [era, "server alone, with trace context", f"{med(share.traced_p50):.3f}", "", "", f"{added:+.0f}", "",
                 f"{med(share.traced_cpu):.3f} ({added_cpu:+.0f} µs)", "", spread(share.traced_p50)]
            )  # fmt: skip
            line = (
                f"- {era}, an SDK server's own handling of the trace context, alone (no bridge: the same call posted "
                f"straight to an SDK server as shipped, with and without `_meta.traceparent` and the header): "
                f"{added:+.0f} µs at p50, its CPU {added_cpu:+.0f} µs a call"
            )
            if "on" in result.paths:
                on_over = paired(result.paths["on"].p50, off.p50)
                if upstream == "untraced":
                    line += (
                        f"; end to end through the bridge to such a server, `on` and that: {on_over + added:+.0f} µs"
                    )
                else:
                    line += f"; `on` less that: the bridge's own {on_over - added:+.0f} µs"
            verdicts.append(line)
    alone = "an SDK server as shipped (a second upstream)" if upstream == "untraced" else "the same upstream"
    lines = [
        title_line(started, "telemetry on and off (`bench/telemetry.py`)"),
        "",
        machine_line(load_start) + (f"; {quiet}" if quiet else ""),
        "- per era: an SDK client in that era's mode, one local upstream that speaks only that era "
        f"({UPSTREAMS[upstream]}); {calls} "
        f"sequential `echo` calls per path per round, the paths taking turns every {BLOCK} calls (the order "
        f"rotating), {rounds} rounds, {WARMUP_CALLS} "
        "warm-up calls per path, a fresh bridge per path and round; values are medians across rounds of each round's "
        "p50/p90; a path's overhead is the "
        "median across rounds of its p50 less off's in the same round",
        "- off = no `telemetry`; on = `telemetry: {enabled: true, endpoint}` to a local collector that answers 200; "
        "not propagated = on with `propagate: false` (no trace context to the server); "
        "refused = nothing listens at the endpoint; silent = it accepts and never answers. Spans and measurements are "
        "queued by the call and exported by the bridge's daemon threads (spans every 5 s or per 2,048), metrics "
        "every 60 s",
        "- CPU µs/call: the bridge process over the whole round (its export threads included), and the upstream "
        "server's in the path's turns (with telemetry on it gets trace context in `_meta` and a `traceparent` "
        "header) a call in a path's turn, the "
        f"median of its turns of {BLOCK} calls (a garbage collection falls on one turn), from the threads' "
        "`/proc/<pid>/task/*/schedstat` (nanoseconds); medians across rounds; first "
        "call: spawn → the first `echo` answered, median across rounds",
        f"- server alone: after the paths, {alone} answers the same `echo` posted straight to it over two "
        f"keep-alive connections (`http.client`, no SDK client), one without trace context and one with it as the "
        f"bridge sends it, taking turns every {BLOCK} calls; {calls} calls each per round",
        "",
    ]
    table = markdown_table(
        [
            "era",
            "path",
            "p50 ms",
            "p90 ms",
            "p50 / off",
            "p50 over off µs",
            "bridge CPU ms/call",
            "server CPU ms/call",
            "first call ms",
            "notes",
        ],
        rows,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    )
    hooks_off, hooks_on = med(hooks["off"]), med(hooks["on"])
    verdicts.append(
        f"- in process, the event loop's CPU for the hooks of one call (a span for the IDE's request and one for the "
        f"server's, `_meta` and header, the audit's end, whose measurements the export thread derives from the spans; "
        f"the body and headers built, as the direct call does): {hooks_off:.1f} µs with telemetry off, "
        f"{hooks_on:.1f} µs on, **{hooks_on - hooks_off:+.1f} µs** (p50 of {calls} calls 1 ms apart, median of "
        f"{rounds} rounds; off: "
        f"{spread(hooks['off'], '.1f')}; on: {spread(hooks['on'], '.1f')}) — target ≤ {TARGET_OVERHEAD_US:g} µs "
        f"{verdict(hooks_on - hooks_off <= TARGET_OVERHEAD_US)}"
    )
    return "\n".join([*lines, *table, "", *verdicts]) + "\n"


def main() -> int:
    side = argparse.ArgumentParser(add_help=False)
    side.add_argument("--collector", type=int, metavar="PORT", help=argparse.SUPPRESS)
    side.add_argument("--silent", type=int, metavar="PORT", help=argparse.SUPPRESS)
    known, _ = side.parse_known_args()
    if known.collector:
        return collector_main(known.collector)
    if known.silent:
        return silent_main(known.silent)

    import subprocess

    import anyio

    from common import (
        ERAS,
        Processes,
        add_common_args,
        append_results,
        free_port,
        install_signal_handlers,
        kill_group,
        load_average,
        parse_eras,
        quiet_note,
        wait_port,
        workdir,
    )

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0], parents=[side])
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per path per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, rotating the path order (default 3)")
    parser.add_argument("--eras", default="2026-07-28,2025-11-25", help="protocol eras (default both)")
    parser.add_argument(
        "--paths",
        default=",".join(list(PATHS)[1:]),
        help=f"paths besides off (always run), comma-separated (default all: {','.join(list(PATHS)[1:])})",
    )
    parser.add_argument(
        "--upstream",
        choices=("untraced", "sdk"),
        default="untraced",
        help="the paths' upstream: an SDK server without its OpenTelemetry middleware (default: it passes trace "
        "context over), or as shipped (it reads the context and opens a span of its own)",
    )
    add_common_args(parser)
    args = parser.parse_args()
    try:
        eras = parse_eras(args.eras)
    except ValueError as exc:
        parser.error(f"--eras: {exc}")
    keys = ["off", *(p.strip() for p in args.paths.split(",") if p.strip() and p.strip() != "off")]
    if unknown := [p for p in keys if p not in PATHS]:
        parser.error(f"--paths: unknown {', '.join(unknown)} (known: {', '.join(PATHS)})")
    wanted = {PATHS[p] for p in keys}
    install_signal_handlers()
    quiet = quiet_note(args)
    started = dt.datetime.now(dt.UTC)
    load_start = load_average()
    t_start = time.perf_counter()
    results: dict[str, EraResult] = {}
    with workdir(args.keep) as work:
        procs = Processes(work)
        sides: list[subprocess.Popen[bytes]] = []
        try:
            collector, silent = free_port(), free_port()
            for flag, port in (("--collector", collector), ("--silent", silent)):
                proc = subprocess.Popen([sys.executable, __file__, flag, str(port)], start_new_session=True)
                sides.append(proc)
                wait_port(port, proc)
            live = f"http://127.0.0.1:{collector}"
            sections: dict[str, dict[str, Any] | None] = {
                "off": None,
                "on": {"enabled": True, "endpoint": live},
                "on, not propagated": {"enabled": True, "endpoint": live, "propagate": False},
                "on, collector refused": {"enabled": True, "endpoint": f"http://127.0.0.1:{free_port()}"},
                "on, collector silent": {"enabled": True, "endpoint": f"http://127.0.0.1:{silent}"},
            }
            sections = {path: section for path, section in sections.items() if path in wanted}
            untraced = args.upstream == "untraced"
            for era in eras:
                era_flag = ["--era", ERAS[era][1]]
                (local,) = procs.start_upstreams([f"local{era[:4]}"], era_flag + (["--untraced"] if untraced else []))
                results[era] = anyio.run(run_era, era, local, work, args.calls, args.rounds, sections)
                # the server alone is an SDK server as shipped: what its own handling of the trace context costs
                (shipped,) = procs.start_upstreams([f"sdk{era[:4]}"], era_flag) if untraced else (local,)
                results[era].share = server_share(era, shipped, args.calls, args.rounds)
            hooks = anyio.run(hooks_in_process, f"http://127.0.0.1:{collector}", args.calls, args.rounds)
        except KeyboardInterrupt:
            print("interrupted; cleaning up", file=sys.stderr)
            return 130
        finally:
            procs.kill_all()
            for proc in sides:
                kill_group(proc.pid)
                proc.wait(5)
    table = render(results, hooks, args.calls, args.rounds, started, load_start, quiet, args.upstream)
    append_results(table, not args.no_write)
    print(f"total runtime {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
