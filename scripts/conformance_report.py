"""Compare one conformance run with scripts/conformance-expected-failures.txt and print a table (used by
scripts/conformance).

A scenario fails when its checks.json holds a FAILURE or a WARNING check (the suite's own rule), or when it left no
checks.json at all. The expected-failures file has one ``scenario-id  # reason`` per line (blank lines and lines
starting with ``#`` are comments); every entry needs a reason. Entries for scenarios that did not run are ignored.

Exit status: 0 when every failure is expected and every expected failure failed; 1 on an unexpected failure or an
unexpected pass (remove the entry: the file must stay honest); 2 when the inputs are unusable.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

TIMESTAMP = re.compile(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z$")
STARTED = re.compile(r"^Starting scenario: (\S+)", re.MULTILINE)
SUMMARY = re.compile(r"^[✓✗] (\S+): ", re.MULTILINE)


def emit(text: str = "", *, err: bool = False) -> None:
    (sys.stderr if err else sys.stdout).write(text + "\n")


def read_expected(path: Path) -> dict[str, str]:
    expected: dict[str, str] = {}
    problems: list[str] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        scenario, _, reason = line.partition("#")
        scenario, reason = scenario.strip(), reason.strip()
        if not reason or " " in scenario:
            problems.append(f"{path}:{number}: expected 'scenario-id  # one-line reason', got {raw!r}")
        elif scenario in expected:
            problems.append(f"{path}:{number}: {scenario} is listed twice")
        else:
            expected[scenario] = reason
    if problems:
        raise ValueError("\n".join(problems))
    return expected


def read_results(results: Path) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """scenario -> (its result directory, its checks); the newest directory wins if one ran twice."""
    found: dict[str, tuple[Path, list[dict[str, Any]]]] = {}
    for checks_file in sorted(results.rglob("checks.json")):
        directory = checks_file.parent
        scenario = TIMESTAMP.sub("", directory.relative_to(results).as_posix())
        found[scenario] = (directory, json.loads(checks_file.read_text(encoding="utf-8")))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="the suite's -o directory")
    parser.add_argument("--log", type=Path, required=True, help="the suite's combined stdout and stderr")
    parser.add_argument("--expected", type=Path, required=True, help="the expected-failures file")
    parser.add_argument("--unexpected-out", type=Path, help="write the unexpectedly failing scenarios here, one a line")
    args = parser.parse_args()

    try:
        expected = read_expected(args.expected)
    except (OSError, ValueError) as exc:
        emit(str(exc), err=True)
        return 2
    log = args.log.read_text(encoding="utf-8", errors="replace") if args.log.exists() else ""
    results = read_results(args.results) if args.results.exists() else {}
    ran = list(dict.fromkeys([*SUMMARY.findall(log), *STARTED.findall(log), *results]))
    if not ran:
        emit(f"no scenario ran; see {args.log}", err=True)
        return 2

    rows: list[tuple[str, str, str, str, str]] = []
    unexpected_failures: list[str] = []
    unexpected_passes: list[str] = []
    for scenario in ran:
        directory, checks = results.get(scenario, (None, []))
        counts = Counter(c.get("status") for c in checks)
        bad = [c for c in checks if c.get("status") in ("FAILURE", "WARNING")]
        failed = bool(bad) or directory is None
        tally = f"{counts['SUCCESS']}/{counts['FAILURE']}/{counts['WARNING']}"
        if directory is None:
            detail = "no checks.json (the scenario did not run to the end)"
        else:
            detail = ", ".join(f"{c['id']} ({c['status'].lower()})" for c in bad)
        if failed and scenario in expected:
            verdict, detail = "expected failure", expected[scenario]
        elif failed:
            verdict = "UNEXPECTED FAILURE"
            unexpected_failures.append(scenario)
        elif scenario in expected:
            verdict, detail = "UNEXPECTED PASS", "passes now: remove it from the expected-failures file"
            unexpected_passes.append(scenario)
        else:
            verdict = "ok"
        rows.append((scenario, "FAIL" if failed else "pass", verdict, tally, detail))

    header = ("scenario", "result", "verdict", "ok/fail/warn", "failing checks, or why it is expected to fail")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        emit("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])

    passed = sum(1 for r in rows if r[1] == "pass")
    emit(
        f"\n{len(rows)} scenarios: {passed} passed, {len(rows) - passed} failed "
        f"({len(rows) - passed - len(unexpected_failures)} expected); "
        f"{len(unexpected_failures)} unexpected failures, {len(unexpected_passes)} unexpected passes"
    )
    for scenario in unexpected_failures:
        directory, checks = results.get(scenario, (None, []))
        emit(f"\nUNEXPECTED FAILURE {scenario}:")
        for check in checks:
            if check.get("status") in ("FAILURE", "WARNING"):
                message = f"{check.get('description', '')} {check.get('errorMessage', '')}".strip()
                emit(f"  {check['status']} {check['id']}: {message}")
        if directory is not None:
            emit(f"  driver and bridge output: {directory / 'stderr.txt'}")
    if args.unexpected_out is not None:
        args.unexpected_out.write_text("".join(f"{s}\n" for s in unexpected_failures), encoding="utf-8")
        passes = args.unexpected_out.with_name(args.unexpected_out.name + ".passes")
        passes.write_text("".join(f"{s}\n" for s in unexpected_passes), encoding="utf-8")
    return 1 if unexpected_failures or unexpected_passes else 0


if __name__ == "__main__":
    sys.exit(main())
