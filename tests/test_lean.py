"""The lean HTTP/1.1 client of direct tool calls (``upstream.lean``) against servers that answer byte by byte as
scripted: framing of every kind, kept connections (and ones the server closed meanwhile), hostile answers, limits,
TLS; and, through a real upstream connection, the answers that send a call the transport's way instead."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx2
import pytest
from anyio.streams.tls import TLSListener

from mcp_bridge.upstream import lean
from mcp_bridge.upstream.lean import LeanPool, Lost, NotSent

pytestmark = pytest.mark.anyio

Handler = Callable[["Conn"], Awaitable[None]]


@dataclass
class Conn:
    """One connection the scripted server accepted: read requests from it, write raw bytes to it."""

    stream: anyio.abc.ByteStream
    buffer: bytes = b""

    async def request(self) -> bytes | None:
        """The next request's body (by its Content-Length), or ``None`` when the client closed the connection."""
        while b"\r\n\r\n" not in self.buffer:
            try:
                self.buffer += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return None
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = next(int(v) for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n")) if k == b"content-length")
        while len(rest) < length:
            rest += await self.stream.receive()
        self.buffer = rest[length:]
        return rest[:length]

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)


@dataclass
class Scripted:
    """A raw HTTP server on loopback; ``handler`` runs per connection. It counts connections and requests."""

    handler: Handler
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


@asynccontextmanager
async def served(handler: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[Scripted, int]]:
    server = Scripted(handler)
    listener: Any = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610
    if tls is not None:
        listener = TLSListener(listener, tls, standard_compatible=False)

    async def each(stream: anyio.abc.ByteStream) -> None:
        server.connections += 1
        async with stream:
            with suppress(
                anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, ssl.SSLError, OSError
            ):
                await handler(Conn(stream))

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, each)
        yield server, port
        tg.cancel_scope.cancel()


@asynccontextmanager
async def pool_for(port: int, *, scheme: str = "http", ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Any]:
    async with anyio.create_task_group() as tg, httpx2.AsyncClient() as http:
        host = "localhost" if scheme == "https" else "127.0.0.1"
        pool = LeanPool(
            httpx2.URL(f"{scheme}://{host}:{port}/mcp"),
            ssl_context=ssl_context,
            connect_timeout=2,
            tasks=tg,
            default_headers=http.headers,
        )

        async def post(body: bytes = b'{"x":1}', headers: dict[str, str] | None = None) -> Any:
            return await pool.post(headers or {"content-type": "application/json"}, body, http)

        post.pool = pool  # type: ignore[attr-defined]
        post.http = http  # type: ignore[attr-defined]
        yield post
        await pool.aclose()
        tg.cancel_scope.cancel()


def answer(body: bytes, *, extra: bytes = b"", status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body


async def test_one_kept_connection_serves_call_after_call() -> None:
    async def handler(conn: Conn) -> None:
        while (body := await conn.request()) is not None:
            await conn.send(answer(b'{"echo":' + body + b"}", extra=b"content-type: application/json\r\n"))

    async with served(handler) as (server, port), pool_for(port) as post:
        for i in range(5):
            response = await post(json.dumps({"i": i}).encode())
            assert response.status_code == 200
            assert json.loads(await response.aread()) == {"echo": {"i": i}}
    assert server.connections == 1


async def test_the_request_on_the_wire_is_httpx2s() -> None:
    captured: list[bytes] = []

    async def raw(conn: Conn) -> None:
        while b"\r\n\r\n" not in conn.buffer:
            conn.buffer += await conn.stream.receive()
        captured.append(conn.buffer)
        await conn.send(answer(b"{}"))

    headers = {"content-type": "application/json", "Mcp-Method": "tools/call", "accept": "application/json"}
    async with served(raw) as (_, port), pool_for(port) as post:
        await (await post(b"{}", headers)).aread()
        expected = post.http.build_request("POST", f"http://127.0.0.1:{port}/mcp", headers=headers, content=b"{}")
    head = captured[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /mcp HTTP/1.1"
    sent = {k.lower(): v for k, _, v in (line.partition(b": ") for line in head[1:])}
    assert sent == {k.lower(): v for k, v in expected.headers.raw}


BOTH = b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nte\r\n0\r\n\r\n"
CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n"


CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "body", "kept"),
    [
        (CHUNKED, b"abcde", True),
        (b"HTTP/1.1 200 OK\ncontent-length: 2\n\nhi", b"hi", True),  # bare line feeds
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", b"ok", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nby", b"by", False),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nv0", b"v0", False),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\ndup", b"dup", True),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nte\r\n0\r\n\r\n",
            b"te",
            False,
        ),
    ],
    ids=["chunked", "bare-lf", "interim", "no-content", "close", "http10", "repeated-length", "length-and-chunked"],
)
async def test_every_framing_of_an_answer(raw: bytes, body: bytes, kept: bool) -> None:
    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(raw)
            if not kept:
                return

    async with served(handler) as (server, port), pool_for(port) as post:
        for _ in range(2):
            response = await post()
            assert await response.aread() == body
            await response.aclose()
    assert server.connections == (1 if kept else 2)


