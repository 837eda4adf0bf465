"""Resource subscriptions through the bridge (issue 18): ``resources/subscribe``/``unsubscribe`` and
``notifications/resources/updated`` for a handshake-era IDE, the listen stream's ``resource_subscriptions`` for a
2026-07-28 IDE, each to a server of either era. Routed and allowed as a read is (``allowed_resources``), audited as
``resource_subscribe``; a server is subscribed once however many times, and let go when nobody wants the updates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated

from harness import Notifications, bridge_client, is_modern, raw_call, wait_for, write_config
from hostile import serving
from port_double import AUDIT_BLUEPRINT, PortDouble, mcp_server_entity
from watched import Watched

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ide_mode")]

A, B, PRIVATE = "doc://watched/a", "doc://watched/b", "doc://watched/private"


SECRET = "subscriptions-secret"


@pytest.fixture
def double() -> Iterator[PortDouble]:
    with PortDouble() as d:
        d.add_client("dev", SECRET)
        yield d


def config(tmp_path: Path, up: Watched, upstream: str, double: PortDouble) -> Path:
    """The server approved in Port (the double) with a and b allowed; the era to speak to it, local."""
    allowed = ["doc://watched/a", "doc://watched/b"]
    entity = mcp_server_entity(up.name, up.url, ["*"], auth_type="none", allowed_resources=allowed)
    double.upsert_entity("_mcp_server", entity)
    port = {"base_url": double.base_url, "client_id": "dev", "client_secret": SECRET}
    return write_config(tmp_path / "config.yaml", {up.name: {"protocol": upstream}}, port=port)


def updates(notes: Notifications) -> list[str]:
    return [str(n.params.uri) for n in notes.received if isinstance(n, types.ResourceUpdatedNotification)]


async def touch(ide: Any, uri: str) -> None:
    result = await raw_call(ide, "watched__touch", {"uri": uri})
    assert not result.get("isError"), result


def subscribed_upstream(up: Watched, upstream: str) -> set[str]:
    """What the server is subscribed to now, in its era."""
    if upstream == "legacy":
        return up.current
    return set(up.listens[-1]) if up.listens else set()


@pytest.mark.parametrize("upstream", ["legacy", "2026-07-28"])
@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_subscriptions_cross_in_the_ide_era_and_only_for_allowed_resources(
    tmp_path: Path, upstream: str, double: PortDouble
) -> None:
    up = Watched()
    notes = Notifications()
    cfg = config(tmp_path, up, upstream, double)
    async with serving(up), bridge_client(cfg, tmp_path / "home", notifications=notes) as ide:
        if is_modern(ide):
            await _modern_ide(ide, up, upstream)
        else:
            await _handshake_ide(ide, up, upstream, notes)
        versions = dict(up.versions)
    assert versions[A] >= 2
    found = [e["properties"] for e in double.entities(AUDIT_BLUEPRINT).values()]  # what Port received
    events = [p for p in found if p.get("event_type") == "resource_subscribe"]
    outcome = {(e["exposed_name"], e["status"]) for e in events}
    assert (A, "Completed") in outcome and (PRIVATE, "Denied") in outcome, events
    denied = next(e for e in events if e["status"] == "Denied")
    assert denied["server"] == "watched" and "allowed_resources" in denied["error"]


async def _handshake_ide(ide: Any, up: Watched, upstream: str, notes: Notifications) -> None:
    """``resources/subscribe`` twice for one URI subscribes the server once; the private doc is refused with the
    allowlist named; an update reaches the IDE as ``notifications/resources/updated``; after ``unsubscribe`` none
    does, and the server is let go."""
    caps = ide.server_capabilities
    assert caps.resources is not None and caps.resources.subscribe
    await ide.subscribe_resource(A)
    await ide.subscribe_resource(B)
    with pytest.raises(MCPError) as denied:
        await ide.subscribe_resource(PRIVATE)
    assert "allowed_resources" in denied.value.error.message
    await wait_for(_holds(lambda: subscribed_upstream(up, upstream) == {A, B}), "the server subscribed to a and b")
    if upstream == "legacy":
        assert up.subscribed.count(A) == 1

    await touch(ide, A)
    await wait_for(_holds(lambda: A in updates(notes)), "the update of a")
    await touch(ide, PRIVATE)  # not subscribed (denied): no update
    await ide.unsubscribe_resource(A)
    await wait_for(_holds(lambda: subscribed_upstream(up, upstream) == {B}), "the server let go of a")
    await touch(ide, A)
    await touch(ide, B)
    await wait_for(_holds(lambda: B in updates(notes)), "the update of b")
    assert updates(notes) == [A, B]


async def _modern_ide(ide: Any, up: Watched, upstream: str) -> None:
    """A listen stream naming a and the private doc is acknowledged with a only; an update of a comes as an event on
    it; when the stream ends, the server is let go (the capability itself: test_eras)."""
    async with ide.listen(resource_subscriptions=[A, PRIVATE]) as sub:
        assert list(sub.honored.resource_subscriptions or ()) == [A]
        await wait_for(_holds(lambda: subscribed_upstream(up, upstream) == {A}), "the server subscribed to a")
        await touch(ide, PRIVATE)
        await touch(ide, A)
        with anyio.fail_after(15):
            event = await sub.__anext__()
        assert isinstance(event, ResourceUpdated) and event.uri == A
    await wait_for(_holds(lambda: subscribed_upstream(up, upstream) == set()), "the server let go of a")


def _holds(check: Any) -> Any:
    async def predicate() -> bool:
        return bool(check())

    return predicate
