"""Tool input schemas that every client accepts, and what ``doctor`` says of the rest.

Some servers publish schemas that clients reject: an ``array`` without ``items`` breaks VS Code (Port's own MCP server
has hit it). What is safely repairable is repaired in what the IDE is listed (:func:`repaired`): an array schema
without ``items`` (nor ``prefixItems``) gets ``items: {}``, which is what JSON Schema means by the absence anyway. A
call's arguments are forwarded as the IDE sent them, and pins fingerprint the server's own definition, so the repair
changes nothing else. What cannot be repaired safely (a ``$ref`` that points nowhere in the schema, a schema too
large for a client to take in) is reported by ``doctor`` (:func:`problems`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 64
"""Schemas nested deeper than this are left as they are (a hostile server's endless nesting costs nothing)."""
LARGE_SCHEMA_BYTES = 32 * 1024
"""``doctor`` warns about an input schema larger than this (it costs the model context on every list)."""
_DATA_KEYS = frozenset({"const", "enum", "default", "examples", "example"})
"""Keys whose values are data, not schemas: never repaired."""


def _is_array(node: Mapping[str, Any]) -> bool:
    kind = node.get("type")
    return kind == "array" or (isinstance(kind, list) and "array" in kind)


def repaired(schema: Any, depth: int = 0) -> Any:
    """``schema`` with every array schema given ``items: {}`` where it has neither ``items`` nor ``prefixItems``;
    the very object when nothing needed it (so an unchanged definition stays the same object)."""
    if depth > MAX_DEPTH:
        return schema
    if isinstance(schema, Mapping):
        changed: dict[str, Any] | None = None
        for key, value in schema.items():
            if key in _DATA_KEYS or not isinstance(value, Mapping | list):
                continue
            fixed = repaired(value, depth + 1)
            if fixed is not value:
                changed = changed if changed is not None else dict(schema)
                changed[key] = fixed
        if _is_array(schema) and "items" not in schema and "prefixItems" not in schema:
            changed = changed if changed is not None else dict(schema)
            changed["items"] = {}
        return schema if changed is None else changed
    if isinstance(schema, list):
        items = [repaired(v, depth + 1) for v in schema]
        return schema if all(a is b for a, b in zip(items, schema, strict=True)) else items
    return schema


def repaired_tool(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """The tool with its ``inputSchema`` (and ``outputSchema``) repaired; the very object when nothing changed."""
    out: dict[str, Any] | None = None
    for key in ("inputSchema", "outputSchema"):
        schema = tool.get(key)
        if isinstance(schema, Mapping):
            fixed = repaired(schema)
            if fixed is not schema:
                out = out if out is not None else dict(tool)
                out[key] = fixed
    return tool if out is None else out


def problems(schema: Any) -> list[str]:
    """What a client may not manage in an input schema, and the bridge cannot repair: a ``$ref`` that does not
    resolve within the schema, and a schema larger than :data:`LARGE_SCHEMA_BYTES`."""
    found: list[str] = []
    try:
        size = len(json.dumps(schema, ensure_ascii=False, default=str))
    except (TypeError, ValueError, RecursionError):
        return ["its input schema is nested too deeply (or is not JSON) for the checks"]
    if size > LARGE_SCHEMA_BYTES:
        found.append(f"its input schema is {size // 1024} KB (over {LARGE_SCHEMA_BYTES // 1024} KB)")
    bad: list[str] = []
    _refs(schema, schema, bad, 0)
    if bad:
        found.append(f"$ref that does not resolve: {', '.join(sorted(set(bad))[:3])}")
    return found


def _refs(node: Any, root: Any, bad: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        return
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if isinstance(ref, str) and not _resolves(ref, root):
            bad.append(ref[:80])
        for key, value in node.items():
            if key not in _DATA_KEYS:
                _refs(value, root, bad, depth + 1)
    elif isinstance(node, list):
        for value in node:
            _refs(value, root, bad, depth + 1)


def _resolves(ref: str, root: Any) -> bool:
    """A local JSON pointer (``#/$defs/x``) that leads somewhere in the schema; anything else does not."""
    if ref == "#":
        return True
    if not ref.startswith("#/"):
        return False
    node = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True
