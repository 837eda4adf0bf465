"""A lean HTTP/1.1 client for the direct ``tools/call`` POST (:func:`~mcp_bridge.upstream.wire.call_direct`).

httpx2 and httpcore2 do a great deal for each request that a tool call to a known endpoint does not need: a request
model, header normalisation, the auth and redirect machinery, a connection pool with its own locks and events, and
h11's state machine for every byte that comes back. For the one request the bridge sends again and again, that
machinery was the largest share of the bridge's own time per call (bench/RESULTS.md, issue 16). :class:`LeanPool`
sends it over keep-alive HTTP/1.1 connections of its own: the request's head and body in one write, the answer's head
parsed by hand, its body read by length, by chunks, or to the end of the connection, and handed on as an
``httpx2.Response`` whose stream reads from the connection, so that everything above it (the SDK's JSON and SSE
handling, resumption, the bridge's error explanations) is what the request would have met on httpx2's way.

What it does not do, it leaves to httpx2 (:meth:`LeanPool.post` answers ``None`` before anything was sent, or the
caller sends the request again that way after an answer that means "not here, not yet, not you"): proxies, HTTP/2,
cookies, redirects, and authentication beyond a header known in advance (``lean_headers`` on the client's auth).
A connection is used for one request at a time; at most :data:`MAX_CONNECTIONS` are open, and a call past them takes
httpx2's way. A kept connection the server has closed or reset meanwhile is noticed before it is used (its socket
is asked, without waiting, whether there is anything to read: a kept connection is not read from while idle, so the
end of stream waits there) and replaced. A connection that closes after the request was written is a lost call,
never sent again (it may have run), as on httpx2's way.
"""

from __future__ import annotations

import contextlib
import select
import ssl
from typing import Any

import anyio
import anyio.abc
import httpx2
from anyio.abc import SocketAttribute

MAX_CONNECTIONS = 8
"""Connections one upstream's pool keeps open at most (the IDE's concurrent calls); past it, httpx2's way."""
MAX_HEAD_BYTES = 64 * 1024
"""The largest response head taken (status line and header fields)."""
_READ_BYTES = 1 << 16
_DRAIN_SECONDS = 0.05
_DRAIN_BYTES = 1 << 16


class Lost(Exception):
    """The connection failed after the request was (perhaps) sent: the call's outcome is unknown."""


class NotSent(Exception):
    """The request never left: no connection could be made (the message says why, as httpx2 would name it)."""


class _Conn:
    """One keep-alive connection and what was read from it but not yet used."""

    __slots__ = ("buffer", "raw", "sock", "stream", "waiting")

    def __init__(self, stream: anyio.abc.ByteStream, raw: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.raw = raw
        self.sock: Any = raw.extra(SocketAttribute.raw_socket, None)  # noqa: S610
        """The socket asked before the connection is used again (under TLS too, as httpcore asks it)."""
        self.buffer = bytearray()
        self.waiting = True
        """``False``: :meth:`fill` raises :class:`_Short` instead of waiting (what is buffered is all there is)."""

    async def fill(self) -> bool:
        """Read what the server sent next into the buffer; ``False`` at the end of the connection."""
        if not self.waiting:
            raise _Short
        try:
            chunk = await self.stream.receive(_READ_BYTES)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ssl.SSLError, OSError):
            return False
        self.buffer += chunk
        return True

    def reusable(self) -> bool:
        """Whether a kept connection still looks usable: nothing unasked-for was read from it, and it is not closed
        (its socket, asked without waiting, has nothing to read: no end of stream, no stray bytes)."""
        if self.buffer:
            return False
        if self.sock is None:
            return True
        try:
            fd = self.sock.fileno()
            if fd < 0:
                return False
            if hasattr(select, "poll"):  # (no limit on the descriptor's number, unlike select())
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                readable = bool(poller.poll(0))
            else:  # pragma: no cover - Windows
                readable = bool(select.select([fd], [], [], 0)[0])
        except (OSError, ValueError):
            return False
        return not readable  # readable: closed, or sent something nobody asked for

    async def close(self) -> None:
        await _close(self.raw)


async def _close(stream: anyio.abc.ByteStream) -> None:
    """Close a connection's socket, even in a cancelled scope (under TLS: without a close_notify)."""
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await stream.aclose()


