"""A server's requests for input (elicitation, sampling, roots), asked of the IDE in the middle of a call.

A server asks for input only while a request of the IDE is in flight: a handshake-era server pushes
``elicitation/create``, ``sampling/createMessage`` or ``roots/list`` on that request's stream; a 2026-07-28 server
answers the request with an ``InputRequiredResult`` and expects a retry that carries the answers (MRTR). The IDE
side sets :data:`ASKING` to the :class:`Asker` of the IDE request it forwards (the asker knows how the IDE's era
asks); the SDK runs a session's callbacks in the context of the request that triggered them, so a callback finds
its own call's asker here. Outside any IDE request there is no one to ask: the server gets an error, never a hang.

What the bridge offers a server is exactly what the IDE declared (:class:`Offer`), less sampling unless the
allowlist allows it for that server (``allow_sampling``: it spends the user's model). A request for something not
offered is refused with an error, as the specification asks, and every request, answered or refused, is reported to
``on_input`` (the bridge audits it).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import mcp_types as types
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS as MODERN_VERSIONS

from mcp_bridge.logs import clean, get_logger
from mcp_bridge.terminal import printable

log = get_logger(__name__)

InputRequest = types.ElicitRequest | types.CreateMessageRequest | types.ListRootsRequest
InputResult = (
    types.ElicitResult | types.CreateMessageResult | types.CreateMessageResultWithTools | types.ListRootsResult
)
Kind = Literal["elicitation", "sampling", "roots"]

MAX_ROUNDS = 10
"""How many input rounds one call may take with a 2026-07-28 server before the bridge gives up (the SDK's bound)."""


class Asker(Protocol):
    """Asks the IDE, in its era, on behalf of one IDE request."""

    subject: str
    """What the IDE asked for: the exposed tool or prompt name, or the resource URI (for the audit)."""

    modern: bool
    """Whether the IDE speaks 2026-07-28 (it answers input requests itself, by retrying: see :func:`drive`)."""

    async def ask(self, request: InputRequest) -> InputResult:
        """The IDE's answer; raises :class:`~mcp.shared.exceptions.MCPError` when the IDE refused or failed."""
        ...

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        """Pass a server's log message of this request on to the IDE (at the level the IDE asked for)."""
        ...


ASKING: ContextVar[Asker | None] = ContextVar("mcp_bridge_asking", default=None)
"""The asker of the IDE request being forwarded in this context (set by the IDE side around the forwarding)."""

STANDALONE: list[Asker] = []
"""The IDE's session, for the one request a server may make outside any call: ``roots/list`` (a handshake-era
server asks for the roots when it starts and when they change). Set by the IDE side for a handshake-era IDE only
(a 2026-07-28 IDE cannot be asked outside its own requests); questions and sampling are never asked this way."""


@dataclass(frozen=True)
class Offer:
    """What the bridge offers a server: the IDE's declared input capabilities, less what policy refuses."""

    elicitation: types.ElicitationCapability | None = None
    sampling: types.SamplingCapability | None = None
    roots: types.RootsCapability | None = None
    sampling_refused: bool = False
    """The IDE declared sampling, but the allowlist does not allow it for this server."""

    @classmethod
    def of(cls, ide: types.ClientCapabilities | None, *, allow_sampling: bool) -> Offer:
        if ide is None:
            return cls()
        return cls(
            elicitation=ide.elicitation,
            sampling=ide.sampling if allow_sampling else None,
            roots=ide.roots,
            sampling_refused=ide.sampling is not None and not allow_sampling,
        )

    def refusal(self, request: InputRequest) -> str | None:
        """Why ``request`` cannot be asked of the IDE (``None``: it can)."""
        if isinstance(request, types.ElicitRequest):
            if self.elicitation is None:
                return "the IDE did not declare elicitation"
            url = isinstance(request.params, types.ElicitRequestURLParams)
            form_declared = self.elicitation.form is not None or self.elicitation.url is None  # {} means form
            if url and self.elicitation.url is None:
                return "the IDE did not declare URL-mode elicitation"
            if not url and not form_declared:
                return "the IDE did not declare form-mode elicitation"
            return None
        if isinstance(request, types.CreateMessageRequest):
            if self.sampling is None:
                if self.sampling_refused:
                    return "sampling is not allowed for this server (allow_sampling is off in the allowlist)"
                return "the IDE did not declare sampling"
            if request.params.tools and self.sampling.tools is None:
                return "the IDE did not declare sampling with tools"
            return None
        if self.roots is None:
            return "the IDE did not declare roots"
        return None


def kind_of(request: InputRequest) -> Kind:
    if isinstance(request, types.ElicitRequest):
        return "elicitation"
    if isinstance(request, types.CreateMessageRequest):
        return "sampling"
    return "roots"


def describe(request: InputRequest, result: InputResult | None) -> str:
    """A line for the audit: the kind (and mode), and the outcome, without any content."""
    what: str = kind_of(request)
    if isinstance(request, types.ElicitRequest):
        what += " (url)" if isinstance(request.params, types.ElicitRequestURLParams) else " (form)"
    elif isinstance(request, types.CreateMessageRequest) and request.params.tools:
        what += " (with tools)"
    if isinstance(result, types.ElicitResult):
        return f"{what}: {result.action}"
    return f"{what}: answered" if result is not None else what


@dataclass(frozen=True)
class InputNote:
    """One input request, as the audit records it."""

    server: str
    subject: str | None
    kind: Kind
    status: Literal["Completed", "Denied", "Failed"]
    detail: str
    request: dict[str, Any]
    response: dict[str, Any] | None


OnInput = Callable[[InputNote], None]
LogSink = Callable[[types.LoggingMessageNotificationParams], Awaitable[None]]


LOG_DATA_CHARS = 16_384
"""A server's log message whose data is longer than this (as JSON) reaches the IDE cut, as a string."""


def named_log(server: str, params: types.LoggingMessageNotificationParams) -> types.LoggingMessageNotificationParams:
    """A server's log message as the IDE gets it: the logger names the server first (``docs`` or ``docs/search``;
    control characters removed), and data larger than :data:`LOG_DATA_CHARS` is cut to a string that says so."""
    logger = server if not params.logger else f"{server}/{printable(clean(params.logger), newlines=False)[:200]}"
    data = params.data
    if not isinstance(data, str | int | float | bool) and data is not None:
        text = json.dumps(data, ensure_ascii=False, default=str)
        if len(text) > LOG_DATA_CHARS:
            data = f"{text[:LOG_DATA_CHARS]}… (cut by mcp-bridge: {len(text)} chars)"
    elif isinstance(data, str) and len(data) > LOG_DATA_CHARS:
        data = f"{data[:LOG_DATA_CHARS]}… (cut by mcp-bridge: {len(data)} chars)"
    return params.model_copy(update={"logger": logger, "data": data})


class InputRefused(MCPError):
    """An input request the bridge refused (not offered, or no one to ask), before the IDE saw it."""


def with_defaults(request: InputRequest, result: InputResult) -> InputResult:
    """An accepted form with the schema's defaults for the fields the IDE's answer left out (SEP-1034: clients
    SHOULD apply them; the bridge is the server's client, so a minimal IDE still gives a complete answer). Nothing
    else changes: a field the answer has keeps its value."""
    if not (isinstance(request, types.ElicitRequest) and isinstance(result, types.ElicitResult)):
        return result
    params = request.params
    if result.action != "accept" or not isinstance(params, types.ElicitRequestFormParams):
        return result
    properties = params.requested_schema.get("properties")
    if not isinstance(properties, dict):
        return result
    content = dict(result.content or {})
    missing = {
        name: spec["default"]
        for name, spec in properties.items()
        if isinstance(name, str) and isinstance(spec, dict) and "default" in spec and name not in content
    }
    if not missing:
        return result
    return result.model_copy(update={"content": {**content, **missing}})


class Gate:
    """One server's input requests: offered as :class:`Offer` says, asked of the IDE through :data:`ASKING`."""

    def __init__(self, server: str, offer: Offer, on_input: OnInput) -> None:
        self.server = server
        self.offer = offer
        self._on_input = on_input
        self.asking: list[Asker] = []
        """The IDE requests in flight to this server (kept by its supervisor): a request of the server that does not
        say which of the bridge's requests it belongs to (sent on its standalone stream, as the TypeScript SDK's
        ``server.request`` does) is asked of the IDE request in flight when there is only one."""

    async def ask(self, request: InputRequest) -> InputResult:
        """Ask the IDE request in flight; raises :class:`MCPError` (the error the server gets) when it cannot be
        asked or the IDE refused."""
        asker = ASKING.get()
        if asker is None and len(self.asking) == 1:
            asker = self.asking[0]  # not tied to a request, but only one can be its cause
        if asker is None and isinstance(request, types.ListRootsRequest) and STANDALONE:
            asker = STANDALONE[-1]
        kind = kind_of(request)
        dumped = request.model_dump(by_alias=True, mode="json", exclude_none=True)
        refusal = self.offer.refusal(request)
        if refusal is None and asker is None:
            refusal = (
                "the server asked outside any request of the IDE, so there is no one to ask"
                if not self.asking
                else "the server asked outside any one request, and several of the IDE's are in flight: whose it is "
                "cannot be told"
            )
        if refusal is not None:
            self._note(asker, kind, "Denied", f"{describe(request, None)}: refused: {refusal}", dumped, None)
            log.warning("upstream.input_refused", server=self.server, kind=kind, reason=refusal)
            raise InputRefused(types.INVALID_REQUEST, f"mcp-bridge: {refusal}")
        assert asker is not None
        try:
            result = with_defaults(request, await asker.ask(request))
        except MCPError as exc:
            self._note(asker, kind, "Failed", f"{describe(request, None)}: the IDE answered an error", dumped, None)
            raise MCPError(exc.error.code, exc.error.message, exc.error.data) from None
        response = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        self._note(asker, kind, "Completed", describe(request, result), dumped, response)
        return result

    def pass_on(self, request: InputRequest) -> None:
        """A round's request that a 2026-07-28 IDE answers itself: checked against the offer (a server may ask for
        what it was not offered) and audited; raises :class:`InputRefused` when refused."""
        asker = ASKING.get()
        kind = kind_of(request)
        dumped = request.model_dump(by_alias=True, mode="json", exclude_none=True)
        if (refusal := self.offer.refusal(request)) is not None:
            self._note(asker, kind, "Denied", f"{describe(request, None)}: refused: {refusal}", dumped, None)
            log.warning("upstream.input_refused", server=self.server, kind=kind, reason=refusal)
            raise InputRefused(types.INVALID_REQUEST, f"mcp-bridge: {refusal}")
        self._note(asker, kind, "Completed", f"{describe(request, None)}: passed to the IDE", dumped, None)

    def _note(
        self,
        asker: Asker | None,
        kind: Kind,
        status: Literal["Completed", "Denied", "Failed"],
        detail: str,
        request: dict[str, Any],
        response: dict[str, Any] | None,
    ) -> None:
        subject = asker.subject if asker is not None else None
        self._on_input(InputNote(self.server, subject, kind, status, detail, request, response))

    # The session's callbacks (handshake-era servers push their requests).

    async def _elicit(self, ctx: ClientRequestContext, params: types.ElicitRequestParams) -> Any:
        return await self._answer(types.ElicitRequest(params=params))

    async def _sample(self, ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        return await self._answer(types.CreateMessageRequest(params=params))

    async def _roots(self, ctx: ClientRequestContext) -> Any:
        return await self._answer(types.ListRootsRequest())

    async def _log(self, params: types.LoggingMessageNotificationParams) -> None:
        """A server's log message, relayed with the server named (:func:`named_log`): to the IDE request it came
        with, or, outside any request, on a handshake-era IDE's session; otherwise only the bridge's own log has it
        (at debug). The IDE's side sends it only at or above the level the IDE asked for."""
        asker = ASKING.get()
        if asker is None and STANDALONE:
            asker = STANDALONE[-1]
        if asker is None:
            log.debug("upstream.log_message", server=self.server, level=params.level)
            return
        await asker.log(named_log(self.server, params))

    def log_to(self, asker: Asker | None) -> LogSink | None:
        """Relays this server's log messages to ``asker`` (the IDE request a call is made for), named as
        :func:`named_log` names them; ``None`` without an asker."""
        if asker is None:
            return None

        async def relay(params: types.LoggingMessageNotificationParams) -> None:
            await asker.log(named_log(self.server, params))

        return relay

    async def _answer(self, request: InputRequest) -> InputResult | types.ErrorData:
        try:
            return await self.ask(request)
        except MCPError as exc:
            return exc.error

    def session_callbacks(self) -> dict[str, Any]:
        """The ``ClientSession`` callbacks: all three, so that a request for what was not offered is refused (and
        audited) here too; what the session declares is the offer alone (:class:`OfferingSession`)."""
        callbacks: dict[str, Any] = {
            "elicitation_callback": self._elicit,
            "sampling_callback": self._sample,
            "list_roots_callback": self._roots,
            "logging_callback": self._log,
        }
        if self.offer.sampling is not None:
            callbacks["sampling_capabilities"] = self.offer.sampling
        return callbacks


def complete_by_default(result: Any, version: str | None) -> None:
    """A 2026-07-28 result that does not say its ``resultType`` is a complete one (the spec: a client MUST assume
    "complete"); the SDK's check of the result would reject it, so the default is filled in first."""
    if isinstance(result, dict) and "resultType" not in result and version in MODERN_VERSIONS:
        result["resultType"] = "complete"


class OfferingSession(ClientSession):
    """A ``ClientSession`` that declares exactly the input capabilities offered (the SDK would declare both
    elicitation modes and ``roots.listChanged`` for any callback given)."""

    def __init__(self, *args: Any, offer: Offer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._offer = offer
        # A 2026-07-28 result without ``resultType`` is a complete one (the spec: a client MUST assume "complete"
        # when it is not given); the SDK's check of the result would reject it, so the default is filled in first.
        dispatcher = self._dispatcher
        send_raw_request = dispatcher.send_raw_request

        async def with_result_type(method: str, params: Any, opts: Any = None) -> dict[str, Any]:
            raw = await send_raw_request(method, params, opts)
            complete_by_default(raw, self._negotiated_version)
            return raw

        dispatcher.send_raw_request = with_result_type  # type: ignore[method-assign]

    def _build_capabilities(self, version: str) -> types.ClientCapabilities:
        built = super()._build_capabilities(version)
        offer = self._offer
        return built.model_copy(
            update={"elicitation": offer.elicitation, "sampling": offer.sampling, "roots": offer.roots}
        )


async def drive(
    first: Mapping[str, Any],
    gate: Gate,
    retry: Callable[[dict[str, Any], str | None], Awaitable[dict[str, Any]]],
    *,
    tool_call: bool = False,
) -> dict[str, Any]:
    """A 2026-07-28 server's ``InputRequiredResult`` answered for an IDE that cannot answer it itself (a
    handshake-era IDE): each round's input requests are asked of the IDE (through ``gate``), then the request is
    sent again with the answers and the server's ``requestState`` verbatim (``retry(input_responses,
    request_state)``), until the server answers for good or :data:`MAX_ROUNDS` rounds have passed.

    A modern IDE answers input requests itself: the result goes back to it as it is (:func:`passes_through`).

    For a ``tools/call`` (``tool_call``), a request the bridge refused ends the call with a tool error naming why,
    as the call of a handshake-era server that got the same refusal would; otherwise the refusal is the error."""
    try:
        return await _drive(first, gate, retry)
    except InputRefused as exc:
        if not tool_call:
            raise
        return {"content": [{"type": "text", "text": exc.error.message}], "isError": True}


def screen(result: Mapping[str, Any], gate: Gate, *, tool_call: bool = False) -> dict[str, Any]:
    """A 2026-07-28 server's ``InputRequiredResult`` for a 2026-07-28 IDE, which answers it itself: passed on as it
    is when every request in it was offered (each audited), else refused as :func:`drive` refuses."""
    requests = result.get("inputRequests") or {}
    try:
        if not isinstance(requests, dict):
            raise MCPError(types.INTERNAL_ERROR, f"{gate.server}: inputRequests is not an object")
        for raw in requests.values():
            gate.pass_on(_parse_input_request(gate.server, raw))
    except InputRefused as exc:
        if not tool_call:
            raise
        return {"content": [{"type": "text", "text": exc.error.message}], "isError": True}
    return dict(result)


async def _drive(
    first: Mapping[str, Any],
    gate: Gate,
    retry: Callable[[dict[str, Any], str | None], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    result = dict(first)
    for _ in range(MAX_ROUNDS):
        if result.get("resultType") != "input_required":
            return result
        requests = result.get("inputRequests") or {}
        if not isinstance(requests, dict):
            raise MCPError(types.INTERNAL_ERROR, f"{gate.server}: inputRequests is not an object")
        answers: dict[str, Any] = {}
        for key, raw in requests.items():
            request = _parse_input_request(gate.server, raw)
            answer = await gate.ask(request)
            answers[key] = answer.model_dump(by_alias=True, mode="json", exclude_none=True)
        state = result.get("requestState")
        result = await retry(answers, state if isinstance(state, str) else None)
    if result.get("resultType") == "input_required":
        raise MCPError(types.INTERNAL_ERROR, f"{gate.server}: still asking for input after {MAX_ROUNDS} rounds")
    return result


_INPUT_REQUEST: dict[str, type[InputRequest]] = {
    "elicitation/create": types.ElicitRequest,
    "sampling/createMessage": types.CreateMessageRequest,
    "roots/list": types.ListRootsRequest,
}


def _parse_input_request(server: str, raw: Any) -> InputRequest:
    method = raw.get("method") if isinstance(raw, dict) else None
    model = _INPUT_REQUEST.get(method) if isinstance(method, str) else None
    if model is None:
        raise MCPError(types.INTERNAL_ERROR, f"{server}: an input request of an unknown kind ({method!r})")
    try:
        parsed: InputRequest = model.model_validate(raw, by_name=False)
    except ValueError:
        raise MCPError(types.INTERNAL_ERROR, f"{server}: a malformed {method} input request") from None
    return parsed
