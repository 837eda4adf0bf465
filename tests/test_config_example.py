"""``config.example.yaml`` says only what is true: every key it documents, in a comment or commented out, exists in the
model where it is documented, and every ``(default: X)`` it states is the model's default.

(``tests/test_config.py`` checks the other direction: every model key is documented.)

The example's layout is what is read: a comment line ``# key: ...`` right above a key, at that key's indentation,
documents ``key`` beside it (in the same model); each two more spaces after the ``#`` go one level down, under the key
documented last above it (``#   type: api_key`` then ``#     header: ...``: ``header`` of the ``api_key`` auth). A
trailing comment documents the key on its line. The marked blocks (``--- port example start ---``...) are read
uncommented, as their keys."""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from mcp_bridge.config import Settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"

_KEY_LINE = re.compile(r"^( *)([A-Za-z_][\w.-]*):(?: +(.*?))?\s*$")
_DOC = re.compile(r"^( +)([a-z][a-z0-9_]*)(?: \([^)]*\))?:(?: |$)")
_DEFAULT = re.compile(r"\(default: (.*?)(?:\)|, |; | = )")


@dataclass(frozen=True)
class Ctx:
    """Where keys live: a model, a mapping of names to one (``servers``), or the auth union (by ``type``)."""

    model: type[BaseModel] | None = None
    names: Ctx | None = None
    variants: dict[str, type[BaseModel]] = field(default_factory=dict)

    def label(self) -> str:
        if self.model is not None:
            return self.model.__name__
        return " | ".join(m.__name__ for m in self.variants.values()) or "a mapping of names"

    def fields(self) -> dict[str, Any]:
        if self.model is not None:
            return dict(self.model.model_fields)
        out: dict[str, Any] = {}
        for variant in self.variants.values():
            out.update(variant.model_fields)
        return out


def ctx_of(annotation: Any) -> Ctx | None:
    """The keys a field's value may hold, from its annotation (``None``: a leaf)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return ctx_of(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return ctx_of(members[0])
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if models:
            return Ctx(variants={typing.get_args(m.model_fields["type"].annotation)[0]: m for m in models})
        return None
    if origin is dict:
        inner = ctx_of(typing.get_args(annotation)[1])
        return Ctx(names=inner) if inner is not None else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return Ctx(model=annotation)
    return None


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    keys: int = 0
    defaults: int = 0


def uncommented(text: str) -> list[str]:
    """The example's lines with each marked block uncommented (the marker lines stay comments)."""
    lines = text.splitlines()
    inside = False
    for i, line in enumerate(lines):
        if "--- " in line and " example start ---" in line:
            inside = True
        elif "--- " in line and " example end ---" in line:
            inside = False
        elif inside:
            lines[i] = re.sub(r"^(\s*)# ?", r"\1", line, count=1)
    return lines


def split_comment(line: str) -> tuple[str, str | None]:
    """A YAML line and its trailing comment (a ``#`` after a space, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and i > 0 and line[i - 1] == " ":
            return line[:i].rstrip(), line[i + 1 :]
    return line, None


def check(findings: Findings, where: str, ctx: Ctx, key: str, doc: str) -> Ctx | None:
    """``key`` documented in ``ctx`` with text ``doc``: it must exist there, and a stated default must be its default.
    Returns what the key's own keys live in."""
    if ctx.names is not None:  # a name of one's choosing (a server): no check, its keys are the inner model's
        return ctx.names
    known = ctx.fields()
    findings.keys += 1
    if key not in known:
        findings.problems.append(f"{where}: `{key}` is documented here, but {ctx.label()} has no such key")
        return None
    info = known[key]
    stated = _DEFAULT.search(" ".join(doc.split()))
    if stated is not None and not info.is_required():
        findings.defaults += 1
        documented = yaml.safe_load(stated.group(1))
        actual = info.get_default(call_default_factory=True)
        if isinstance(actual, BaseModel):
            actual = actual.model_dump()
        if documented != actual:
            findings.problems.append(
                f"{where}: `{key}` says (default: {stated.group(1)}), but {ctx.label()}.{key} defaults to {actual!r}"
            )
    return ctx_of(info.annotation)


