"""Calls held across rounds: a 2026-07-28 IDE answers a handshake-era server's request for input.

A handshake-era server asks for input by pushing a request in the middle of a call and waits for the answer on the
same call. A 2026-07-28 IDE cannot be pushed a request: it is asked by an ``InputRequiredResult`` answer, and answers
by sending the request again with ``inputResponses`` and the ``requestState`` it was given (MRTR). So the bridge
keeps the server's call running past the IDE's request (:class:`HeldCall`): when the server asks, the IDE's request is
answered with the question and a ``requestState`` that names the held call (``mcpb1.`` and 32 random bytes, a handle
to state kept here, never sent to a server); the IDE's retry finds the call by it, gives the server its answer, and
waits for the call's next question or its result.

Held calls are bounded: at most :data:`MAX_HELD` at once, each question waits at most ``ttl`` seconds for the IDE's
retry (then the server gets an error, and the handle is forgotten), and a handle is good for one retry of the same
tool (or prompt, or resource) by the same IDE.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import mcp_types as types
from mcp.shared.exceptions import MCPError

from mcp_bridge.logs import get_logger
from mcp_bridge.upstream.inputs import InputRequest, InputResult

log = get_logger(__name__)

LogSink = Callable[[types.LoggingMessageNotificationParams], Awaitable[None]]

STATE_PREFIX = "mcpb1."
"""Marks a ``requestState`` the bridge minted (a handle to a held call), as opposed to a server's own."""

MAX_HELD = 16
"""Calls held at once for a 2026-07-28 IDE; past it a new question is refused (the server gets an error)."""

_RESULTS: dict[type[Any], type[Any]] = {
    types.ElicitRequest: types.ElicitResult,
    types.ListRootsRequest: types.ListRootsResult,
}


def _result_type(request: InputRequest) -> type[Any]:
    if isinstance(request, types.CreateMessageRequest):
        return types.CreateMessageResultWithTools if request.params.tools else types.CreateMessageResult
    return _RESULTS[type(request)]


@dataclass
class _Question:
    request: InputRequest
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: InputResult | None = None
    error: MCPError | None = None


@dataclass
class HeldCall:
    """One IDE request whose server call outlives it, across the rounds of its questions."""

    subject: str
    method: str
    ttl: float
    modern: bool = True
    """As an asker (:class:`~mcp_bridge.upstream.inputs.Asker`): the IDE answers a 2026-07-28 server's input
    requests itself."""
    outcome: anyio.Event = field(default_factory=anyio.Event)
    result: Any = None
    failure: BaseException | None = None
    asked: anyio.Event = field(default_factory=anyio.Event)
    woken: anyio.Event = field(default_factory=anyio.Event)
    """Set when the call finishes or asks: what the round waiting on it waits for (one event, no helper tasks)."""
    questions: dict[str, _Question] = field(default_factory=dict)
    """The questions of the current round, by key (as the IDE was asked them)."""
    _count: int = 0
    cancel: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    round_log: LogSink | None = None
    """Relays a log message to the IDE request of the current round, while it is open."""

    on_ask: Callable[[], None] | None = None
    """Run at the first question of a call held in its request's own task (:meth:`HeldCalls.here`): answers that
    request with the round."""

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        """A server's log message during a held call goes to the IDE request of the round in progress (the SDK
        sends it only at or above the level that request asked for); between rounds no IDE request is open, and the
        bridge's own log has it at debug."""
        if self.round_log is not None:
            await self.round_log(params)
            return
        log.debug("front.held_call_log", subject=self.subject, level=params.level)

    async def ask(self, request: InputRequest) -> InputResult:
        """The server's question, asked of the IDE in the next answer to it; waits for the IDE's retry."""
        self._count += 1
        key = f"q{self._count}"
        question = self.questions[key] = _Question(request)
        self.asked.set()
        self.woken.set()
        if self.on_ask is not None:
            on_ask, self.on_ask = self.on_ask, None
            on_ask()
        with anyio.move_on_after(self.ttl) as waited:
            await question.answered.wait()
        if waited.cancelled_caught:
            self.questions.pop(key, None)
            raise MCPError(types.REQUEST_TIMEOUT, f"the IDE did not answer within {self.ttl:g}s")
        if question.error is not None:
            raise question.error
        assert question.answer is not None
        return question.answer


