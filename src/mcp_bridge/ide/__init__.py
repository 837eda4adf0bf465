"""The IDE side: stdio (``stdio``), ``initialize`` answered before the SDK loads (``handshake``), the first list from
the warm cache (``warmstart``) and the MCP front (``front``) over a :class:`~mcp_bridge.ide.backend.Backend`.
Imports ``audit``, ``upstream``, ``governance``, ``auth`` and the base modules; never ``bridge`` or ``cli``."""
