"""Ranking the catalog for ``find_tools``: SQLite FTS5 candidates, re-scored by what of the query each tool covers.

Each tool is one row: its exposed name split into words (``github__create_issue`` → ``github create issue``), its
title, description, server name and the server's description (Port's), and its parameters' names and descriptions.
FTS5's BM25 over these weighted fields (:data:`WEIGHTS`) picks up to 300 candidates for the query's words and their
synonyms; each candidate is then scored by the query's words it covers: a word counts by the best field it is found
in (name, title, description, parameters, server: :data:`FIELD_WEIGHTS`), by how rare it is among the tools (rare
words tell more), and less when only one of its synonyms is found. Users describe the job, not the tool's own words:
a light stemmer (:func:`stem`) folds word forms, and a table of the words users use for what tools call otherwise
(:data:`SYNONYMS`: "ticket" for an issue, "open" for create, "PR" for a pull request) widens the query.
``bench/search.py`` measures it on real servers' tools.

The index lives in an in-memory SQLite database of the standard library; :meth:`ToolIndex.apply` replaces the rows
of the tools whose text changed and nothing else, so a one-tool change costs one delete and one insert.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

WEIGHTS = (10.0, 6.0, 3.0, 2.0, 1.0, 1.5, 0.0)
"""BM25 weights of the columns: name words, title, description, server, server description, parameters (and the
server's exact name, which is not searched: ``find_tools``' ``server`` filters by it)."""

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
    "create new add make open raise file submit start insert",
    "delete remove drop erase trash destroy purge forget",
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
    "worklog log time hours timesheet spent",
    "sprint iteration cycle milestone",
    "file disk",
    "size big large bytes",
    "stage add index",
    "switch checkout",
    "download fetch scrape",
    "extract pull parse scrape structured",
    "watch monitor track",
    "javascript script js evaluate",
    "describe schema columns structure fields",
    "directions route drive travel distance",
    "remember memory knowledge entity observation",
    "flowchart flow diagram",
    "close closed resolve state",
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


_ENDINGS = (("ies", 4, "y"), ("ing", 5, ""), ("ches", 4, "ch"), ("shes", 4, "sh"), ("sses", 4, "ss"), ("xes", 4, "x"))


def stem(word: str) -> str:
    """A light English stemmer (plural and verb endings, a final e), the same for queries and tools: "closes",
    "closed", "closing" and "close" are all "clos"."""
    for ending, longer, becomes in _ENDINGS:
        if len(word) > longer and word.endswith(ending):
            word = word[: -len(ending)] + becomes
            break
    else:
        if len(word) > 4 and word.endswith("ed") and not word.endswith("eed"):
            word = word[:-2]
        elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
            word = word[:-1]
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def _stems(text: str) -> frozenset[str]:
    return frozenset(stem(w) for w in words(text) if w not in _STOPWORDS)


@dataclass(frozen=True)
class Doc:
    """What a tool is found by: its text per field, for FTS5, and the fields' stemmed words, for the re-ranking."""

    exposed: str
    server: str
    name_words: str
    title: str
    description: str
    server_text: str
    server_description: str
    params: str
    fields: tuple[frozenset[str], ...] = ()
    """Stemmed words of: the name (without the server), the title, the description (its first part), the
    parameters, the server (name and description); see :data:`FIELD_WEIGHTS`."""
    server_words: frozenset[str] = frozenset()


FIELD_WEIGHTS = (3.0, 2.0, 1.0, 0.6, 0.8)
"""How much a query word counts when found in a tool's name, title, description, parameters or server."""
_SYNONYM_FACTOR = 0.6
"""A query word counts this much less when only one of its synonyms matches."""
_CANDIDATES = 300


def doc(exposed: str, server: str, definition: Mapping[str, Any], server_description: str = "") -> Doc:
    annotations = definition.get("annotations")
    title = definition.get("title") or (annotations.get("title") if isinstance(annotations, Mapping) else None)
    description = str(definition.get("description") or "")[:4000]
    params = _params(definition.get("inputSchema"))
    original = str(definition.get("name") or exposed)
    tool_name = exposed[len(server) :] if exposed.startswith(server) else original
    server_words = _stems(server)
    return Doc(
        exposed=exposed,
        server=server,
        name_words=" ".join(words(exposed)),
        title=str(title or "")[:300],
        description=description,
        server_text=" ".join(words(server)),
        server_description=server_description[:1000],
        params=params,
        fields=(
            _stems(tool_name),
            _stems(str(title or "")),
            _stems(description[:600]),
            _stems(params),
            server_words | _stems(server_description[:300]),
        ),
        server_words=server_words,
    )


