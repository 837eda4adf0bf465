"""Risk classes of tools, read from their annotations with the spec's defaults, for the allowlist.

``allowed_tools`` and ``denied_tools`` may name a class besides names and patterns (Port's guidance scopes by kind of
action: search and read, enable; create and update, consider; delete, disable):

- ``@read_only``: ``readOnlyHint`` is true;
- ``@non_destructive``: read-only, or ``destructiveHint`` is false;
- ``@idempotent``: read-only, or ``idempotentHint`` is true;
- ``@closed_world``: ``openWorldHint`` is false.

A tool without annotations gets the spec's defaults (``readOnlyHint`` false, ``destructiveHint`` true,
``idempotentHint`` false, ``openWorldHint`` true): it is in no class. A hint that is not a boolean counts as absent.
Hints are the server's word, which is why pins fingerprint them: a flipped hint changes the tool's definition.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

DEFAULTS = {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False, "openWorldHint": True}
CLASSES = ("@read_only", "@non_destructive", "@idempotent", "@closed_world")


def hints(annotations: Any) -> dict[str, bool]:
    """The four hints, each as given (when a boolean) or the spec's default."""
    given = annotations if isinstance(annotations, Mapping) else {}
    return {k: v if isinstance(v := given.get(k), bool) else default for k, default in DEFAULTS.items()}


def classes_of(annotations: Any) -> list[str]:
    """The risk classes a tool with these annotations is in (in :data:`CLASSES`' order)."""
    h = hints(annotations)
    found = []
    if h["readOnlyHint"]:
        found.append("@read_only")
    if h["readOnlyHint"] or not h["destructiveHint"]:
        found.append("@non_destructive")
    if h["readOnlyHint"] or h["idempotentHint"]:
        found.append("@idempotent")
    if not h["openWorldHint"]:
        found.append("@closed_world")
    return found


def matches(patterns: Iterable[str], tool: str, annotations: Any) -> bool:
    """Whether a tool (original name, annotations) is named by any of ``patterns``: ``*``, a name or ``fnmatch``
    pattern, or a risk class."""
    classes: list[str] | None = None
    for pattern in patterns:
        if pattern.startswith("@"):
            classes = classes_of(annotations) if classes is None else classes
            if pattern in classes:
                return True
        elif pattern == "*" or fnmatch.fnmatchcase(tool, pattern):
            return True
    return False


def could_match(patterns: Iterable[str], tool: str) -> bool:
    """Whether ``patterns`` could name this tool whatever its annotations (a class names any tool that may claim it)."""
    return any(p.startswith("@") or p == "*" or fnmatch.fnmatchcase(tool, p) for p in patterns)


def unknown_classes(patterns: Iterable[str]) -> list[str]:
    return [p for p in patterns if p.startswith("@") and p not in CLASSES]
