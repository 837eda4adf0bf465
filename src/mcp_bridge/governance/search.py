"""Ranking the catalog for ``find_tools``: SQLite FTS5 with BM25 over weighted fields, updated incrementally.

Each tool is one row: its exposed name split into words (``github__create_issue`` → ``github create issue``), its
title, description, server name and the server's description (Port's), and its parameters' names and descriptions.
BM25 weighs a match in the name above one in the title, the description, the server and the parameters, in that
order (:data:`WEIGHTS`). The Porter stemmer folds word forms ("creating" finds "create"), and a short table of the
words users use for what tools call otherwise (:data:`SYNONYMS`: "ticket" for an issue, "open" for create, "PR" for
a pull request) widens the query: users describe the job, not the tool's own words.

The index lives in an in-memory SQLite database of the standard library; :meth:`ToolIndex.update` replaces the rows
of the tools whose text changed and nothing else, so a one-tool change costs one delete and one insert.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

WEIGHTS = (10.0, 6.0, 3.0, 2.0, 1.0, 1.5)
"""BM25 weights of the columns: name words, title, description, server, server description, parameters."""

_STOPWORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "could",
        "do",
        "does",
        "for",
        "from",
        "have",
        "how",
        "i",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "please",
        "should",
        "so",
        "some",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "this",
        "to",
        "up",
        "us",
        "want",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "will",
        "with",
        "would",
        "you",
        "your",
        "need",
        "needs",
        "let",
        "lets",
        "like",
        "just",
    }
)

_GROUPS = (
    "ticket issue bug defect incident",
    "create new add make open raise file submit start",
    "delete remove drop erase trash destroy purge",
    "search find look lookup locate query discover",
    "list show enumerate all browse",
    "get read fetch retrieve view load open see",
    "update edit modify change rename set patch",
    "send post message notify tell say write",
    "message chat dm conversation",
    "pull pr merge mr review",
    "repo repository project codebase",
    "page document doc docs wiki note article",
    "comment reply respond annotate",
    "file folder directory path",
    "run execute trigger launch invoke",
    "time date clock timezone",
    "user person member people teammate account profile",
    "channel room",
    "assign assignee owner",
    "close resolve finish done complete",
    "label tag category",
    "calendar meeting event schedule appointment",
    "email mail inbox",
    "database table sql row record",
    "image picture photo screenshot",
    "url link website webpage web http",
    "commit change diff",
    "branch ref",
    "deploy release ship",
    "log logs trace",
    "sum add total calculate compute",
)
SYNONYMS: dict[str, frozenset[str]] = {}
"""A word of a query → the words tools use for the same thing (itself included)."""
for _group in _GROUPS:
    _words = frozenset(_group.split())
    for _word in _words:
        SYNONYMS[_word] = SYNONYMS.get(_word, frozenset()) | _words

_WORD = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|[a-z]+|\d+")


def words(text: str) -> list[str]:
    """Lower-case words of ``text``: ``create_pull-requestV2`` → ``create pull request v 2``."""
    return [w.lower() for w in _WORD.findall(text or "")]


def _params(schema: Any) -> str:
    """The parameters' names (as words) and descriptions of an input schema (its top-level properties)."""
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping):
        return ""
    parts: list[str] = []
    for name, prop in list(props.items())[:64]:
        parts.append(" ".join(words(str(name))))
        if isinstance(prop, Mapping) and isinstance(prop.get("description"), str):
            parts.append(prop["description"][:500])
    return " ".join(parts)


@dataclass(frozen=True)
class Doc:
    """What a tool is found by."""

    exposed: str
    server: str
    name_words: str
    title: str
    description: str
    server_text: str
    server_description: str
    params: str


def doc(exposed: str, server: str, definition: Mapping[str, Any], server_description: str = "") -> Doc:
    annotations = definition.get("annotations")
    title = definition.get("title") or (annotations.get("title") if isinstance(annotations, Mapping) else None)
    return Doc(
        exposed=exposed,
        server=server,
        name_words=" ".join(words(exposed)),
        title=str(title or "")[:300],
        description=str(definition.get("description") or "")[:4000],
        server_text=" ".join(words(server)),
        server_description=server_description[:1000],
        params=_params(definition.get("inputSchema")),
    )


class ToolIndex:
    """An FTS5 index of the tools ``find_tools`` may return (see the module's docstring)."""

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(
            "CREATE VIRTUAL TABLE tools USING fts5("
            "name_words, title, description, server, server_description, params, "
            "tokenize = 'porter unicode61')"
        )
        self._rows: dict[str, tuple[int, Doc]] = {}
        self._by_rowid: dict[int, Doc] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, exposed: object) -> bool:
        return exposed in self._rows

    def update(self, docs: Iterable[Doc]) -> int:
        """Make the index hold exactly ``docs``: rows of tools gone or changed are deleted, new ones inserted.
        Returns how many rows changed."""
        wanted = {d.exposed: d for d in docs}
        changed = 0
        with self._db:
            for exposed, (rowid, old) in list(self._rows.items()):
                if wanted.get(exposed) != old:
                    self._db.execute("DELETE FROM tools WHERE rowid = ?", (rowid,))
                    del self._rows[exposed]
                    changed += 1
            for exposed, new in wanted.items():
                if exposed in self._rows:
                    continue
                rowid, self._next = self._next, self._next + 1
                self._db.execute(
                    "INSERT INTO tools (rowid, name_words, title, description, server, server_description, params) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        rowid,
                        new.name_words,
                        new.title,
                        new.description,
                        new.server_text,
                        new.server_description,
                        new.params,
                    ),
                )
                self._rows[exposed] = (rowid, new)
                changed += 1
        self._by_rowid = {rowid: d for rowid, d in self._rows.values()}
        return changed

    def search(self, query: str, *, server: str | None = None, limit: int = 10) -> list[tuple[str, float]]:
        """The best matches for ``query`` (exposed name, score; best first), of ``server``'s tools only if given."""
        terms = query_terms(query)
        if not terms or limit < 1:
            return []
        match = " OR ".join(f'"{t}"' for t in sorted(terms))
        weights = ", ".join(str(w) for w in WEIGHTS)
        rows = self._db.execute(
            f"SELECT rowid, bm25(tools, {weights}) AS score FROM tools WHERE tools MATCH ? ORDER BY score LIMIT ?",  # noqa: S608 - constants
            (match, limit * 4 if server else limit),
        ).fetchall()
        found: list[tuple[str, float]] = []
        for rowid, score in rows:
            d = self._by_rowid.get(rowid)
            if d is None or (server is not None and d.server != server):
                continue
            found.append((d.exposed, -float(score)))
            if len(found) >= limit:
                break
        return found


def query_terms(query: str) -> set[str]:
    """The words of a query (no stop words), each with the words tools use for it (:data:`SYNONYMS`)."""
    terms: set[str] = set()
    for word in words(query):
        if word in _STOPWORDS or len(word) < 2:
            continue
        terms.add(word)
        terms |= SYNONYMS.get(word, frozenset())
        if word.endswith("s") and word[:-1] in SYNONYMS:
            terms |= SYNONYMS[word[:-1]]
    return terms
