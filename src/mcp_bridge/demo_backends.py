"""The local backends of ``mcp-bridge demo``, reused by the tests: a Port stand-in and the local MCP servers.

* :class:`PortStandIn` serves, over real HTTP on 127.0.0.1, the Port API routes the bridge uses:

  * ``POST /v1/auth/access_token``                                 (route name ``"token"``)
  * ``POST /v1/blueprints/{blueprint_identifier}/entities/search`` (route name ``"search"``)
  * ``POST /v1/blueprints/{blueprint_identifier}/entities/bulk``   (route name ``"bulk"``)

  shaped as Port's published OpenAPI spec gives them. It checks request bodies only for the shape it needs; the
  tests' ``PortDouble`` (tests/port_double.py) is this class with every request validated against the spec itself.
  Status codes the spec does not document for these routes (429, 5xx) are answered in Port's general error shape
  ``{"ok": false, "error", "message"}``; 429 carries the headers of Port's rate-limit docs
  (https://docs.port.io/api-reference/rate-limits): ``x-ratelimit-limit``, ``x-ratelimit-remaining``,
  ``x-ratelimit-period`` and ``x-ratelimit-reset`` = the number of seconds until the limit resets (a delta).
* :class:`DemoBackends` runs, in this process, the demo's three MCP servers (``mcp_bridge.sandbox.localservers``: one
  with no auth, one behind an API key, one behind OAuth with an authorization server that approves at once, from
  ``mcp_bridge.sandbox.oauth_server``) and a Port stand-in holding their ``_mcp_server`` entities.
* ``python -m mcp_bridge.demo_backends browse URL`` is the demo's headless "browser": it follows an authorization URL
  through its redirects to the bridge's loopback callback, so the OAuth login completes with no real browser.

Where Port's docs are silent the stand-in makes a documented choice; see the docstrings of ``PortStandIn`` and
``_matches``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import math
import secrets
import shlex
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TOKEN_PATH = "/v1/auth/access_token"  # noqa: S105 (a route, not a secret)
SEARCH_PATH = "/v1/blueprints/{blueprint_identifier}/entities/search"
BULK_PATH = "/v1/blueprints/{blueprint_identifier}/entities/bulk"
ROUTE_PATHS = {"token": TOKEN_PATH, "search": SEARCH_PATH, "bulk": BULK_PATH}

MAX_BODY_BYTES = 1024 * 1024  # "Request body is too large (limit is 1MiB)"
DEFAULT_EXPIRES_IN = 10800  # Port's access tokens live 3 h

# The bulk route's query parameters as the spec lists them: name -> (type, required, default).
BULK_QUERY: dict[str, tuple[str, bool, Any]] = {
    "upsert": ("boolean", True, False),
    "validation_only": ("boolean", False, False),
    "create_missing_related_entities": ("boolean", False, False),
    "merge": ("boolean", False, False),
    "run_id": ("string", False, None),
}


# ---------------------------------------------------------------------------------------------------------------------
# Entity helpers
# ---------------------------------------------------------------------------------------------------------------------

MCP_SERVER_BLUEPRINT = "_mcp_server"  # DESIGN §3: entities describing approved servers
AUDIT_BLUEPRINT = "mcp_tool_invocation"  # DESIGN §3: audit events

# Port's guide "Manage MCP Server Registry" (https://docs.port.io/guides/all/manage-mcp-registry), blueprint JSON:
# identifier, property identifiers, types, enums, required list and relations as the guide gives them (the guide's
# titles, descriptions and colours are left out: they do not affect validation).
MCP_REGISTRY_BLUEPRINT = "mcpRegistry"
MCP_REGISTRY_SCHEMA: dict[str, Any] = {
    "properties": {
        "type": {"type": "string", "enum": ["internal", "external"]},
        "status": {"type": "string", "enum": ["approved", "pending", "rejected"]},
        "description": {"type": "string", "format": "markdown"},
        "labels": {"type": "array", "items": {"type": "string"}},
        "installation_instructions": {"type": "string", "format": "markdown"},
        "repository_url": {"type": "string", "format": "url"},
        "endpoint": {"type": "string"},
        "command": {"type": "string"},
        "tools": {"type": "array", "items": {"type": "string"}},
        "prompts": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["type", "status", "description"],
}
MCP_REGISTRY_RELATIONS: dict[str, Any] = {
    "owningTeam": {"target": "_team", "required": False, "many": False},
    "requestedBy": {"target": "_user", "required": False, "many": False},
}


def mcp_server_entity(
    identifier: str,
    url: str,
    allowed_tools: Iterable[str],
    *,
    title: str | None = None,
    description: str | None = None,
    auth_type: str | None = None,
    oauth_config: dict[str, Any] | None = None,
    exposed: bool | None = True,
    tool_pins: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An ``_mcp_server`` entity as DESIGN §3 describes it. ``None`` leaves a property (or the title) out."""
    properties: dict[str, Any] = {"url": url, "allowed_tools": list(allowed_tools)}
    optional = {
        "exposed": exposed,
        "auth_type": auth_type,
        "oauth_config": oauth_config,
        "description": description,
        "tool_pins": tool_pins,
    }
    properties.update({k: v for k, v in optional.items() if v is not None})
    entity: dict[str, Any] = {"identifier": identifier, "properties": properties, "relations": {}}
    if title is not None:
        entity["title"] = title
    return entity


