"""A real HTTP double of the Port API routes the bridge uses, for tests.

``PortDouble`` serves, on 127.0.0.1 and a free port, from a background thread with its own event loop:

* ``POST /v1/auth/access_token``                             (route name ``"token"``)
* ``POST /v1/blueprints/{blueprint_identifier}/entities/search`` (route name ``"search"``)
* ``POST /v1/blueprints/{blueprint_identifier}/entities/bulk``   (route name ``"bulk"``)

Request bodies and query strings are validated against Port's published OpenAPI spec (``shared/port-openapi.json``,
found beside the repository or through ``$PORT_OPENAPI_SPEC``): what the spec rejects gets Port's 422. Responses are
shaped exactly as the spec's response schemas (``tests/test_port_double.py`` checks every status against them).

Status codes the spec does not document for these routes (429, 5xx) are answered in Port's general error shape
``{"ok": false, "error", "message"}``; 429 carries the headers of Port's rate-limit docs
(https://docs.port.io/api-reference/rate-limits): ``x-ratelimit-limit``, ``x-ratelimit-remaining``,
``x-ratelimit-period`` and ``x-ratelimit-reset`` = the number of seconds until the limit resets (a delta, not an epoch).

Where the spec is silent the double makes a documented choice; see the docstrings of ``PortDouble`` and ``_matches``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import json
import math
import os
import secrets
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import regex
import uvicorn
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# ---------------------------------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------------------------------

SPEC_ENV = "PORT_OPENAPI_SPEC"
SPEC_URI = "urn:port-openapi"  # the whole spec is registered under this URI, so "#/components/..." refs resolve

TOKEN_PATH = "/v1/auth/access_token"
SEARCH_PATH = "/v1/blueprints/{blueprint_identifier}/entities/search"
BULK_PATH = "/v1/blueprints/{blueprint_identifier}/entities/bulk"
ROUTE_PATHS = {"token": TOKEN_PATH, "search": SEARCH_PATH, "bulk": BULK_PATH}

MAX_BODY_BYTES = 1024 * 1024  # "Request body is too large (limit is 1MiB)"
DEFAULT_EXPIRES_IN = 10800  # Port's access tokens live 3 h


VENDORED_SPEC = Path(__file__).resolve().parent / "port-openapi.json"
"""A copy of Port's published spec, so the suite runs from any clone (``test_port_double`` checks it for drift)."""
SHARED_SPEC = Path(__file__).resolve().parents[2] / "shared" / "port-openapi.json"


def spec_path() -> Path:
    """``$PORT_OPENAPI_SPEC``, else the copy vendored beside this file."""
    explicit = os.environ.get(SPEC_ENV)
    path = Path(explicit) if explicit else VENDORED_SPEC
    if not path.is_file():
        raise FileNotFoundError(f"Port's OpenAPI spec not found at {path} (set ${SPEC_ENV} to its path)")
    return path


