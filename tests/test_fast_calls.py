"""The short way for a 2026-07-28 IDE's ordinary ``tools/call`` (``ide.fastpath``): the IDE sees on stdout exactly
what the SDK's way gives (``MCP_BRIDGE_FAST_CALLS=0``), line for line: results, errors, ``isError``, a server's
``_meta``, progress; what is unusual (an unknown field, a retry's ``requestState`` or ``inputResponses``, another
envelope, malformed arguments, a ``_meta`` key of the IDE's own) goes the SDK's way; the IDE's
``notifications/cancelled`` cancels the call upstream and it is never answered; the calls are audited. Raw pipes to a
bridge subprocess, a local server on 127.0.0.1 that speaks only 2026-07-28. (Servers' log messages on the short way:
``test_inputs.py``; input rounds and confirmation: ``test_inputs.py`` and ``test_governance_surface.py``, whose
2026-07-28 IDEs take it from their second call.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from harness import LocalUpstream, audit_jsonl, bridge_client, bridge_process, is_modern, raw_call, write_config

pytestmark = pytest.mark.anyio

_ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "raw-ide", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_OTHER = {"io.modelcontextprotocol/clientInfo": {"name": "x", "version": "1"}}


def _call(request_id: int, name: str, arguments: Any = None, /, **extra: Any) -> dict[str, Any]:
    meta = {**_ENVELOPE, **extra.pop("meta", {})}
    params: dict[str, Any] = {"name": name, "_meta": meta, **extra}
    if arguments is not None:
        params["arguments"] = arguments
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


_SCRIPT: list[dict[str, Any]] = [
    {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": _ENVELOPE}},
    _call(2, "alpha__echo", {"text": "hi"}),
    _call(3, "alpha__nope", {}),
    _call(4, "alpha__fail", {"message": "why"}),
    _call(5, "alpha__meta", {}),
    _call(6, "alpha__slow", {"steps": 2, "delay": 0.01}, meta={"progressToken": "p6"}),
    _call(7, "alpha__echo", {"text": "leveled"}, meta={"io.modelcontextprotocol/logLevel": "debug"}),
    _call(8, "alpha__echo"),  # no arguments at all
    # the SDK's way: an unknown field, a server's requestState, another envelope, malformed arguments
    _call(9, "alpha__echo", {"text": "extra"}, extra=1),
    _call(10, "alpha__echo", {"text": "state"}, requestState="the-server's-own"),
    _call(11, "alpha__echo", {"text": "other"}, meta=_OTHER),
    _call(12, "alpha__echo", "not an object"),
    _call(13, "alpha__echo", {"text": "back"}, meta=_OTHER),
    _call(14, "alpha__echo", {"text": "answers"}, inputResponses={}),
    _call(15, "alpha__echo", {"text": "odd meta"}, meta={"example.com/trace": "t1"}),
    # the short way again: a traced IDE's W3C trace context (forwarded to the server, as the SDK's way does)
    _call(16, "alpha__meta", {}, meta={"traceparent": _TRACEPARENT, "tracestate": "k=v"}),
]
_FAST = 8
"""Calls of the script that take the short way: 2-8 and 16 (not 13: the SDK accepted its envelope with 11, but then
the original one again with 12)."""


@pytest.fixture
def alpha(tmp_path: Path) -> Iterator[LocalUpstream]:
    upstream = LocalUpstream("alpha", tmp_path, era="modern").start()
    try:
        yield upstream
    finally:
        upstream.kill()


async def _exchange(proc: Any, message: dict[str, Any], buffer: list[bytes]) -> list[dict[str, Any]]:
    """Send one request; every line up to and including its answer (notifications before it included)."""
    await proc.stdin.send((json.dumps(message) + "\n").encode())
    lines: list[dict[str, Any]] = []
    with anyio.fail_after(30):
        while True:
            while b"\n" not in buffer[0]:
                buffer[0] += await proc.stdout.receive()
            line, _, buffer[0] = buffer[0].partition(b"\n")
            got = json.loads(line)
            lines.append(got)
            if got.get("id") == message["id"] and "method" not in got:
                return lines


def _transcript_config(tmp_path: Path, alpha: LocalUpstream, name: str) -> Path:
    return write_config(
        tmp_path / f"{name}.yaml",
        {"alpha": alpha.server_config()},
        audit={"jsonl": str(tmp_path / f"{name}-audit.jsonl")},
    )


async def _transcript(tmp_path: Path, alpha: LocalUpstream, name: str, env: dict[str, str]) -> tuple[list[Any], str]:
    config = _transcript_config(tmp_path, alpha, name)
    stderr_path = tmp_path / f"{name}.stderr.log"
    out: list[Any] = []
    async with bridge_process(config, tmp_path / f"home-{name}", stderr_path, env=env) as proc:
        buffer = [b""]
        for message in _SCRIPT:
            out.append(await _exchange(proc, message, buffer))
        await proc.stdin.aclose()
        with anyio.fail_after(15):
            assert await proc.wait() == 0
    return out, stderr_path.read_text()


def _served(stderr: str) -> int:
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return sum(e["served"] for e in events if e.get("event") == "front.fast_calls")


async def test_the_short_way_answers_as_the_sdks_way_line_for_line(tmp_path: Path, alpha: LocalUpstream) -> None:
    fast, fast_log = await _transcript(tmp_path, alpha, "fast", {})
    sdk, sdk_log = await _transcript(tmp_path, alpha, "sdk", {"MCP_BRIDGE_FAST_CALLS": "0"})
    assert fast == sdk
    assert _served(fast_log) == _FAST and "front.fast_calls" not in sdk_log
    by_id = {lines[-1]["id"]: lines for lines in fast}
    assert by_id[2][-1]["result"]["content"][0]["text"] == "alpha: hi"
    assert by_id[2][-1]["result"]["resultType"] == "complete"
    assert by_id[3][-1]["error"]["code"] == -32602
    assert by_id[4][-1]["result"]["isError"] is True
    assert by_id[5][-1]["result"]["_meta"]["example.com/origin"] == "alpha"
    progress = [m["params"] for m in by_id[6] if m.get("method") == "notifications/progress"]
    assert [p["progress"] for p in progress] == [1, 2] and {p["progressToken"] for p in progress} == {"p6"}
    assert by_id[12][-1]["error"]["code"] == -32602
    assert by_id[16][-1]["result"]["_meta"]["example.com/traceparent"] == _TRACEPARENT
    audited = {  # every call audited, the same way
        name: [
            (e["exposed_name"], e["status"], e["error_class"], e["arguments_digest"])
            for e in audit_jsonl(tmp_path / f"{name}-audit.jsonl", "call")
        ]
        for name in ("fast", "sdk")
    }
    assert audited["fast"] == audited["sdk"]
    assert len(audited["fast"]) >= len(_SCRIPT) - 2


async def test_the_ides_cancel_reaches_the_server_and_the_call_is_never_answered(
    tmp_path: Path, alpha: LocalUpstream
) -> None:
    config = _transcript_config(tmp_path, alpha, "cancel")
    stderr_path = tmp_path / "cancel.stderr.log"
    async with bridge_process(config, tmp_path / "home", stderr_path) as proc:
        buffer = [b""]
        await _exchange(proc, _SCRIPT[0], buffer)  # the list: the envelope is known from here on
        waiting = _call(20, "alpha__wait_forever", {})
        await proc.stdin.send((json.dumps(waiting) + "\n").encode())
        await anyio.sleep(0.5)  # (the call reaches the server; nothing waits on this sleep for an outcome)
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 20}}
        await proc.stdin.send((json.dumps(cancel) + "\n").encode())
        cancelled: list[str] = []
        with anyio.fail_after(30):
            while "wait_forever" not in cancelled:
                lines = await _exchange(proc, _call(21, "alpha__stats", {}), buffer)
                assert all(m.get("id") != 20 for m in lines)  # never answered
                cancelled = json.loads(lines[-1]["result"]["content"][0]["text"])["cancelled"]
        await proc.stdin.aclose()
        with anyio.fail_after(15):
            rest = b"".join([buffer[0], *[chunk async for chunk in proc.stdout]])
            assert await proc.wait() == 0
    assert all(json.loads(line).get("id") != 20 for line in rest.splitlines() if line.strip())
    assert _served(stderr_path.read_text()) >= 2
    events = audit_jsonl(tmp_path / "cancel-audit.jsonl", "call")
    assert any(e["tool"] == "wait_forever" and e["status"] == "Failed" and e["error"] == "cancelled" for e in events)


@pytest.mark.usefixtures("ide_mode")
async def test_an_sdk_ide_in_each_mode_gets_its_calls_answered_and_only_2026_07_28_takes_the_short_way(
    tmp_path: Path, alpha: LocalUpstream
) -> None:
    config = write_config(tmp_path / "config.yaml", {"alpha": alpha.server_config()})
    stderr_path = tmp_path / "stderr.log"
    steps: list[float] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        steps.append(value)

    async with bridge_client(config, tmp_path / "home", stderr_path=stderr_path) as client:
        modern = is_modern(client)
        for i in range(3):
            result = await raw_call(client, "alpha__echo", {"text": f"m{i}"})
            assert result["content"][0]["text"] == f"alpha: m{i}"
        slow = await raw_call(client, "alpha__slow", {"steps": 2, "delay": 0.01}, progress=progress)
        assert slow["content"][0]["text"] == "done after 2 steps"
        assert steps == [1.0, 2.0]
        with pytest.raises(MCPError) as denied:
            await raw_call(client, "alpha__nope", {})
        assert denied.value.error.code == -32602
    # 2026-07-28: the first call takes the SDK's way (server/discover was answered before the SDK loaded, so its
    # envelope is not known yet), the other four the short way; the handshake era never takes it.
    assert _served(stderr_path.read_text()) == (4 if modern else 0)


async def test_a_call_that_asks_is_answered_with_a_round_and_goes_on_for_the_retry(tmp_path: Path) -> None:
    """On the short way the call runs in its request's own task (``HeldCalls.here``): when a handshake-era server
    asks, the request is answered with the round while the call goes on; the IDE cancelling that (answered) request
    no longer reaches the call, and the retry with the answer gets the call's result. The IDE declares elicitation
    (its capabilities are its envelope's)."""
    from asking import Asking
    from hostile import serving

    up = Asking()
    envelope = {**_ENVELOPE, "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}}
    config = write_config(
        tmp_path / "config.yaml", {up.name: {"url": up.url, "allowed_tools": ["*"], "protocol": "legacy"}}
    )
    stderr_path = tmp_path / "stderr.log"
    async with serving(up), bridge_process(config, tmp_path / "home", stderr_path) as proc:
        buffer = [b""]
        listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": envelope}}
        await _exchange(proc, listing, buffer)
        first = await _exchange(proc, _call(2, "asking__ask", {}, meta=envelope), buffer)
        round_ = first[-1]["result"]
        assert round_["resultType"] == "input_required", round_
        [(key, question)] = round_["inputRequests"].items()
        assert question["method"] == "elicitation/create"
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}
        await proc.stdin.send((json.dumps(cancel) + "\n").encode())  # answered already: the held call goes on
        await anyio.sleep(0.2)
        answers = {key: {"action": "accept", "content": {"name": "Ada"}}}
        retry = _call(3, "asking__ask", {}, meta=envelope, inputResponses=answers, requestState=round_["requestState"])
        done = await _exchange(proc, retry, buffer)
        await proc.stdin.aclose()
        with anyio.fail_after(15):
            rest = b"".join([buffer[0], *[chunk async for chunk in proc.stdout]])
            assert await proc.wait() == 0
    result = done[-1]["result"]
    assert json.loads(result["content"][0]["text"])["answer"] == {"action": "accept", "content": {"name": "Ada"}}
    every = [*first, *done, *(json.loads(line) for line in rest.splitlines() if line.strip())]
    assert [m["id"] for m in every if "id" in m and "method" not in m] == [2, 3]  # each answered once
    assert _served(stderr_path.read_text()) >= 1  # the first call took the short way