def registry_entity(
    identifier: str,
    endpoint: str | None,
    tools: Iterable[str] | None = None,
    *,
    status: str = "approved",
    server_type: str = "external",
    description: str = "",
    title: str | None = None,
    labels: Iterable[str] | None = None,
    command: str | None = None,
    prompts: Iterable[str] | None = None,
    repository_url: str | None = None,
    installation_instructions: str | None = None,
    owning_team: str | None = None,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """An ``mcpRegistry`` entity per Port's "Manage MCP Server Registry" guide.

    Properties ``type`` (``server_type``: internal | external), ``status`` (approved | pending | rejected) and
    ``description`` are the blueprint's required ones; ``endpoint`` is the server's URL, ``tools`` its tool names.
    Relations ``owningTeam`` (→ ``_team``) and ``requestedBy`` (→ ``_user``).
    """
    properties: dict[str, Any] = {"type": server_type, "status": status, "description": description}
    optional: dict[str, Any] = {
        "endpoint": endpoint,
        "tools": list(tools) if tools is not None else None,
        "labels": list(labels) if labels is not None else None,
        "command": command,
        "prompts": list(prompts) if prompts is not None else None,
        "repository_url": repository_url,
        "installation_instructions": installation_instructions,
    }
    properties.update({k: v for k, v in optional.items() if v is not None})
    relations = {k: v for k, v in {"owningTeam": owning_team, "requestedBy": requested_by}.items() if v is not None}
    entity: dict[str, Any] = {"identifier": identifier, "properties": properties, "relations": relations}
    if title is not None:
        entity["title"] = title
    return entity


# ---------------------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request the stand-in received. ``status`` is None while it is being answered."""

    method: str
    path: str
    route: str | None  # "token" | "search" | "bulk" | None (no such route)
    blueprint: str | None
    query: dict[str, str]
    json: Any  # the parsed body; None when absent or not JSON
    body_size: int
    has_authorization: bool  # an Authorization header was sent
    token: str | None  # the bearer token sent, if any
    client_id: str | None  # whose valid token it was (None: none, unknown or expired)
    timestamp: float  # time.monotonic() at arrival
    status: int | None = None


@dataclass
class ReceivedEntity:
    """One entity the bulk route received (every copy, including retries and failures)."""

    blueprint: str
    identifier: str
    index: int
    entity: dict[str, Any]
    outcome: str  # "created" | "updated" | "failed" | "validated"
    request_number: int  # index into PortStandIn.requests (until clear_requests())


@dataclass
class _Fault:
    route: str  # a route name or "*"
    status: int | None
    remaining: int
    delay: float = 0.0
    reset: float = 1
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None


@dataclass
class _Client:
    secret: str
    visible: Callable[[dict[str, Any]], bool] | None


class _Unsupported(Exception):
    """A valid Port query the stand-in does not evaluate (answered 500 and listed in ``internal_errors``)."""


_MISSING: Any = object()


# ---------------------------------------------------------------------------------------------------------------------
# Serving an app on loopback from a thread
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# The stand-in
# ---------------------------------------------------------------------------------------------------------------------


class PortStandIn:
    """Port's token, search and bulk routes over real HTTP.

    State (clients, tokens, blueprints, entities, logs) survives ``stop()``/``start()``, which rebinds the same port.

    Choices where the spec is silent (Port's real behaviour unknown):
    * Search returns entities sorted by identifier; ``next`` is an opaque cursor (the last identifier returned), so
      paging stays consistent while entities change. A ``from`` the stand-in did not issue → 422. ``limit`` (a "number"
      in the spec) is truncated to an integer.
    * A bulk with any failed entry answers 207 with ``ok: false`` (also when every entry failed); all succeeded →
      200 with ``ok: true`` and ``errors: []``. Without ``upsert=true`` an existing identifier fails with 409.
    * RBAC (``visible``) filters what search returns; bulk writes are not restricted.
    * Error identifiers (``error``) are the stand-in's own snake_case names; clients should branch on the status code.
    """

    def __init__(
        self,
        *,
        expires_in: float = DEFAULT_EXPIRES_IN,
        blueprints: Iterable[str] = (MCP_SERVER_BLUEPRINT, AUDIT_BLUEPRINT),
        rate_limit: tuple[int, int] | None = None,
        port: int = 0,
    ) -> None:
        """``rate_limit=(limit, period_seconds)`` turns on a real fixed-window limiter whose ``x-ratelimit-*``
        headers go on every response (off by default: no headers unless a 429 is injected)."""
        self._settings = (expires_in, tuple(blueprints), rate_limit)
        self.port = port
        self._lock = threading.RLock()
        self._http: LoopbackServer | None = None
        self._stopping = False
        self._app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=_ALL_METHODS)])
        self.reset()

    def reset(self) -> None:
        """Back to the state of a new stand-in (settings, clients, tokens, blueprints, entities, logs, faults, clock);
        it keeps running on the same port. Lets one running stand-in serve many tests."""
        with self._lock:
            expires_in, blueprints, rate_limit = self._settings
            self.expires_in = expires_in
            self.rate_limit = rate_limit
            self._clients: dict[str, _Client] = {}
            self._tokens: dict[str, tuple[str, float]] = {}  # token -> (client_id, expires at on the stand-in's clock)
            self._blueprints: dict[str, dict[str, Any] | None] = {bp: None for bp in blueprints}
            self._entities: dict[str, dict[str, dict[str, Any]]] = {}
            self._requests: list[RecordedRequest] = []
            self._received: list[ReceivedEntity] = []
            self._faults: list[_Fault] = []
            self._bulk_failures: dict[str, tuple[int, str, str]] = {}
            self._clock_offset = 0.0
            self._window: tuple[float, int] | None = None  # (window start, requests counted)
            self.internal_errors: list[str] = []

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._http is not None and self._http.running

    def start(self, timeout: float = 10.0) -> Self:
        """Listen (again) on 127.0.0.1: a free port the first time, the same port after ``stop()``."""
        if self.running:
            return self
        self._stopping = False
        self._http = LoopbackServer(lambda _port: self._app, port=self.port, name="port-stand-in", lifespan=False)
        self._http.start(timeout)
        self.port = self._http.port
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening ("Port is down"): connections are refused until ``start()``. Delayed answers end early."""
        if self._http is None:
            return
        self._stopping = True
        self._http.stop(timeout)
        self._http = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients and tokens -------------------------------------------------------------------------------------------

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        *,
        visible: Callable[[dict[str, Any]], bool] | Collection[str] | None = None,
    ) -> None:
        """Register credentials. ``visible``: what this identity may read — a predicate on the stored entity
        (``{"identifier", "title"?, "properties", "relations", ...}``) or a collection of identifiers; None: all."""
        predicate: Callable[[dict[str, Any]], bool] | None
        if visible is None or callable(visible):
            predicate = visible
        else:
            allowed = frozenset(visible)

            def predicate(entity: dict[str, Any]) -> bool:
                return entity["identifier"] in allowed

        with self._lock:
            self._clients[client_id] = _Client(client_secret, predicate)

    def issue_token(self, client_id: str) -> str:
        """A valid token for a registered client, without an HTTP round trip."""
        with self._lock:
            if client_id not in self._clients:
                raise KeyError(client_id)
            return self._new_token(client_id)

    def expire_all_tokens(self) -> None:
        """Every token issued so far is expired from now on (requests with one get 401)."""
        with self._lock:
            self._tokens = {tok: (cid, -math.inf) for tok, (cid, _) in self._tokens.items()}

    def advance(self, seconds: float) -> None:
        """Move the stand-in's clock forward (token expiry, the rate-limit window) without sleeping."""
        with self._lock:
            self._clock_offset += seconds

    def _now(self) -> float:
        return time.monotonic() + self._clock_offset

    def _new_token(self, client_id: str) -> str:
        def b64(data: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

        issued = int(time.time())
        claims = {"sub": client_id, "iat": issued, "exp": issued + math.ceil(self.expires_in), "jti": uuid.uuid4().hex}
        token = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims)}.{secrets.token_urlsafe(32)}"
        self._tokens[token] = (client_id, self._now() + self.expires_in)
        return token

    # -- blueprints and entities --------------------------------------------------------------------------------------

    def add_blueprint(self, identifier: str, *, schema: dict[str, Any] | None = None) -> None:
        """Make a blueprint exist. ``schema``: Port's blueprint ``schema`` (``{"properties", "required"}``); when
        given, entity properties are validated against it (bulk entries that fail come back in ``errors[]``)."""
        with self._lock:
            self._blueprints[identifier] = copy.deepcopy(schema)

    def remove_blueprint(self, identifier: str) -> None:
        with self._lock:
            self._blueprints.pop(identifier, None)
            self._entities.pop(identifier, None)

    def upsert_entity(self, blueprint: str, entity: dict[str, Any]) -> None:
        """Store (replace) an entity as an admin would. The blueprint is created if missing. The entity must be
        something Port could return: it is checked against the spec's entity schema and the blueprint's schema."""
        error = self._entity_problem(entity)
        stored = _stored_form(entity)
        if error or not isinstance(stored.get("identifier"), str):
            raise ValueError(f"not an entity Port could hold: {error or 'identifier must be a string'}")
        with self._lock:
            self._blueprints.setdefault(blueprint, None)
            problem = self._blueprint_error(blueprint, stored)
            if problem:
                raise ValueError(problem)
            self._entities.setdefault(blueprint, {})[stored["identifier"]] = stored

    def delete_entity(self, blueprint: str, identifier: str) -> None:
        with self._lock:
            self._entities.get(blueprint, {}).pop(identifier, None)

    def entities(self, blueprint: str) -> dict[str, dict[str, Any]]:
        """The stored state: identifier → entity (copies)."""
        with self._lock:
            return copy.deepcopy(self._entities.get(blueprint, {}))

    # -- logs ---------------------------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a snapshot)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, route: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.route == route]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._received.clear()

    def received(self, blueprint: str | None = None) -> list[ReceivedEntity]:
        """Every entity the bulk route received (retries included), in order."""
        with self._lock:
            return [r for r in self._received if blueprint is None or r.blueprint == blueprint]

    def received_counts(self, blueprint: str | None = None) -> Counter[str]:
        """identifier → how many times it was received (>1: duplicates or retries)."""
        return Counter(r.identifier for r in self.received(blueprint))

    # -- fault injection ----------------------------------------------------------------------------------------------

    def fail_next(
        self,
        route: str = "*",
        *,
        status: int | None = 500,
        times: int = 1,
        delay: float = 0.0,
        reset: float = 1,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """The next ``times`` requests to ``route`` ("token" | "search" | "bulk" | "*") wait ``delay`` seconds, then
        get ``status`` in Port's error shape (``status=None``: answered normally after the delay). 429 carries
        ``x-ratelimit-limit``, ``x-ratelimit-remaining: 0``, ``x-ratelimit-period`` and ``x-ratelimit-reset: reset``
        (seconds until the window resets; pass an int for an integer header). Faults queue in the order added."""
        if route != "*" and route not in ROUTE_PATHS:
            raise ValueError(f"unknown route {route!r} (use one of {sorted(ROUTE_PATHS)} or '*')")
        with self._lock:
            self._faults.append(_Fault(route, status, times, delay, reset, dict(headers or {}), body))

    def slow_next(self, route: str = "*", delay: float = 1.0, *, times: int = 1) -> None:
        """The next ``times`` requests to ``route`` are answered normally, ``delay`` seconds late."""
        self.fail_next(route, status=None, times=times, delay=delay)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._bulk_failures.clear()

    def fail_bulk_identifiers(
        self,
        identifiers: Iterable[str],
        *,
        status_code: int = 500,
        error: str = "internal_error",
        message: str = "Injected failure",
    ) -> None:
        """The next time each identifier arrives in a bulk request it is not stored and comes back in ``errors[]``
        (the response is then 207). Once per identifier."""
        with self._lock:
            for identifier in identifiers:
                self._bulk_failures[identifier] = (status_code, error, message)

    def _take_fault(self, route: str | None) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.route in ("*", route):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- HTTP ---------------------------------------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        route, blueprint = _match(request.method, request.url.path)
        body = await request.body()
        parsed: Any = None
        body_is_json = False
        if body:
            try:
                parsed, body_is_json = json.loads(body), True
            except ValueError:
                parsed = None
        auth = request.headers.get("authorization")
        token = auth[7:].strip() if auth and auth[:7].lower() == "bearer " else None
        with self._lock:
            owner = self._tokens.get(token) if token else None
            client_id = owner[0] if owner and owner[1] > self._now() else None
            record = RecordedRequest(
                method=request.method,
                path=request.url.path,
                route=route,
                blueprint=blueprint,
                query=dict(request.query_params),
                json=parsed,
                body_size=len(body),
                has_authorization=auth is not None,
                token=token,
                client_id=client_id,
                timestamp=time.monotonic(),
            )
            self._requests.append(record)
            number = len(self._requests) - 1
        try:
            status, payload, headers = await self._answer(
                route, blueprint, request, body, parsed, body_is_json, token, number
            )
        except _Unsupported as exc:
            self.internal_errors.append(str(exc))
            status, payload, headers = 500, _error("not_supported_by_stand_in", str(exc)), {}
        except Exception as exc:  # a bug in the stand-in: fail loudly in the test that hit it
            self.internal_errors.append(f"{type(exc).__name__}: {exc}")
            status, payload, headers = 500, _error("internal_error", "The Port stand-in failed"), {}
        headers = {**self._rate_headers(), **headers}
        record.status = status
        return JSONResponse(payload, status_code=status, headers=headers)

    async def _answer(
        self,
        route: str | None,
        blueprint: str | None,
        request: Request,
        body: bytes,
        parsed: Any,
        body_is_json: bool,
        token: str | None,
        number: int,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        fault = self._take_fault(route)
        if fault is not None:
            if fault.delay:
                await self._sleep(fault.delay)
            if fault.status is not None:
                return self._fault_response(fault)
        limited = self._count_request()
        if limited is not None:
            return limited
        if route is None:
            message = f"Route {request.method}:{request.url.path} not found"
            return 404, _error("not_found", message), {}
        client: _Client | None = None
        if route != "token":
            found = self._authenticate(token)
            if isinstance(found, tuple):
                return found
            client = found
        if len(body) > MAX_BODY_BYTES:
            return 413, _error("payload_too_large", "Request body is too large (limit is 1MiB)"), {}
        if body and not body_is_json:
            return 422, _error("invalid_request", "The body is not valid JSON"), {}
        if route == "token":
            return self._token(parsed if body_is_json else _MISSING)
        assert blueprint is not None and client is not None
        if route == "search":
            return self._search(blueprint, parsed if body_is_json else {}, client)
        return self._bulk(blueprint, parsed if body_is_json else _MISSING, dict(request.query_params), number)

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        # Polls: ``_stopping`` is set from another thread, and a stop must end a delayed answer early.
        while not self._stopping and (left := deadline - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(left, 0.05))

    def _fault_response(self, fault: _Fault) -> tuple[int, dict[str, Any], dict[str, str]]:
        status = fault.status
        assert status is not None
        headers: dict[str, str] = {}
        if status == 429:
            limit, period = self.rate_limit or (1000, 60)
            headers = {
                "x-ratelimit-limit": str(limit),
                "x-ratelimit-remaining": "0",
                "x-ratelimit-period": str(period),
                "x-ratelimit-reset": str(fault.reset),
            }
            payload = _error("rate_limit_exceeded", "Too many requests, please retry later")
        elif status == 401:
            payload = _error("token_expired", "The access token has expired")
        elif status >= 500:
            payload = _error("internal_error", "Internal server error (injected)")
        else:
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Error"
            payload = _error(phrase.lower().replace(" ", "_"), f"{phrase} (injected)")
        return status, fault.body if fault.body is not None else payload, {**headers, **fault.headers}

    def _count_request(self) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        if self.rate_limit is None:
            return None
        limit, period = self.rate_limit
        with self._lock:
            now = self._now()
            if self._window is None or now >= self._window[0] + period:
                self._window = (now, 0)
            start, used = self._window
            if used >= limit:
                return 429, _error("rate_limit_exceeded", "Too many requests, please retry later"), {}
            self._window = (start, used + 1)
        return None

    def _rate_headers(self) -> dict[str, str]:
        if self.rate_limit is None or self._window is None:
            return {}
        limit, period = self.rate_limit
        with self._lock:
            start, used = self._window
            reset = max(0, math.ceil(start + period - self._now()))
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(0, limit - used)),
            "x-ratelimit-period": str(period),
            "x-ratelimit-reset": str(reset),
        }

    def _authenticate(self, token: str | None) -> _Client | tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            owner = self._tokens.get(token) if token else None
            if owner is None:
                return 401, _error("unauthorized", "Missing or unknown access token"), {}
            client_id, expires_at = owner
            if expires_at <= self._now():
                return 401, _error("token_expired", "The access token has expired"), {}
            return self._clients[client_id]

    # -- routes -------------------------------------------------------------------------------------------------------

    def _token(self, body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        if body is _MISSING:
            return 422, _error("invalid_request", "body: a JSON body is required"), {}
        problem = self._body_problem("token", body)
        if problem:
            return 422, _error("invalid_request", problem), {}
        with self._lock:
            client = self._clients.get(body["clientId"])
            if client is None or not secrets.compare_digest(client.secret, body["clientSecret"]):
                return 401, _error("invalid_credentials", "Invalid client id or client secret"), {}
            token = self._new_token(body["clientId"])
        return 200, {"ok": True, "accessToken": token, "expiresIn": self.expires_in, "tokenType": "Bearer"}, {}

    def _search(self, blueprint: str, body: Any, client: _Client) -> tuple[int, dict[str, Any], dict[str, str]]:
        problem = self._body_problem("search", body)
        if problem:
            return 422, _error("invalid_request", problem), {}
        limit = int(body.get("limit", 200))
        after: str | None = None
        if "from" in body:
            after = _decode_cursor(body["from"])
            if after is None:
                return 422, _error("invalid_request", "from: not a value this API returned as next"), {}
        with self._lock:
            if blueprint not in self._blueprints:
                return 404, _blueprint_not_found(blueprint), {}
            candidates = sorted(self._entities.get(blueprint, {}).values(), key=lambda e: e["identifier"])
            candidates = copy.deepcopy(candidates)
        query = body.get("query")
        found = [
            e
            for e in candidates
            if (client.visible is None or client.visible(e)) and (query is None or _matches(query, e, blueprint))
        ]
        if after is not None:
            found = [e for e in found if e["identifier"] > after]
        page = found[:limit]
        payload: dict[str, Any] = {
            "ok": True,
            "entities": [_project(e, body.get("include"), body.get("exclude")) for e in page],
        }
        if len(found) > limit:
            payload["next"] = _encode_cursor(page[-1]["identifier"])
        return 200, payload, {}

    def _bulk(
        self, blueprint: str, body: Any, query: dict[str, str], number: int
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        options, problem = self._query_options("bulk", query)
        if problem:
            return 422, _error("invalid_request", problem), {}
        if body is _MISSING:
            return 422, _error("invalid_request", "body: a JSON body is required"), {}
        problem = self._body_problem("bulk", body)
        if problem:
            return 422, _error("invalid_request", problem), {}
        upsert, merge, validation_only = options["upsert"], options["merge"], options["validation_only"]
        done: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        with self._lock:
            if blueprint not in self._blueprints:
                return 404, _blueprint_not_found(blueprint), {}
            store = self._entities.setdefault(blueprint, {})
            for index, sent in enumerate(body["entities"]):
                identifier = self._resolve_identifier(blueprint, sent.get("identifier", _MISSING))
                outcome, failure = self._apply(
                    blueprint, store, identifier, sent, upsert=upsert, merge=merge, validation_only=validation_only
                )
                self._received.append(
                    ReceivedEntity(blueprint, identifier or "", index, copy.deepcopy(sent), outcome, number)
                )
                if failure is not None:
                    code, error, message = failure
                    errors.append(
                        {
                            "identifier": identifier or "",
                            "index": index,
                            "statusCode": code,
                            "error": error,
                            "message": message,
                        }
                    )
                else:
                    assert identifier is not None
                    done.append({"created": outcome == "created", "identifier": identifier, "index": index})
        return (207 if errors else 200), {"ok": not errors, "entities": done, "errors": errors}, {}

    def _resolve_identifier(self, blueprint: str, given: Any) -> str | None:
        if given is _MISSING:
            return f"e_{secrets.token_hex(8)}"  # Port generates an identifier when none is given
        if isinstance(given, str):
            return given
        # A search query (the spec's searchIdentifierQuerySchema): the one existing entity it matches.
        hits = [i for i, e in self._entities.get(blueprint, {}).items() if _matches(given, e, blueprint)]
        return hits[0] if len(hits) == 1 else None

    def _apply(
        self,
        blueprint: str,
        store: dict[str, dict[str, Any]],
        identifier: str | None,
        sent: dict[str, Any],
        *,
        upsert: bool,
        merge: bool,
        validation_only: bool,
    ) -> tuple[str, tuple[int, str, str] | None]:
        if identifier is None:
            return "failed", (404, "not_found", "The identifier query matched no single entity")
        injected = self._bulk_failures.pop(identifier, None)
        if injected is not None:
            return "failed", injected
        existing = store.get(identifier)
        if existing is not None and not upsert:
            return "failed", (409, "entity_exists", f'An entity with identifier "{identifier}" already exists')
        new = _stored_form({**sent, "identifier": identifier})
        if existing is not None and merge:
            merged = copy.deepcopy(existing)
            for key in ("title", "icon", "team"):
                if key in new:
                    merged[key] = new[key]
            merged["properties"] = {**existing.get("properties", {}), **new.get("properties", {})}
            merged["relations"] = {**existing.get("relations", {}), **new.get("relations", {})}
            new = merged
        problem = self._blueprint_error(blueprint, new)
        if problem:
            return "failed", (422, "invalid_entity", problem)
        if validation_only:
            return "validated", None
        store[identifier] = new
        return ("created" if existing is None else "updated"), None

    def _blueprint_error(self, blueprint: str, entity: dict[str, Any]) -> str | None:
        schema = self._blueprints.get(blueprint)
        if not schema:
            return None
        properties_schema = {
            "type": "object",
            "properties": schema.get("properties", {}),
            "required": schema.get("required", []),
        }
        problem = self._properties_problem(properties_schema, entity.get("properties", {}))
        return f"{blueprint} properties: {problem}" if problem else None

    # -- checks (the tests' PortDouble replaces these with the spec's schemas) ----------------------------------------

    def _body_problem(self, route: str, body: Any) -> str | None:
        """What is wrong with a request body, in the shape of Port's 422 message (None: nothing)."""
        if not isinstance(body, dict):
            return "body must be object"
        if route == "token":
            for key in ("clientId", "clientSecret"):
                if not isinstance(body.get(key), str):
                    return f"body must have required property '{key}'"
        elif route == "search":
            limit = body.get("limit", 200)
            if isinstance(limit, bool) or not isinstance(limit, int | float) or not 1 <= limit <= 1000:
                return "body/limit must be a number from 1 to 1000"
            query = body.get("query")
            if query is not None and not (isinstance(query, dict) and isinstance(query.get("rules"), list)):
                return "body/query must be a rule group ({combinator, rules})"
        elif route == "bulk":
            entities = body.get("entities")
            if not isinstance(entities, list) or not all(isinstance(e, dict) for e in entities):
                return "body/entities must be array of objects"
            if not 1 <= len(entities) <= 20:
                return "body/entities must have from 1 to 20 items"
        return None

    def _entity_problem(self, entity: Any) -> str | None:
        """What is wrong with an entity an admin stores through :meth:`upsert_entity` (None: nothing)."""
        if not isinstance(entity, dict) or not isinstance(entity.get("identifier"), str):
            return "identifier must be a string"
        return None

    def _properties_problem(self, schema: dict[str, Any], properties: dict[str, Any]) -> str | None:
        """An entity's properties against its blueprint's schema: only the required ones here."""
        missing = [name for name in schema.get("required", []) if name not in properties]
        return f"must have required property '{missing[0]}'" if missing else None

    def _query_parameters(self, route: str) -> dict[str, tuple[str, bool, Any]]:
        """A route's query parameters: name → (type, required, default)."""
        return BULK_QUERY if route == "bulk" else {}

    def _query_options(self, route: str, query: dict[str, str]) -> tuple[dict[str, Any], str | None]:
        """Coerce and check a route's query string against :meth:`_query_parameters`."""
        options: dict[str, Any] = {}
        for name, (kind, required, default) in self._query_parameters(route).items():
            raw = query.get(name)
            if raw is None:
                if required:
                    return options, f"querystring must have required property '{name}'"
                options[name] = default
            elif kind == "boolean":
                if raw not in ("true", "false"):
                    return options, f"querystring/{name} must be boolean"
                options[name] = raw == "true"
            else:
                options[name] = raw
        return options, None


_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_STORED_KEYS = ("identifier", "title", "icon", "team", "properties", "relations")
_META = {"$identifier": "identifier", "$title": "title", "$icon": "icon", "$team": "team"}


def _error(error: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": error, "message": message}


def _blueprint_not_found(blueprint: str) -> dict[str, Any]:
    return _error("not_found", f'Blueprint with identifier "{blueprint}" was not found')


def _match(method: str, path: str) -> tuple[str | None, str | None]:
    if method != "POST":
        return None, None
    if path == TOKEN_PATH:
        return "token", None
    parts = path.split("/")
    # ["", "v1", "blueprints", "{bp}", "entities", "search"|"bulk"]
    if len(parts) == 6 and parts[:3] == ["", "v1", "blueprints"] and parts[3] and parts[4:5] == ["entities"]:
        return (parts[5], parts[3]) if parts[5] in ("search", "bulk") else (None, None)
    return None, None


def _stored_form(entity: dict[str, Any]) -> dict[str, Any]:
    stored = {k: copy.deepcopy(entity[k]) for k in _STORED_KEYS if k in entity and entity[k] is not None}
    stored.setdefault("properties", {})
    stored.setdefault("relations", {})
    return stored


def _encode_cursor(identifier: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": identifier}).encode()).decode()


def _decode_cursor(cursor: str) -> str | None:
    try:
        after = json.loads(base64.urlsafe_b64decode(cursor.encode()))["after"]
    except (ValueError, KeyError, TypeError):
        return None
    return after if isinstance(after, str) else None


def _project(entity: dict[str, Any], include: list[str] | None, exclude: list[str] | None) -> dict[str, Any]:
    """Apply search's ``include``/``exclude`` (meta-properties with ``$``; properties and relations by identifier)."""
    if include is None and not exclude:
        return entity
    wanted = set(include) if include is not None else None
    dropped = set(exclude or ())

    def keep(name: str) -> bool:
        return (wanted is None or name in wanted) and name not in dropped

    out: dict[str, Any] = {}
    for meta, key in _META.items():
        if key in entity and keep(meta):
            out[key] = entity[key]
    for key in ("properties", "relations"):
        kept = {k: v for k, v in entity.get(key, {}).items() if keep(k)}
        if wanted is None or kept:
            out[key] = kept
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Search rules
# ---------------------------------------------------------------------------------------------------------------------


def _matches(query: dict[str, Any], entity: dict[str, Any], blueprint: str) -> bool:
    """Evaluate a rule group. Supported: nested groups; ``property`` rules on properties, relations and the meta
    properties ``$identifier``, ``$title``, ``$blueprint``, ``$icon``, ``$team`` with ``=``, ``!=``, ``in``, ``notIn``,
    ``contains``, ``doesNotContains``, ``containsAny``, ``beginsWith``, ``endsWith``, ``doesNotBeginsWith``,
    ``doesNotEndsWith``, ``>``, ``>=``, ``<``, ``<=``, ``isEmpty``, ``isNotEmpty``. Other valid Port rules (dates,
    relatedTo, scorecards, user context, …) raise ``_Unsupported``.

    Choices: an empty rule list matches everything; "empty" = absent, null, "", [] or {}; ``=`` compares JSON values
    (``true`` is not ``1``); on an array property ``in``/``notIn`` look for any element, ``contains`` for an element.
    """
    rules = query["rules"]
    if not rules:
        return True
    results = (_matches(r, entity, blueprint) if "combinator" in r else _rule(r, entity, blueprint) for r in rules)
    return all(results) if query["combinator"] == "and" else any(results)


def _value(entity: dict[str, Any], blueprint: str, name: Any) -> Any:
    if not isinstance(name, str):
        raise _Unsupported(f"property {name!r} (user-context properties) is not supported by the stand-in")
    if name == "$blueprint":
        return blueprint
    if name in _META:
        return entity.get(_META[name], _MISSING)
    if name.startswith("$"):
        raise _Unsupported(f"meta-property {name} is not supported by the stand-in")
    if name in entity.get("properties", {}):
        return entity["properties"][name]
    return entity.get("relations", {}).get(name, _MISSING)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _empty(v: Any) -> bool:
    return v is _MISSING or v is None or v in ("", [], {})


def _rule(rule: dict[str, Any], entity: dict[str, Any], blueprint: str) -> bool:
    op: str = rule["operator"]
    if "property" not in rule or isinstance(rule.get("value"), dict):
        raise _Unsupported(f"rule {rule!r} is not supported by the stand-in")
    v = _value(entity, blueprint, rule["property"])
    want = rule.get("value")
    if op in ("isEmpty", "isNotEmpty"):
        return _empty(v) == (op == "isEmpty")
    if op in ("=", "!="):
        equal = (want is None and v in (_MISSING, None)) or (v is not _MISSING and _same(v, want))
        return equal == (op == "=")
    if op in ("in", "notIn"):
        values = want if isinstance(want, list) else [want]
        items = v if isinstance(v, list) else [v]
        found = any(_same(i, w) for i in items if i is not _MISSING for w in values)
        return found == (op == "in")
    if op in ("contains", "doesNotContains", "containsAny"):
        needles = want if isinstance(want, list) else [want]
        if isinstance(v, list):
            found = any(_same(i, n) for i in v for n in needles)
        elif isinstance(v, str):
            found = any(isinstance(n, str) and n in v for n in needles)
        else:
            found = False
        return found == (op != "doesNotContains")
    if op in ("beginsWith", "doesNotBeginsWith", "endsWith", "doesNotEndsWith"):
        if not isinstance(v, str) or not isinstance(want, str):
            return op.startswith("doesNot")
        hit = v.startswith(want) if op in ("beginsWith", "doesNotBeginsWith") else v.endswith(want)
        return hit != op.startswith("doesNot")
    if op in (">", ">=", "<", "<="):
        comparable = (isinstance(v, int | float) and not isinstance(v, bool) and isinstance(want, int | float)) or (
            isinstance(v, str) and isinstance(want, str)
        )
        if not comparable:
            return False
        return bool({">": v > want, ">=": v >= want, "<": v < want, "<=": v <= want}[op])
    raise _Unsupported(f"operator {op!r} is not supported by the stand-in")


# ---------------------------------------------------------------------------------------------------------------------
# The demo's backends
# ---------------------------------------------------------------------------------------------------------------------

DEMO_PORT_CLIENT_ID = "mcp-bridge-demo"
ENV_PORT_SECRET = "MCP_BRIDGE_DEMO_PORT_SECRET"  # noqa: S105 (the variable's name, not its value)
ENV_API_KEY = "MCP_BRIDGE_DEMO_API_KEY"


@dataclass
class DemoServer:
    """One of the demo's MCP servers as Port lists it."""

    name: str
    auth: str  # "none" | "api_key" | "oauth"
    allowed_tools: list[str]
    description: str
    http: LoopbackServer

    @property
    def url(self) -> str:
        return f"{self.http.url}/mcp"


class DemoBackends:
    """Everything ``mcp-bridge demo`` talks to, on 127.0.0.1 in this process (each server on its own thread):

    * ``open``: an MCP server with no auth;
    * ``keyed``: the same tools behind ``Authorization: Bearer <a random key>``;
    * ``oauth``: the same tools behind OAuth 2.1, with its authorization server on the same port (dynamic client
      registration, PKCE, refresh tokens; it approves every authorization request at once);
    * a :class:`PortStandIn` holding one ``_mcp_server`` entity per server (which tools are allowed) and receiving
      the audit events (blueprint ``mcp_tool_invocation``).

    The Port client secret and the API key are fresh random values, handed to the bridge in the environment
    (:meth:`env`), never written into the config.
    """

    def __init__(self, progress: Callable[[str], None] | None = None) -> None:
        self._progress = progress or (lambda _message: None)
        self.port_secret = secrets.token_urlsafe(24)
        self.api_key = secrets.token_urlsafe(24)
        self.port = PortStandIn()
        self.port.add_client(DEMO_PORT_CLIENT_ID, self.port_secret)
        self.servers: list[DemoServer] = []

    def start(self) -> Self:
        from mcp_bridge.sandbox.localservers import build_app, build_server
        from mcp_bridge.sandbox.oauth_server import build_oauth_app

        try:
            self.port.start()
            self._progress(f"Port stand-in listening on {self.port.base_url}")
            specs: list[tuple[str, str, list[str], str, Callable[[int], Any]]] = [
                (
                    "open",
                    "none",
                    ["echo", "add", "slow"],
                    "Everyday helpers; no login needed.",
                    lambda _: build_app("open"),
                ),
                (
                    "keyed",
                    "api_key",
                    ["echo", "meta"],
                    "A service behind an API key.",
                    lambda _: build_app("keyed", api_key=self.api_key),
                ),
                (
                    "oauth",
                    "oauth",
                    ["echo", "add"],
                    "A service behind OAuth 2.1 (single sign-on).",
                    lambda port: build_oauth_app(build_server("oauth"), issuer_url=f"http://127.0.0.1:{port}"),
                ),
            ]
            for name, auth, allowed, description, app_for_port in specs:
                http = LoopbackServer(app_for_port, name=f"demo-{name}").start()
                server = DemoServer(name, auth, allowed, description, http)
                self.servers.append(server)
                self.port.upsert_entity(
                    MCP_SERVER_BLUEPRINT,
                    mcp_server_entity(
                        name, server.url, allowed, title=f"Demo: {name}", description=description, auth_type=auth
                    ),
                )
                self._progress(f"MCP server {name!r} ({_AUTH_WORDS[auth]}) listening on {server.url}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.http.stop()
        self.servers = []
        self.port.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def config(self, home: str) -> dict[str, Any]:
        """The bridge's config: Port (the stand-in) is the allowlist; only the API key's reference is local."""
        return {
            "port": {
                "base_url": self.port.base_url,
                "client_id": DEMO_PORT_CLIENT_ID,
                "client_secret": "${env:" + ENV_PORT_SECRET + "}",
                "refresh_interval": 30,
            },
            "servers": {"keyed": {"auth": {"type": "api_key", "value": "Bearer ${env:" + ENV_API_KEY + "}"}}},
            # A demo runs where there may be no keyring: the OAuth tokens go to a 0600 file in the demo's home.
            "token_store": "file",
            "audit": {"arguments": "redacted", "jsonl": f"{home}/audit.jsonl"},
        }

    def env(self) -> dict[str, str]:
        """The bridge's environment additions: the two secrets, and the headless browser as ``$BROWSER``."""
        return {ENV_PORT_SECRET: self.port_secret, ENV_API_KEY: self.api_key, "BROWSER": BROWSER}

    def oauth_stats(self) -> dict[str, Any]:
        """What the OAuth server saw: registrations, authorizations, token requests by grant (see ``OAuthStats``)."""
        for server in self.servers:
            if server.auth == "oauth":
                app = server.http.app
                return dict(app.state.stats.as_dict(app.state.provider))
        return {}

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit entities Port holds now (one per event: a retried event overwrites itself)."""
        return sorted(self.port.entities(AUDIT_BLUEPRINT).values(), key=lambda e: e["identifier"])


_AUTH_WORDS = {"none": "no auth", "api_key": "API key", "oauth": "OAuth"}


# ---------------------------------------------------------------------------------------------------------------------
# The headless browser
# ---------------------------------------------------------------------------------------------------------------------

BROWSER = f"{shlex.quote(sys.executable)} -m mcp_bridge.demo_backends browse %s"
"""``$BROWSER`` for the demo: Python's ``webbrowser`` runs it (shlex-split, ``%s`` = the URL, no shell)."""

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # hand 3xx back as an HTTPError: browse() decides what to follow


def browse(url: str, deadline: float, max_hops: int = 10) -> tuple[int, str, list[str]]:
    """Fetch ``url`` and follow redirects to loopback hosts only; returns (exit status, outcome, URLs visited).

    Exit status 0: pages fetched (whatever their HTTP status, as a browser shows an error page); 2: not an http(s)
    URL (nothing fetched); 3: a network error or the deadline passed. A redirect to another host is not followed
    (as if a real login page were shown).
    """
    opener = urllib.request.build_opener(_NoRedirect)
    hops: list[str] = []
    for _ in range(max_hops):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return 2, f"refused: not an http(s) URL: {parts.scheme or '(no scheme)'}", hops
        hops.append(url)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return 3, "timeout", hops
        request = urllib.request.Request(url, headers={"User-Agent": "mcp-bridge-demo-browser/1"})  # noqa: S310
        try:
            with opener.open(request, timeout=remaining) as response:
                response.read()
                return 0, f"HTTP {response.status}", hops
        except urllib.error.HTTPError as e:
            e.read()
            location = e.headers.get("Location")
            if not (300 <= e.code < 400 and location):
                return 0, f"HTTP {e.code}", hops
            url = urljoin(url, location)
            host = urlsplit(url).hostname or ""
            if urlsplit(url).scheme in ("http", "https") and host not in LOOPBACK_HOSTS:
                hops.append(url)
                return 0, f"stopped: redirect to non-loopback host {host}", hops
        except (OSError, ValueError) as e:
            return 3, f"error: {type(e).__name__}: {e}", hops
    return 0, "stopped: too many redirects", hops


def main(argv: list[str] | None = None) -> int:
    """``python -m mcp_bridge.demo_backends browse URL`` (the demo's ``$BROWSER``)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "browse":
        sys.stderr.write("usage: python -m mcp_bridge.demo_backends browse URL\n")
        return 2
    status, outcome, _hops = browse(args[1], time.monotonic() + 10.0)
    sys.stderr.write(f"demo browser: {outcome}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
