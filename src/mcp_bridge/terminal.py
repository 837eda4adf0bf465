"""Text from elsewhere made safe to show on a terminal: the one sanitiser every command's output goes through.

What a command prints comes largely from others: tool names, titles and descriptions from servers, their error
messages and results, Port's notes, a browser's login callback. Such text may hold characters that act on the
terminal or the reader instead of being read: control characters (an ANSI escape sequence recolours, moves the
cursor, sets the window title or the clipboard; BEL rings; NUL, DEL; a carriage return overwrites the line), the
Unicode line and paragraph separators, and format characters (bidi overrides and isolates that show text in another
order than it is stored, "Trojan Source"; zero-width and tag characters that hide text from a person while a model
still reads it). :func:`printable` shows each of them as an escape (``\\x1b``, ``\\u202e``, ``\\U000e0041``): the
reader sees that it is there, and nothing acts on it. Every other character, ordinary Unicode included, is kept; so
are the zero-width joiner and non-joiner, which emoji sequences and several scripts need.

JSON output is escaped by JSON itself only in part: ``json.dumps`` escapes C0 controls, but with
``ensure_ascii=False`` not DEL, C1 controls (``\\x9b`` is a CSI to many terminals), lone surrogates (which cannot
even be printed) or format characters. :func:`printable_json` escapes those as ``\\uXXXX`` inside the JSON text, so
that the output is still valid JSON holding exactly the same data.

Standard library only.
"""

from __future__ import annotations

import re

_FORMAT = (
    # Unicode's format characters (category Cf) but U+200C ZERO WIDTH NON-JOINER and U+200D ZERO WIDTH JOINER;
    # tests/test_terminal.py holds this list to the running Python's unicodedata.
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
)
_OTHER = "\x7f-\x9f\ud800-\udfff\u2028\u2029"  # DEL, C1 controls, lone surrogates, line and paragraph separators
_UNSAFE_LINE = re.compile(f"[\x00-\x1f{_OTHER}{_FORMAT}]")
_UNSAFE_TEXT = re.compile(f"[\x00-\x08\x0b-\x1f{_OTHER}{_FORMAT}]")  # keeps \t and \n
_UNSAFE_JSON = re.compile(f"[{_OTHER}{_FORMAT}]")  # C0 in JSON text is whitespace between tokens: json escaped the rest


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape_json(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON spells characters beyond the BMP
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def printable(text: str, *, newlines: bool = True) -> str:
    """``text`` with every character that could act on a terminal or hide from its reader shown as an escape.

    ``newlines``: keep line feeds and tabs (a message of several lines); ``False`` escapes them too (a table cell,
    a one-line field). Escaping again changes nothing.
    """
    return (_UNSAFE_TEXT if newlines else _UNSAFE_LINE).sub(_escape, text)


def printable_json(text: str) -> str:
    """JSON text (as ``json.dumps`` writes it) with the characters :func:`printable` escapes written as ``\\uXXXX``
    escapes: still valid JSON, and the same data."""
    return _UNSAFE_JSON.sub(_escape_json, text)
