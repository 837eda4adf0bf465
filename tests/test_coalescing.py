"""The upstream transport's write coalescing (``upstream.transport.coalescing``): a request's head and body leave in
one socket write, the connection is reused, and a write that fails is handled as httpcore handles it (the answer, or
the close, is read). A real server on 127.0.0.1 sees the bytes as they arrive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import httpcore2
import httpx2
import pytest

from mcp_bridge.upstream.transport import (
    _COALESCE_BYTES,
    GuardedTransport,
    _CoalescingBackend,
    _CoalescingStream,
    coalescing,
)

pytestmark = pytest.mark.anyio


class _Recorder:
    """A keep-alive HTTP/1.1 server that answers each request with its body and records every ``receive``."""

    def __init__(self) -> None:
        self.receives: list[bytes] = []
        self.connections = 0

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        chunk = await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                    self.receives.append(chunk)
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(buffer) < length:
                    chunk = await stream.receive()
                    self.receives.append(chunk)
                    buffer += chunk
                body, buffer = buffer[:length], buffer[length:]
                answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
                await stream.send(answer + body)


@asynccontextmanager
async def _serving(recorder: _Recorder) -> AsyncIterator[int]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, recorder.handle)
        yield int(listener.extra(anyio.abc.SocketAttribute.local_port))  # noqa: S610
        tg.cancel_scope.cancel()


async def test_head_and_body_leave_in_one_write_and_the_connection_is_kept() -> None:
    recorder = _Recorder()
    async with _serving(recorder) as port:
        transport = GuardedTransport(coalescing(httpx2.AsyncHTTPTransport()))
        async with httpx2.AsyncClient(transport=transport) as http:
            for i in range(3):
                body = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call"}' % i
                response = await http.post(f"http://127.0.0.1:{port}/mcp", content=body)
                assert response.status_code == 200
                assert response.content == body
    assert recorder.connections == 1
    assert len(recorder.receives) == 3  # one write each: head and body arrived together
    assert all(r.startswith(b"POST /mcp HTTP/1.1\r\n") and r.endswith(b"}") for r in recorder.receives)


async def test_a_large_body_still_arrives_whole() -> None:
    recorder = _Recorder()
    body = b"x" * (3 * _COALESCE_BYTES)
    transport = coalescing(httpx2.AsyncHTTPTransport())
    async with _serving(recorder) as port, httpx2.AsyncClient(transport=transport) as http:
        response = await http.post(f"http://127.0.0.1:{port}/mcp", content=body)
    assert response.content == body


def test_a_proxied_or_http2_pool_is_left_as_it_is() -> None:
    assert isinstance(coalescing(httpx2.AsyncHTTPTransport())._pool._network_backend, _CoalescingBackend)
    for transport in (httpx2.AsyncHTTPTransport(proxy="http://127.0.0.1:9"), httpx2.AsyncHTTPTransport(http2=True)):
        backend = getattr(transport._pool, "_network_backend", None)
        assert coalescing(transport)._pool._network_backend is backend
        assert not isinstance(backend, _CoalescingBackend)


class _Inner(httpcore2.AsyncNetworkStream):
    def __init__(self, *, fail_write: bool = False) -> None:
        self.writes: list[bytes] = []
        self.reads = 0
        self.fail_write = fail_write
        self.closed = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.reads += 1
        return b"HTTP/1.1 400 Bad Request\r\n\r\n"

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self.fail_write:
            raise httpcore2.WriteError("broken pipe")
        self.writes.append(buffer)

    async def aclose(self) -> None:
        self.closed = True

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        return _Inner()

    def get_extra_info(self, info: str) -> Any:
        return f"extra:{info}"


async def test_writes_wait_for_the_read_and_big_ones_go_at_once() -> None:
    inner = _Inner()
    stream = _CoalescingStream(inner)
    await stream.write(b"head")
    await stream.write(b"")
    await stream.write(b"body")
    assert inner.writes == []
    await stream.read(100)
    assert inner.writes == [b"headbody"]
    await stream.read(100)
    assert inner.writes == [b"headbody"]  # nothing held: nothing written
    await stream.write(b"y" * (_COALESCE_BYTES + 1))
    assert len(inner.writes) == 2
    assert stream.get_extra_info("is_readable") == "extra:is_readable"
    await stream.write(b"dropped")
    await stream.aclose()
    assert inner.closed and len(inner.writes) == 2


async def test_a_failed_write_goes_on_to_read_the_answer_as_httpcore_does() -> None:
    inner = _Inner(fail_write=True)
    stream = _CoalescingStream(inner)
    await stream.write(b"request")
    assert await stream.read(100) == b"HTTP/1.1 400 Bad Request\r\n\r\n"
    assert inner.reads == 1


async def test_tls_start_sends_what_is_held_first() -> None:
    inner = _Inner()
    stream = _CoalescingStream(inner)
    await stream.write(b"CONNECT")
    upgraded = await stream.start_tls(None)  # type: ignore[arg-type]
    assert inner.writes == [b"CONNECT"]
    assert isinstance(upgraded, _CoalescingStream)
