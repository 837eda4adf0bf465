"""The IDE side: the pipes (``stdio``), ``initialize`` or ``server/discover`` answered before the SDK loads
(``handshake``), the first list from the warm cache (``warmstart``), the connection (``connection``) and the MCP
front it feeds (``front``), served from a :class:`~mcp_bridge.ide.backend.Backend`. Imports ``audit``, ``upstream``,
``governance``, ``auth`` and the base modules; never ``bridge`` or ``cli``."""
