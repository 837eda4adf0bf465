"""The one sanitiser of what commands print (``mcp_bridge.terminal``): what it escapes, what it keeps."""

from __future__ import annotations

import json
import sys
import unicodedata

from mcp_bridge.terminal import printable, printable_json

KEPT_FORMAT = {"\u200c", "\u200d"}  # zero-width non-joiner and joiner: scripts and emoji sequences need them


def _unsafe(c: str) -> bool:
    category = unicodedata.category(c)
    return category in ("Cc", "Cs", "Zl", "Zp") or (category == "Cf" and c not in KEPT_FORMAT)


def test_every_control_format_separator_and_surrogate_character_is_escaped_and_nothing_else() -> None:
    escaped = {c for c in map(chr, range(sys.maxunicode + 1)) if printable(c, newlines=False) != c}
    assert escaped >= {c for c in map(chr, range(sys.maxunicode + 1)) if _unsafe(c)}
    # Beyond those, only characters this Python's Unicode does not know yet (format characters of a later version).
    assert {unicodedata.category(c) for c in escaped if not _unsafe(c)} <= {"Cn"}


def test_escapes_name_the_character_lines_may_be_kept_and_escaping_twice_changes_nothing() -> None:
    text = "a\x1b[31mred\x07\x00\x7f\x9b \u202eevil\u2066 \U000e0041\ud800 \r\n\tünïcødé 👨\u200d👩 ✓"
    once = printable(text)
    assert once == (
        "a\\x1b[31mred\\x07\\x00\\x7f\\x9b \\u202eevil\\u2066 \\U000e0041\\ud800 \\x0d\n\tünïcødé 👨\u200d👩 ✓"
    )
    assert printable(once) == once
    assert printable(text, newlines=False).endswith("\\x0d\\x0a\\x09ünïcødé 👨\u200d👩 ✓")


def test_json_text_stays_valid_json_with_the_same_data() -> None:
    data = {"k\u202e": ["\x1b[2J\x00", "\x9b\x7f\u2028", "\U000e0041 \udfff", "ünï ✓ \u200d"]}
    raw = json.dumps(data, ensure_ascii=False, indent=2)
    safe = printable_json(raw)
    assert json.loads(safe) == data
    assert printable(safe) == safe  # nothing left that a terminal would act on
    assert json.dumps(data, indent=2) == printable_json(json.dumps(data, indent=2))  # ASCII JSON: unchanged
