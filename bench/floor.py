"""The floor of any stdio → streamable-HTTP relay in Python (a benchmark, not a test: nothing here is asserted).

Run from the repository root::

    .venv/bin/python bench/floor.py [--calls 1000] [--rounds 3] [--impls socket,httpclient,asyncio] [--no-write]

Issue 16's target is a bridge p50 per call of at most 1.2× a direct SDK client of the same era. This measures how
close a relay that does nothing but relay can get, in the 2026-07-28 era (``common.ERAS``: an SDK client in its
default ``auto`` mode, ``server/discover`` first, and an upstream that speaks only 2026-07-28), with the bridge's
topology: the SDK client → a subprocess over stdio → HTTP POST → a local SDK server
(``mcp_bridge.sandbox.localservers``). Per-call latency of the same ``echo`` call as ``bench/latency.py``, on:

* direct: the SDK client straight to the upstream over streamable HTTP;
* relay (one path per ``--impls`` entry): the SDK client over stdio to this file run as ``python bench/floor.py
  --relay URL --relay-impl IMPL``, a relay on the standard library alone. It reads newline-delimited JSON-RPC from
  stdin and, one message at a time, POSTs each line unchanged over one persistent keep-alive HTTP/1.1 connection
  (reopened if the server closed it), with the headers the 2026-07-28 era needs (``Content-Type``, ``Accept``,
  ``MCP-Protocol-Version`` from ``params._meta``, ``Mcp-Method``, ``Mcp-Name``); it writes the JSON body back as one
  line (from a ``text/event-stream`` answer, each ``data:`` message). Implementations: ``socket`` (blocking socket,
  hand-written HTTP/1.1), ``httpclient`` (blocking ``http.client``), ``asyncio`` (asyncio streams, hand-written
  HTTP/1.1). It knows no tool schemas, so it sends no ``Mcp-Param-*`` headers (``echo`` declares none);
* bridge: ``python -m mcp_bridge serve`` with that one upstream, as ``bench/latency.py`` runs it.

Per path: connect (``server/discover``), 20 warm-up calls, then ``--calls`` sequential calls per round, each answer
checked; the path order rotates every round. Values are medians across rounds of each round's p50/p90, ratios are
those medians over direct's; CPU per call is each process's user + system time over a round (Linux ``/proc``) divided
by the calls, median across rounds. It prints one markdown table and appends it to ``bench/RESULTS.md``. Every
subprocess is killed at the end, even on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import http.client
import json
import os
import re
import socket
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common import Upstream

# The benchmark's helpers (``bench/common.py``: the SDK, anyio, yaml) are imported where the benchmark runs, not at
# the top: the relay subprocess runs on the standard library alone.

ERA = "2026-07-28"
TARGET_RATIO_P50 = 1.2
IMPLS = ("socket", "httpclient", "asyncio")

# ---------------------------------------------------------------------------------------------- the relay

PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"
NAME_BEARING_METHODS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_HEADER_SAFE = re.compile(r"[\x20-\x7E]*")
_B64_SENTINEL = re.compile(r"=\?base64\?.*\?=")
ACCEPT = "application/json, text/event-stream"


def encode_header_value(value: str) -> str:
    """As the SDK client encodes ``Mcp-Name``: verbatim if printable ASCII, else in the ``=?base64?…?=`` sentinel."""
    if _HEADER_SAFE.fullmatch(value) and value == value.strip() and not _B64_SENTINEL.fullmatch(value):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode('ascii')}?="


@dataclass
class Routing:
    """The per-message HTTP headers of the 2026-07-28 era; the protocol version last seen is reused on the messages
    that carry none (responses to the server, notifications), as the SDK's transport does."""

    version: str | None = None

    def headers(self, message: dict[str, Any]) -> dict[str, str]:
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        meta = params.get("_meta")
        version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
        if isinstance(version, str) and _HEADER_SAFE.fullmatch(version):
            self.version = version
        headers = {"mcp-protocol-version": self.version} if self.version else {}
        method = message.get("method")
        if isinstance(method, str) and "id" in message:  # requests only, as the SDK stamps them
            if _HEADER_SAFE.fullmatch(method):
                headers["mcp-method"] = method
            name_key = NAME_BEARING_METHODS.get(method)
            if name_key and isinstance(name := params.get(name_key), str):
                headers["mcp-name"] = encode_header_value(name)
        return headers


