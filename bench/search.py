"""Search mode's quality and cost (a benchmark, not a test: nothing here is asserted).

Run from the repository root::

    .venv/bin/python bench/search.py [--sizes 100,1000,10000] [--repeat 5] [--no-write]

The catalog is real servers' tool definitions, captured from published packages and kept as data with their source
in ``bench/search_data/catalogs/`` (its README lists them), with ``mcp_bridge.sandbox.localservers``' extra tools
(``tool_0001`` …, "looks up records by query …") added as distractors up to each size. The queries are
``bench/search_data/queries.json``: jobs as a user phrases them ("open a ticket for the login bug"), each with the
tool(s) that do it (exposed names, ``server__tool``).

Everything runs in this process through the bridge's own code: a :class:`~mcp_bridge.governance.catalog.Catalog`
with an allowlist of every server, and the :class:`~mcp_bridge.governance.listing.ToolList` whose ``find`` is
``find_tools`` (index, ranking, governance filter, the result as the model gets it). It reports, per size:

1. quality: recall@1 (the first match is an expected tool), recall@5 (one of the first five is), MRR@10 (the mean of
   1 / the rank of the first expected tool in the first ten, 0 when none is), over the queries whose expected tools
   are all in the catalog;
2. ``find_tools`` time per query, p50 and p99 (in-process: the index, the ranking and the result; not the JSON-RPC
   framing and pipes around it);
3. the size of ``tools/list`` in search mode (no usage history: the two meta tools and the servers named in them);
4. the time to bring the index up to date after one tool's description changed (p50 of ``--repeat`` changes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from common import (
    BENCH,
    add_common_args,
    append_results,
    load_average,
    machine_line,
    markdown_table,
    ms,
    percentile,
    quiet_note,
    title_line,
    verdict,
)
from mcp_bridge.config import Settings
from mcp_bridge.governance.allowlist import Allowlist
from mcp_bridge.governance.catalog import Catalog, Listing
from mcp_bridge.governance.listing import ToolList
from mcp_bridge.sandbox.localservers import extra_tool

DATA = BENCH / "search_data"
CATALOGS = DATA / "catalogs"
QUERIES = DATA / "queries.json"
DISTRACTORS_PER_SERVER = 200

TARGET_RECALL5_1000 = 0.9
TARGET_FIND_P50_MS = 5.0
TARGET_LIST_BYTES = 8 * 1024
TARGET_UPDATE_MS = 20.0


@dataclass
class Server:
    name: str
    description: str
    tools: list[dict[str, Any]]


def load_catalogs() -> list[Server]:
    servers = []
    for path in sorted(CATALOGS.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        servers.append(Server(str(data["server"]), str(data.get("description") or ""), list(data["tools"])))
    return servers


def load_queries() -> list[dict[str, Any]]:
    if not QUERIES.exists():
        return []
    return list(json.loads(QUERIES.read_text(encoding="utf-8"))["queries"])


def build(real: list[Server], size: int) -> tuple[Catalog, ToolList, int]:
    """A catalog of ``size`` tools: the real ones (cut to ``size`` when there are more) and distractor servers."""
    servers: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    count = 0
    for s in real:
        take = s.tools[: max(0, size - count)]
        if take:
            servers[s.name] = (s.description, take)
            count += len(take)
    i = 0
    while count < size:
        i += 1
        n = min(DISTRACTORS_PER_SERVER, size - count)
        name = f"records{i:02d}"
        servers[name] = ("Internal records.", [extra_tool(k, name) for k in range(1, n + 1)])
        count += n
    configs = {
        name: {"url": f"https://{name}.example.com/mcp", "allowed_tools": ["*"], "description": about}
        for name, (about, _) in servers.items()
    }
    settings = Settings.model_validate({"servers": configs, "catalog": {"mode": "search"}})
    catalog = Catalog(settings.naming, Allowlist(servers=settings.servers))
    for name, (_, tools) in servers.items():
        catalog.set_listing(name, Listing(tools=tools), rebuild=False)
    catalog.rebuild()
    return catalog, ToolList(settings, catalog, lambda _n: []), count


@dataclass
class Quality:
    queries: int = 0
    hit1: int = 0
    hit5: int = 0
    rr: float = 0.0
    misses: list[str] = field(default_factory=list)


def measure(listing: ToolList, queries: list[dict[str, Any]], present: set[str]) -> tuple[Quality, list[float]]:
    quality, times = Quality(), []
    for q in queries:
        expected = set(q["expected"])
        t0 = time.perf_counter()
        found = [t["name"] for t in listing.find(q["query"], None, 10)]
        times.append(time.perf_counter() - t0)
        if not expected <= present:
            continue
        quality.queries += 1
        rank = next((i for i, name in enumerate(found, 1) if name in expected), None)
        quality.hit1 += rank == 1
        quality.hit5 += rank is not None and rank <= 5
        quality.rr += 1 / rank if rank else 0.0
        if rank is None or rank > 5:
            quality.misses.append(q["query"])
    return quality, times


def update_cost(catalog: Catalog, listing: ToolList, real: list[Server], repeat: int) -> list[float]:
    """Seconds to bring the index up to date after one tool of the first server changed its description."""
    first = real[0]
    costs = []
    for r in range(repeat):
        tools = [dict(t) for t in first.tools]
        tools[0]["description"] = f"{tools[0].get('description') or ''} (revision {r})"
        catalog.set_listing(first.name, Listing(tools=tools))
        t0 = time.perf_counter()
        listing.find("warm", None, 1)  # the sync happens on the next search
        costs.append(time.perf_counter() - t0)
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="catalog sizes (default 100,1000,10000)")
    parser.add_argument("--repeat", type=int, default=5, help="query passes for the timings (default 5)")
    add_common_args(parser)
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    real, queries = load_catalogs(), load_queries()
    if not real or not queries:
        parser.error(f"no catalogs in {CATALOGS} or no queries in {QUERIES}")
    quiet = quiet_note(args)
    started = dt.datetime.now(dt.UTC)
    load_start = load_average()
    real_count = sum(len(s.tools) for s in real)
    rows: list[list[str]] = []
    for size in [real_count, *sizes]:
        t0 = time.perf_counter()
        catalog, listing, count = build(real, size)
        listing.find("warm up the index", None, 1)
        built = time.perf_counter() - t0
        present = {e.exposed for e in catalog.entries()}
        quality, _ = measure(listing, queries, present)
        times: list[float] = []
        for _ in range(args.repeat):
            times += measure(listing, queries, present)[1]
        listed = len(json.dumps(listing.tools("bench-ide"), ensure_ascii=False).encode())
        update = update_cost(catalog, listing, real, args.repeat * 4)
        label = f"{count:,} tools" + (" (the real ones only)" if size == real_count else "")
        n = quality.queries
        if n:
            r5 = quality.hit5 / n
            note = f"{n} queries with every expected tool present"
            if 900 <= count <= 1100:
                note += f"; target recall@5 ≥ {TARGET_RECALL5_1000:g} — {verdict(r5 >= TARGET_RECALL5_1000)}"
            rows.append(
                [
                    label,
                    "recall@1 / recall@5 / MRR@10",
                    f"{quality.hit1 / n:.2f} / {r5:.2f} / {quality.rr / n:.2f}",
                    note,
                ]
            )
        p50, p99 = ms(percentile(times, 50)), ms(percentile(times, 99))
        note = f"{len(times)} searches; in-process (index, ranking, result)"
        if count >= 10_000:
            note += f"; target p50 ≤ {TARGET_FIND_P50_MS:g} ms — {verdict(p50 <= TARGET_FIND_P50_MS)}"
        rows.append([label, "`find_tools` p50 / p99", f"{p50:.2f} / {p99:.2f} ms", note])
        rows.append(
            [
                label,
                "`tools/list` in search mode",
                f"{listed:,} bytes",
                f"target ≤ 8 KB — {verdict(listed <= TARGET_LIST_BYTES)}",
            ]
        )
        up = ms(statistics.median(update))
        note = f"median of {len(update)} one-tool changes"
        if count >= 10_000:
            note += f"; target ≤ {TARGET_UPDATE_MS:g} ms — {verdict(up <= TARGET_UPDATE_MS)}"
        rows.append([label, "one tool changed: index update and the next search", f"{up:.2f} ms", note])
        rows.append([label, "catalog and index built", f"{ms(built):.0f} ms", "once, before the first search"])
        print(f"  {label}: {quality.hit5}/{n} in the top 5; find p50 {p50:.2f} ms", file=sys.stderr)
        if size == real_count and quality.misses:
            print("  not in the top 5: " + "; ".join(quality.misses), file=sys.stderr)
    header = [
        title_line(started, "search mode (`bench/search.py`)"),
        "",
        machine_line(load_start) + (f"; {quiet}" if quiet else ""),
        f"- catalog: {real_count} real tools of {len(real)} servers (`bench/search_data/catalogs/`), then "
        "`localservers` extra tools as distractors up to each size; queries: "
        f"{len(queries)} jobs phrased as a user would (`bench/search_data/queries.json`)",
        "",
    ]
    append_results(
        "\n".join(header + markdown_table(["catalog", "metric", "value", "notes"], rows, "|---|---|---:|---|")) + "\n",
        not args.no_write,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
