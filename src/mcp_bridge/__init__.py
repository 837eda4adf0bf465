"""mcp-bridge: a local MCP gateway that puts every approved remote MCP server's tools behind one stdio entry.

The folders draw the architecture, and imports run one way, down (the contracts in ``pyproject.toml``, checked by
``lint-imports``): ``cli`` (the command) → ``bridge`` (wires the parts) → ``ide`` → ``audit`` → ``upstream`` →
``governance`` → ``auth`` → the base modules (``config``, ``errors``, ``logs``, ``files``, ``terminal``,
``keyring_store``, ``backoff``, ``era``). ``sandbox`` holds local servers for the demo and the tests only: the product
never imports it.
"""

__version__ = "0.1.0"
"""The one place the version is written (``pyproject.toml`` reads it from here): a literal, because asking the
installed metadata (``importlib.metadata``) costs ~50 ms on every start, before ``initialize`` is answered."""

__all__ = ["__version__"]