class ToolIndex:
    """The tools ``find_tools`` may return: an FTS5 index for the candidates, re-ranked by how many of the query's
    words (or their synonyms) each tool covers, where, and how rare the words are (see the module's docstring)."""

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(
            "CREATE VIRTUAL TABLE tools USING fts5("
            "name_words, title, description, server, server_description, params, server_name UNINDEXED, "
            "tokenize = 'porter unicode61')"
        )
        self._rows: dict[str, tuple[int, Doc]] = {}
        self._by_rowid: dict[int, Doc] = {}
        self._df: dict[str, int] = {}
        """In how many tools each stemmed word occurs (any field): rare words weigh more."""
        self._next = 1

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, exposed: object) -> bool:
        return exposed in self._rows

    def update(self, docs: Iterable[Doc]) -> int:
        """Make the index hold exactly ``docs``: rows of tools gone or changed are deleted, new ones inserted.
        Returns how many rows changed."""
        wanted = {d.exposed: d for d in docs}
        removed = [exposed for exposed in self._rows if exposed not in wanted]
        changed = [d for exposed, d in wanted.items() if (old := self._rows.get(exposed)) is None or old[1] != d]
        self.apply(removed, changed)
        return len(removed) + len(changed)

    def apply(self, removed: Iterable[str], changed: Iterable[Doc]) -> None:
        """Drop the tools named in ``removed`` and put in ``changed`` (new tools, or new text of known ones): what
        :meth:`update` does when the caller knows the difference already, in time proportional to it."""
        with self._db:
            for exposed in [*removed, *(d.exposed for d in changed)]:
                known = self._rows.pop(exposed, None)
                if known is not None:
                    self._db.execute("DELETE FROM tools WHERE rowid = ?", (known[0],))
                    del self._by_rowid[known[0]]
                    self._count(known[1], -1)
            for new in changed:
                self._insert(new)

    def _insert(self, new: Doc) -> None:
        rowid, self._next = self._next, self._next + 1
        self._db.execute(
            "INSERT INTO tools (rowid, name_words, title, description, server, server_description, params, "
            "server_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rowid,
                new.name_words,
                new.title,
                new.description,
                new.server_text,
                new.server_description,
                new.params,
                new.server,
            ),
        )
        self._rows[new.exposed] = (rowid, new)
        self._by_rowid[rowid] = new
        self._count(new, 1)

    def _count(self, d: Doc, by: int) -> None:
        for word in frozenset().union(*d.fields) if d.fields else ():
            self._df[word] = self._df.get(word, 0) + by

    def _idf(self, word: str) -> float:
        n = len(self._rows) or 1
        return math.log(1 + n / (1 + self._df.get(word, 0)))

    def search(self, query: str, *, server: str | None = None, limit: int = 10) -> list[tuple[str, float]]:
        """The best matches for ``query`` (exposed name, score; best first), of ``server``'s tools only if given."""
        concepts = _concepts(query)
        if not concepts or limit < 1:
            return []
        terms = sorted({t for word, syns in concepts for t in (word, *syns)})
        match = " OR ".join(f'"{t}"' for t in terms)
        weights = ", ".join(str(w) for w in WEIGHTS)
        where, args = (
            ("tools MATCH ?", [match]) if server is None else ("tools MATCH ? AND server_name = ?", [match, server])
        )
        rows = self._db.execute(
            f"SELECT rowid, bm25(tools, {weights}) FROM tools WHERE {where} ORDER BY 2 LIMIT ?",  # noqa: S608
            (*args, _CANDIDATES),
        ).fetchall()
        weighed = [
            (word, syns, self._idf(word) if self._df.get(word) else _synonym_idf(self, syns)) for word, syns in concepts
        ]
        scored: list[tuple[float, str]] = []
        for rowid, bm25 in rows:
            d = self._by_rowid.get(rowid)
            if d is None or (server is not None and d.server != server):
                continue
            scored.append((_score(d, weighed) - 0.001 * float(bm25), d.exposed))
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [(exposed, score) for score, exposed in scored[:limit]]


def _synonym_idf(index: ToolIndex, syns: frozenset[str]) -> float:
    """The weight of a query word no tool uses: the mean of its synonyms' (0 when none is used either)."""
    known = [index._idf(s) for s in syns if index._df.get(s)]
    return sum(known) / len(known) if known else 0.0


def _score(d: Doc, concepts: list[tuple[str, frozenset[str], float]]) -> float:
    """How well a tool covers the query: for each query word, the best field it (or else a synonym, for less) is
    found in, weighed by the word's rarity."""
    total = 0.0
    for word, syns, idf in concepts:
        best = 0.0
        for field, weight in zip(d.fields, FIELD_WEIGHTS, strict=False):
            if word in field:
                best = max(best, weight)
            elif syns and not syns.isdisjoint(field):
                best = max(best, weight * _SYNONYM_FACTOR)
        total += best * idf
    return total


def _concepts(query: str) -> list[tuple[str, frozenset[str]]]:
    """The query's words (stemmed, no stop words, each once), each with its synonyms' stems."""
    seen: set[str] = set()
    out: list[tuple[str, frozenset[str]]] = []
    for raw in words(query):
        if raw in _STOPWORDS or len(raw) < 2:
            continue
        word = stem(raw)
        if word in seen:
            continue
        seen.add(word)
        syns = SYNONYMS.get(raw, frozenset()) | SYNONYMS.get(word, frozenset())
        out.append((word, frozenset(stem(s) for s in syns) - {word}))
    return out


def query_terms(query: str) -> set[str]:
    """The words of a query (stemmed, no stop words), each with the words tools use for it (:data:`SYNONYMS`)."""
    return {t for word, syns in _concepts(query) for t in (word, *syns)}
