"""A server's requests for input cross the bridge in the IDE's era: elicitation, sampling and roots, asked of the
IDE in the middle of the call, offered only as the IDE declared them, sampling only where the allowlist allows it,
each audited as its own event (``mcp_bridge.upstream.inputs``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

from asking import Asking
from harness import Raw, audit_jsonl, bridge_client, raw_call, write_config
from hostile import serving

pytestmark = pytest.mark.anyio

UPSTREAM_ERAS = pytest.mark.parametrize("upstream", ["legacy", "2026-07-28"])
"""The era the bridge speaks to the asking server: pushed requests (handshake) or ``InputRequiredResult`` rounds."""


ERA = {"legacy": "2025-11-25", "2026-07-28": "2026-07-28"}


def config(tmp_path: Path, up: Asking, **server: Any) -> Path:
    entry = {"url": up.url, "allowed_tools": ["*"], **server}
    return write_config(tmp_path / "config.yaml", {up.name: entry}, audit={"jsonl": str(tmp_path / "audit.jsonl")})


async def elicit(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    assert isinstance(params, types.ElicitRequestFormParams) and params.message == "Which name?"
    return types.ElicitResult(action="accept", content={"name": "Ada"})


async def sample(ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="hi from the IDE's model"), model="ide-model"
    )


async def roots(ctx: ClientRequestContext) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])


def answer(result: dict[str, Any]) -> dict[str, Any]:
    assert not result.get("isError"), result
    data: dict[str, Any] = json.loads(result["content"][0]["text"])
    return data


@UPSTREAM_ERAS
async def test_elicitation_is_asked_of_a_handshake_ide_during_the_call_and_audited(
    tmp_path: Path, upstream: str
) -> None:
    up = Asking()
    cfg = config(tmp_path, up, protocol=upstream)
    async with serving(up), bridge_client(cfg, tmp_path / "home", mode="legacy", elicitation_callback=elicit) as ide:
        got = answer(await raw_call(ide, "asking__ask"))
    assert set(up.eras) == {ERA[upstream]}
    assert got["answer"] == {"action": "accept", "content": {"name": "Ada"}}
    [event] = audit_jsonl(tmp_path / "audit.jsonl", "input_request")
    assert (event["server"], event["tool"], event["exposed_name"]) == ("asking", "ask", "asking__ask")
    assert event["status"] == "Completed" and event["detail"] == "elicitation (form): accept"
    assert event["arguments"] is None  # no content unless audit.arguments: full
    assert "Ada" not in json.dumps(event)


@UPSTREAM_ERAS
async def test_the_server_is_offered_what_the_ide_declared_and_no_more(tmp_path: Path, upstream: str) -> None:
    up = Asking()
    cfg = config(tmp_path, up, protocol=upstream)
    async with serving(up):
        async with bridge_client(cfg, tmp_path / "home", mode="legacy") as ide:
            bare = answer(await raw_call(ide, "asking__capabilities"))
        async with bridge_client(
            cfg, tmp_path / "home", mode="legacy", elicitation_callback=elicit, list_roots_callback=roots
        ) as ide:
            declared = answer(await raw_call(ide, "asking__capabilities"))
            refused = await raw_call(ide, "asking__sample")
    assert not {"elicitation", "sampling", "roots"} & set(bare or {})
    assert "elicitation" in declared and "roots" in declared and "sampling" not in declared
    assert declared["elicitation"] == {"form": {}, "url": {}}  # as the SDK IDE declared it
    # A server that asks for what was not offered gets an error at once, not a hang.
    assert refused["isError"] and "did not declare sampling" in refused["content"][0]["text"]


@UPSTREAM_ERAS
async def test_sampling_is_off_unless_the_allowlist_allows_it(tmp_path: Path, upstream: str) -> None:
    up = Asking()
    async with serving(up):
        async with bridge_client(
            config(tmp_path, up, protocol=upstream), tmp_path / "home", mode="legacy", sampling_callback=sample
        ) as ide:
            refused = await raw_call(ide, "asking__sample")
            declared = answer(await raw_call(ide, "asking__capabilities"))
        allowed_cfg = config(tmp_path, up, allow_sampling=True, protocol=upstream)
        async with bridge_client(allowed_cfg, tmp_path / "home2", mode="legacy", sampling_callback=sample) as ide:
            got = answer(await raw_call(ide, "asking__sample"))
    assert "sampling" not in declared  # not offered at all without allow_sampling
    assert refused["isError"] and "allow_sampling" in refused["content"][0]["text"]
    assert got["answer"]["content"]["text"] == "hi from the IDE's model" and got["answer"]["model"] == "ide-model"
    [denied, *_] = audit_jsonl(tmp_path / "audit.jsonl", "input_request")
    assert denied["status"] == "Denied" and denied["detail"].startswith("sampling: refused: sampling is not allowed")


@UPSTREAM_ERAS
async def test_roots_and_full_audit_content(tmp_path: Path, upstream: str) -> None:
    up = Asking()
    cfg = write_config(
        tmp_path / "config.yaml",
        {up.name: {"url": up.url, "allowed_tools": ["*"], "protocol": upstream}},
        audit={"jsonl": str(tmp_path / "audit.jsonl"), "arguments": "full"},
    )
    async with serving(up), bridge_client(cfg, tmp_path / "home", mode="legacy", list_roots_callback=roots) as ide:
        got = answer(await raw_call(ide, "asking__roots"))
    assert got["answer"]["roots"] == [{"uri": "file:///work/project", "name": "project"}]
    [event] = audit_jsonl(tmp_path / "audit.jsonl", "input_request")
    assert event["detail"] == "roots: answered"
    assert event["arguments"]["response"]["roots"][0]["uri"] == "file:///work/project"  # audit.arguments: full


def test_an_offer_is_what_the_ide_declared_less_what_policy_refuses() -> None:
    from mcp_bridge.upstream.inputs import Offer, OfferingSession

    form_only = types.ClientCapabilities(
        elicitation=types.ElicitationCapability(form=types.FormElicitationCapability()),
        sampling=types.SamplingCapability(),
    )
    offer = Offer.of(form_only, allow_sampling=False)
    assert offer.refusal(asking_requests("ask")) is None
    assert offer.refusal(asking_requests("ask_url")) == "the IDE did not declare URL-mode elicitation"
    assert "allow_sampling" in (offer.refusal(asking_requests("sample")) or "")
    assert offer.refusal(asking_requests("roots")) == "the IDE did not declare roots"
    # An empty elicitation capability means form mode (2025-11-25).
    assert (
        Offer.of(types.ClientCapabilities(elicitation=types.ElicitationCapability()), allow_sampling=False).refusal(
            asking_requests("ask")
        )
        is None
    )
    # Sampling with tools only when the IDE declared sampling.tools.
    tools = types.CreateMessageRequest(
        params=asking_requests("sample").params.model_copy(
            update={"tools": [types.Tool(name="t", input_schema={"type": "object"})]}
        )
    )
    assert Offer.of(form_only, allow_sampling=True).refusal(tools) == "the IDE did not declare sampling with tools"
    # The session declares exactly the offer (the SDK alone would add URL mode and roots.listChanged).
    send, receive = anyio.create_memory_object_stream[Any](1)
    session = OfferingSession(receive, send, offer=offer, elicitation_callback=elicit)
    built = session._build_capabilities("2025-11-25")
    send.close()
    receive.close()
    assert built.elicitation == form_only.elicitation and built.sampling is None and built.roots is None


def asking_requests(name: str) -> Any:
    from asking import REQUESTS

    return REQUESTS[name]


@pytest.mark.parametrize("mode", ["auto", "2026-07-28"])
async def test_a_modern_ide_answers_a_handshake_servers_questions_by_retrying(tmp_path: Path, mode: str) -> None:
    up = Asking()
    async with (
        serving(up),
        bridge_client(
            config(tmp_path, up, protocol="legacy"),
            tmp_path / "home",
            mode=mode,
            elicitation_callback=elicit,
            list_roots_callback=roots,
        ) as ide,
    ):
        first = await raw_call(ide, "asking__ask")  # the raw first round: the question and a handle
        assert first["resultType"] == "input_required", first
        [(key, question)] = first["inputRequests"].items()
        assert question["method"] == "elicitation/create" and question["params"]["message"] == "Which name?"
        assert first["requestState"].startswith("mcpb1.")
        # The SDK's own driver answers with the IDE's callbacks and retries: the server gets the answer.
        called = await ide.call_tool("asking__ask", {})
        rooted = await ide.call_tool("asking__roots", {})
        # A handle is good once, for the same tool: a replay or another tool's retry is refused.
        retry = types.CallToolRequestParams(
            name="asking__roots",
            arguments={},
            input_responses={key: types.ElicitResult(action="accept", content={"name": "x"})},
            request_state=first["requestState"],
        )
        with pytest.raises(MCPError, match="Invalid or expired requestState"):
            await ide.session.send_request(types.CallToolRequest(params=retry), Raw)
    assert json.loads(called.content[0].text)["answer"] == {"action": "accept", "content": {"name": "Ada"}}
    assert json.loads(rooted.content[0].text)["answer"]["roots"][0]["name"] == "project"
    assert up.eras and set(up.eras) == {"2025-11-25"}  # the server spoke its own era throughout
    events = audit_jsonl(tmp_path / "audit.jsonl", "input_request")
    assert [e["detail"] for e in events].count("elicitation (form): accept") == 1


@pytest.mark.parametrize("mode", ["auto", "2026-07-28"])
async def test_a_modern_ide_answers_a_modern_servers_questions_itself(tmp_path: Path, mode: str) -> None:
    up = Asking()
    cfg = config(tmp_path, up, protocol="2026-07-28", allow_sampling=True)
    async with (
        serving(up),
        bridge_client(
            cfg,
            tmp_path / "home",
            mode=mode,
            elicitation_callback=elicit,
            list_roots_callback=roots,
            sampling_callback=sample,
        ) as ide,
    ):
        first = await raw_call(ide, "asking__ask")  # the server's own round, passed through as it is
        called = await ide.call_tool("asking__ask", {})
        sampled = await ide.call_tool("asking__sample", {})
    assert first["resultType"] == "input_required" and first["requestState"] == "ask-1", first
    assert first["inputRequests"]["q"]["method"] == "elicitation/create"
    got = json.loads(called.content[0].text)
    assert got == {"answer": {"action": "accept", "content": {"name": "Ada"}}, "state": "ask-1"}
    assert json.loads(sampled.content[0].text)["answer"]["model"] == "ide-model"
    assert set(up.eras) == {"2026-07-28"}


async def test_a_handshake_ide_gets_a_modern_servers_rounds_answered_by_the_bridge(tmp_path: Path) -> None:
    up = Asking()
    cfg = config(tmp_path, up, protocol="2026-07-28")
    async with serving(up), bridge_client(cfg, tmp_path / "home", mode="legacy", elicitation_callback=elicit) as ide:
        got = answer(await raw_call(ide, "asking__ask"))
    # The bridge asked the IDE on the call's stream and retried with the answer and the server's requestState.
    assert got == {"answer": {"action": "accept", "content": {"name": "Ada"}}, "state": "ask-1"}
    assert up.eras == ["2026-07-28", "2026-07-28"]


async def test_a_modern_servers_round_asking_for_what_was_not_offered_is_refused(tmp_path: Path) -> None:
    """A 2026-07-28 IDE answers rounds itself, but a server that asks for sampling without allow_sampling (or for
    what the IDE never declared) is refused by the bridge, not passed on."""
    up = Asking()
    cfg = config(tmp_path, up, protocol="2026-07-28")
    async with (
        serving(up),
        bridge_client(cfg, tmp_path / "home", mode="2026-07-28", sampling_callback=sample) as ide,
    ):
        sampled = await raw_call(ide, "asking__sample")
        rooted = await raw_call(ide, "asking__roots")
        asked = await raw_call(ide, "asking__ask")
    assert sampled["isError"] and "allow_sampling" in sampled["content"][0]["text"]
    assert rooted["isError"] and "did not declare roots" in rooted["content"][0]["text"]
    assert asked["isError"] and "did not declare elicitation" in asked["content"][0]["text"]
    events = audit_jsonl(tmp_path / "audit.jsonl", "input_request")
    assert [e["status"] for e in events] == ["Denied"] * 3


async def accept_nothing(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    """A minimal IDE: accepts the form and fills in nothing."""
    return types.ElicitResult(action="accept", content={})


@pytest.mark.parametrize(("upstream", "mode"), [("legacy", "legacy"), ("2026-07-28", "legacy"), ("legacy", "auto")])
async def test_an_accepted_form_gets_the_schemas_defaults_for_what_the_ide_left_out(
    tmp_path: Path, upstream: str, mode: str
) -> None:
    """SEP-1034: a client applies the defaults of the fields the answer omits. The bridge is the server's client:
    what an IDE accepted without filling in reaches the server with the schema's defaults (and nothing else
    changed)."""
    up = Asking()
    cfg = config(tmp_path, up, protocol=upstream)
    async with (
        serving(up),
        bridge_client(cfg, tmp_path / "home", mode=mode, elicitation_callback=accept_nothing) as ide,
    ):
        if mode == "legacy":
            got = answer(await raw_call(ide, "asking__ask_defaults"))
        else:
            called = await ide.call_tool("asking__ask_defaults", {})
            got = json.loads(called.content[0].text)
    defaults = {"name": "John Doe", "age": 30, "verified": True, "status": "active"}
    assert got["answer"] == {"action": "accept", "content": defaults}


async def test_a_question_not_tied_to_a_request_is_asked_of_the_only_call_in_flight(tmp_path: Path) -> None:
    """A server built on the TypeScript SDK's ``server.request`` sends its question on the standalone stream, not
    tied to the call that caused it. With one call of the IDE in flight to that server, it can only be that call's:
    the IDE is asked, and the call goes on; the audit names the call's tool."""
    up = Asking()
    cfg = config(tmp_path, up, protocol="legacy")
    async with serving(up), bridge_client(cfg, tmp_path / "home", mode="legacy", elicitation_callback=elicit) as ide:
        got = answer(await raw_call(ide, "asking__ask_unrelated"))
    assert got["answer"] == {"action": "accept", "content": {"name": "Ada"}}
    [event] = audit_jsonl(tmp_path / "audit.jsonl", "input_request")
    assert event["status"] == "Completed" and event["tool"] == "ask_unrelated"


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # logging/setLevel, handshake era
@pytest.mark.parametrize("mode", ["legacy", "auto", "2026-07-28"])
@UPSTREAM_ERAS
async def test_a_servers_log_messages_reach_the_ide_named_and_at_its_level(
    tmp_path: Path, mode: str, upstream: str
) -> None:
    """A handshake-era IDE sets its level with ``logging/setLevel``; a 2026-07-28 IDE asks per request: either way
    it gets the server's messages at or above that level, the logger naming the server (its own name cleaned)."""
    up = Asking()
    cfg = config(tmp_path, up, protocol=upstream)
    got: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        got.append(params)

    options: dict[str, Any] = {"logging_callback": on_log}
    if mode != "legacy":
        options["log_level"] = "info"
    async with serving(up), bridge_client(cfg, tmp_path / "home", mode=mode, **options) as ide:
        if mode == "legacy":
            await ide.set_logging_level("info")
        # twice: at 2026-07-28 the second call takes the short way (ide.fastpath), the first the SDK's
        for _ in range(2):
            assert answer(await raw_call(ide, "asking__chatty")) == "done"
        with anyio.fail_after(5):  # a handshake-era server's messages may be relayed just after the result
            while len(got) < 4:
                await anyio.sleep(0.02)
    assert [(m.level, m.logger, m.data) for m in got] == 2 * [
        ("info", "asking/worker\\x1b[31m", {"level": "info", "from": "asking"}),
        ("warning", "asking/worker\\x1b[31m", {"level": "warning", "from": "asking"}),
    ]
