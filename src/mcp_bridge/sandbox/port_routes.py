"""What Port's token, search and bulk routes answer, over the stand-in's state, and the checks of what they receive.

:class:`PortRoutes` is mixed into :class:`~mcp_bridge.sandbox.port_standin.PortStandIn`, which owns that state and its
lock, and does the HTTP, the faults and the logs. The checks only test the shape the stand-in needs; the tests'
``PortDouble`` replaces them with the spec's schemas.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcp_bridge.sandbox.port_query import MISSING, decode_cursor, encode_cursor, matches, project
from mcp_bridge.sandbox.port_shapes import BULK_QUERY, blueprint_not_found, port_error, stored_form


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
class Client:
    """A registered identity: its secret, and what it may read (``None``: everything)."""

    secret: str
    visible: Callable[[dict[str, Any]], bool] | None


class PortRoutes:
    """The answers of the token, search and bulk routes and their checks, over the state :class:`PortStandIn` keeps
    (declared here; :meth:`PortStandIn.reset` sets it)."""

    _lock: threading.RLock
    _clients: dict[str, Client]
    _tokens: dict[str, tuple[str, float]]  # token -> (client_id, expires at on the stand-in's clock)
    _blueprints: dict[str, dict[str, Any] | None]
    _entities: dict[str, dict[str, dict[str, Any]]]
    _received: list[ReceivedEntity]
    _bulk_failures: dict[str, tuple[int, str, str]]
    _clock_offset: float
    expires_in: float

    # -- tokens -------------------------------------------------------------------------------------------------------

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

    def _authenticate(self, token: str | None) -> Client | tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            owner = self._tokens.get(token) if token else None
            if owner is None:
                return 401, port_error("unauthorized", "Missing or unknown access token"), {}
            client_id, expires_at = owner
            if expires_at <= self._now():
                return 401, port_error("token_expired", "The access token has expired"), {}
            return self._clients[client_id]

    # -- routes -------------------------------------------------------------------------------------------------------

    def _token(self, body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        if body is MISSING:
            return 422, port_error("invalid_request", "body: a JSON body is required"), {}
        problem = self._body_problem("token", body)
        if problem:
            return 422, port_error("invalid_request", problem), {}
        with self._lock:
            client = self._clients.get(body["clientId"])
            if client is None or not secrets.compare_digest(client.secret, body["clientSecret"]):
                return 401, port_error("invalid_credentials", "Invalid client id or client secret"), {}
            token = self._new_token(body["clientId"])
        return 200, {"ok": True, "accessToken": token, "expiresIn": self.expires_in, "tokenType": "Bearer"}, {}

    def _search(self, blueprint: str, body: Any, client: Client) -> tuple[int, dict[str, Any], dict[str, str]]:
        problem = self._body_problem("search", body)
        if problem:
            return 422, port_error("invalid_request", problem), {}
        limit = int(body.get("limit", 200))
        after: str | None = None
        if "from" in body:
            after = decode_cursor(body["from"])
            if after is None:
                return 422, port_error("invalid_request", "from: not a value this API returned as next"), {}
        with self._lock:
            if blueprint not in self._blueprints:
                return 404, blueprint_not_found(blueprint), {}
            candidates = sorted(self._entities.get(blueprint, {}).values(), key=lambda e: e["identifier"])
            candidates = copy.deepcopy(candidates)
        query = body.get("query")
        found = [
            e
            for e in candidates
            if (client.visible is None or client.visible(e)) and (query is None or matches(query, e, blueprint))
        ]
        if after is not None:
            found = [e for e in found if e["identifier"] > after]
        page = found[:limit]
        payload: dict[str, Any] = {
            "ok": True,
            "entities": [project(e, body.get("include"), body.get("exclude")) for e in page],
        }
        if len(found) > limit:
            payload["next"] = encode_cursor(page[-1]["identifier"])
        return 200, payload, {}

    def _bulk(
        self, blueprint: str, body: Any, query: dict[str, str], number: int
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        options, problem = self._query_options("bulk", query)
        if problem:
            return 422, port_error("invalid_request", problem), {}
        if body is MISSING:
            return 422, port_error("invalid_request", "body: a JSON body is required"), {}
        problem = self._body_problem("bulk", body)
        if problem:
            return 422, port_error("invalid_request", problem), {}
        upsert, merge, validation_only = options["upsert"], options["merge"], options["validation_only"]
        done: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        with self._lock:
            if blueprint not in self._blueprints:
                return 404, blueprint_not_found(blueprint), {}
            store = self._entities.setdefault(blueprint, {})
            for index, sent in enumerate(body["entities"]):
                identifier = self._resolve_identifier(blueprint, sent.get("identifier", MISSING))
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
        if given is MISSING:
            return f"e_{secrets.token_hex(8)}"  # Port generates an identifier when none is given
        if isinstance(given, str):
            return given
        # A search query (the spec's searchIdentifierQuerySchema): the one existing entity it matches.
        hits = [i for i, e in self._entities.get(blueprint, {}).items() if matches(given, e, blueprint)]
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
        new = stored_form({**sent, "identifier": identifier})
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
