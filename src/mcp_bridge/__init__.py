"""mcp-bridge: a local MCP gateway that puts every approved remote MCP server's tools behind one stdio entry."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mcp-bridge")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = ["__version__"]
