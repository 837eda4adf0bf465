"""The Port double of the tests: ``mcp_bridge.sandbox.port_standin.PortStandIn`` with every request checked against
Port's published OpenAPI spec.

``PortDouble`` serves, on 127.0.0.1 and a free port, from a background thread with its own event loop:

* ``POST /v1/auth/access_token``                             (route name ``"token"``)
* ``POST /v1/blueprints/{blueprint_identifier}/entities/search`` (route name ``"search"``)
* ``POST /v1/blueprints/{blueprint_identifier}/entities/bulk``   (route name ``"bulk"``)

Request bodies and query strings are validated against Port's published OpenAPI spec (``shared/port-openapi.json``,
found beside the repository or through ``$PORT_OPENAPI_SPEC``): what the spec rejects gets Port's 422. Entities an
admin stores are checked against the spec's entity schema, and entity properties against their blueprint's schema.
Responses are shaped exactly as the spec's response schemas (``tests/test_port_double.py`` checks every status
against them). Everything else (routes, tokens, search rules, faults, rate limits) is the stand-in's, the same code
``mcp-bridge demo`` runs; see ``mcp_bridge.sandbox.port_standin``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import regex
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from mcp_bridge.sandbox.port_routes import ReceivedEntity
from mcp_bridge.sandbox.port_shapes import (
    AUDIT_BLUEPRINT,
    BULK_PATH,
    DEFAULT_EXPIRES_IN,
    MAX_BODY_BYTES,
    MCP_REGISTRY_BLUEPRINT,
    MCP_REGISTRY_RELATIONS,
    MCP_REGISTRY_SCHEMA,
    MCP_SERVER_BLUEPRINT,
    ROUTE_PATHS,
    SEARCH_PATH,
    TOKEN_PATH,
    mcp_server_entity,
    registry_entity,
)
from mcp_bridge.sandbox.port_standin import PortStandIn, RecordedRequest, _match

__all__ = [
    "AUDIT_BLUEPRINT",
    "BULK_PATH",
    "DEFAULT_EXPIRES_IN",
    "MAX_BODY_BYTES",
    "MCP_REGISTRY_BLUEPRINT",
    "MCP_REGISTRY_RELATIONS",
    "MCP_REGISTRY_SCHEMA",
    "MCP_SERVER_BLUEPRINT",
    "SEARCH_PATH",
    "TOKEN_PATH",
    "PortDouble",
    "ReceivedEntity",
    "RecordedRequest",
    "_match",
    "load_spec",
    "mcp_server_entity",
    "registry_entity",
    "request_validator",
    "response_validator",
]

SPEC_ENV = "PORT_OPENAPI_SPEC"
SPEC_URI = "urn:port-openapi"  # the whole spec is registered under this URI, so "#/components/..." refs resolve

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


def _schema_error(validator: Validator, instance: Any) -> str | None:
    error = best_match(validator.iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where or 'body'}: {error.message}"


@functools.cache
def _entity_validator() -> Validator:
    """The spec's entity as search returns it (identifier, title, icon, team, properties, relations; nothing else)."""
    return schema_validator(
        _pointer("paths", SEARCH_PATH, "post", "responses", "200", "content", "application/json", "schema")
        + "/properties/entities/items"
    )


class PortDouble(PortStandIn):
    """:class:`~mcp_bridge.sandbox.port_standin.PortStandIn` whose checks are the spec's schemas."""

    def _body_problem(self, route: str, body: Any) -> str | None:
        return _schema_error(request_validator(ROUTE_PATHS[route]), body)

    def _entity_problem(self, entity: Any) -> str | None:
        return _schema_error(_entity_validator(), entity)

    def _properties_problem(self, schema: dict[str, Any], properties: dict[str, Any]) -> str | None:
        return _schema_error(PortSchemaValidator(schema), properties)

    def _query_parameters(self, route: str) -> dict[str, tuple[str, bool, Any]]:
        """The operation's query parameters as the spec lists them."""
        return {
            param["name"]: (
                param.get("schema", {}).get("type", ""),
                bool(param.get("required")),
                param.get("schema", {}).get("default"),
            )
            for param in load_spec()["paths"][ROUTE_PATHS[route]]["post"].get("parameters", [])
            if param["in"] == "query"
        }
