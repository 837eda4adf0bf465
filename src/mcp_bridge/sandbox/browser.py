"""The demo's headless "browser": ``python -m mcp_bridge.sandbox.browser browse URL`` follows an authorization URL
through its redirects to the bridge's loopback callback, so the OAuth login completes with no real browser. It is the
demo's ``$BROWSER`` (:data:`BROWSER`); the tests' fake browser uses :func:`browse`."""

from __future__ import annotations

import shlex
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urljoin, urlsplit

BROWSER = f"{shlex.quote(sys.executable)} -m mcp_bridge.sandbox.browser browse %s"
"""``$BROWSER`` for the demo: Python's ``webbrowser`` runs it (shlex-split, ``%s`` = the URL, no shell)."""

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # hand 3xx back as an HTTPError: browse() decides what to follow


def browse(url: str, deadline: float, max_hops: int = 10) -> tuple[int, str, list[str]]:
    """Fetch ``url`` and follow redirects to loopback hosts only; returns (exit status, outcome, URLs visited).

    Exit status 0: pages fetched (whatever their HTTP status, as a browser shows an error page); 2: not an http(s)
    URL (nothing fetched); 3: a network error or the deadline passed. A redirect to another host is not followed
    (as if a real login page were shown).
    """
    opener = urllib.request.build_opener(_NoRedirect)
    hops: list[str] = []
    for _ in range(max_hops):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return 2, f"refused: not an http(s) URL: {parts.scheme or '(no scheme)'}", hops
        hops.append(url)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return 3, "timeout", hops
        request = urllib.request.Request(url, headers={"User-Agent": "mcp-bridge-demo-browser/1"})  # noqa: S310
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
            if urlsplit(url).scheme in ("http", "https") and host not in LOOPBACK_HOSTS:
                hops.append(url)
                return 0, f"stopped: redirect to non-loopback host {host}", hops
        except (OSError, ValueError) as e:
            return 3, f"error: {type(e).__name__}: {e}", hops
    return 0, "stopped: too many redirects", hops


def main(argv: list[str] | None = None) -> int:
    """``python -m mcp_bridge.sandbox.browser browse URL`` (the demo's ``$BROWSER``)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "browse":
        sys.stderr.write("usage: python -m mcp_bridge.sandbox.browser browse URL\n")
        return 2
    status, outcome, _hops = browse(args[1], time.monotonic() + 10.0)
    sys.stderr.write(f"demo browser: {outcome}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
