"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import harness
from everything import everything_server


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio only (the bridge targets asyncio)."""
    return "asyncio"


@pytest.fixture(params=harness.IDE_MODES)
def ide_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per IDE mode (``pytestmark = pytest.mark.usefixtures("ide_mode")`` in a module): the
    bridge must serve an IDE of either protocol era, and the SDK's default (discovery first) too."""
    harness.ide_mode = request.param
    try:
        yield request.param
    finally:
        harness.ide_mode = "legacy"


@pytest.fixture(scope="module")
def everything_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MCP URL of a running ``@modelcontextprotocol/server-everything`` bound to 127.0.0.1 (see tests/everything.py).

    One server per test module; its log is kept in pytest's temporary directory. Skips when Node.js/npm are missing.
    """
    with everything_server(tmp_path_factory.mktemp("everything")) as url:
        yield url
