"""Governance beyond tool names (issue 18): prompts and resources allowlisted like tools and audited as their own
event kinds, and ``confirm`` asking the user before a call. Over stdio, once per IDE mode (both protocol eras); the
audit events are checked where Port receives them (the double)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

from harness import Raw, audit_jsonl, bridge_client, raw_call, upstream_pair, wait_for, write_config
from hostile import Hostile, serving
from port_double import AUDIT_BLUEPRINT, PortDouble, mcp_server_entity

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ide_mode")]

SECRET = "surface-secret"


@pytest.fixture
def double() -> Iterator[PortDouble]:
    with PortDouble() as d:
        d.add_client("dev", SECRET)
        yield d


async def _request(client: Any, request: Any) -> dict[str, Any]:
    return (await client.session.send_request(request, Raw)).root  # type: ignore[no-any-return]


async def _error(client: Any, request: Any) -> str:
    with pytest.raises(MCPError) as caught:
        await client.session.send_request(request, Raw)
    return caught.value.error.message


def _prompt(name: str) -> types.GetPromptRequest:
    return types.GetPromptRequest(params=types.GetPromptRequestParams(name=name, arguments={"who": "Ada"}))


def _read(uri: str) -> types.ReadResourceRequest:
    return types.ReadResourceRequest(params=types.ReadResourceRequestParams(uri=uri))


def _complete(ref: Any, argument: str, value: str) -> types.CompleteRequest:
    params = types.CompleteRequestParams(ref=ref, argument=types.CompletionArgument(name=argument, value=value))
    return types.CompleteRequest(params=params)


def _events(double: PortDouble, kind: str) -> list[dict[str, Any]]:
    found = [e["properties"] for e in double.entities(AUDIT_BLUEPRINT).values()]
    return sorted((p for p in found if p.get("event_type") == kind), key=lambda p: p["asked_at"])


def _outcomes(events: Iterable[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(server, tool or name or URI, status) of each event, each one once (a second one would be an event too many)."""
    found = [(e["server"], e["tool_name"], e["status"]) for e in events]
    assert len(found) == len(set(found)), found
    return set(found)


async def test_prompts_and_resources_only_as_the_allowlist_says_and_audited_in_port(
    tmp_path: Path, double: PortDouble
) -> None:
    """alpha allows its ``greet`` prompt and its items (a glob), not its readme; beta (no ``allowed_prompts`` or
    ``allowed_resources``) allows none: lists show only what is allowed, and every get or read, allowed or denied,
    is an event of its own kind in Port; completions of a prompt's argument or a template's variable go to their
    server under the same rules."""
    with upstream_pair(tmp_path, "beta-key") as up:
        double.upsert_entity(
            "_mcp_server",
            mcp_server_entity(
                "alpha",
                up["alpha"].url,
                ["echo"],
                auth_type="none",
                allowed_prompts=["greet"],
                allowed_resources=["mem://alpha/items/*"],
            ),
        )
        double.upsert_entity("_mcp_server", mcp_server_entity("beta", up["beta"].url, ["echo"], auth_type="api_key"))
        port = {"base_url": double.base_url, "client_id": "dev", "client_secret": "${env:TEST_PORT_SECRET}"}
        cfg = write_config(
            tmp_path / "config.yaml",
            {"beta": {"auth": up["beta"].server_config()["auth"]}},
            port=port,
            timeouts={"startup_wait": 5},
        )
        env = {"TEST_PORT_SECRET": SECRET, **up["beta"].env()}
        async with bridge_client(cfg, tmp_path / "home", env=env) as client:
            prompts = await _request(client, types.ListPromptsRequest())
            assert [p["name"] for p in prompts["prompts"]] == ["alpha__greet"]
            resources = await _request(client, types.ListResourcesRequest())
            assert resources["resources"] == []  # alpha's readme is not allowed, beta's neither
            templates = await _request(client, types.ListResourceTemplatesRequest())
            assert [t["uriTemplate"] for t in templates["resourceTemplates"]] == ["mem://alpha/items/{id}"]

            got = await _request(client, _prompt("alpha__greet"))
            assert got["messages"][0]["content"]["text"] == "Hello Ada, from alpha."
            denied_prompt = await _error(client, _prompt("beta__greet"))
            assert "`allowed_prompts`" in denied_prompt and "beta" in denied_prompt

            read = await _request(client, _read("mem://alpha/items/7"))
            assert read["contents"][0]["text"] == "item 7 of alpha"
            denied_read = await _error(client, _read("mem://alpha/readme"))
            assert "`allowed_resources`" in denied_read
            denied_template = await _error(client, _read("mem://beta/items/3"))  # routed to beta, which allows none
            assert "`allowed_resources`" in denied_template and "beta" in denied_template

            done = await _request(client, _complete(types.PromptReference(name="alpha__greet"), "who", "A"))
            assert done["completion"]["values"] == ["Ada", "Alan"]
            item = types.ResourceTemplateReference(uri="mem://alpha/items/{id}")
            assert (await _request(client, _complete(item, "id", "1")))["completion"]["values"] == ["1", "12"]
            denied_completion = await _error(client, _complete(types.PromptReference(name="beta__greet"), "who", ""))
            assert "`allowed_prompts`" in denied_completion

    # (as sets: two requests denied by the bridge itself can be asked within one millisecond, the events' resolution)
    completions = _events(double, "completion")
    assert _outcomes(completions) == {
        ("alpha", "greet", "Completed"),
        ("alpha", "mem://alpha/items/{id}", "Completed"),
        ("beta", "greet", "Denied"),
    }
    gets = _events(double, "prompt_get")
    assert _outcomes(gets) == {("alpha", "greet", "Completed"), ("beta", "greet", "Denied")}
    by_server = {e["server"]: e for e in gets}
    assert by_server["alpha"]["exposed_name"] == "alpha__greet" and "allowed_prompts" in by_server["beta"]["error"]
    reads = _events(double, "resource_read")
    assert _outcomes(reads) == {
        ("alpha", "mem://alpha/items/7", "Completed"),
        ("alpha", "mem://alpha/readme", "Denied"),
        ("beta", "mem://beta/items/3", "Denied"),
    }
    assert not _events(double, "call")


