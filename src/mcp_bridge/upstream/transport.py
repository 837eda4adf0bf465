"""The HTTP transport under an upstream's MCP session: httpx2's, guarded.

:class:`GuardedTransport` turns "could not connect" on a POST into a JSON-RPC error (:data:`NOT_SENT`) instead of a
crash in the SDK's task group, reads a JSON answer only up to :data:`MAX_MESSAGE_BYTES`, drains what is left of a
finished event stream so that the connection is kept, and turns an HTTP error status into a message a user can act
on (:mod:`~mcp_bridge.upstream.http_errors`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio
import httpx2

from mcp_bridge.upstream.http_errors import AnswerTooLarge, explain_http_error, http_error_to_explain

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest message (one SSE event) taken from a server. The SDK's default, 1 MiB, is a tools/list of about 2,000
tools; a bound still stops a runaway server from filling memory."""
NOT_SENT = -32099
"""Internal JSON-RPC code: the request never left this machine (the TCP connection could not be made)."""
_DRAIN_SECONDS = 0.05
_DRAIN_BYTES = 1 << 16


class GuardedTransport(httpx2.AsyncBaseTransport):
    """Turns "could not connect" on a POST into a JSON-RPC error response instead of a transport crash.

    Without this the SDK raises inside its task group and cancels whichever task entered the transport; with it the
    one request gets a clean, typed error (``NOT_SENT``) and the supervisor decides what to do.
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout) as exc:
            if request.method != "POST":
                raise
            message = f"could not connect: {type(exc).__name__}: {exc}"
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": NOT_SENT, "message": message}}
            return httpx2.Response(503, json=body, request=request)
        kind = response.headers.get("content-type", "") if request.method == "POST" else ""
        if kind.startswith("text/event-stream"):
            response.stream = _DrainOnClose(response.stream)
        elif kind.startswith("application/json") and response.status_code < 400:
            response.stream = _Capped(response.stream, MAX_MESSAGE_BYTES)
        elif request.method == "POST" and response.status_code >= 400 and http_error_to_explain(request, response):
            return await explain_http_error(request, response)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Capped(httpx2.AsyncByteStream):
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
