"""The IDE's pipes: stdin and stdout as line streams for :func:`mcp_bridge.ide.connection.serve_stdio`, without
thread hops.

The SDK reads stdin and writes stdout through worker threads: one hop per line in, two per message out (``write``,
then ``flush``), each with its share of GIL hand-offs and loop wake-ups, on every call. When the IDE gives us pipes
(it always does), :func:`ide_pipes` reads and writes them non-blocking on the event loop instead. On anything else
(a terminal, a file) it falls back to a daemon reader thread and blocking writes.

Either way it does what ``stdio_server`` does for fd 1: the protocol gets a private duplicate of it, and fd 1 itself
points at stderr while we serve, so a stray ``print`` from any library can never corrupt the wire. Both are restored
on exit. Cancelling the serving task stops promptly even while the IDE keeps stdin open.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from mcp_bridge.logs import get_logger

log = get_logger(__name__)

_CHUNK = 1 << 16


def _is_pipe(fd: int) -> bool:
    """A pipe or socket we can read and write non-blocking on the loop (POSIX only; Windows uses the thread)."""
    if sys.platform == "win32":
        return False
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@contextlib.contextmanager
def _nonblocking(fd: int) -> Iterator[None]:
    import fcntl  # POSIX only: _is_pipe() is False on Windows, so this is never reached there

    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)


class _LoopReader:
    """Lines from a non-blocking pipe, read on the event loop (after the lines in ``prefix``, read before)."""

    def __init__(self, fd: int, prefix: bytes = b"") -> None:
        self._fd = fd
        *self._lines, self._pending = prefix.split(b"\n")
        self._eof = False

    def __aiter__(self) -> _LoopReader:
        return self

    async def __anext__(self) -> str:
        while not self._lines:
            if self._eof:
                if self._pending:
                    line, self._pending = self._pending, b""
                    return line.decode("utf-8", errors="replace")
                raise StopAsyncIteration
            try:
                chunk = os.read(self._fd, _CHUNK)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if not chunk:
                self._eof = True
                continue
            *lines, self._pending = (self._pending + chunk).split(b"\n")
            self._lines.extend(lines)
        return self._lines.pop(0).decode("utf-8", errors="replace")


class _ThreadReader:
    """Lines from a blocking descriptor, read by a daemon thread (left behind on exit, never joined), after the lines
    in ``prefix``, read before."""

    def __init__(self, fd: int, prefix: bytes = b"") -> None:
        self._fd = fd
        self._prefix = prefix
        self._send, self._recv = anyio.create_memory_object_stream[bytes](16)
        self._thread: threading.Thread | None = None

    def _read(self, token: anyio.lowlevel.EventLoopToken) -> None:
        *lines, pending = self._prefix.split(b"\n")
        try:
            for line in lines:
                anyio.from_thread.run(self._send.send, line, token=token)
            while chunk := os.read(self._fd, _CHUNK):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    anyio.from_thread.run(self._send.send, line, token=token)
            if pending:
                anyio.from_thread.run(self._send.send, pending, token=token)
        except (OSError, RuntimeError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            # stdin broke, or the loop is gone because we are exiting: either way there is no more input.
            log.debug("stdio.reader_stopped", error=type(exc).__name__)
        finally:
            with contextlib.suppress(RuntimeError):
                anyio.from_thread.run_sync(self._send.close, token=token)

    def __aiter__(self) -> _ThreadReader:
        return self

    async def __anext__(self) -> str:
        if self._thread is None:
            token = anyio.lowlevel.current_token()
            self._thread = threading.Thread(target=self._read, args=(token,), name="stdin-reader", daemon=True)
            self._thread.start()
        try:
            line = await self._recv.receive()
        except anyio.EndOfStream:
            self._recv.close()
            raise StopAsyncIteration from None
        return line.decode("utf-8", errors="replace")


class _Writer:
    """Writes whole messages to a descriptor; waits on the loop when a non-blocking pipe is full."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = anyio.Lock(fast_acquire=True)  # free: write at once, without a loop round first

    async def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        async with self._lock:  # one message at a time: frames never interleave
            while data:
                try:
                    written = os.write(self._fd, data)
                except BlockingIOError:
                    await anyio.wait_writable(self._fd)
                    continue
                data = data[written:]

    async def flush(self) -> None:
        """Nothing is buffered: every write went to the descriptor."""


@contextlib.asynccontextmanager
async def ide_pipes(stdin_fd: int = 0, stdout_fd: int = 1, *, prefix: bytes = b"") -> AsyncIterator[tuple[Any, Any]]:
    """(stdin lines, stdout writer) for :func:`mcp_bridge.ide.connection.serve_stdio`; fd 1 goes to stderr meanwhile.

    ``prefix``: bytes already read from stdin (by :func:`mcp_bridge.ide.handshake.answer_initialize`); their lines come
    first.
    """
    wire = os.dup(stdout_fd)
    os.set_inheritable(wire, False)
    os.dup2(2, stdout_fd)  # stray writes to fd 1 land on stderr, never on the wire
    try:
        with contextlib.ExitStack() as stack:
            reader: Any
            if _is_pipe(stdin_fd):
                stack.enter_context(_nonblocking(stdin_fd))
                reader = _LoopReader(stdin_fd, prefix)
            else:
                reader = _ThreadReader(stdin_fd, prefix)
            if _is_pipe(wire):
                stack.enter_context(_nonblocking(wire))
            yield reader, _Writer(wire)
    finally:
        os.dup2(wire, stdout_fd)
        os.close(wire)