async def test_a_body_that_ends_with_the_connection() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"a":')
        await conn.send(b"1}")

    async with served(handler) as (server, port), pool_for(port) as post:
        for _ in range(2):
            assert json.loads(await (await post()).aread()) == {"a": 1}
    assert server.connections == 2  # never kept


async def test_a_kept_connection_the_server_closed_is_not_used_and_nothing_is_sent_twice() -> None:
    async def handler(conn: Conn) -> None:
        body = await conn.request()
        assert body is not None
        server.requests.append(body)
        await conn.send(answer(b"{}"))  # and closes, as an idle timeout would

    async with served(handler) as (server, port), pool_for(port) as post:
        for i in range(3):
            await (await post(str(i).encode())).aread()
            await anyio.sleep(0.05)
    assert server.requests == [b"0", b"1", b"2"]
    assert server.connections == 3


async def test_a_kept_connection_closed_as_the_request_goes_out_loses_it_and_a_reset_one_is_not_used() -> None:
    """The server takes the next request and closes without a byte of answer (a keep-alive timeout racing the
    request, or a crash): the call may have run, so it is lost, never sent twice. A kept connection the server reset
    while it was idle is not used: the request goes out on a new one."""

    async def taken_then_closed(conn: Conn) -> None:
        await conn.request()
        await conn.send(answer(b"{}"))
        server.requests.append(await conn.request() or b"")  # taken; the connection closes unanswered

    async with served(taken_then_closed) as (server, port), pool_for(port) as post:
        await (await post(b"a")).aread()
        post.pool._idle[0].sock = None  # as if the close came after the check before use (the race this covers)
        with pytest.raises(Lost, match="unanswered"):
            await post(b"b")
    assert server.requests == [b"b"]
    assert server.connections == 1

    requests: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]

        def serve_two() -> None:  # the first connection answers once, then is reset; the second answers
            for connection in (1, 2):
                sock, _ = listening.accept()
                with sock:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += sock.recv(65536)
                    requests.append(data.split(b"\r\n\r\n", 1)[1][:1])
                    sock.sendall(answer(b"{}"))
                    if connection == 1:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset

        thread = threading.Thread(target=serve_two, daemon=True)
        thread.start()
        async with pool_for(port) as post:
            await (await post(b"a")).aread()
            await anyio.sleep(0.1)  # the reset arrives
            await (await post(b"b")).aread()
            assert len(post.pool._conns) == 1
        thread.join(5)
    assert requests == [b"a", b"b"]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"HTTP/1.1 200 OK\r\n" + b"x-junk: " + b"a" * (lean.MAX_HEAD_BYTES + 10), "larger than"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\nabc", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", "invalid Content-Length"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not HTTP/1.x"),
        (b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\nbad header: x\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 20", "closed the connection in its answer's head"),
    ],
    ids=["huge-head", "two-lengths", "negative-length", "not-http", "folded", "space-in-name", "cut-head"],
)
async def test_a_malformed_answer_head_loses_the_call_and_the_connection(raw: bytes, error: str) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(raw)

    async with served(handler) as (_, port), pool_for(port) as post:
        with pytest.raises(Lost, match=error):
            await post()
        assert len(post.pool._conns) == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"1" * 5000,
    ],
    ids=["cut-body", "bad-chunk-size", "chunk-longer-than-size", "endless-size-line"],
)
async def test_a_malformed_or_cut_body_fails_the_read(raw: bytes) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(raw)

    async with served(handler) as (_, port), pool_for(port) as post:
        response = await post()
        with pytest.raises(httpx2.RemoteProtocolError):
            await response.aread()
        assert len(post.pool._conns) == 0