class HeldCalls:
    """The calls held for a 2026-07-28 IDE, by ``requestState`` handle."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._held: dict[str, tuple[HeldCall, str, float]] = {}
        """handle -> (call, what it is bound to: method and subject, when it was minted)."""

    def __len__(self) -> int:
        return len(self._held)

    async def start(
        self,
        tasks: anyio.abc.TaskGroup,
        method: str,
        subject: str,
        work: Callable[[HeldCall], Awaitable[Any]],
        log: LogSink | None = None,
    ) -> Any:
        """Run ``work`` (the forwarding of one IDE request) so that it can outlive the request; answer with its
        result, or with the first question it asks (an ``InputRequiredResult``). ``log``: relays a server's log
        message to this IDE request."""
        call = HeldCall(subject=subject, method=method, ttl=self.ttl, round_log=log)

        async def run() -> None:
            with call.cancel:
                try:
                    call.result = await work(call)
                except BaseException as exc:  # handed to whichever round is waiting (cancellation included)
                    call.failure = exc
                    if isinstance(exc, anyio.get_cancelled_exc_class()):
                        raise
                finally:
                    call.outcome.set()
                    call.woken.set()

        tasks.start_soon(run)
        return await self._next(call)

    async def here(
        self,
        tasks: anyio.abc.TaskGroup,
        method: str,
        subject: str,
        work: Callable[[HeldCall], Awaitable[Any]],
        answer: Callable[[Callable[[], dict[str, Any]]], Awaitable[bool]],
        log: LogSink | None = None,
    ) -> tuple[bool, Any]:
        """:meth:`start` without a task of its own: ``work`` runs in the caller's task (the IDE request's), which
        spares the common call, one that asks nothing, a task and a hand-over. When the call asks, the IDE's request
        is answered with the round in a task of its own (from ``tasks``), while the call goes on here: ``answer`` is
        given what makes the round (it raises :class:`MCPError` when none can be held) and says whether it answered
        the request (not when the request was cancelled or answered meanwhile); later rounds are the retries'
        (:meth:`resume`), and the call's outcome is theirs. Returns ``(True, result)`` when no round answered the
        request (the call's exception, if any, is raised), ``(False, None)`` when one did."""
        call = HeldCall(subject=subject, method=method, ttl=self.ttl, round_log=log)
        detached = False

        async def first_round() -> None:
            nonlocal detached
            await anyio.lowlevel.checkpoint()  # questions asked together go in one round

            def make() -> dict[str, Any]:
                call.round_log = None  # this IDE request is answered now
                return self._round(call)

            detached = await answer(make)

        def on_ask() -> None:
            tasks.start_soon(first_round)

        call.on_ask = on_ask
        with call.cancel:  # a retry the IDE cancels cancels the call (as in start)
            try:
                call.result = await work(call)
            except BaseException as exc:
                call.failure = exc  # a round answered the request: a retry takes it
                if not detached or isinstance(exc, anyio.get_cancelled_exc_class()):
                    raise
            finally:
                call.on_ask = None
                call.outcome.set()
                call.woken.set()
        if detached:
            return False, None
        return True, call.result

    async def resume(
        self, state: str, method: str, subject: str, responses: dict[str, Any] | None, log: LogSink | None = None
    ) -> Any:
        """The IDE's retry with its answers: give them to the held call's questions, then answer with the call's
        next question or its result (``log``: as for :meth:`start`, for this retry)."""
        found = self._held.pop(state, None)
        if found is None or found[1] != f"{method} {subject}":
            raise MCPError(types.INVALID_PARAMS, "Invalid or expired requestState")
        call = found[0]
        call.round_log = log
        for key, question in list(call.questions.items()):
            raw = (responses or {}).get(key)
            if raw is None:
                question.error = MCPError(types.INVALID_PARAMS, f"the IDE's retry carried no answer to {key}")
            else:
                try:
                    question.answer = _result_type(question.request).model_validate(raw, by_name=False)
                except ValueError:
                    question.error = MCPError(types.INVALID_PARAMS, f"the IDE's answer to {key} is malformed")
            question.answered.set()
        call.questions.clear()
        call.asked = anyio.Event()
        call.woken = anyio.Event()
        if call.outcome.is_set():
            call.woken.set()
        return await self._next(call)

    async def _next(self, call: HeldCall) -> Any:
        """Wait for the call's result or its next question, whichever comes first. The IDE cancelling its request
        cancels the call (as it would have without the rounds)."""
        try:
            await call.woken.wait()
            if call.asked.is_set() and not call.outcome.is_set():
                await anyio.lowlevel.checkpoint()  # questions asked together go in one round
        except anyio.get_cancelled_exc_class():
            call.cancel.cancel()
            raise
        finally:
            call.round_log = None  # this IDE request is answered now
        if call.outcome.is_set() and not call.questions:
            if call.failure is not None:
                raise call.failure
            return call.result
        return self._round(call)

    def _round(self, call: HeldCall) -> dict[str, Any]:
        self._expire()
        if len(self._held) >= MAX_HELD:
            for question in call.questions.values():
                question.error = MCPError(types.INTERNAL_ERROR, "too many calls are waiting for the IDE's answers")
                question.answered.set()
            raise MCPError(types.INTERNAL_ERROR, f"too many calls ({MAX_HELD}) are waiting for the IDE's answers")
        state = STATE_PREFIX + secrets.token_urlsafe(32)
        self._held[state] = (call, f"{call.method} {call.subject}", time.monotonic())
        requests = {
            key: q.request.model_dump(by_alias=True, mode="json", exclude_none=True)
            for key, q in call.questions.items()
        }
        log.info("front.input_round", subject=call.subject, questions=len(requests))
        return {"resultType": "input_required", "inputRequests": requests, "requestState": state}

    def _expire(self) -> None:
        """Forget handles older than the time a question waits (their questions were answered with an error)."""
        now = time.monotonic()
        for state, (_call, _bound, minted) in list(self._held.items()):
            if now - minted > self.ttl:
                del self._held[state]
