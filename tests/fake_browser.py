"""A stand-in for the user's browser in OAuth tests: set it as ``$BROWSER`` (see ``oauth_harness.BROWSER``).

``python fake_browser.py URL`` GETs URL and follows redirects only to loopback hosts (127.0.0.1, localhost, ::1), so
the auto-approving test server's redirect lands on the client's loopback callback listener with the code and state.
A redirect anywhere else is logged and not followed (as if a login page were shown). Each invocation appends one JSON
line to the file named by ``$FAKE_BROWSER_LOG`` (when set): ``{"url", "outcome", "hops"}``.

Exit status: 0 when the pages were fetched (whatever their HTTP status, like a browser showing an error page), 2 for a
URL that is not http(s) (refused, nothing fetched), 3 on a network error or after 10 s. Nothing goes to stdout.

Python's ``webbrowser`` runs a ``$BROWSER`` entry containing ``%s`` as ``shlex.split(entry)`` with ``%s`` replaced by
the URL (no shell), waits for it, and treats a non-zero exit as "this browser failed, try the next one".
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from mcp_bridge.sandbox.browser import browse  # the demo's headless browser: loopback redirects only

TIMEOUT = 10.0


def _log(record: dict[str, Any]) -> None:
    path = os.environ.get("FAKE_BROWSER_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        _log({"url": None, "outcome": f"refused: expected one URL argument, got {len(argv) - 1}", "hops": []})
        return 2

    def give_up(signum: int, frame: object) -> None:
        _log({"url": argv[1], "outcome": "timeout", "hops": []})
        os._exit(3)

    if hasattr(signal, "SIGALRM"):  # a hard stop in case a read blocks past the deadline
        signal.signal(signal.SIGALRM, give_up)
        signal.alarm(int(TIMEOUT) + 1)
    status, outcome, hops = browse(argv[1], time.monotonic() + TIMEOUT)
    _log({"url": argv[1], "outcome": outcome, "hops": hops})
    sys.stderr.write(f"fake browser: {outcome}\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
