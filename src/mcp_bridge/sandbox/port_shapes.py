"""Port's API as the stand-in serves it: the routes' paths and limits, the blueprints the bridge uses, the entities
it reads (``_mcp_server``; ``mcpRegistry`` from Port's MCP registry guide), how Port stores an entity, and Port's error
body."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

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
    allowed_prompts: Iterable[str] | None = None,
    allowed_resources: Iterable[str] | None = None,
    confirm: str | None = None,
) -> dict[str, Any]:
    """An ``_mcp_server`` entity as DESIGN §3 describes it. ``None`` leaves a property (or the title) out."""
    properties: dict[str, Any] = {"url": url, "allowed_tools": list(allowed_tools)}
    optional = {
        "exposed": exposed,
        "auth_type": auth_type,
        "oauth_config": oauth_config,
        "description": description,
        "tool_pins": tool_pins,
        "allowed_prompts": None if allowed_prompts is None else list(allowed_prompts),
        "allowed_resources": None if allowed_resources is None else list(allowed_resources),
        "confirm": confirm,
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


_STORED_KEYS = ("identifier", "title", "icon", "team", "properties", "relations")


def stored_form(entity: dict[str, Any]) -> dict[str, Any]:
    """An entity as Port stores it: its known keys that are not null, with ``properties`` and ``relations``."""
    stored = {k: copy.deepcopy(entity[k]) for k in _STORED_KEYS if k in entity and entity[k] is not None}
    stored.setdefault("properties", {})
    stored.setdefault("relations", {})
    return stored


def port_error(error: str, message: str) -> dict[str, Any]:
    """Port's error body."""
    return {"ok": False, "error": error, "message": message}


def blueprint_not_found(blueprint: str) -> dict[str, Any]:
    return port_error("not_found", f'Blueprint with identifier "{blueprint}" was not found')
