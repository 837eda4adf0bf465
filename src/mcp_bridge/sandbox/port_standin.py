"""A stand-in for Port, over real HTTP on 127.0.0.1: the Port API routes the bridge uses.

:class:`PortStandIn` serves

* ``POST /v1/auth/access_token``                                 (route name ``"token"``)
* ``POST /v1/blueprints/{blueprint_identifier}/entities/search`` (route name ``"search"``)
* ``POST /v1/blueprints/{blueprint_identifier}/entities/bulk``   (route name ``"bulk"``)

shaped as Port's published OpenAPI spec gives them (what they answer is in ``port_routes``, the search in
``port_query``). It checks request bodies only for the shape it needs; the tests' ``PortDouble``
(tests/port_double.py) is this class with every request validated against the spec itself. Status codes the spec does
not document for these routes (429, 5xx) are answered in Port's general error shape ``{"ok": false, "error",
"message"}``; 429 carries the headers of Port's rate-limit docs (https://docs.port.io/api-reference/rate-limits):
``x-ratelimit-limit``, ``x-ratelimit-remaining``, ``x-ratelimit-period`` and ``x-ratelimit-reset`` = the number of
seconds until the limit resets (a delta).

Where Port's docs are silent the stand-in makes a documented choice; see the docstrings of ``PortStandIn`` and
``port_query.matches``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_bridge.sandbox.loopback import LoopbackServer
from mcp_bridge.sandbox.port_mcp import PortMcpState, build_port_mcp
from mcp_bridge.sandbox.port_query import MISSING, Unsupported
from mcp_bridge.sandbox.port_routes import Client, PortRoutes, ReceivedEntity
from mcp_bridge.sandbox.port_shapes import (
    AUDIT_BLUEPRINT,
    DEFAULT_EXPIRES_IN,
    MAX_BODY_BYTES,
    MCP_SERVER_BLUEPRINT,
    ROUTE_PATHS,
    TOKEN_PATH,
    port_error,
    stored_form,
)


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
class _Fault:
    route: str  # a route name or "*"
    status: int | None
    remaining: int
    delay: float = 0.0
    reset: float = 1
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None


class PortStandIn(PortRoutes):
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
        self.mcp = PortMcpState()
        """What Port's MCP endpoint (``/mcp``, :mod:`~mcp_bridge.sandbox.port_mcp`) was asked to do."""
        self.reset()

    def reset(self) -> None:
        """Back to the state of a new stand-in (settings, clients, tokens, blueprints, entities, logs, faults, clock);
        it keeps running on the same port. Lets one running stand-in serve many tests."""
        with self._lock:
            expires_in, blueprints, rate_limit = self._settings
            self.expires_in = expires_in
            self.rate_limit = rate_limit
            # The state PortRoutes declares, then the HTTP side's.
            self._clients = {}
            self._tokens = {}
            self._blueprints = {bp: None for bp in blueprints}
            self._entities = {}
            self._received = []
            self._bulk_failures = {}
            self._clock_offset = 0.0
            self._requests: list[RecordedRequest] = []
            self._faults: list[_Fault] = []
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
        self._http = LoopbackServer(lambda _port: self._make_app(), port=self.port, name="port-stand-in")
        self._http.start(timeout)
        self.port = self._http.port
        return self

    def _make_app(self) -> ASGIApp:
        """The Port API routes, and Port's MCP endpoint at ``/mcp`` (a new one per start)."""
        mcp = build_port_mcp(self._mcp_blueprints, self._mcp_entities, self._mcp_token, self.mcp)
        api = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=_ALL_METHODS)])
        return _Split(mcp, api)

    def _mcp_blueprints(self) -> list[str]:
        with self._lock:
            return sorted(self._blueprints)

    def _mcp_entities(self, blueprint: str, client_id: str | None) -> list[dict[str, Any]] | None:
        with self._lock:
            if blueprint not in self._blueprints:
                return None
            client = self._clients.get(client_id or "")
            found = list(self._entities.get(blueprint, {}).values())
            visible = client.visible if client is not None else None
            return [copy.deepcopy(e) for e in found if visible is None or visible(e)]

    def _mcp_token(self, token: str | None) -> str | None:
        with self._lock:
            owner = self._tokens.get(token) if token else None
            return owner[0] if owner is not None and owner[1] > self._now() else None

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
            self._clients[client_id] = Client(client_secret, predicate)

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
        stored = stored_form(entity)
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
        except Unsupported as exc:
            self.internal_errors.append(str(exc))
            status, payload, headers = 500, port_error("not_supported_by_stand_in", str(exc)), {}
        except Exception as exc:  # a bug in the stand-in: fail loudly in the test that hit it
            self.internal_errors.append(f"{type(exc).__name__}: {exc}")
            status, payload, headers = 500, port_error("internal_error", "The Port stand-in failed"), {}
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
            return 404, port_error("not_found", message), {}
        client: Client | None = None
        if route != "token":
            found = self._authenticate(token)
            if isinstance(found, tuple):
                return found
            client = found
        if len(body) > MAX_BODY_BYTES:
            return 413, port_error("payload_too_large", "Request body is too large (limit is 1MiB)"), {}
        if body and not body_is_json:
            return 422, port_error("invalid_request", "The body is not valid JSON"), {}
        if route == "token":
            return self._token(parsed if body_is_json else MISSING)
        assert blueprint is not None and client is not None
        if route == "search":
            return self._search(blueprint, parsed if body_is_json else {}, client)
        return self._bulk(blueprint, parsed if body_is_json else MISSING, dict(request.query_params), number)

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
            payload = port_error("rate_limit_exceeded", "Too many requests, please retry later")
        elif status == 401:
            payload = port_error("token_expired", "The access token has expired")
        elif status >= 500:
            payload = port_error("internal_error", "Internal server error (injected)")
        else:
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Error"
            payload = port_error(phrase.lower().replace(" ", "_"), f"{phrase} (injected)")
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
                return 429, port_error("rate_limit_exceeded", "Too many requests, please retry later"), {}
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


_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


class _Split:
    """``/mcp`` to Port's MCP endpoint (which also takes the lifespan: its session manager), the rest to the API."""

    def __init__(self, mcp: ASGIApp, api: ASGIApp) -> None:
        self.mcp, self.api = mcp, api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        mcp = scope["type"] == "lifespan" or path == "/mcp" or path.startswith("/mcp/")
        await (self.mcp if mcp else self.api)(scope, receive, send)


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
