"""mcp-bridge: a local MCP gateway that puts every approved remote MCP server's tools behind one stdio entry."""

__version__ = "0.1.0"
"""The one place the version is written (``pyproject.toml`` reads it from here): a literal, because asking the
installed metadata (``importlib.metadata``) costs ~50 ms on every start, before ``initialize`` is answered."""

__all__ = ["__version__"]
