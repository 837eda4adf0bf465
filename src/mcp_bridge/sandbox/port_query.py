"""The stand-in's search: Port's rule groups evaluated on stored entities (:func:`matches`), ``include`` and
``exclude`` (:func:`project`), and the paging cursor. Where Port's docs are silent it makes a documented choice (see
:func:`matches`)."""

from __future__ import annotations

import base64
import json
from typing import Any


class Unsupported(Exception):
    """A valid Port query the stand-in does not evaluate (answered 500 and listed in ``internal_errors``)."""


MISSING: Any = object()
"""Absent (a property that is not there, a body that was not sent), as opposed to null."""

_META = {"$identifier": "identifier", "$title": "title", "$icon": "icon", "$team": "team"}


def encode_cursor(identifier: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": identifier}).encode()).decode()


def decode_cursor(cursor: str) -> str | None:
    try:
        after = json.loads(base64.urlsafe_b64decode(cursor.encode()))["after"]
    except (ValueError, KeyError, TypeError):
        return None
    return after if isinstance(after, str) else None


def project(entity: dict[str, Any], include: list[str] | None, exclude: list[str] | None) -> dict[str, Any]:
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


def matches(query: dict[str, Any], entity: dict[str, Any], blueprint: str) -> bool:
    """Evaluate a rule group. Supported: nested groups; ``property`` rules on properties, relations and the meta
    properties ``$identifier``, ``$title``, ``$blueprint``, ``$icon``, ``$team`` with ``=``, ``!=``, ``in``, ``notIn``,
    ``contains``, ``doesNotContains``, ``containsAny``, ``beginsWith``, ``endsWith``, ``doesNotBeginsWith``,
    ``doesNotEndsWith``, ``>``, ``>=``, ``<``, ``<=``, ``isEmpty``, ``isNotEmpty``. Other valid Port rules (dates,
    relatedTo, scorecards, user context, …) raise ``Unsupported``.

    Choices: an empty rule list matches everything; "empty" = absent, null, "", [] or {}; ``=`` compares JSON values
    (``true`` is not ``1``); on an array property ``in``/``notIn`` look for any element, ``contains`` for an element.
    """
    rules = query["rules"]
    if not rules:
        return True
    results = (matches(r, entity, blueprint) if "combinator" in r else _rule(r, entity, blueprint) for r in rules)
    return all(results) if query["combinator"] == "and" else any(results)


def _value(entity: dict[str, Any], blueprint: str, name: Any) -> Any:
    if not isinstance(name, str):
        raise Unsupported(f"property {name!r} (user-context properties) is not supported by the stand-in")
    if name == "$blueprint":
        return blueprint
    if name in _META:
        return entity.get(_META[name], MISSING)
    if name.startswith("$"):
        raise Unsupported(f"meta-property {name} is not supported by the stand-in")
    if name in entity.get("properties", {}):
        return entity["properties"][name]
    return entity.get("relations", {}).get(name, MISSING)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _empty(v: Any) -> bool:
    return v is MISSING or v is None or v in ("", [], {})


def _rule(rule: dict[str, Any], entity: dict[str, Any], blueprint: str) -> bool:
    op: str = rule["operator"]
    if "property" not in rule or isinstance(rule.get("value"), dict):
        raise Unsupported(f"rule {rule!r} is not supported by the stand-in")
    v = _value(entity, blueprint, rule["property"])
    want = rule.get("value")
    if op in ("isEmpty", "isNotEmpty"):
        return _empty(v) == (op == "isEmpty")
    if op in ("=", "!="):
        equal = (want is None and v in (MISSING, None)) or (v is not MISSING and _same(v, want))
        return equal == (op == "=")
    if op in ("in", "notIn"):
        values = want if isinstance(want, list) else [want]
        items = v if isinstance(v, list) else [v]
        found = any(_same(i, w) for i in items if i is not MISSING for w in values)
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
    raise Unsupported(f"operator {op!r} is not supported by the stand-in")
