"""Exposed names: ``{server}{separator}{name}``, safe for every client, unique and stable.

The rule (DESIGN §3): only ``[A-Za-z0-9_-]``, other characters become ``_``. A name longer than ``max_length`` is cut
and ends with ``_`` plus the first 6 hex digits of the SHA-256 of the full original name (the UTF-8 bytes of
``{server}{separator}{original}``, before any character replacement). Names that collide get the same suffix. The
result depends only on the set of names, so it is identical across restarts. Names are never parsed back: routing
goes through the table this module builds.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_SUFFIX_HEX = 6


def _digest(original: str) -> str:
    return hashlib.sha256(original.encode("utf-8")).hexdigest()


def _with_suffix(base: str, original: str, max_length: int, hex_len: int = _SUFFIX_HEX) -> str:
    suffix = "_" + _digest(original)[:hex_len]
    return base[: max_length - len(suffix)] + suffix


def base_name(server: str, name: str, separator: str, max_length: int) -> str:
    """The exposed name of one entry when nothing collides with it."""
    original = f"{server}{separator}{name}"
    safe = _UNSAFE.sub("_", original)
    if len(safe) > max_length:
        return _with_suffix(safe, original, max_length)
    return safe or _with_suffix("", original, max_length)


def assign_names(entries: Iterable[tuple[str, str]], *, separator: str, max_length: int) -> dict[tuple[str, str], str]:
    """Map each ``(server, original name)`` to its exposed name; every exposed name is unique.

    An entry whose exposed name is exactly its original (nothing replaced, nothing cut) keeps it even when a
    sanitized name lands on the same text, unless several such entries share it; every other member of a collision
    gets the hash suffix. Should two
    suffixed names still collide (a 24-bit hash clash), the suffix grows until they do not.
    """
    unique = sorted(set(entries))
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for server, name in unique:
        groups[base_name(server, name, separator, max_length)].append((server, name))

    result: dict[tuple[str, str], str] = {}
    taken: set[str] = set()
    pending: list[tuple[str, tuple[str, str]]] = []
    for base, members in groups.items():
        if len(members) == 1:
            result[members[0]] = base
            taken.add(base)
            continue
        exact = [m for m in members if f"{m[0]}{separator}{m[1]}" == base]
        keeper = exact[0] if len(exact) == 1 else None
        for member in members:
            if member == keeper:
                result[member] = base
                taken.add(base)
            else:
                pending.append((base, member))

    for base, (server, name) in sorted(pending):
        original = f"{server}{separator}{name}"
        hex_len = _SUFFIX_HEX
        candidate = _with_suffix(base, original, max_length, hex_len)
        while candidate in taken or candidate in groups:
            hex_len += 2
            candidate = _with_suffix(base, original, max_length, hex_len)
        result[(server, name)] = candidate
        taken.add(candidate)
    return result