async def test_an_event_stream_closed_early_is_drained_to_keep_its_connection_or_dropped_when_it_drags() -> None:
    tail = anyio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await anyio.sleep(0.01)
        await conn.send(b"0\r\n\r\n")  # the rest comes at once: the connection is kept
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await tail.wait()  # the rest never comes

    async with served(handler) as (server, port), pool_for(port) as post:
        for kept in (True, False):
            response = await post()
            assert await response.aiter_raw().__anext__() == b"first"
            await response.aclose()
            await anyio.sleep(lean._DRAIN_SECONDS * 3)
            assert len(post.pool._idle) == (1 if kept else 0)
        tail.set()
        assert len(post.pool._conns) == 0
    assert server.connections == 1


async def test_past_the_connection_limit_a_call_takes_httpx2s_way() -> None:
    release = anyio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await release.wait()
        await conn.send(answer(b"{}"))

    async with served(handler) as (_, port), pool_for(port) as post:
        answers: list[Any] = []

        async def one() -> None:
            answers.append(await post())

        async with anyio.create_task_group() as tg:
            for _ in range(lean.MAX_CONNECTIONS):
                tg.start_soon(one)
            await anyio.lowlevel.checkpoint()  # (all of them connecting at once: the limit counts those too)
            assert await post() is None
            with anyio.fail_after(5):
                while len(post.pool._conns) < lean.MAX_CONNECTIONS:
                    await anyio.sleep(0.01)
            assert await post() is None  # not sent: the caller sends it httpx2's way
            release.set()
        assert all(a.status_code == 200 for a in answers)


async def test_what_the_lean_way_leaves_to_httpx2() -> None:
    async with pool_for(9) as post:
        assert await post(headers={"x-evil": "a\r\ninjected: 1"}) is None  # httpx2 refuses it itself
        assert await post(headers={"x-name": "ünïcode"}) is None
        post.http.cookies.set("sticky", "1")
        assert await post() is None  # cookies: httpx2's jar decides what goes where
    url = httpx2.URL("http://example.test/mcp")
    async with httpx2.AsyncClient() as plain:
        assert LeanPool.usable(url, plain)
    async with httpx2.AsyncClient(proxy="http://127.0.0.1:1") as proxied:
        assert not LeanPool.usable(url, proxied)
    async with httpx2.AsyncClient() as plain:
        assert not LeanPool.usable(httpx2.URL("ftp://example.test/mcp"), plain)


async def test_no_connection_is_not_sent() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610
    await listener.aclose()  # nothing listens there now
    async with pool_for(port) as post:
        with pytest.raises(NotSent, match="ConnectError"):
            await post()
        assert len(post.pool._conns) == 0


def _self_signed(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context that trusts it) for ``localhost``."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = tmp / "cert.pem"
    key_pem = tmp / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_pem, key_pem)
    client = ssl.create_default_context(cafile=str(cert_pem))
    return server, client


async def test_over_tls_with_the_bridges_verifying_context(tmp_path: Path) -> None:
    server_context, client_context = _self_signed(tmp_path)

    async def handler(conn: Conn) -> None:
        while (body := await conn.request()) is not None:
            await conn.send(answer(body))

    async with (
        served(handler, tls=server_context) as (server, port),
        pool_for(port, scheme="https", ssl_context=client_context) as post,
    ):
        for i in range(3):
            assert await (await post(str(i).encode())).aread() == str(i).encode()
    assert server.connections == 1

    async def one_then_close(conn: Conn) -> None:
        await conn.request()
        await conn.send(answer(b"{}"))

    async with (
        served(one_then_close, tls=server_context) as (server, port),
        pool_for(port, scheme="https", ssl_context=client_context) as post,
    ):
        for _ in range(3):  # a kept TLS connection the server closed is noticed before use, as a plain one is
            assert await (await post()).aread() == b"{}"
            await anyio.sleep(0.05)
    assert server.connections == 3

    async with (
        served(handler, tls=server_context) as (server, port),
        pool_for(port, scheme="https", ssl_context=ssl.create_default_context()) as post,
    ):
        with pytest.raises(NotSent, match="CERTIFICATE_VERIFY_FAILED"):
            await post()