class _Short(Exception):
    """More is needed than what was read already (see :attr:`_Conn.waiting`)."""


class LeanPool:
    """Keep-alive HTTP/1.1 connections to one MCP endpoint (plain or TLS) for
    :func:`~mcp_bridge.upstream.wire.call_direct`. ``tasks``: where the rest of a finished answer is read in the
    background (so that its connection can be kept) while the answer goes on its way."""

    def __init__(
        self,
        url: httpx2.URL,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        tasks: anyio.abc.TaskGroup,
        default_headers: httpx2.Headers,
    ) -> None:
        self.url = url
        self._tls = url.scheme == "https"
        self._host = url.host
        self._port = url.port or (443 if self._tls else 80)
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._tasks = tasks
        self._idle: list[_Conn] = []
        self._conns: set[_Conn] = set()
        """Every connection open (kept or in use): all closed with the pool."""
        self._connecting = 0
        self.closed = False
        self._start = b"POST " + (url.raw_path or b"/") + b" HTTP/1.1\r\nHost: " + url.netloc + b"\r\n"
        self._request = httpx2.Request("POST", url)
        """The request every answer names (for the error messages of the code that reads them)."""
        self._defaults = {k.lower(): v for k, v in default_headers.items()}
        """The client's own headers (``Accept-Encoding``, ``Connection``, ``User-Agent``...), as httpx2 merges them."""

    @staticmethod
    def usable(url: httpx2.URL, http: httpx2.AsyncClient) -> bool:
        """Whether requests to ``url`` may take this way: plain or TLS HTTP to a host, through no proxy."""
        transport_for = getattr(http, "_transport_for_url", None)
        if url.scheme not in ("http", "https") or not url.host or not callable(transport_for):
            return False
        return transport_for(url) is getattr(http, "_transport", None)

    async def post(self, headers: dict[str, str], body: bytes, http: httpx2.AsyncClient) -> httpx2.Response | None:
        """POST ``body`` with ``headers`` (over the client's own, as httpx2 merges them): the answer, its body not
        yet read. ``None`` when the request cannot take this way and was not sent (the caller sends it httpx2's way).
        Raises :class:`NotSent` when no connection could be made, :class:`Lost` when the connection failed with the
        request perhaps sent."""
        if self.closed or http.cookies:
            return None
        head = self._head(headers, len(body))
        if head is None:
            return None
        data = head + body
        conn = await self._kept()
        if conn is None:
            if len(self._conns) + self._connecting >= MAX_CONNECTIONS:
                return None
            self._connecting += 1  # (a slot, while the connection is being made)
            try:
                conn = await self._connect()
            finally:
                self._connecting -= 1
        try:
            try:
                await conn.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ssl.SSLError, OSError) as exc:
                raise Lost(f"the request could not be written: {type(exc).__name__}") from None
            return await self._answer(conn)
        except BaseException:
            await self._drop(conn)
            raise

    def _head(self, headers: dict[str, str], length: int) -> bytes | None:
        merged = dict(self._defaults)
        for key, value in headers.items():
            merged[key.lower()] = value
        merged.pop("host", None)
        merged["content-length"] = str(length)
        parts = [self._start]
        try:
            for key, value in merged.items():
                if _UNSAFE.intersection(value) or _UNSAFE.intersection(key) or ":" in key or " " in key:
                    return None  # httpx2's way refuses such a header itself
                parts.append(key.encode("ascii") + b": " + value.encode("ascii") + b"\r\n")
        except UnicodeEncodeError:
            return None
        parts.append(b"\r\n")
        return b"".join(parts)

    async def _kept(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable():
                return conn
            await self._drop(conn)
        return None

    async def _connect(self) -> _Conn:
        try:
            with anyio.fail_after(self._connect_timeout):
                raw = await anyio.connect_tcp(self._host, self._port)
                stream: anyio.abc.ByteStream = raw
                if self._tls:
                    from anyio.streams.tls import TLSStream

                    try:
                        stream = await TLSStream.wrap(
                            raw,
                            hostname=self._host,
                            ssl_context=self._ssl or ssl.create_default_context(),
                            standard_compatible=False,
                        )
                    except BaseException:
                        await _close(raw)
                        raise
        except TimeoutError:
            raise NotSent("ConnectTimeout: timed out") from None
        except (OSError, ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            raise NotSent(f"ConnectError: {exc}") from None
        conn = _Conn(stream, raw)
        self._conns.add(conn)
        if self.closed:  # the pool closed while this connected
            await self._drop(conn)
            raise NotSent("ConnectError: the connection is closing")
        return conn

    async def _answer(self, conn: _Conn) -> httpx2.Response:
        while True:
            status, reason, fields, version = await _read_head(conn)
            if not (100 <= status < 200) or status == 101:
                break  # (an interim answer, 100 Continue or 103 Early Hints: the real one follows)
        keep = version == b"HTTP/1.1"
        length: int | None = None
        chunked = False
        codings: list[bytes] = []
        lengths: set[bytes] = set()
        for name, value in fields:
            lower = name.lower()
            if lower == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",")]
            elif lower == b"content-length":
                lengths.update(v.strip() for v in value.split(b","))
            elif lower == b"connection" and b"close" in value.lower():
                keep = False
        if status in (101, 204, 304):
            length = 0
            keep = keep and status != 101
        elif codings:
            chunked = codings[-1] == b"chunked"
            # Any other last coding: the body ends with the connection. With a Content-Length beside it, the coding
            # wins and the connection is not kept (RFC 9112 6.3: a message framed both ways may be an attack).
            keep = keep and chunked and not lengths
        elif lengths:
            (value,) = lengths if len(lengths) == 1 else (b"",)
            if not value.isdigit():
                raise Lost(f"the server sent an invalid Content-Length: {sorted(lengths)!r}")
            length = int(value)
        else:
            keep = False  # no length: the body ends with the connection
        body = _Body(self, conn, length=length, chunked=chunked, keep=keep)
        return httpx2.Response(
            status, headers=fields, stream=body, request=self._request, extensions={"reason_phrase": reason}
        )

    async def _settle(self, conn: _Conn, keep: bool) -> None:
        """A request's connection after its answer: kept for the next, or closed."""
        if keep and not self.closed and not conn.buffer:
            self._idle.append(conn)
            return
        await self._drop(conn)

    async def _drop(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        await conn.close()

    def _later(self, work: Any) -> bool:
        try:
            self._tasks.start_soon(work)
        except RuntimeError:  # the wire is closing
            return False
        return True

    async def aclose(self) -> None:
        """Close every connection (a call still on one fails), and keep none from now on."""
        self.closed = True
        self._idle.clear()
        for conn in list(self._conns):
            await self._drop(conn)


_UNSAFE = frozenset("\r\n\0")


async def _read_head(conn: _Conn) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    """An answer's status line and header fields (lines may end in ``\\r\\n`` or a bare ``\\n``)."""
    buffer = conn.buffer
    while True:
        if (end := buffer.find(b"\r\n\r\n")) >= 0:
            head, cut = bytes(buffer[:end]), end + 4
            break
        if (end := buffer.find(b"\n\n")) >= 0:
            head, cut = bytes(buffer[:end]), end + 2
            break
        if len(buffer) > MAX_HEAD_BYTES:
            raise Lost(f"the server's answer head is larger than {MAX_HEAD_BYTES >> 10} KiB")
        if not await conn.fill():
            raise Lost("the server closed the connection " + ("in its answer's head" if buffer else "unanswered"))
    del buffer[:cut]
    lines = head.split(b"\n")
    version, _, rest = lines[0].rstrip(b"\r").partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise Lost(f"the server's answer is not HTTP/1.x: {lines[0][:60]!r}")
    fields: list[tuple[bytes, bytes]] = []
    for raw_line in lines[1:]:
        line = raw_line.rstrip(b"\r")
        name, sep, value = line.partition(b":")
        if not sep or not name or name.strip() != name or b" " in name:
            raise Lost(f"the server sent a malformed header line: {line[:60]!r}")
        fields.append((name, value.strip(b" \t")))
    return int(code), reason, fields, version


class _Body(httpx2.AsyncByteStream):
    """An answer's body as it arrives on the connection: by ``Content-Length``, by chunks, or to the end of the
    connection. Closed before its end (the SDK closes an event stream once the answer is in it), the rest is read in
    the background, briefly, so that the connection can be kept; after a failure the connection is closed."""

    def __init__(self, pool: LeanPool, conn: _Conn, *, length: int | None, chunked: bool, keep: bool) -> None:
        self._pool = pool
        self._conn: _Conn | None = conn
        self._left = length
        """Bytes of the body still to come (``None``: up to the end of the connection; chunked: of this chunk)."""
        self._chunked = chunked
        self._keep = keep
        self._chunk_end = False
        """Chunked: a chunk's data was read, its line end is next."""
        self._trailers = False
        """Chunked: the last chunk was read, trailer fields (up to an empty line) are next."""
        if chunked:
            self._left = 0

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            data = await (self._next_chunk(conn) if self._chunked else self._next(conn))
        except _Short:
            raise  # (nothing lost: the body goes on where it stopped)
        except BaseException:
            await self._end(keep=False)
            raise
        if data is None:
            await self._end(keep=self._keep)
            raise StopAsyncIteration
        return data

    async def _next(self, conn: _Conn) -> bytes | None:
        """The next piece of a body by length or to the connection's end; ``None`` at its end."""
        buffer = conn.buffer
        if self._left == 0:
            return None
        if not buffer and not await conn.fill():
            if self._left is None:
                return None
            raise httpx2.RemoteProtocolError("the server closed the connection before the end of its answer")
        data = bytes(buffer if self._left is None else buffer[: self._left])
        del buffer[: len(data)]
        if self._left is not None:
            self._left -= len(data)
        return data

    async def _next_chunk(self, conn: _Conn) -> bytes | None:
        """The next piece of a chunked body; ``None`` after its last chunk (and trailer fields)."""
        buffer = conn.buffer
        while self._trailers:
            if not await _line(conn):
                self._trailers = False
                return None
        if self._left == 0:
            if self._chunk_end:
                if await _line(conn):
                    raise httpx2.RemoteProtocolError("a chunk longer than its size")
                self._chunk_end = False
            size = (await _line(conn)).split(b";", 1)[0].strip()
            if not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
                raise httpx2.RemoteProtocolError(f"a malformed chunk size: {size[:20]!r}")
            self._left = int(size, 16)
            if self._left == 0:
                self._trailers = True
                return await self._next_chunk(conn)
        assert self._left is not None
        if not buffer and not await conn.fill():
            raise httpx2.RemoteProtocolError("the server closed the connection before the end of its answer")
        data = bytes(buffer[: self._left])
        del buffer[: len(data)]
        self._left -= len(data)
        self._chunk_end = self._left == 0
        return data

    async def _end(self, *, keep: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool._settle(conn, keep)

    async def drain(self) -> None:
        """Read the rest of the body (briefly, and only so much), then keep the connection or close it."""
        drained = 0
        with anyio.move_on_after(_DRAIN_SECONDS):
            try:
                async for data in self:
                    drained += len(data)
                    if drained > _DRAIN_BYTES:
                        break
            except Exception:  # broken: closed by __anext__ already
                return
        await self._end(keep=False)  # cut short (too long, too slow): not kept

    async def aclose(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if self._keep:
            # What is left may have come with the last read already (an event stream's end, after its answer):
            # then the connection is kept at once, ready for the next call.
            conn.waiting = False
            try:
                async for _ in self:
                    pass
                return
            except _Short:
                pass
            except Exception:  # broken: closed by __anext__ already
                return
            finally:
                conn.waiting = True
        if not self._keep or not self._pool._later(self.drain):
            await self._end(keep=False)


async def _line(conn: _Conn) -> bytes:
    """One line of a chunked body's framing (at most 4 KiB), without its line end."""
    buffer = conn.buffer
    while (end := buffer.find(b"\n")) < 0:
        if len(buffer) > 4096:
            raise httpx2.RemoteProtocolError("a chunked body's framing line longer than 4 KiB")
        if not await conn.fill():
            raise httpx2.RemoteProtocolError("the server closed the connection before the end of its answer")
    line = bytes(buffer[:end]).rstrip(b"\r")
    del buffer[: end + 1]
    return line