def example_findings(text: str) -> Findings:
    findings = Findings()
    lines = uncommented(text)
    stack: list[tuple[int, Ctx | None]] = [(-1, Ctx(model=Settings))]  # (indentation, where its keys live)
    group: list[tuple[int, str]] = []  # the own-line comments just above the current line
    for number, line in enumerate(lines, start=1):
        stripped = line.lstrip()
        if not stripped:
            group = []
            continue
        if stripped.startswith("#"):
            group.append((number, line))
            continue
        content, trailing = split_comment(line)
        match = _KEY_LINE.match(content)
        if match is None:
            group = []
            continue
        indent, key, value = len(match.group(1)), match.group(2), match.group(3)
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if parent is None:
            findings.problems.append(f"line {number}: `{key}` is under a key that holds no keys")
            group = []
            continue
        # The comment lines above document this key (and, deeper, the keys below it).
        doc = " ".join(c.split("#", 1)[1] for _, c in _continuation(lines, number, indent)) if trailing else ""
        own = check(findings, f"line {number}", parent, key, (trailing or "") + " " + doc)
        if parent.variants and key == "type" and value in parent.variants:
            stack[-1] = (stack[-1][0], Ctx(model=parent.variants[value]))  # the rest of this auth is that variant
        child = own
        if child is not None and child.variants and value and value.startswith("{"):
            tag = (yaml.safe_load(value) or {}).get("type")
            child = Ctx(model=child.variants[tag]) if tag in child.variants else child
        _documented_above(findings, group, indent, parent, own)
        stack.append((indent, child))
        group = []
    return findings


def _continuation(lines: list[str], number: int, indent: int) -> list[tuple[int, str]]:
    """The comment lines that continue line ``number``'s trailing comment (a ``#`` further right than its key)."""
    out = []
    for i in range(number, len(lines)):
        line = lines[i]
        if not line.lstrip().startswith("#") or len(line) - len(line.lstrip()) <= indent:
            break
        out.append((i + 1, line))
    return out


def _documented_above(
    findings: Findings, group: list[tuple[int, str]], indent: int, parent: Ctx, own: Ctx | None
) -> None:
    levels: dict[int, Ctx | None] = {0: parent, 1: own}
    docs: list[tuple[int, int, str, list[str]]] = []  # (line, level, key, its text)
    for number, line in group:
        if len(line) - len(line.lstrip()) != indent:
            continue  # a trailing comment's continuation, not documentation of a key here
        text = line.lstrip()[1:]
        match = _DOC.match(text)
        spaces = len(match.group(1)) if match else 0
        if match is None or (spaces - 1) % 2:
            if docs:
                docs[-1][3].append(text)
            continue
        docs.append((number, (spaces - 1) // 2, match.group(2), [text]))
    for number, level, key, text in docs:
        ctx = levels.get(level)
        if ctx is None:
            findings.problems.append(f"line {number}: `{key}` is documented under a key that holds no keys")
            continue
        inner = check(findings, f"line {number}", ctx, key, " ".join(text))
        if ctx.variants and key == "type":
            tag = text[0].split(":", 1)[1].split()[0]
            inner = Ctx(model=ctx.variants[tag]) if tag in ctx.variants else None
        levels = {k: v for k, v in levels.items() if k <= level}
        levels[level + 1] = inner


def test_every_key_the_example_documents_exists_where_it_is_documented_with_the_default_it_states() -> None:
    findings = example_findings(EXAMPLE.read_text(encoding="utf-8"))
    assert findings.problems == []
    assert findings.keys >= 80 and findings.defaults >= 35  # it read the whole file, comments included


def test_the_check_finds_a_key_in_the_wrong_place_and_a_wrong_default() -> None:
    """Each way the example could say something false is found (so the test above can fail)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    wrong = {
        "    # title: a human-readable": "    # retries: per call (default: 3).\n    # title: a human-readable",
        "#     header: header name (default: Authorization)": "#     header: header name (default: X-Api-Key)",
        "  #     resource: true ": "  #     audience: true ",
        "#   timeout: 10                        # seconds for one request to Port (default: 10,": (
            "#   timeout: 10                        # seconds for one request to Port (default: 30,"
        ),
        "  # level: debug | info | warning | error (default: info).": "  # level: one of them (default: warning).",
        "    #   type: none     the server needs no credentials": "    #   kind: none     the server needs none",
    }
    for old, new in wrong.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    problems = example_findings(text).problems
    assert len(problems) == len(wrong), "\n".join(problems)
    expected = [
        "`retries` is documented here, but ServerConfig has no such key",
        "`header` says (default: X-Api-Key), but ApiKeyAuth.header defaults to 'Authorization'",
        "`audience` is documented here, but OAuthAuth has no such key",
        "`timeout` says (default: 30), but PortConfig.timeout defaults to 10",
        "`level` says (default: warning), but LogConfig.level defaults to 'info'",
        "`kind` is documented here, but NoAuth | ApiKeyAuth | OAuthAuth | PortTokenAuth has no such key",
    ]
    for what in expected:
        assert any(what in p for p in problems), (what, problems)
