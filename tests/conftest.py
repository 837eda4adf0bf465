"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from everything import everything_server


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio only (the bridge targets asyncio)."""
    return "asyncio"


@pytest.fixture(scope="module")
def everything_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MCP URL of a running ``@modelcontextprotocol/server-everything`` bound to 127.0.0.1 (see tests/everything.py).

    One server per test module; its log is kept in pytest's temporary directory. Skips when Node.js/npm are missing.
    """
    with everything_server(tmp_path_factory.mktemp("everything")) as url:
        yield url
