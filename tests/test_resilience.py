"""One failure stays local: dead, restarted, silent and slow upstreams, and startup before upstreams are back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from harness import LocalUpstream, Notifications, SilentServer, bridge_client, raw_call, tool_names, write_config

pytestmark = pytest.mark.anyio


async def test_killed_upstream_does_not_affect_the_other_and_recovers_after_restart(tmp_path: Path) -> None:
    alpha = LocalUpstream("alpha", tmp_path).start()
    beta = LocalUpstream("beta", tmp_path).start()
    try:
        config = write_config(
            tmp_path / "config.yaml",
            {"alpha": alpha.server_config(), "beta": beta.server_config()},
            timeouts={"connect": 2, "call": 10},
        )
        async with bridge_client(config, tmp_path / "home") as client:
            assert (await raw_call(client, "alpha__echo", {"text": "1"}))["content"][0]["text"] == "alpha: 1"
            assert (await raw_call(client, "beta__echo", {"text": "1"}))["content"][0]["text"] == "beta: 1"

            alpha.kill()
            # The other server is untouched.
            for i in range(5):
                got = await raw_call(client, "beta__echo", {"text": str(i)})
                assert got["content"][0]["text"] == f"beta: {i}"
            # The dead one fails with an error that names it, in bounded time.
            started = time.monotonic()
            with pytest.raises(MCPError) as err:
                await raw_call(client, "alpha__echo", {"text": "dead"})
            assert "alpha" in err.value.error.message
            assert time.monotonic() - started < 8

            alpha.start()  # same port: the bridge must recover without the IDE restarting
            with anyio.fail_after(30):
                while True:
                    try:
                        got = await raw_call(client, "alpha__echo", {"text": "back"})
                        break
                    except MCPError:
                        await anyio.sleep(0.2)
            assert got["content"][0]["text"] == "alpha: back"
            assert (await raw_call(client, "beta__echo", {"text": "2"}))["content"][0]["text"] == "beta: 2"
    finally:
        alpha.kill()
        beta.kill()


async def test_restarted_upstream_session_is_renewed_transparently(tmp_path: Path) -> None:
    """After a restart the old session id is unknown ("session not found"); the call is re-sent on a new session."""
    alpha = LocalUpstream("alpha", tmp_path).start()
    try:
        config = write_config(tmp_path / "config.yaml", {"alpha": alpha.server_config()})
        async with bridge_client(config, tmp_path / "home") as client:
            await raw_call(client, "alpha__echo", {"text": "before"})
            alpha.restart()
            got = await raw_call(client, "alpha__echo", {"text": "after"})
        assert got["content"][0]["text"] == "alpha: after"
    finally:
        alpha.kill()


async def test_silent_upstream_leaves_others_alone_and_its_calls_time_out_naming_it(tmp_path: Path) -> None:
    alpha = LocalUpstream("alpha", tmp_path).start()
    home = tmp_path / "home"
    home.mkdir()
    try:
        with SilentServer() as silent:
            # A previous run saw the silent server's tool: the IDE gets it from the disk cache.
            cache = {
                "version": 1,
                "servers": {"silent": {"url": silent.url, "tools": [{"name": "x", "inputSchema": {"type": "object"}}]}},
            }
            (home / "catalog.json").write_text(json.dumps(cache))
            config = write_config(
                tmp_path / "config.yaml",
                {"alpha": alpha.server_config(), "silent": {"url": silent.url, "allowed_tools": ["*"]}},
                timeouts={"connect": 1.5, "call": 5, "startup_wait": 1},
            )
            async with bridge_client(config, home) as client:
                started = time.monotonic()
                names = await tool_names(client)
                assert time.monotonic() - started < 5
                assert "alpha__echo" in names and "silent__x" in names
                assert (await raw_call(client, "alpha__echo", {"text": "ok"}))["content"][0]["text"] == "alpha: ok"
                with pytest.raises(MCPError) as err:
                    await raw_call(client, "silent__x")
                assert "silent" in err.value.error.message and "timed out" in err.value.error.message
                # Still fine afterwards.
                assert (await raw_call(client, "alpha__echo", {"text": "ok"}))["content"][0]["text"] == "alpha: ok"
    finally:
        alpha.kill()


async def test_call_that_never_answers_times_out_with_the_server_named_and_is_cancelled_upstream(
    tmp_path: Path,
) -> None:
    alpha = LocalUpstream("alpha", tmp_path).start()
    try:
        config = write_config(tmp_path / "config.yaml", {"alpha": alpha.server_config()}, timeouts={"call": 1.5})
        async with bridge_client(config, tmp_path / "home") as client:
            with pytest.raises(MCPError) as err:
                await raw_call(client, "alpha__wait_forever")
            assert "alpha" in err.value.error.message and "timed out" in err.value.error.message
            with anyio.fail_after(10):
                while "wait_forever" not in (await raw_call(client, "alpha__stats"))["structuredContent"]["cancelled"]:
                    await anyio.sleep(0.05)
    finally:
        alpha.kill()


async def test_tools_list_does_not_wait_for_a_down_server_and_announces_it_when_it_arrives(tmp_path: Path) -> None:
    alpha = LocalUpstream("alpha", tmp_path)  # not started yet: its port is reserved in the config
    beta = LocalUpstream("beta", tmp_path).start()
    try:
        config = write_config(
            tmp_path / "config.yaml",
            {"alpha": alpha.server_config(), "beta": beta.server_config()},
            timeouts={"startup_wait": 1, "connect": 2},
        )
        notes = Notifications()
        async with bridge_client(config, tmp_path / "home", notifications=notes) as client:
            started = time.monotonic()
            names = await tool_names(client)
            assert time.monotonic() - started < 4
            assert "beta__echo" in names and not any(n.startswith("alpha__") for n in names)
            notes.rearm()
            alpha.start()
            with anyio.fail_after(30):
                while not any(n.startswith("alpha__") for n in await tool_names(client)):
                    await notes.tools_changed.wait()
                    notes.rearm()
            assert (await raw_call(client, "alpha__echo", {"text": "late"}))["content"][0]["text"] == "alpha: late"
    finally:
        alpha.kill()
        beta.kill()


async def test_a_restarted_bridge_lists_cached_tools_before_its_servers_are_back(tmp_path: Path) -> None:
    alpha = LocalUpstream("alpha", tmp_path).start()
    home = tmp_path / "home"
    config = write_config(tmp_path / "config.yaml", {"alpha": alpha.server_config()}, timeouts={"startup_wait": 0.5})
    try:
        async with bridge_client(config, home) as client:
            first = await tool_names(client)
        alpha.kill()
        async with bridge_client(config, home) as client:
            cached = await tool_names(client)
        assert cached == first and "alpha__echo" in cached
    finally:
        alpha.kill()


async def test_a_call_to_a_dead_server_fails_fast_instead_of_waiting_out_the_backoff(tmp_path: Path) -> None:
    from harness import free_port

    home = tmp_path / "home"
    home.mkdir()
    url = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens: connections are refused at once
    cache = {
        "version": 1,
        "servers": {"dead": {"url": url, "tools": [{"name": "x", "inputSchema": {"type": "object"}}]}},
    }
    (home / "catalog.json").write_text(json.dumps(cache))
    config = write_config(
        tmp_path / "config.yaml", {"dead": {"url": url, "allowed_tools": ["*"]}}, timeouts={"connect": 10}
    )
    async with bridge_client(config, home) as client:
        assert "dead__x" in await tool_names(client)
        await anyio.sleep(2.5)  # let the supervisor's backoff grow past a second
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(MCPError) as err:
                await raw_call(client, "dead__x")
            assert time.monotonic() - started < 1.5
            assert "dead" in err.value.error.message and "not reachable" in err.value.error.message


@pytest.mark.usefixtures("ide_mode")
@pytest.mark.parametrize(
    "code",
    [-32000, -32001, -32099, -32098],
    ids=["sdk-connection-closed", "sdk-timeout", "bridge-not-sent", "bridge-http-error"],
)
async def test_a_servers_error_with_a_code_the_bridge_or_sdk_uses_itself_is_the_servers(
    tmp_path: Path, code: int
) -> None:
    """Codes the SDK (-32000 a closed connection, -32001 a timeout) and the bridge (-32099 never sent, -32098 an HTTP
    failure) use for their own errors lie in the range JSON-RPC leaves to servers, and -32000 is many servers' code
    for any failure. A server answering with one is the server's answer: its message reaches the IDE, the call is
    not sent again (never-sent is re-sent: the server would run it twice), and the session is kept."""
    from hostile import Hostile, serving, tool

    upstream = Hostile("h", tools=[tool("echo", "Echo.")])
    upstream.fail_calls.append(MCPError(code, "the server's own failure"))
    config = write_config(tmp_path / "config.yaml", {"h": upstream.server_config()})
    async with serving(upstream), bridge_client(config, tmp_path / "home") as client:
        with pytest.raises(MCPError) as failed:
            await raw_call(client, "h__echo", {})
        assert "the server's own failure" in failed.value.error.message, failed.value.error
        assert [p.method for p in upstream.posts].count("tools/call") == 1  # not sent again
        posts = len(upstream.posts)
        result = await raw_call(client, "h__echo", {})
        assert result["content"][0]["text"] == "h ran echo"
        # the next call went on the same session: no handshake or discovery in between
        assert [p.method for p in upstream.posts[posts:]] == ["tools/call"], upstream.methods()[posts:]


def test_the_bridges_and_the_sdks_own_errors_are_told_from_a_servers_by_their_shape() -> None:
    import mcp_types as types

    from mcp_bridge.upstream.own_errors import MARK, local_data, ours
    from mcp_bridge.upstream.transport import NOT_SENT

    closed, timeout = types.CONNECTION_CLOSED, types.REQUEST_TIMEOUT
    assert ours(MCPError(closed, "Connection closed"), closed)
    assert ours(MCPError(closed, "SSE stream failed: the event exceeded the limit"), closed)
    assert ours(MCPError(closed, "SSE stream ended without a response"), closed)
    assert ours(MCPError(timeout, "Request 'tools/call' timed out"), timeout)
    assert ours(MCPError(NOT_SENT, "could not connect: refused", local_data()), NOT_SENT)
    # a server's answers with those codes
    assert not ours(MCPError(closed, "Internal error"), closed)
    assert not ours(MCPError(closed, "Connection closed", {"detail": 1}), closed)  # the SDK's carry no data
    assert not ours(MCPError(timeout, "the database timed out"), timeout)
    assert not ours(MCPError(NOT_SENT, "could not connect: refused"), NOT_SENT)
    assert not ours(MCPError(NOT_SENT, "could not connect", {MARK: "a-guess"}), NOT_SENT)
    assert not ours(MCPError(closed, "Connection closed"), timeout)  # another code
