"""``tools/call`` through the upstream's transport directly (``upstream.wire.call_direct``): on the wire and in what it
returns or raises, the same as the SDK session's own ``send_request``, case by case against a scripted server, in
both protocol eras (the server speaks only the handshake era, or only 2026-07-28)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from hostile import MODERN_DISCOVER, read_body
from mcp_bridge.config import ServerConfig, TimeoutsConfig
from mcp_bridge.governance.catalog import Listing
from mcp_bridge.upstream import wire as upstream_module
from mcp_bridge.upstream.supervisor import Upstream
from mcp_bridge.upstream.wire import call_direct as _call_direct
from mcp_bridge.upstream.wire import send_raw as _send

pytestmark = pytest.mark.anyio

READ_TIMEOUT = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sse(*messages: dict[str, Any], ids: bool = False) -> list[bytes]:
    return [
        (f"id: e{i}\r\n" if ids else "").encode() + b"event: message\r\ndata: " + json.dumps(m).encode() + b"\r\n\r\n"
        for i, m in enumerate(messages)
    ]


@dataclass
class Reply:
    status: int = 200
    content_type: str = "text/event-stream"
    chunks: list[bytes] = field(default_factory=list)
    delay: float = 0.0
    """Seconds between the headers and the body."""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


RESULT = {
    "content": [{"type": "text", "text": "hï ✓"}, {"type": "text", "text": "two", "annotations": {"priority": 0.5}}],
    "structuredContent": {"a": 1, "nested": {"n": None}},
    "_meta": {"vendor/x": [1, 2.5, "三"]},
    "isError": False,
}


def _answer(request: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request["id"], **extra}


def _script(request: dict[str, Any]) -> Reply:
    """How the scripted server answers a ``tools/call``, by the tool's name."""
    tool = request["params"]["name"]
    token = (request["params"].get("_meta") or {}).get("progressToken")
    match tool:
        case "json":
            return Reply(content_type="application/json", chunks=[json.dumps(_answer(request, result=RESULT)).encode()])
        case "sse":
            progress = {"progressToken": token, "progress": 1, "total": 2, "message": "half"}
            return Reply(
                chunks=_sse(
                    {"jsonrpc": "2.0", "method": "notifications/progress", "params": progress},
                    {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"},
                    {"jsonrpc": "2.0", "id": "srv-ping", "method": "ping"},
                    {"jsonrpc": "2.0", "method": "notifications/progress", "params": {**progress, "progress": True}},
                    _answer(request, result=RESULT),
                    ids=True,
                )
            )
        case "later_fields":
            result = {**RESULT, "ttlMs": 5, "cacheScope": "private", "resultType": "complete", "unknown": 1}
            return Reply(chunks=_sse(_answer(request, result=result)))
        case "invalid":
            return Reply(chunks=_sse(_answer(request, result={"content": "not a list"})))
        case "rpc_error":
            error = {"code": -32602, "message": "bad arguments", "data": {"k": [1]}}
            return Reply(chunks=_sse(_answer(request, error=error)))
        case "http_500_jsonrpc":
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": "boom"}}
            return Reply(500, "application/json", [json.dumps(body).encode()])
        case "http_500_plain":
            return Reply(500, "text/plain", [b"oops"])
        case "http_404":
            return Reply(404, "text/plain", [b"no such session"])
        case "accepted":
            return Reply(202, "text/plain", [])
        case "ended":
            return Reply(
                chunks=_sse({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info"}})
            )
        case "hang":
            return Reply(delay=3)
        case "weird_type":
            return Reply(200, "text/plain", [b"hello"])
        case "sets_cookie":
            answer = json.dumps(_answer(request, result=RESULT)).encode()
            return Reply(content_type="application/json", chunks=[answer], headers=[(b"set-cookie", b"lb=node-2")])
        case "string_id":
            answer = {"jsonrpc": "2.0", "id": str(request["id"]), "result": RESULT}
            return Reply(content_type="application/json", chunks=[json.dumps(answer).encode()])
        case "wrong_id":
            answer = {"jsonrpc": "2.0", "id": 999_999, "result": RESULT}
            return Reply(content_type="application/json", chunks=[json.dumps(answer).encode()])
        case _:
            params = {k: v for k, v in request["params"].items() if k != "_meta"}  # its progressToken is the id
            return Reply(chunks=_sse(_answer(request, result={"content": [], "structuredContent": params})))


class Scripted:
    """A raw streamable-HTTP MCP endpoint: the handshake (or, ``modern``, ``server/discover`` and no handshake) and
    tools/list as any server, tools/call as scripted; it records every POST (headers and body) it gets."""

    def __init__(self, modern: bool = False) -> None:
        self.modern = modern
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.clients: list[Any] = []
        """The client address (host, port) of each POST: one per connection used."""
        self.bounced: set[Any] = set()

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.posts if body]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await self._reply(send, Reply(405 if scope["method"] == "GET" else 200, "text/plain"))
            return
        body = await read_body(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.posts.append((headers, body))
        self.clients.append(scope.get("client"))
        message = json.loads(body)
        method, request_id = message.get("method"), message.get("id")
        bounce = (message.get("params") or {}).get("name") if method == "tools/call" else None
        if bounce in ("unauthorized_once", "redirect_once") and request_id not in self.bounced:
            self.bounced.add(request_id)  # the first time this request comes: not here, not yet
            if bounce == "unauthorized_once":
                await self._reply(send, Reply(401, "application/json", [b"{}"]))
            else:
                await send({"type": "http.response.start", "status": 307, "headers": [(b"location", b"/mcp/")]})
                await send({"type": "http.response.body", "body": b""})
            return
        if method is None or request_id is None:  # a notification, or the client's answer to our ping
            await self._reply(send, Reply(202, "text/plain"))
        elif method == "server/discover" and self.modern:
            answer = json.dumps(_answer(message, result=MODERN_DISCOVER)).encode()
            await self._reply(send, Reply(content_type="application/json", chunks=[answer]))
        elif method == "initialize" and self.modern:
            error = {"code": -32022, "message": "Unsupported protocol version", "data": {"supported": ["2026-07-28"]}}
            answer = json.dumps(_answer(message, error=error)).encode()
            await self._reply(send, Reply(400, "application/json", [answer]))
        elif method == "initialize":
            result = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "scripted", "version": "1"},
            }
            answer = json.dumps(_answer(message, result=result)).encode()
            await self._reply(send, Reply(content_type="application/json", chunks=[answer]), session=True)
        elif method == "tools/list":
            result: dict[str, Any] = {"tools": [{"name": "t", "inputSchema": {"type": "object"}}]}
            if self.modern:
                result.update(resultType="complete", ttlMs=0, cacheScope="private")
            await self._reply(
                send,
                Reply(content_type="application/json", chunks=[json.dumps(_answer(message, result=result)).encode()]),
            )
        elif method == "tools/call":
            await self._reply(send, _script(message))
        elif method == "prompts/list":
            listed: dict[str, Any] = {"prompts": []}
            if self.modern:
                listed.update(resultType="complete", ttlMs=0, cacheScope="private")
            answer = json.dumps(_answer(message, result=listed)).encode()
            await self._reply(send, Reply(content_type="application/json", chunks=[answer]))
        else:
            await self._reply(
                send, Reply(content_type="application/json", chunks=[json.dumps(_answer(message, result={})).encode()])
            )

    @staticmethod
    async def _reply(send: Send, reply: Reply, *, session: bool = False) -> None:
        headers = [(b"content-type", reply.content_type.encode()), *reply.headers]
        if session:
            headers.append((b"mcp-session-id", b"scripted-session-1"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await anyio.sleep(reply.delay)
        for chunk in reply.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@dataclass
class Connected:
    upstream: Upstream
    server: Scripted
    listings: list[Listing]


ERAS = ["handshake", "modern"]


@pytest.fixture(params=ERAS)
def era(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def connected(era: str = "handshake") -> AsyncIterator[Connected]:
    """The scripted server of ``era`` on a free port (in this process), and one upstream connected to it."""
    import uvicorn

    server, port = Scripted(modern=era == "modern"), _free_port()
    web = uvicorn.Server(
        uvicorn.Config(server, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1)
    )
    listings: list[Listing] = []
    url = f"http://127.0.0.1:{port}/mcp"
    timeouts = TimeoutsConfig(connect=5, call=READ_TIMEOUT)
    up = Upstream("s", ServerConfig(url=url), timeouts, lambda _, listing: listings.append(listing))
    async with anyio.create_task_group() as tg:
        tg.start_soon(web.serve)
        with anyio.fail_after(10):
            while not web.started:
                await anyio.sleep(0.01)
        try:
            async with anyio.create_task_group() as client:
                client.start_soon(up.run)
                with anyio.fail_after(10):
                    session = await up._wait_session()
                assert session.protocol_version == ("2026-07-28" if era == "modern" else "2025-11-25")
                yield Connected(up, server, listings)
                client.cancel_scope.cancel()
        finally:
            web.should_exit = True


Outcome = tuple[Any, ...]


async def _outcome(call: Callable[[], Any]) -> Outcome:
    try:
        return ("result", await call())
    except MCPError as exc:
        return ("error", exc.error.code, exc.error.message, exc.error.data)
    except ValidationError as exc:
        return ("invalid", exc.error_count())


def _request(name: str, arguments: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> Any:
    params: dict[str, Any] = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    if meta is not None:
        params["_meta"] = meta
    return types.CallToolRequest.model_validate({"method": "tools/call", "params": params})


async def _both(c: Connected, request: Any, *, progress: bool = False) -> tuple[Outcome, Outcome, list[Any], list[Any]]:
    """The direct path's and the session's outcomes for ``request``, and the progress each relayed."""
    session, wire = c.upstream._session, c.upstream._wire
    assert session is not None and wire is not None
    seen: tuple[list[Any], list[Any]] = ([], [])

    def relay(into: list[Any]) -> Any:
        async def callback(value: float, total: float | None, message: str | None) -> None:
            into.append((value, total, message))

        return callback if progress else None

    direct = await _outcome(
        lambda: _call_direct(wire, session, request, read_timeout=READ_TIMEOUT, progress=relay(seen[0]))
    )
    sdk = await _outcome(
        lambda: _send(session, request, request_read_timeout_seconds=READ_TIMEOUT, progress_callback=relay(seen[1]))
    )
    return direct, sdk, seen[0], seen[1]


def _calls(server: Scripted) -> list[tuple[dict[str, str], bytes]]:
    return [(h, b) for h, b in server.posts if json.loads(b).get("method") == "tools/call"]


def _same_request(direct: tuple[dict[str, str], bytes], sdk: tuple[dict[str, str], bytes]) -> None:
    """The same POST, byte for byte, but for the request id (which is also the progress token) and so the length."""
    (direct_headers, direct_body), (sdk_headers, sdk_body) = direct, sdk
    direct_id, sdk_id = json.loads(direct_body)["id"], json.loads(sdk_body)["id"]
    assert direct_id != sdk_id  # ids from two counters that never meet

    def normalized(body: bytes, request_id: int) -> bytes:
        for key in (b'"id":', b'"progressToken":'):
            body = body.replace(key + str(request_id).encode(), key + b"0")
        return body

    assert normalized(direct_body, direct_id) == normalized(sdk_body, sdk_id)
    assert {k: v for k, v in direct_headers.items() if k != "content-length"} == {
        k: v for k, v in sdk_headers.items() if k != "content-length"
    }


@pytest.mark.parametrize(
    "case",
    [
        "json",
        "later_fields",
        "invalid",
        "rpc_error",
        "http_500_jsonrpc",
        "http_500_plain",
        "http_404",
        "accepted",
        "ended",
        "weird_type",
        "string_id",
    ],
)
async def test_each_kind_of_answer_comes_out_as_the_sessions(case: str, era: str) -> None:
    async with connected(era) as c:
        direct, sdk, _, _ = await _both(c, _request(case, {"x": 1}))
        assert direct == sdk
        posted = _calls(c.server)
        assert len(posted) == 2
        _same_request(*posted)
    modern = era == "modern"
    if case in ("json", "string_id"):  # at 2026-07-28 a result that does not say its type is complete
        assert direct == ("result", {**RESULT, "resultType": "complete"} if modern else RESULT)
    if case == "later_fields":
        assert direct[1]["unknown"] == 1
        assert ("resultType" in direct[1]) is modern  # a later revision's field dropped from a handshake-era result
    if case == "http_404" and not modern:  # what upstream.py retries on (with no session, a 404 is no session's)
        assert direct[1:3] == (types.INVALID_REQUEST, "Session terminated")


@pytest.mark.parametrize(
    ("arguments", "meta"),
    [
        (None, None),
        ({}, None),
        ({"text": "ünïcode ✓ \u2028", "n": None, "deep": {"x": [None, 1.0, 10**20]}}, None),
        ({"a": 1}, {"vendor/trace": "abc", "nested": {"k": None}, "dropped": None}),
    ],
)
async def test_the_request_on_the_wire_is_the_sessions(arguments: dict[str, Any] | None, meta: Any, era: str) -> None:
    async with connected(era) as c:
        for progress in (False, True):
            direct, sdk, _, _ = await _both(c, _request("echo", arguments, meta), progress=progress)
            assert direct == sdk
        posted = _calls(c.server)
    assert len(posted) == 4
    _same_request(posted[0], posted[1])
    _same_request(posted[2], posted[3])
    assert "progressToken" not in json.dumps(json.loads(posted[0][1])["params"])
    assert json.loads(posted[2][1])["params"]["_meta"]["progressToken"] == json.loads(posted[2][1])["id"]
    headers, body = posted[0]
    if era == "modern":  # what the 2026-07-28 session stamps on every request: the era's _meta and headers
        stamped = json.loads(body)["params"]["_meta"]
        assert stamped["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
        assert {"io.modelcontextprotocol/clientInfo", "io.modelcontextprotocol/clientCapabilities"} <= set(stamped)
        assert (headers["mcp-method"], headers["mcp-name"]) == ("tools/call", "echo")
    else:
        assert "mcp-method" not in headers and "_meta" not in (json.loads(body)["params"] if meta is None else {})
    assert headers["mcp-protocol-version"] == ("2026-07-28" if era == "modern" else "2025-11-25")


async def test_progress_notifications_and_server_requests_on_the_stream_are_handled_as_the_session_does(
    era: str,
) -> None:
    async with connected(era) as c:
        listed = len(c.listings)
        direct, sdk, direct_progress, sdk_progress = await _both(c, _request("sse"), progress=True)
        assert direct == sdk == ("result", {**RESULT, "resultType": "complete"} if era == "modern" else RESULT)
        assert direct_progress == sdk_progress == [(1.0, 2.0, "half")]  # the bool progress is dropped by both
        if era == "modern":
            return  # a 2026-07-28 server sends no requests and no list changes on a request's stream
        with anyio.fail_after(5):  # the session answered the server's pings and re-listed on list_changed, twice
            while (
                sum(1 for m in c.server.messages() if m.get("id") == "srv-ping" and "result" in m) < 2
                or len(c.listings) < listed + 1
            ):
                await anyio.sleep(0.02)


async def test_an_answer_with_another_id_fails_at_once_where_the_session_waits_out_the_timeout(era: str) -> None:
    """The one difference: a JSON answer naming another request never reaches the session's waiter, which times
    out; the direct path knows the POST is over and says so."""
    async with connected(era) as c:
        with anyio.fail_after(READ_TIMEOUT / 2):
            direct = await _outcome(
                lambda: _call_direct(
                    c.upstream._wire,
                    c.upstream._session,
                    _request("wrong_id"),
                    read_timeout=READ_TIMEOUT,
                    progress=None,
                )
            )
        assert direct[0:2] == ("error", types.INTERNAL_ERROR)
        sdk = await _outcome(
            lambda: _send(c.upstream._session, _request("wrong_id"), request_read_timeout_seconds=READ_TIMEOUT)
        )
        assert sdk[0:2] == ("error", types.REQUEST_TIMEOUT)


async def test_upstream_request_uses_the_direct_path_for_calls_only(era: str) -> None:
    async with connected(era) as c:
        result = await c.upstream.request(_request("echo", {"q": 1}))
        expected = {"content": [], "structuredContent": {"name": "echo", "arguments": {"q": 1}}}
        assert result == ({**expected, "resultType": "complete"} if era == "modern" else expected)
        await c.upstream.request(types.ListPromptsRequest())
        ids = [m["id"] for m in c.server.messages() if m.get("method") in ("tools/call", "prompts/list")]
    assert ids[0] >= 1 << 30 > ids[1]


async def test_without_the_sdk_internals_calls_take_the_sessions_way(monkeypatch: pytest.MonkeyPatch, era: str) -> None:
    monkeypatch.setattr(upstream_module, "DIRECT_CALLS", False)
    async with connected(era) as c:
        assert c.upstream._wire is None
        result = await c.upstream.request(_request("echo", {"q": 1}))
        assert result["structuredContent"] == {"name": "echo", "arguments": {"q": 1}}
        (call,) = [m for m in c.server.messages() if m.get("method") == "tools/call"]
    assert call["id"] < 1 << 30


async def _give_up_both_ways(c: Connected) -> None:
    """A call that times out, then one whose caller stops waiting, each both ways (direct, then the session's): both
    time out alike."""
    session, wire = c.upstream._session, c.upstream._wire
    assert session is not None and wire is not None
    direct = await _outcome(lambda: _call_direct(wire, session, _request("hang"), read_timeout=0.2, progress=None))
    sdk = await _outcome(lambda: _send(session, _request("hang"), request_read_timeout_seconds=0.2))
    assert direct == sdk == ("error", types.REQUEST_TIMEOUT, "Request 'tools/call' timed out", None)
    for call in (
        lambda: _call_direct(wire, session, _request("hang"), read_timeout=READ_TIMEOUT, progress=None),
        lambda: _send(session, _request("hang"), request_read_timeout_seconds=READ_TIMEOUT),
    ):
        with anyio.move_on_after(0.2):
            await call()


async def test_a_timed_out_or_cancelled_call_is_cancelled_upstream_as_the_session_does() -> None:
    """Handshake era: a ``notifications/cancelled`` for each call given up."""
    async with connected() as c:
        await _give_up_both_ways(c)
        with anyio.fail_after(5):
            while len(cancels := [m for m in c.server.messages() if m.get("method") == "notifications/cancelled"]) < 4:
                await anyio.sleep(0.02)
        calls = [m["id"] for m in c.server.messages() if m.get("method") == "tools/call"]
    assert [m["params"]["requestId"] for m in cancels] == calls
    reasons = [m["params"]["reason"] for m in cancels]
    assert reasons == ["timed out after 0.2s"] * 2 + ["caller cancelled"] * 2


async def test_at_2026_07_28_a_call_given_up_is_cancelled_by_aborting_its_post_as_the_session_does() -> None:
    """2026-07-28: closing the request's stream is its cancellation; no ``notifications/cancelled`` is sent (the
    era's HTTP wire has none), and nothing of the call is left behind in the transport."""
    async with connected("modern") as c:
        await _give_up_both_ways(c)
        assert c.upstream._wire is not None
        with anyio.fail_after(5):
            while c.upstream._wire.transport._in_flight_posts:  # every POST aborted (a hang answers only after 3 s)
                await anyio.sleep(0.02)
        await anyio.sleep(0.3)
        assert len(_calls(c.server)) == 4
        assert not [m for m in c.server.messages() if m.get("method") == "notifications/cancelled"]


@pytest.mark.parametrize("bounce", ["unauthorized_once", "redirect_once"])
async def test_an_answer_for_the_auth_flow_or_a_redirect_sends_the_call_again_the_transports_way(
    bounce: str, era: str
) -> None:
    """401/403 (the auth flow answers them) and redirects (followed within the origin) mean the server did not run
    the call: the direct call's own connection gives it to the transport, which sends it again its way."""
    async with connected(era) as c:
        assert c.upstream._wire is not None and c.upstream._wire.lean is not None
        result = await c.upstream.request(_request(bounce, {"q": 1}))
        assert result["structuredContent"] == {"name": bounce, "arguments": {"q": 1}}
        posted = _calls(c.server)
    assert len(posted) == 2
    assert posted[0][1] == posted[1][1]  # the same request, byte for byte (the same id: it ran once)


async def test_direct_calls_keep_one_connection_and_the_switch_turns_that_off(
    monkeypatch: pytest.MonkeyPatch, era: str
) -> None:
    async with connected(era) as c:
        for i in range(4):
            await c.upstream.request(_request("echo", {"i": i}))
        calls = [
            client for client, (_, body) in zip(c.server.clients, c.server.posts, strict=True) if b"tools/call" in body
        ]
    assert len(calls) == 4 and len(set(calls)) == 1
    monkeypatch.setenv("MCP_BRIDGE_LEAN_HTTP", "0")
    async with connected(era) as c:
        assert c.upstream._wire is not None and c.upstream._wire.lean is None
        result = await c.upstream.request(_request("echo", {"i": 0}))
        assert result["structuredContent"]["arguments"] == {"i": 0}


async def test_a_cookie_the_server_sets_is_kept_and_sent_from_then_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A load balancer's sticky-session cookie set on a direct call's answer goes into the client's jar, and later
    calls take httpx2's way, which sends it (the lean way does not do cookies)."""
    sent: list[bool] = []
    real = upstream_module._lean_post

    async def counting(*args: Any) -> bool:
        sent.append(await real(*args))  # False: not sent the lean way (the transport's way sends it)
        return sent[-1]

    monkeypatch.setattr(upstream_module, "_lean_post", counting)
    async with connected() as c:
        await c.upstream.request(_request("sets_cookie"))
        await c.upstream.request(_request("echo"))
        posted = _calls(c.server)
    assert sent == [True, False]
    assert "cookie" not in posted[0][0] and posted[1][0]["cookie"] == "lb=node-2"
