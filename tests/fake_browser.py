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
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urljoin, urlsplit

TIMEOUT = 10.0
MAX_HOPS = 10
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # hand 3xx back as an HTTPError; this program decides what to follow


def _log(record: dict[str, Any]) -> None:
    path = os.environ.get("FAKE_BROWSER_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def browse(url: str, deadline: float) -> tuple[int, str, list[str]]:
    """Fetch ``url`` and follow loopback redirects; returns (exit status, outcome, URLs visited)."""
    opener = urllib.request.build_opener(_NoRedirect)
    hops: list[str] = []
    for _ in range(MAX_HOPS):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return 2, f"refused: not an http(s) URL: {parts.scheme or '(no scheme)'}", hops
        hops.append(url)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return 3, "timeout", hops
        request = urllib.request.Request(url, headers={"User-Agent": "fake-browser/1"})  # noqa: S310 (checked above)
        try:
            with opener.open(request, timeout=remaining) as response:
                response.read()
                return 0, f"HTTP {response.status}", hops
        except urllib.error.HTTPError as e:
            e.read()
            location = e.headers.get("Location")
            if not (300 <= e.code < 400 and location):
                return 0, f"HTTP {e.code}", hops
            url = urljoin(url, location)
            host = urlsplit(url).hostname or ""
            if urlsplit(url).scheme in ("http", "https") and host not in LOOPBACK:
                hops.append(url)
                return 0, f"stopped: redirect to non-loopback host {host}", hops
        except (OSError, ValueError) as e:
            return 3, f"error: {type(e).__name__}: {e}", hops
    return 0, "stopped: too many redirects", hops


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
