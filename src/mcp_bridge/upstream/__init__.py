"""One remote MCP server: its supervisor and reconnects (``supervisor``), the guarded HTTP transport (``transport``),
the direct ``tools/call`` path copied from the SDK (``wire``) and what HTTP failures mean (``http_errors``).
Imports ``governance``, ``auth`` and the base modules; never ``audit``, ``ide``, ``bridge`` or ``cli``."""