def compact(data: bytes) -> bytes:
    """One JSON message on one line."""
    if b"\n" not in data and b"\r" not in data:
        return data
    return json.dumps(json.loads(data), separators=(",", ":")).encode()


def sse_data(body: bytes) -> Iterator[bytes]:
    """The ``data`` of each event of a ``text/event-stream`` body (events without data, like priming ones, skipped)."""
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        data = b"\n".join(lines)
        if data.strip():
            yield data


def replies(message: dict[str, Any], status: int, content_type: str, body: bytes) -> list[bytes]:
    """The lines to write back for one POST's answer. A request always gets one answer: if the server gave none
    (202, an empty or non-JSON body), a JSON-RPC error stands in, as the SDK's transport does."""
    is_request = "id" in message and "method" in message
    out: list[bytes] = []
    if content_type.startswith("text/event-stream"):
        out = [compact(data) for data in sse_data(body)]
    elif body.strip() and content_type.startswith("application/json"):
        if status < 400:
            out = [compact(body)]
        elif is_request:  # an error at a non-2xx status: keep it, under this request's id
            try:
                error = json.loads(body).get("error")
            except (ValueError, AttributeError):
                error = None
            if isinstance(error, dict):
                out = [json.dumps({"jsonrpc": "2.0", "id": message["id"], "error": error}).encode()]
    if not is_request:  # only what the server itself says (requests, notifications): never an answer to nothing
        return [line for line in out if b'"method"' in line]
    if not out:
        error = {"code": -32603, "message": f"upstream answered HTTP {status} ({content_type or 'no body'})"}
        out = [json.dumps({"jsonrpc": "2.0", "id": message["id"], "error": error}).encode()]
    return out


def parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(None, 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


def request_bytes(path: str, host: str, line: bytes, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: {ACCEPT}\r\n"
        f"{extra}Content-Length: {len(line)}\r\n\r\n"
    ).encode("latin-1") + line


def no_body(status: int) -> bool:
    return status < 200 or status in (204, 304)


@dataclass
class Target:
    host: str
    port: int
    path: str

    @classmethod
    def of(cls, url: str) -> Target:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the relay speaks plain http only: {url}")
        return cls(parts.hostname, parts.port or 80, parts.path or "/")

    @property
    def host_header(self) -> str:
        return f"{self.host}:{self.port}"


class Output:
    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def write(self, lines: list[bytes]) -> None:
        if lines:
            self.stream.write(b"".join(line + b"\n" for line in lines))
            self.stream.flush()


def messages(stdin: IO[bytes]) -> Iterator[tuple[bytes, dict[str, Any]]]:
    for raw in stdin:
        line = raw.strip()
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError:
            print(f"relay: not JSON, dropped: {line[:200]!r}", file=sys.stderr)
            continue
        if isinstance(message, dict):
            yield line, message


class SocketConnection:
    """One blocking keep-alive HTTP/1.1 connection, hand-written."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.sock: socket.socket | None = None
        self.rfile: IO[bytes] | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = self.rfile = None

    def exchange(self, request: bytes) -> tuple[int, str, bytes]:
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile: once more on a new one
            fresh = self.sock is None
            if self.sock is None:
                self.sock = socket.create_connection((self.target.host, self.target.port))
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.rfile = self.sock.makefile("rb")
            assert self.rfile is not None
            try:
                self.sock.sendall(request)
                status_line = self.rfile.readline()
                if not status_line:
                    raise ConnectionResetError("connection closed before the answer")
                return self.read_answer(status_line)
            except OSError:
                self.close()
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def read_answer(self, status_line: bytes) -> tuple[int, str, bytes]:
        assert self.rfile is not None
        rfile = self.rfile
        head = [status_line.rstrip(b"\r\n")]
        while (line := rfile.readline()) not in (b"\r\n", b"\n", b""):
            head.append(line.rstrip(b"\r\n"))
        status, headers = parse_head(b"\r\n".join(head))
        if no_body(status):
            body = b""
        elif b"content-length" in headers:
            body = rfile.read(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while size := int(rfile.readline().split(b";")[0], 16):
                parts.append(rfile.read(size))
                rfile.readline()
            while rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            body = b"".join(parts)
        else:
            body = rfile.read()
            headers[b"connection"] = b"close"
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, headers.get(b"content-type", b"").decode("latin-1").lower(), body


def relay_socket(target: Target) -> None:
    conn, routing, out = SocketConnection(target), Routing(), Output(sys.stdout.buffer)
    for line, message in messages(sys.stdin.buffer):
        request = request_bytes(target.path, target.host_header, line, routing.headers(message))
        out.write(replies(message, *conn.exchange(request)))
    conn.close()


def relay_httpclient(target: Target) -> None:
    conn, routing, out = http.client.HTTPConnection(target.host, target.port), Routing(), Output(sys.stdout.buffer)
    base = {"Content-Type": "application/json", "Accept": ACCEPT}
    for line, message in messages(sys.stdin.buffer):
        headers = base | routing.headers(message)
        for attempt in (1, 2):
            fresh = conn.sock is None
            try:
                conn.request("POST", target.path, body=line, headers=headers)
                response = conn.getresponse()
                body = response.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                if fresh or attempt == 2:
                    raise
        content_type = (response.getheader("content-type") or "").lower()
        out.write(replies(message, response.status, content_type, body))
    conn.close()


async def relay_asyncio_main(target: Target) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin.buffer)
    routing, out = Routing(), Output(sys.stdout.buffer)
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def exchange(request: bytes) -> tuple[int, str, bytes]:
        nonlocal conn
        for attempt in (1, 2):
            fresh = conn is None
            if conn is None:
                conn = await asyncio.open_connection(target.host, target.port, limit=1 << 26)
            reader, writer = conn
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status, headers = parse_head(head[:-4])
                if no_body(status):
                    body = b""
                elif b"content-length" in headers:
                    body = await reader.readexactly(int(headers[b"content-length"]))
                elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    parts = []
                    while size := int((await reader.readline()).split(b";")[0], 16):
                        parts.append(await reader.readexactly(size))
                        await reader.readline()
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    body = b"".join(parts)
                else:
                    body = await reader.read()
                    headers[b"connection"] = b"close"
                if headers.get(b"connection", b"").lower() == b"close":
                    writer.close()
                    conn = None
                return status, headers.get(b"content-type", b"").decode("latin-1").lower(), body
            except (OSError, asyncio.IncompleteReadError):
                writer.close()
                conn = None
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    while raw := await stdin.readline():
        line = raw.strip()
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            request = request_bytes(target.path, target.host_header, line, routing.headers(message))
            out.write(replies(message, *await exchange(request)))
    if conn is not None:
        conn[1].close()


def relay_main(url: str, impl: str) -> int:
    target = Target.of(url)
    try:
        if impl == "socket":
            relay_socket(target)
        elif impl == "httpclient":
            relay_httpclient(target)
        else:
            asyncio.run(relay_asyncio_main(target))
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    return 0


def relay_command(url: str, impl: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--relay", url, "--relay-impl", impl]


# ---------------------------------------------------------------------------------------------- the benchmark


@dataclass
class PathResult:
    p50: list[float] = field(default_factory=list)
    p90: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    """The benchmark process's CPU (the SDK client) per call, ms."""
    middle_cpu: list[float] = field(default_factory=list)
    """The relay's or the bridge's CPU per call, ms (none for direct)."""
    upstream_cpu: list[float] = field(default_factory=list)


@dataclass
class FloorResult:
    calls: int
    rounds: int
    paths: dict[str, PathResult] = field(default_factory=dict)


def tree_cpu(pid: int) -> float:
    from common import cpu_seconds, process_tree

    return sum(cpu_seconds(p) for p in process_tree(pid))


async def run_floor(upstream: Upstream, work: Path, calls: int, rounds: int, impls: list[str]) -> FloorResult:
    from contextlib import AsyncExitStack

    from common import (
        ERAS,
        WARMUP_CALLS,
        bridge_client_in,
        direct_client,
        list_tool_names,
        ms,
        own_children,
        percentile,
        stdio_client_in,
        timed_calls,
        write_config,
    )

    mode = ERAS[ERA][0]
    config = write_config(work / "floor.yaml", [upstream])
    result = FloorResult(calls, rounds)
    async with AsyncExitStack() as stack:
        clients = {"direct": await stack.enter_async_context(direct_client(upstream.url, mode))}
        pids: dict[str, int] = {}
        spawns = {
            f"relay ({impl})": stdio_client_in(
                relay_command(upstream.url, impl), dict(os.environ), work, work / f"relay-{impl}.stderr.log", mode
            )
            for impl in impls
        }
        spawns["bridge"] = bridge_client_in(config, work / "bridge-home", work / "bridge.stderr.log", mode)
        for path, spawn in spawns.items():
            before = set(own_children())
            clients[path] = await stack.enter_async_context(spawn)
            (pids[path],) = set(own_children()) - before
        tools = {path: "echo" for path in clients} | {"bridge": f"{upstream.name}__echo"}
        for path, client in clients.items():
            if client.protocol_version != ERA:
                raise RuntimeError(f"{path} connected at {client.protocol_version}, not {ERA}")
            if tools[path] not in await list_tool_names(client.session):
                raise RuntimeError(f"{path} does not list {tools[path]}")
            await timed_calls(client.session, tools[path], WARMUP_CALLS, upstream.name)
        names = list(clients)
        for r in range(rounds):
            for path in names[r % len(names) :] + names[: r % len(names)]:
                res = result.paths.setdefault(path, PathResult())
                pid = pids.get(path)
                cpu0 = (time.process_time(), tree_cpu(pid) if pid else 0.0, tree_cpu(upstream.proc.pid))
                samples = await timed_calls(clients[path].session, tools[path], calls, upstream.name)
                cpu1 = (time.process_time(), tree_cpu(pid) if pid else 0.0, tree_cpu(upstream.proc.pid))
                res.p50.append(ms(percentile(samples, 50)))
                res.p90.append(ms(percentile(samples, 90)))
                res.client_cpu.append(ms(cpu1[0] - cpu0[0]) / calls)
                if pid:
                    res.middle_cpu.append(ms(cpu1[1] - cpu0[1]) / calls)
                res.upstream_cpu.append(ms(cpu1[2] - cpu0[2]) / calls)
                print(
                    f"  round {r + 1}/{rounds} {path:18}: p50 {res.p50[-1]:.3f} ms  p90 {res.p90[-1]:.3f} ms",
                    file=sys.stderr,
                )
    return result


def render(result: FloorResult, started: dt.datetime, load_start: str, quiet: str) -> str:
    from common import WARMUP_CALLS, machine_line, markdown_table, med, spread, title_line, verdict

    direct = result.paths["direct"]
    d50, d90 = med(direct.p50), med(direct.p90)
    rows = []
    for path, res in result.paths.items():
        p50, p90 = med(res.p50), med(res.p90)
        middle = f"{med(res.middle_cpu):.3f}" if res.middle_cpu else "—"
        rows.append(
            [
                path,
                f"{p50:.3f}",
                f"{p90:.3f}",
                f"{p50 / d50:.2f}x",
                f"{p90 / d90:.2f}x",
                f"{med(res.client_cpu):.3f} / {middle} / {med(res.upstream_cpu):.3f}",
                spread(res.p50),
            ]
        )
    relays = [p for p in result.paths if p.startswith("relay")]
    floor_path = min(relays, key=lambda p: med(result.paths[p].p50))  # the fastest relay of this run
    lines = [
        title_line(started, "relay floor (`bench/floor.py`)"),
        "",
        machine_line(load_start) + (f"; {quiet}" if quiet else ""),
        f"- era {ERA}: an SDK client in `auto` mode, one local upstream that speaks only {ERA}; {result.calls} "
        f"sequential `echo` calls per path per round, {result.rounds} rounds rotating the path order, {WARMUP_CALLS} "
        "warm-up calls per path; values are medians across rounds of each round's p50/p90",
        "- direct = the SDK client over streamable HTTP; relay (IMPL) = the SDK client over stdio to a relay on the "
        "standard library alone that POSTs each line unchanged over one keep-alive HTTP/1.1 connection with the "
        "era's headers (`socket`: blocking socket, hand-written HTTP; `httpclient`: blocking `http.client`; "
        "`asyncio`: asyncio streams, hand-written HTTP); bridge = `mcp-bridge serve` with that upstream",
        "- CPU ms per call: the benchmark process (the SDK client) / the relay or bridge process / the upstream, "
        "median across rounds",
        "",
    ]
    table = markdown_table(
        [
            "path",
            "p50 ms",
            "p90 ms",
            "p50 / direct",
            "p90 / direct",
            "CPU ms/call: client / middle / upstream",
            "notes",
        ],
        rows,
        "|---|---:|---:|---:|---:|---:|---|",
    )
    f50 = med(result.paths[floor_path].p50)
    b50 = med(result.paths["bridge"].p50)
    floor_ok = f50 / d50 <= TARGET_RATIO_P50
    bridge_ok = b50 / d50 <= TARGET_RATIO_P50
    verdicts = [
        "",
        f"- relay floor (the fastest relay, {floor_path}) p50 / direct p50: **{f50 / d50:.2f}x** — a stdio relay "
        f"that does nothing but relay: target ≤ {TARGET_RATIO_P50:g}x {verdict(floor_ok)}",
        f"- bridge p50 / direct p50: {b50 / d50:.2f}x — target ≤ {TARGET_RATIO_P50:g}x {verdict(bridge_ok)}; bridge "
        f"over the relay floor: {b50 / f50:.2f}x (+{b50 - f50:.3f} ms per call)",
    ]
    return "\n".join(lines + table + verdicts) + "\n"


def main() -> int:
    relay_args = argparse.ArgumentParser(add_help=False)
    relay_args.add_argument("--relay", metavar="URL", help=argparse.SUPPRESS)  # run as the relay subprocess
    relay_args.add_argument("--relay-impl", choices=IMPLS, default=IMPLS[0], help=argparse.SUPPRESS)
    known, _ = relay_args.parse_known_args()
    if known.relay:  # before importing the benchmark's helpers: the relay runs on the standard library alone
        return relay_main(known.relay, known.relay_impl)

    import anyio

    from common import (
        ERAS,
        Processes,
        add_common_args,
        append_results,
        install_signal_handlers,
        load_average,
        quiet_note,
        workdir,
    )

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0], parents=[relay_args])
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per path per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, rotating the path order (default 3)")
    parser.add_argument(
        "--impls", default=",".join(IMPLS), help=f"relay implementations to measure (default {','.join(IMPLS)})"
    )
    add_common_args(parser)
    args = parser.parse_args()
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    if not impls or any(i not in IMPLS for i in impls):
        parser.error(f"--impls: choose among {', '.join(IMPLS)}")
    if args.calls < 1 or args.rounds < 1:
        parser.error("--calls and --rounds must be at least 1")
    install_signal_handlers()
    quiet = quiet_note(args)
    started = dt.datetime.now(dt.UTC)
    load_start = load_average()
    t_start = time.perf_counter()
    with workdir(args.keep) as work:
        procs = Processes(work)
        try:
            (local,) = procs.start_upstreams(["local"], ["--era", ERAS[ERA][1]])
            result = anyio.run(run_floor, local, work, args.calls, args.rounds, impls)
        except KeyboardInterrupt:
            print("interrupted; cleaning up", file=sys.stderr)
            return 130
        finally:
            procs.kill_all()
    append_results(render(result, started, load_start, quiet), not args.no_write)
    print(f"total runtime {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
