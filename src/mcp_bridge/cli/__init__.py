"""The ``mcp-bridge`` command: argument parsing (:mod:`.main`), ``serve`` (:mod:`.serve`), the commands people run
by hand, ``doctor``, ``install`` and the offline ``demo``.

The top of the package: it may import everything below it (the bridge, the IDE side, the upstream side, governance,
audit, auth and the base modules); nothing in the product imports it. Only the demo imports :mod:`mcp_bridge.sandbox`.
"""

from mcp_bridge.cli.main import main

__all__ = ["main"]
