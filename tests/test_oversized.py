"""An answer over the size limit (``upstream.transport.MAX_MESSAGE_BYTES``) costs that call, and only that call: the
bridge reconnects, and the next call waits (at most ``timeouts.connect``) for the new session instead of failing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError
from starlette.types import Receive, Scope, Send

from harness import bridge_client, free_port, raw_call, write_config
from hostile import read_body
from mcp_bridge.upstream.transport import MAX_MESSAGE_BYTES

pytestmark = pytest.mark.anyio

_MIB = 1 << 20


class Oversized:
    """A raw streamable-HTTP MCP server whose tool ``huge`` answers with one SSE event of more than
    ``MAX_MESSAGE_BYTES`` (streamed, never held in memory), and ``echo`` as any server does."""

    def __init__(self) -> None:
        self.sessions = 0
        self.calls: list[tuple[str, str]] = []
        """(tool, the session it was called on)"""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _reply(send, 405 if scope["method"] == "GET" else 200, "text/plain", b"")
            return
        body = await read_body(receive)
        message = json.loads(body)
        method, request_id = message.get("method"), message.get("id")
        if method is None or request_id is None:
            await _reply(send, 202, "text/plain", b"")
        elif method == "initialize":
            self.sessions += 1
            result = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "oversized", "version": "1"},
            }
            headers = [(b"mcp-session-id", f"session-{self.sessions}".encode())]
            await _reply(send, 200, "application/json", _answer(request_id, result), headers)
        elif method == "tools/list":
            tools = [{"name": n, "inputSchema": {"type": "object"}} for n in ("huge", "huge_json", "echo")]
            await _reply(send, 200, "application/json", _answer(request_id, {"tools": tools}))
        elif method == "tools/call":
            name = message["params"]["name"]
            session = dict(scope["headers"]).get(b"mcp-session-id", b"").decode()
            self.calls.append((name, session))
            if name == "huge":
                await self._huge(send, request_id)
            elif name == "huge_json":
                await self._huge_json(send, request_id)
            else:
                text = f"echo: {message['params'].get('arguments', {}).get('text', '')}"
                await _reply(send, 200, "application/json", _answer(request_id, {"content": [_text(text)]}))
        else:
            await _reply(send, 200, "application/json", _answer(request_id, {}))

    @staticmethod
    async def _huge_json(send: Send, request_id: Any) -> None:
        """A valid JSON-RPC answer, as one JSON body of more than the limit (endless, as far as the bridge cares)."""
        opening, _, closing = _answer(request_id, {"content": [_text("")]}).decode().partition('"text": ""')
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        chunks = [
            f'{opening}"text": "'.encode(),
            *[b"a" * _MIB] * (MAX_MESSAGE_BYTES // _MIB + 1),
            f'"{closing}'.encode(),
        ]
        try:
            for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client hung up once it had seen too much

    @staticmethod
    async def _huge(send: Send, request_id: Any) -> None:
        head = json.dumps({"jsonrpc": "2.0", "id": request_id, "result": {"content": [_text("")]}})
        opening, _, closing = head.partition('"text": ""')
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        chunks = [f'event: message\r\ndata: {opening}"text": "'.encode()]
        chunks += [b"a" * _MIB] * (MAX_MESSAGE_BYTES // _MIB + 1)
        chunks.append(f'"{closing}\r\n\r\n'.encode())
        try:
            for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client hung up once it had seen too much


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _answer(request_id: Any, result: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode()


async def _reply(
    send: Send, status: int, content_type: str, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    start_headers = [(b"content-type", content_type.encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    import uvicorn

    port = free_port()
    web = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1)
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(web.serve)
        with anyio.fail_after(10):
            while not web.started:
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            web.should_exit = True


async def test_the_call_after_an_oversized_answer_waits_for_the_reconnect(tmp_path: Path) -> None:
    server = Oversized()
    async with serving(server) as url:
        config = write_config(
            tmp_path / "config.yaml",
            {"big": {"url": url, "allowed_tools": ["*"]}},
            timeouts={"connect": 10, "call": 60, "startup_wait": 10},
        )
        async with bridge_client(config, tmp_path / "home", stderr_path=tmp_path / "bridge.log") as client:
            assert (await raw_call(client, "big__echo", {"text": "before"}))["content"][0]["text"] == "echo: before"
            with anyio.fail_after(60), pytest.raises(MCPError) as too_big:
                await raw_call(client, "big__huge")
            with anyio.fail_after(15):
                after = await raw_call(client, "big__echo", {"text": "after"})
    assert "big" in too_big.value.error.message
    assert after["content"][0]["text"] == "echo: after"
    assert server.sessions == 2  # the bridge reconnected after the oversized answer
    # and the call after it was sent once, on the new session
    assert server.calls == [("echo", "session-1"), ("huge", "session-1"), ("echo", "session-2")]


async def test_a_json_answer_over_the_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    """The SDK reads a JSON answer whole: past the limit the bridge stops reading and refuses it; the session (and
    the next call) goes on."""
    server = Oversized()
    async with serving(server) as url:
        config = write_config(tmp_path / "config.yaml", {"big": {"url": url, "allowed_tools": ["*"]}})
        async with bridge_client(config, tmp_path / "home", stderr_path=tmp_path / "bridge.log") as client:
            with anyio.fail_after(60), pytest.raises(MCPError) as too_big:
                await raw_call(client, "big__huge_json")
            after = await raw_call(client, "big__echo", {"text": "after"})
    assert too_big.value.error.message == "server 'big': the server's answer is larger than the 64 MiB limit; refused"
    assert after["content"][0]["text"] == "echo: after"
    assert server.sessions == 1
