"""``confirm``: the question the user is asked before a call that the server's ``confirm`` setting holds back.

It is a form-mode elicitation request with no fields (accept runs the call; decline or cancel does not), asked of the
IDE in its own era: pushed on the call's stream to a handshake-era IDE, or answered as an ``InputRequiredResult`` to
a 2026-07-28 IDE, which retries with the answer. Its message names the server, the tool and what it is called with
(redacted as the audit redacts arguments, and cut), so that the user knows what they allow.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types

from mcp_bridge.logs import clean
from mcp_bridge.terminal import printable

SUMMARY_CHARS = 600
"""How much of the (redacted) arguments the question shows."""


def summary(arguments: Any) -> str:
    """The arguments as one line of JSON, control characters removed, cut to :data:`SUMMARY_CHARS`."""
    text = printable(clean(json.dumps(arguments or {}, ensure_ascii=False, sort_keys=True, default=str)))
    return text if len(text) <= SUMMARY_CHARS else f"{text[:SUMMARY_CHARS]}… ({len(text)} chars)"


def confirmation_request(
    server: str, tool: str, title: str | None, arguments_summary: str, why: str
) -> types.ElicitRequest:
    """The question for one call: ``why`` says which calls the server's setting holds back."""
    name = printable(f"{tool!r}" + (f" ({clean(title)[:80]})" if title else ""), newlines=False)
    message = (
        f"Run tool {name} on server {printable(repr(server), newlines=False)}?\n"
        f"Arguments: {arguments_summary}\n"
        f"Your organisation asks you to confirm {why} of this server."
    )
    params = types.ElicitRequestFormParams(message=message, requested_schema={"type": "object", "properties": {}})
    return types.ElicitRequest(params=params)