async def test_missing_allowed_prompts_and_resources_mean_none(tmp_path: Path) -> None:
    with upstream_pair(tmp_path, "k") as up:
        alpha = {"url": up["alpha"].url, "allowed_tools": ["echo"]}
        cfg = write_config(tmp_path / "config.yaml", {"alpha": alpha}, audit={"jsonl": str(tmp_path / "a.jsonl")})
        async with bridge_client(cfg, tmp_path / "home") as client:
            assert (await _request(client, types.ListPromptsRequest()))["prompts"] == []
            assert (await _request(client, types.ListResourcesRequest()))["resources"] == []
            assert (await _request(client, types.ListResourceTemplatesRequest()))["resourceTemplates"] == []
            assert "not allowed" in await _error(client, _prompt("alpha__greet"))
            assert "not allowed" in await _error(client, _read("mem://alpha/readme"))
            assert (await raw_call(client, "alpha__echo", {"text": "x"}))["content"][0]["text"] == "alpha: x"
    assert [e["status"] for e in audit_jsonl(tmp_path / "a.jsonl", "prompt_get")] == ["Denied"]
    assert [e["status"] for e in audit_jsonl(tmp_path / "a.jsonl", "resource_read")] == ["Denied"]


async def test_a_server_cannot_widen_what_is_allowed_by_changing_its_lists(tmp_path: Path) -> None:
    """While the bridge runs, the server adds a prompt, a resource and a catch-all template, with an allowed prompt
    and resource beside them, and announces the change: only the allowed ones appear; the others are denied, never
    reach the server, and are audited."""
    h = Hostile("h", prompts=[{"name": "greet"}], resources=[{"uri": "docs://pub/1", "name": "one"}])
    server = h.server_config(allowed_prompts=["greet*"], allowed_resources=["docs://pub/*"])
    cfg = write_config(tmp_path / "config.yaml", {"h": server}, audit={"jsonl": str(tmp_path / "a.jsonl")})
    async with serving(h), bridge_client(cfg, tmp_path / "home") as client:

        async def names() -> tuple[list[str], list[str], list[str]]:
            prompts = (await _request(client, types.ListPromptsRequest()))["prompts"]
            resources = (await _request(client, types.ListResourcesRequest()))["resources"]
            templates = (await _request(client, types.ListResourceTemplatesRequest()))["resourceTemplates"]
            return [p["name"] for p in prompts], [r["uri"] for r in resources], [t["uriTemplate"] for t in templates]

        assert await names() == (["h__greet"], ["docs://pub/1"], [])
        h.prompts += [{"name": "greet_more"}, {"name": "exfiltrate"}]
        h.resources += [{"uri": "docs://pub/2", "name": "two"}, {"uri": "docs://secret/keys", "name": "keys"}]
        h.templates.append({"uriTemplate": "{+anything}", "name": "everything"})
        await h.announce("prompts")
        await h.announce("resources")

        async def changed() -> bool:
            prompts, resources, _ = await names()
            return "h__greet_more" in prompts and "docs://pub/2" in resources

        await wait_for(changed, "the allowed new prompt and resource listed")
        assert await names() == (["h__greet", "h__greet_more"], ["docs://pub/1", "docs://pub/2"], [])
        assert "allowed_prompts" in await _error(client, _prompt("h__exfiltrate"))
        assert "allowed_resources" in await _error(client, _read("docs://secret/keys"))
        assert "allowed_resources" in await _error(client, _read("docs://secret/other"))  # the catch-all's
        assert (await _request(client, _read("docs://pub/2")))["contents"][0]["text"] == "h read docs://pub/2"
    assert h.reads == ["docs://pub/2"]
    reads = audit_jsonl(tmp_path / "a.jsonl", "resource_read")
    assert [(e["tool"], e["status"]) for e in reads] == [
        ("docs://secret/keys", "Denied"),
        ("docs://secret/other", "Denied"),
        ("docs://pub/2", "Completed"),
    ]
    assert [e["status"] for e in audit_jsonl(tmp_path / "a.jsonl", "prompt_get")] == ["Denied"]


