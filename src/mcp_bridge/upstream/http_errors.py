"""What an upstream's HTTP failure means, in one line a user can act on.

The SDK's transport keeps only a JSON-RPC error of its own making when a POST fails at the HTTP level: a 404 reads
``-32601 Not Found`` (as if a *method* were unknown), any other status ``Server returned an error response``, and the
status is gone. The bridge's transport (:class:`~mcp_bridge.upstream.transport.GuardedTransport`) replaces such a
response, before the SDK sees it, with a JSON-RPC error of code :data:`HTTP_ERROR` whose message names the status and
what it likely means ("the URL answered HTTP 404 (Not Found): is the path /mcp right?"). A server's own JSON-RPC error
sent with a 4xx status (which the spec allows) passes unchanged, as do 401 and 403 (the OAuth flow above the transport
answers those) and a 404 on an established session (the server forgot it: the bridge reconnects).

The SDK's parse failures of a 200 answer that is not MCP (a web page, some other JSON) carry a whole validation
dump; :func:`explain_not_mcp` says what it was instead.
"""

from __future__ import annotations

import json

import httpx2
import mcp_types as types

from mcp_bridge.upstream.own_errors import local_error

HTTP_ERROR = -32098
"""Internal JSON-RPC code: the server answered at the HTTP level with an error status (the message says which)."""

_PEEK_BYTES = 1 << 20  # a JSON-RPC error body is small; a larger 4xx body is not one
_HINTS = {
    404: "nothing serves MCP at this URL; is the path {path} right?",
    405: "this URL does not take MCP's POST; is it the server's MCP endpoint (path {path})?",
    406: "the server does not accept MCP's content types; is this an MCP endpoint (path {path})?",
    408: "the server gave up waiting for the request; try again",
    413: "the server refused a request this large (a large argument?)",
    415: "the server does not accept JSON here; is this an MCP endpoint (path {path})?",
    429: "the server is rate-limiting this client; try again later",
}


def http_error_to_explain(request: httpx2.Request, response: httpx2.Response) -> bool:
    """Whether a failed POST's response is one to explain (see the module docstring for those left alone)."""
    status = response.status_code
    if status in (401, 403):
        return False
    return not (status == 404 and request.headers.get("mcp-session-id"))


async def explain_http_error(request: httpx2.Request, response: httpx2.Response) -> httpx2.Response:
    """The response the SDK should see instead: the server's own JSON-RPC error if it sent one, else ours."""
    status = response.status_code
    body = b""
    if response.headers.get("content-type", "").lower().startswith("application/json"):
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > _PEEK_BYTES:
                break
    await response.aclose()
    if _is_jsonrpc_error(body):
        return httpx2.Response(status, headers={"content-type": "application/json"}, content=body, request=request)
    reason = httpx2.codes.get_reason_phrase(status) or "error"
    if status in _HINTS:
        hint = _HINTS[status].format(path=request.url.path or "/")
    elif status >= 500:
        hint = "the server failed to handle the request; try again later, or tell its owner"
    else:
        hint = "the server refused the request"
    message = f"the URL answered HTTP {status} ({reason}): {hint}"
    error = local_error(HTTP_ERROR, message, {"httpStatus": status})
    return httpx2.Response(status, json={"jsonrpc": "2.0", "id": None, "error": error}, request=request)


def _is_jsonrpc_error(body: bytes) -> bool:
    if not body or len(body) > _PEEK_BYTES:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    return isinstance(error, dict) and isinstance(error.get("code"), int) and isinstance(error.get("message"), str)


class AnswerTooLarge(httpx2.StreamError):
    """A JSON answer longer than the bridge takes (raised while the SDK reads it, which reports a parse error)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"answer larger than the {limit >> 20} MiB limit")


def explain_not_mcp(code: int, message: str) -> str | None:
    """One line for the SDK's errors about a 200 answer that is not MCP (or too large); ``None`` for any other."""
    if code == types.PARSE_ERROR and "answer larger than the " in message:
        return "the server's answer is " + message[message.index("larger than the ") :] + "; refused"
    if code == types.PARSE_ERROR and message.startswith("Failed to parse JSON response"):
        return "the URL answered with JSON that is not an MCP message; is it the server's MCP endpoint?"
    if code == types.INVALID_REQUEST and message.startswith("Unexpected content type: "):
        kind = message.removeprefix("Unexpected content type: ").split(";")[0].strip()[:60] or "no content type"
        return f"the URL answered with {kind}, not MCP; is it the server's MCP endpoint?"
    return None
