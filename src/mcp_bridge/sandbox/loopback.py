"""An ASGI app served on 127.0.0.1 from a thread: how the demo runs its servers in one process, and how the tests
run the Port stand-in."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Self

import uvicorn


class LoopbackServer:
    """An ASGI app served by uvicorn on 127.0.0.1, from a daemon thread with its own event loop.

    ``app_for_port`` gets the bound port before the app is built (an OAuth server's issuer URL names its own port).
    ``port=0`` binds a free port; after ``stop()`` a ``start()`` rebinds the same one.
    """

    def __init__(
        self, app_for_port: Callable[[int], Any], *, port: int = 0, name: str = "server", lifespan: bool = True
    ) -> None:
        self._app_for_port = app_for_port
        self.port = port
        self.name = name
        self._lifespan = lifespan
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> Self:
        if self.running:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by accepted sockets: without it a keep-alive request waits ~40 ms (Nagle vs. delayed ACK).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind(("127.0.0.1", self.port))
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        if self.app is None:
            self.app = self._app_for_port(self.port)
        config = uvicorn.Config(
            self.app,
            lifespan="on" if self._lifespan else "off",
            ws="none",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        self._server = server
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            except BaseException as exc:  # surfaced by start() below
                failure.append(exc)
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if failure or not self._thread.is_alive():
                raise RuntimeError(f"{self.name} did not start: {failure[0] if failure else 'thread ended'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not start within {timeout}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self.name} did not stop within {timeout}s")
        self._server = self._thread = None