@functools.cache
def load_spec() -> dict[str, Any]:
    return json.loads(spec_path().read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """JSON Schema ``pattern`` with the ``regex`` module instead of ``re``.

    Port's identifier pattern ``^(?!\\.{1,2}$)[\\p{L}0-9@_.+:\\\\/=-]+$`` uses ``\\p{L}`` (any Unicode letter), an
    ECMA-262 ``u``-mode class that Python's ``re`` rejects ("bad escape \\p"). ``regex`` implements ``\\p{L}`` exactly;
    an ``re`` rewrite such as ``[^\\W\\d_]`` would also admit non-decimal numerals like "²" or "Ⅻ".
    """
    if validator.is_type(instance, "string") and not regex.search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


PortSchemaValidator = validators.extend(Draft202012Validator, {"pattern": _pattern})


@functools.cache
def _registry() -> Registry[Any]:
    resource = Resource.from_contents(load_spec(), default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


@functools.cache
def schema_validator(pointer: str) -> Validator:
    """A 2020-12 validator for the schema at JSON ``pointer`` inside the spec (``$ref``s resolved within the spec)."""
    return PortSchemaValidator({"$ref": f"{SPEC_URI}#{pointer}"}, registry=_registry())  # type: ignore[no-any-return]


def request_validator(path: str, method: str = "post") -> Validator:
    """The spec's request-body schema of ``method path`` (``path`` as written in the spec, e.g. ``SEARCH_PATH``)."""
    return schema_validator(_pointer("paths", path, method, "requestBody", "content", "application/json", "schema"))


def response_validator(path: str, status: int, method: str = "post") -> Validator:
    """The spec's response schema for ``status``; ``KeyError`` when the spec does not document that status."""
    responses = load_spec()["paths"][path][method]["responses"]
    if str(status) not in responses:
        raise KeyError(f"the spec documents no {status} for {method.upper()} {path} (only {sorted(responses)})")
    return schema_validator(
        _pointer("paths", path, method, "responses", str(status), "content", "application/json", "schema")
    )


def _schema_error(validator: Validator, instance: Any) -> str | None:
    error = best_match(validator.iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where or 'body'}: {error.message}"


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
    """One request the double received. ``status`` is None while it is being answered."""

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
    request_number: int  # index into PortDouble.requests (until clear_requests())


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
    """A valid Port query the double does not evaluate (answered 500 and listed in ``internal_errors``)."""


_MISSING: Any = object()


# ---------------------------------------------------------------------------------------------------------------------
# The double
# ---------------------------------------------------------------------------------------------------------------------


class PortDouble:
    """Port's token, search and bulk routes over real HTTP.

    State (clients, tokens, blueprints, entities, logs) survives ``stop()``/``start()``, which rebinds the same port.

    Choices where the spec is silent (Port's real behaviour unknown):
    * Search returns entities sorted by identifier; ``next`` is an opaque cursor (the last identifier returned), so
      paging stays consistent while entities change. A ``from`` the double did not issue → 422. ``limit`` (a "number"
      in the spec) is truncated to an integer.
    * A bulk with any failed entry answers 207 with ``ok: false`` (also when every entry failed); all succeeded →
      200 with ``ok: true`` and ``errors: []``. Without ``upsert=true`` an existing identifier fails with 409.
    * RBAC (``visible``) filters what search returns; bulk writes are not restricted.
    * Error identifiers (``error``) are the double's own snake_case names; clients should branch on the status code.
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
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=_ALL_METHODS)])
        self.reset()

    def reset(self) -> None:
        """Back to the state of a new double (settings, clients, tokens, blueprints, entities, logs, faults, clock);
        it keeps running on the same port. Lets one running double serve many tests."""
        with self._lock:
            expires_in, blueprints, rate_limit = self._settings
            self.expires_in = expires_in
            self.rate_limit = rate_limit
            self._clients: dict[str, _Client] = {}
            self._tokens: dict[str, tuple[str, float]] = {}  # token -> (client_id, expires at on the double's clock)
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
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> PortDouble:
        """Listen (again) on 127.0.0.1: a free port the first time, the same port after ``stop()``."""
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
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            ws="none",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        self._server, self._stopping = server, False
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            except BaseException as exc:  # surfaced by start() below
                failure.append(exc)
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name=f"port-double-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if failure or not self._thread.is_alive():
                raise RuntimeError(f"the Port double did not start: {failure[0] if failure else 'thread ended'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Port double did not start within {timeout}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening ("Port is down"): connections are refused until ``start()``. Delayed answers end early."""
        if self._server is None or self._thread is None:
            return
        self._stopping = True
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the Port double did not stop within {timeout}s")
        self._server = self._thread = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> PortDouble:
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
        """Move the double's clock forward (token expiry, the rate-limit window) without sleeping."""
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
        error = _schema_error(_entity_validator(), entity)
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
            status, payload, headers = 500, _error("not_supported_by_double", str(exc)), {}
        except Exception as exc:  # a bug in the double: fail loudly in the test that hit it
            self.internal_errors.append(f"{type(exc).__name__}: {exc}")
            status, payload, headers = 500, _error("internal_error", "The Port double failed"), {}
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
        if route != "token":
            client = self._authenticate(token)
            if isinstance(client, tuple):
                return client
        if len(body) > MAX_BODY_BYTES:
            return 413, _error("payload_too_large", "Request body is too large (limit is 1MiB)"), {}
        if body and not body_is_json:
            return 422, _error("invalid_request", "The body is not valid JSON"), {}
        if route == "token":
            return self._token(parsed if body_is_json else _MISSING)
        assert blueprint is not None
        if route == "search":
            return self._search(blueprint, parsed if body_is_json else {}, client)
        return self._bulk(blueprint, parsed if body_is_json else _MISSING, dict(request.query_params), number)

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
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
        problem = _schema_error(request_validator(TOKEN_PATH), body)
        if problem:
            return 422, _error("invalid_request", problem), {}
        with self._lock:
            client = self._clients.get(body["clientId"])
            if client is None or not secrets.compare_digest(client.secret, body["clientSecret"]):
                return 401, _error("invalid_credentials", "Invalid client id or client secret"), {}
            token = self._new_token(body["clientId"])
        return 200, {"ok": True, "accessToken": token, "expiresIn": self.expires_in, "tokenType": "Bearer"}, {}

    def _search(self, blueprint: str, body: Any, client: _Client) -> tuple[int, dict[str, Any], dict[str, str]]:
        problem = _schema_error(request_validator(SEARCH_PATH), body)
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
        options, problem = _query_options(BULK_PATH, query)
        if problem:
            return 422, _error("invalid_request", problem), {}
        if body is _MISSING:
            return 422, _error("invalid_request", "body: a JSON body is required"), {}
        problem = _schema_error(request_validator(BULK_PATH), body)
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
        problem = _schema_error(PortSchemaValidator(properties_schema), entity.get("properties", {}))
        return f"{blueprint} properties: {problem}" if problem else None


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


@functools.cache
def _entity_validator() -> Validator:
    """The spec's entity as search returns it (identifier, title, icon, team, properties, relations; nothing else)."""
    return schema_validator(
        _pointer("paths", SEARCH_PATH, "post", "responses", "200", "content", "application/json", "schema")
        + "/properties/entities/items"
    )


def _stored_form(entity: dict[str, Any]) -> dict[str, Any]:
    stored = {k: copy.deepcopy(entity[k]) for k in _STORED_KEYS if k in entity and entity[k] is not None}
    stored.setdefault("properties", {})
    stored.setdefault("relations", {})
    return stored


def _query_options(path: str, query: dict[str, str]) -> tuple[dict[str, Any], str | None]:
    """Coerce and check the query string against the operation's query parameters in the spec."""
    options: dict[str, Any] = {}
    for param in load_spec()["paths"][path]["post"].get("parameters", []):
        if param["in"] != "query":
            continue
        name, schema = param["name"], param.get("schema", {})
        raw = query.get(name)
        if raw is None:
            if param.get("required"):
                return options, f"querystring must have required property '{name}'"
            options[name] = schema.get("default")
        elif schema.get("type") == "boolean":
            if raw not in ("true", "false"):
                return options, f"querystring/{name} must be boolean"
            options[name] = raw == "true"
        else:
            options[name] = raw
    return options, None


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
        raise _Unsupported(f"property {name!r} (user-context properties) is not supported by the double")
    if name == "$blueprint":
        return blueprint
    if name in _META:
        return entity.get(_META[name], _MISSING)
    if name.startswith("$"):
        raise _Unsupported(f"meta-property {name} is not supported by the double")
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
    op = rule["operator"]
    if "property" not in rule or isinstance(rule.get("value"), dict):
        raise _Unsupported(f"rule {rule!r} is not supported by the double")
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
        return {">": v > want, ">=": v >= want, "<": v < want, "<=": v <= want}[op]
    raise _Unsupported(f"operator {op!r} is not supported by the double")
