"""The HTTP transport under an upstream's MCP session: httpx2's, guarded.

:class:`GuardedTransport` turns "could not connect" on a POST into a JSON-RPC error (:data:`NOT_SENT`) instead of a
crash in the SDK's task group, reads a JSON answer only up to :data:`MAX_MESSAGE_BYTES`, drains what is left of a
finished event stream so that the connection is kept, and turns an HTTP error status into a message a user can act
on (:mod:`~mcp_bridge.upstream.http_errors`). :func:`coalescing` makes a request's head and body go out in one
socket write instead of two.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any

import anyio
import httpcore2
import httpx2

from mcp_bridge import telemetry
from mcp_bridge.upstream.http_errors import AnswerTooLarge, explain_http_error, http_error_to_explain
from mcp_bridge.upstream.own_errors import local_error

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest message (one SSE event) taken from a server. The SDK's default, 1 MiB, is a tools/list of about 2,000
tools; a bound still stops a runaway server from filling memory."""
NOT_SENT = -32099
"""Internal JSON-RPC code: the request never left this machine (the TCP connection could not be made)."""
_DRAIN_SECONDS = 0.05
_DRAIN_BYTES = 1 << 16
_COALESCE_BYTES = 1 << 16
"""Writes are held back (to go out with the next) only up to this much: past it the syscall is worth its cost."""


class GuardedTransport(httpx2.AsyncBaseTransport):
    """Turns "could not connect" on a POST into a JSON-RPC error response instead of a transport crash.

    Without this the SDK raises inside its task group and cancels whichever task entered the transport; with it the
    one request gets a clean, typed error (``NOT_SENT``) and the supervisor decides what to do.
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        telemetry.hooks.http(request)  # the traceparent header, as the request's _meta has it (telemetry on)
        try:
            response = await self._inner.handle_async_request(request)
        except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout) as exc:
            if request.method != "POST":
                raise
            message = f"could not connect: {type(exc).__name__}: {exc}"
            body = {"jsonrpc": "2.0", "id": None, "error": local_error(NOT_SENT, message)}
            return httpx2.Response(503, json=body, request=request)
        kind = response.headers.get("content-type", "") if request.method == "POST" else ""
        if kind.startswith("text/event-stream"):
            response.stream = _DrainOnClose(response.stream)
        elif kind.startswith("application/json") and response.status_code < 400:
            response.stream = Capped(response.stream, MAX_MESSAGE_BYTES)
        elif request.method == "POST" and response.status_code >= 400 and http_error_to_explain(request, response):
            return await explain_http_error(request, response)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class Capped(httpx2.AsyncByteStream):
    """A JSON answer, read only up to ``limit`` bytes: the SDK reads a JSON answer whole, and an endless one from a
    hostile server would fill memory. Past the limit the read fails (:class:`AnswerTooLarge`), and the request with
    it; the session goes on. (Streamed answers have the same limit per event, in the SDK's SSE reader.)"""

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner, self._limit = inner, limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise AnswerTooLarge(self._limit)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _DrainOnClose(httpx2.AsyncByteStream):
    """Reads what is left of a finished POST's event stream before closing it, so the connection is kept.

    The SDK closes a POST's SSE response as soon as the JSON-RPC response has arrived, a few bytes before the end of
    the stream; an unfinished response cannot go back to the pool, so every call would open a new TCP connection
    (and leave a TIME_WAIT socket behind). The server ends the stream right after the response, so the tail is
    tiny and arrives at once; a stream that goes on longer than ``_DRAIN_SECONDS`` is closed as before.

    Reading and draining share one iterator over the inner stream, which the drain runs to its end: the iterators
    under it finish there, instead of being left suspended for the garbage collector to close, each through a
    thread-safe loop wake-up and a task of its own.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._chunks: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._chunks is None:
            self._chunks = aiter(self._inner)
        return self._chunks

    async def aclose(self) -> None:
        chunks = self.__aiter__()
        try:
            with anyio.move_on_after(_DRAIN_SECONDS):
                drained = 0
                async for chunk in chunks:
                    drained += len(chunk)
                    if drained > _DRAIN_BYTES:
                        break
        except (httpx2.HTTPError, anyio.ClosedResourceError, anyio.BrokenResourceError, RuntimeError):
            pass  # already broken or closed: nothing to keep
        finally:
            try:
                if isinstance(chunks, AsyncGenerator):
                    await chunks.aclose()  # cut short (too long, too slow, broken): close it now, not in the GC
            finally:
                await self._inner.aclose()


def coalescing(transport: httpx2.AsyncHTTPTransport) -> httpx2.AsyncHTTPTransport:
    """``transport`` with each request's head and body sent in one socket write (:class:`_CoalescingStream`).

    httpcore writes an HTTP/1.1 request's head and its body separately: two ``send`` calls on the socket, each a
    trip through the kernel's TCP stack (on loopback, the receiver's side of it too) and through the stream's
    timeout and error mapping. A tool call is one small POST, so that is two trips where one would do. Only a pool
    of direct HTTP/1.1 connections is changed (a proxied one, HTTP/2, or an httpx2 without that pool is left as
    it is).
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if (
        type(pool) is httpcore2.AsyncConnectionPool
        and isinstance(backend, httpcore2.AsyncNetworkBackend)
        and not getattr(pool, "_http2", False)
    ):
        pool._network_backend = _CoalescingBackend(backend)
    return transport


class _CoalescingBackend(httpcore2.AsyncNetworkBackend):
    """A network backend whose streams hold back writes until the next read (:class:`_CoalescingStream`)."""

    def __init__(self, inner: httpcore2.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return _CoalescingStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return _CoalescingStream(
            await self._inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)
        )

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _CoalescingStream(httpcore2.AsyncNetworkStream):
    """An HTTP/1.1 connection's stream that sends what is written with the next read (or write past
    :data:`_COALESCE_BYTES`, or TLS start, or close): an HTTP/1.1 client reads the answer after every request, so
    the request's head and body leave together.

    A write that fails at the read is what httpcore does with a request it could not write whole: it goes on to read
    the server's answer (which may explain), so the read goes on too, and fails (or answers) as it would have.
    """

    def __init__(self, inner: httpcore2.AsyncNetworkStream) -> None:
        self._inner = inner
        self._held: list[bytes] = []
        self._size = 0
        self._timeout: float | None = None

    async def _flush(self) -> None:
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held, self._size = [], 0
        await self._inner.write(data, timeout=self._timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        self._held.append(bytes(buffer))
        self._size += len(buffer)
        self._timeout = timeout
        if self._size > _COALESCE_BYTES:
            await self._flush()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if self._held:
            # As httpcore does for a request it could not write: the server's answer (or its close) tells why.
            with contextlib.suppress(httpcore2.WriteError):
                await self._flush()
        return await self._inner.read(max_bytes, timeout=timeout)

    async def aclose(self) -> None:
        self._held, self._size = [], 0
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore2.AsyncNetworkStream:
        await self._flush()
        return _CoalescingStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