# ------------------------------------------------------------------------------------------------------- confirm

ASKED: list[str] = []


def _answering(action: str) -> Any:
    async def elicit(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        ASKED.append(params.message)
        return types.ElicitResult(action=action, content={} if action == "accept" else None)  # type: ignore[arg-type]

    return elicit


def _confirm_config(tmp_path: Path, url: str, confirm: str) -> Path:
    server = {"url": url, "allowed_tools": ["echo", "meta"], "confirm": confirm}
    return write_config(tmp_path / "config.yaml", {"alpha": server}, audit={"jsonl": str(tmp_path / "a.jsonl")})


@pytest.mark.parametrize("action", ["accept", "decline", "cancel"])
async def test_confirm_destructive_asks_the_user_before_a_call_of_a_tool_that_may_destroy(
    tmp_path: Path, action: str
) -> None:
    """``echo`` has no annotations (so it may be destructive, by the spec's defaults), ``meta`` is read-only: only
    ``echo`` is asked about, naming the server, the tool and the arguments; accepted it runs, declined or cancelled
    it does not, and the audit says why."""
    ASKED.clear()
    with upstream_pair(tmp_path, "k") as up:
        cfg = _confirm_config(tmp_path, up["alpha"].url, "destructive")
        async with bridge_client(cfg, tmp_path / "home", elicitation_callback=_answering(action)) as client:
            # Client.call_tool: a 2026-07-28 IDE is asked by an input_required answer, and retries with the answer
            meta = await client.call_tool("alpha__meta", {})
            assert not meta.is_error and ASKED == []
            if action == "accept":
                got = await client.call_tool("alpha__echo", {"text": "drop table", "api_key": "s3cret"})
                assert isinstance(got.content[0], types.TextContent) and got.content[0].text == "alpha: drop table"
            else:
                with pytest.raises(MCPError) as caught:
                    await client.call_tool("alpha__echo", {"text": "drop table", "api_key": "s3cret"})
                assert ("declined" if action == "decline" else "cancelled") in caught.value.error.message
    [message] = ASKED
    assert "'echo'" in message and "'alpha'" in message and "drop table" in message
    assert "s3cret" not in message  # secret-looking arguments are masked, as in the audit
    calls = audit_jsonl(tmp_path / "a.jsonl", "call")
    echo = [c for c in calls if c["tool"] == "echo"]
    assert [c["status"] for c in echo] == ["Completed" if action == "accept" else "Denied"]
    if action != "accept":
        assert "the user" in echo[0]["error"]


async def test_a_call_the_user_declines_does_not_count_against_the_rate_limit(tmp_path: Path) -> None:
    """``rate_limit: 1`` and ``confirm: all``: the user declines the first call (it never goes to the server), so
    the next one, accepted, is within the limit and runs; the one after it is past the limit."""
    actions = ["decline", "accept"]

    async def elicit(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        action = actions.pop(0) if actions else "accept"
        return types.ElicitResult(action=action, content={} if action == "accept" else None)  # type: ignore[arg-type]

    with upstream_pair(tmp_path, "k") as up:
        server = {"url": up["alpha"].url, "allowed_tools": ["echo"], "confirm": "all", "rate_limit": 1}
        cfg = write_config(tmp_path / "config.yaml", {"alpha": server})
        async with bridge_client(cfg, tmp_path / "home", elicitation_callback=elicit) as client:
            with pytest.raises(MCPError, match="declined"):
                await client.call_tool("alpha__echo", {"text": "no"})
            got = await client.call_tool("alpha__echo", {"text": "yes"})
            assert isinstance(got.content[0], types.TextContent) and got.content[0].text == "alpha: yes"
            with pytest.raises(MCPError, match="rate_limit"):
                await client.call_tool("alpha__echo", {"text": "again"})


async def test_confirm_without_elicitation_in_the_ide_is_denied_saying_why(tmp_path: Path) -> None:
    with upstream_pair(tmp_path, "k") as up:
        cfg = _confirm_config(tmp_path, up["alpha"].url, "all")
        async with bridge_client(cfg, tmp_path / "home") as client:
            with pytest.raises(MCPError) as caught:
                await raw_call(client, "alpha__meta")  # confirm: all holds back read-only tools too
    message = caught.value.error.message
    assert "confirm" in message and "did not declare elicitation" in message
    [denied] = audit_jsonl(tmp_path / "a.jsonl", "call")
    assert denied["status"] == "Denied"
