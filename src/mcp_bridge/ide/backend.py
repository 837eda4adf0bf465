"""What the IDE side needs of the bridge behind it: :class:`Backend`, a protocol.

The front (:mod:`mcp_bridge.ide.front`) serves the IDE from a backend; :class:`mcp_bridge.bridge.Bridge` is one, by
its shape (it does not name this class). So the IDE side never imports the bridge, which sits above it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import mcp_types as types
    from anyio.streams.memory import MemoryObjectReceiveStream

    from mcp_bridge.audit.trail import AuditTrail
    from mcp_bridge.config import Settings
    from mcp_bridge.governance.catalog import Catalog
    from mcp_bridge.upstream.supervisor import ProgressFn


class Backend(Protocol):
    """The lists, the requests and the change notices the IDE is served from."""

    client_name: str | None
    """The IDE's name (from ``initialize``), set by the front once the session is up."""

    @property
    def settings(self) -> Settings: ...

    @property
    def home(self) -> Path: ...

    @property
    def audit(self) -> AuditTrail: ...

    @property
    def catalog(self) -> Catalog: ...

    @property
    def changes(self) -> AsyncIterable[set[str]]:
        """Which IDE-visible lists changed (``tools``, ``prompts``, ``resources``), in order."""
        ...

    def instructions(self) -> str: ...

    def listed_tools(self) -> list[dict[str, Any]]:
        """The tools ``tools/list`` answers with (the catalog's, or search mode's few)."""
        ...

    @property
    def listed_version(self) -> Any:
        """Changes whenever :meth:`listed_tools` would answer differently."""
        ...

    async def wait_settled(self, within: float, servers: list[str] | None = None) -> None: ...

    async def call_tool(
        self,
        exposed: str,
        arguments: Mapping[str, Any] | None,
        *,
        meta: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]: ...

    async def get_prompt(
        self, exposed: str, arguments: Mapping[str, str] | None, *, inputs: Mapping[str, Any] | None = None
    ) -> dict[str, Any]: ...

    async def read_resource(self, uri: str, *, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]: ...

    async def complete(self, params: types.CompleteRequestParams) -> dict[str, Any]: ...

    async def subscribe(self, uri: str) -> dict[str, Any]: ...

    async def unsubscribe(self, uri: str) -> None: ...

    @property
    def resource_updates(self) -> MemoryObjectReceiveStream[str]:
        """The URIs (as the IDE subscribed to them) of resources that changed."""
        ...

    def declare_ide_capabilities(self, capabilities: types.ClientCapabilities | None) -> None:
        """What the IDE declared (the servers are offered its input capabilities)."""
        ...
