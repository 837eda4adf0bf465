"""The IDE's pipes: bytes read before serving (the early ``initialize`` read) come first, split into lines as usual;
an answer is written at once."""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest

from mcp_bridge.ide.stdio import _LoopReader, _nonblocking, _ThreadReader, _Writer

pytestmark = pytest.mark.anyio

PREFIX = b'{"first": 1}\n{"second": 2}\n{"thi'
REST = b'rd": 3}\n{"fourth": 4}'  # the last line ends at EOF, without a newline
LINES = ['{"first": 1}', '{"second": 2}', '{"third": 3}', '{"fourth": 4}']


async def read_all(reader: Any) -> list[str]:
    with anyio.fail_after(10):
        return [line async for line in reader]


@pytest.mark.parametrize("kind", ["loop", "thread"])
async def test_lines_read_before_serving_come_first_and_join_the_rest(kind: str) -> None:
    r, w = os.pipe()
    try:
        os.write(w, REST)
        os.close(w)
        w = -1
        if kind == "loop":
            with _nonblocking(r):
                got = await read_all(_LoopReader(r, PREFIX))
        else:
            got = await read_all(_ThreadReader(r, PREFIX))
    finally:
        os.close(r)
        if w != -1:
            os.close(w)
    assert got == LINES


@pytest.mark.parametrize("kind", ["loop", "thread"])
async def test_without_a_prefix_nothing_changes(kind: str) -> None:
    r, w = os.pipe()
    try:
        os.write(w, PREFIX + REST)
        os.close(w)
        w = -1
        if kind == "loop":
            with _nonblocking(r):
                got = await read_all(_LoopReader(r))
        else:
            got = await read_all(_ThreadReader(r))
    finally:
        os.close(r)
        if w != -1:
            os.close(w)
    assert got == LINES


async def test_a_free_writer_writes_before_other_tasks_run() -> None:
    """No loop round before the bytes go out: the lock's fairness yield let other work go first."""
    r, w = os.pipe()
    try:
        writer, ran = _Writer(w), anyio.Event()
        async with anyio.create_task_group() as tg:

            async def other() -> None:
                ran.set()

            tg.start_soon(other)  # runs at this task's first yield
            await writer.write('{"a": 1}\n')
            assert not ran.is_set()
        assert os.read(r, 100) == b'{"a": 1}\n'
    finally:
        os.close(r)
        os.close(w)
