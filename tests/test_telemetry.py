"""Telemetry (issue 20): the bridge's own traces and metrics over OTLP/HTTP, checked where a collector gets them.

The bridge runs as a subprocess over stdio, once per IDE mode; a local OTLP/HTTP receiver (:mod:`otlp`) decodes
what it exports, and the scripted upstream (:mod:`hostile`) records the trace context each request brought, in its
``_meta`` and in its ``traceparent`` header. Timings are the bench's (``bench/telemetry.py``), not asserted here.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from harness import Raw, SilentServer, bridge_client, free_port, run_cli, write_config
from hostile import Hostile, serving, tool
from otlp import Receiver

pytestmark = pytest.mark.anyio

SERVER, CLIENT = 2, 3  # the protobuf's SpanKind values
SECRET_ARGUMENT = "telemetry-secret-argument-value"


def _config(tmp_path: Path, upstream: Hostile, endpoint: str | None, **telemetry: Any) -> Path:
    extra: dict[str, Any] = {"user": {"email": "dev@example.com"}, "timeouts": {"startup_wait": 5}}
    if endpoint is not None:
        extra["telemetry"] = {"enabled": True, "endpoint": endpoint, "metrics_interval": 1, **telemetry}
    return write_config(tmp_path / "config.yaml", {"h": upstream.server_config()}, **extra)


def _upstream() -> Hostile:
    return Hostile(
        "h",
        tools=[tool("echo", "Echo.")],
        prompts=[{"name": "greet", "description": "Greet."}],
    )


async def _call(client: Any, name: str, arguments: dict[str, Any], meta: dict[str, Any] | None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if meta is not None:
        params["_meta"] = meta
    request = types.CallToolRequest(params=types.CallToolRequestParams.model_validate(params))
    return (await client.session.send_request(request, Raw)).root  # type: ignore[no-any-return]


async def _until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.1)


def _all_values(receiver: Receiver) -> str:
    return json.dumps([[s.attributes, s.events] for s in receiver.spans] + [receiver.metrics], default=str)


@pytest.mark.usefixtures("ide_mode")
@pytest.mark.parametrize("upstream_era", ["both", "handshake"])
async def test_spans_and_metrics_reach_the_collector_with_the_ides_trace_carried_to_the_server(
    tmp_path: Path, upstream_era: str
) -> None:
    """``both``: the server speaks 2026-07-28 (and the bridge speaks it to it); ``handshake``: only the handshake
    era. Either way the IDE's trace goes on to the server, in ``_meta`` and in the ``traceparent`` header."""
    upstream = _upstream()
    upstream.era = upstream_era
    trace_id, ide_span = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{ide_span}-01"
    with Receiver() as receiver:
        config = _config(tmp_path, upstream, receiver.endpoint)
        async with serving(upstream), bridge_client(config, tmp_path / "home") as client:
            await client.session.send_request(types.ListToolsRequest(), Raw)
            result = await _call(client, "h__echo", {"token": SECRET_ARGUMENT}, {"traceparent": traceparent})
            assert result["content"][0]["text"] == "h ran echo"
            prompt = types.GetPromptRequest(params=types.GetPromptRequestParams(name="h__greet"))
            await client.session.send_request(prompt, Raw)
            with pytest.raises(MCPError):
                await _call(client, "h__nope", {}, None)
            await _until(lambda: "mcp_bridge.call.duration" in receiver.metrics, "the calls' metrics, each second")
        await _until(lambda: receiver.named("tools/call echo"), "the spans, flushed when the bridge stops")

    # One SERVER span for the IDE's call, in the IDE's trace, a child of the IDE's span.
    (front,) = receiver.named("tools/call h__echo")
    assert front.kind == SERVER
    assert (front.trace_id, front.parent_span_id) == (trace_id, ide_span)
    assert front.attributes["mcp.method.name"] == "tools/call"
    assert front.attributes["gen_ai.operation.name"] == "execute_tool"
    assert front.attributes["gen_ai.tool.name"] == "h__echo"
    assert front.attributes["jsonrpc.request.id"]
    assert front.attributes["mcp_bridge.server"] == "h"
    assert front.attributes["mcp_bridge.tool"] == "echo"
    assert front.attributes["mcp_bridge.outcome"] == "Completed"
    assert "error.type" not in front.attributes

    # Its child, the request to the server; the server got that span's context in _meta and in the HTTP header.
    (call,) = receiver.named("tools/call echo")
    assert call.kind == CLIENT
    assert (call.trace_id, call.parent_span_id) == (trace_id, front.span_id)
    assert call.attributes["mcp_bridge.server"] == "h"
    assert call.attributes["server.address"] == "127.0.0.1"
    sent = f"00-{trace_id}-{call.span_id}-01"
    assert upstream.metas[-1]["traceparent"] == sent
    (post,) = [p for p in upstream.posts if p.method == "tools/call"]
    assert post.traceparent == sent

    # A prompt goes the session's way (the SDK's dispatcher injects the context): the same trace shape.
    (prompt_span,) = receiver.named("prompts/get h__greet")
    (prompt_call,) = receiver.named("prompts/get greet")
    assert prompt_call.parent_span_id == prompt_span.span_id
    assert prompt_span.attributes["gen_ai.prompt.name"] == "h__greet"
    (prompt_post,) = [p for p in upstream.posts if p.method == "prompts/get"]
    assert (prompt_post.traceparent or "").startswith(f"00-{prompt_call.trace_id}-{prompt_call.span_id}-")

    # A denied call: its own trace (the IDE sent none), the outcome and the error's type.
    (denied,) = receiver.named("tools/call h__nope")
    assert denied.attributes["mcp_bridge.outcome"] == "Denied"
    assert denied.attributes["error.type"] == "-32602"
    assert denied.status_code == 2  # ERROR
    assert denied.trace_id != trace_id

    # Lists and discovery have spans too.
    assert receiver.named("tools/list")

    # Who and what: the resource carries the service and the user as the audit knows them.
    assert front.resource["service.name"] == "mcp-bridge"
    assert front.resource["user.email"] == "dev@example.com"

    # Metrics: calls by server, tool and outcome; durations; the server's state; the catalog's size.
    durations = receiver.metrics["mcp_bridge.call.duration"]  # a histogram: (count, sum) by its attributes
    calls = {(a["mcp_bridge.server"], a["mcp_bridge.tool"], a["mcp_bridge.outcome"]): v[0] for a, v in durations}
    assert calls[("h", "echo", "Completed")] == 1
    assert calls[("h", "greet", "Completed")] == 1
    assert any(k[2] == "Denied" for k in calls)
    assert any(a.get("mcp.method.name") == "tools/call" for a, _ in receiver.metrics["mcp.server.operation.duration"])
    assert any(a.get("mcp_bridge.server") == "h" for a, _ in receiver.metrics["mcp.client.operation.duration"])
    states = receiver.metrics["mcp_bridge.upstream.state"]
    assert ({"mcp_bridge.server": "h", "mcp_bridge.state": "connected"}, 1) in states
    assert ({"mcp_bridge.server": "h"}, 1) in receiver.metrics["mcp_bridge.catalog.tools"]
    assert "mcp_bridge.audit.spool.pending" not in receiver.metrics  # no spool without Port: see the next test

    # No argument value anywhere (audit.arguments is the default, digest).
    assert SECRET_ARGUMENT not in _all_values(receiver)


async def test_with_propagate_off_no_trace_context_reaches_the_server_not_even_the_ides(tmp_path: Path) -> None:
    """``telemetry.propagate: false``: the spans are exported as ever, but neither the bridge's trace context nor
    the one the IDE sent goes to the server, in ``_meta`` or in a header, on the direct way and the session's."""
    upstream = _upstream()
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    with Receiver() as receiver:
        config = _config(tmp_path, upstream, receiver.endpoint, propagate=False)
        async with serving(upstream), bridge_client(config, tmp_path / "home") as client:
            await client.session.send_request(types.ListToolsRequest(), Raw)
            result = await _call(client, "h__echo", {}, {"traceparent": traceparent, "tracestate": "k=v"})
            assert result["content"][0]["text"] == "h ran echo"
            prompt = types.GetPromptRequest(params=types.GetPromptRequestParams(name="h__greet"))
            await client.session.send_request(prompt, Raw)
        await _until(lambda: receiver.named("tools/call echo"), "the spans, flushed when the bridge stops")
    assert receiver.named("tools/call h__echo") and receiver.named("prompts/get greet")
    assert upstream.metas and all("traceparent" not in m and "tracestate" not in m for m in upstream.metas)
    assert upstream.posts and all(p.traceparent is None for p in upstream.posts)


async def test_arguments_in_spans_only_with_full_audit_arguments(tmp_path: Path) -> None:
    upstream = _upstream()
    with Receiver() as receiver:
        config = _config(tmp_path, upstream, receiver.endpoint)
        text = config.read_text(encoding="utf-8")
        config.write_text(text + "audit: {arguments: full}\n", encoding="utf-8")
        async with serving(upstream), bridge_client(config, tmp_path / "home") as client:
            await _call(client, "h__echo", {"query": "visible"}, None)
        await _until(lambda: receiver.named("tools/call h__echo"), "the span")
    (front,) = receiver.named("tools/call h__echo")
    assert json.loads(front.attributes["gen_ai.tool.call.arguments"]) == {"query": "visible"}


@pytest.mark.usefixtures("ide_mode")
@pytest.mark.parametrize("collector", ["refused", "silent"])
async def test_a_dead_collector_costs_the_calls_nothing(tmp_path: Path, collector: str) -> None:
    """Nothing listens (connection refused), or something accepts and never answers: every call is answered, and
    the bridge stops (its last flush is bounded); what could not be exported is dropped, counted and logged."""
    upstream = _upstream()
    with SilentServer() as silent:
        endpoint = f"http://127.0.0.1:{free_port() if collector == 'refused' else silent.port}"
        config = _config(tmp_path, upstream, endpoint)
        stderr = tmp_path / "bridge-stderr.log"
        env = {"OTEL_EXPORTER_OTLP_TIMEOUT": "1"}  # the variables configure the exporter (its default: 5 s)
        async with serving(upstream), bridge_client(config, tmp_path / "home", env=env, stderr_path=stderr) as client:
            for i in range(20):
                result = await _call(client, "h__echo", {"i": i}, None)
                assert result["content"][0]["text"] == "h ran echo"
            # The metrics (each second) try to go out, and fail after the exporter's retries: dropped and logged.
            await _until(lambda: "telemetry.export_failed" in stderr.read_text(encoding="utf-8"), "a failed export")
            result = await _call(client, "h__echo", {}, None)  # and calls go on as before
            assert result["content"][0]["text"] == "h ran echo"
        assert len(upstream.calls) == 21


async def test_nothing_of_opentelemetrys_sdk_is_imported_when_telemetry_is_off(tmp_path: Path) -> None:
    """``PYTHONPROFILEIMPORTTIME`` makes the bridge list every module it imports (on stderr): with telemetry off, no
    module of the OpenTelemetry SDK or its exporter is among them; with it on (the control), they are."""
    upstream = _upstream()
    imported: dict[bool, str] = {}
    with Receiver() as receiver:
        for on in (False, True):
            config = _config(tmp_path, upstream, receiver.endpoint if on else None)
            stderr = tmp_path / f"stderr-{on}.log"
            env = {"PYTHONPROFILEIMPORTTIME": "1"}
            async with (
                serving(upstream),
                bridge_client(config, tmp_path / "home", env=env, stderr_path=stderr) as client,
            ):
                await _call(client, "h__echo", {}, None)
            imported[on] = stderr.read_text(encoding="utf-8")
    for on, text in imported.items():
        loaded = re.search(r"\|\s+opentelemetry\.(sdk|exporter)\b", text) is not None
        assert loaded == on, f"telemetry {'on' if on else 'off'}: OpenTelemetry SDK imported: {loaded}"


def test_status_and_doctor_say_what_is_exported_and_whether_the_collector_answers(tmp_path: Path) -> None:
    upstream = _upstream()  # not served: status and doctor need no server for this
    with Receiver() as receiver:
        config = _config(tmp_path, upstream, receiver.endpoint)
        status = run_cli(tmp_path / "home", "status", "--json", "--config", str(config))
        shown = json.loads(status.stdout)["telemetry"]
        assert shown["enabled"] is True
        assert shown["traces"] == f"{receiver.endpoint}/v1/traces"
        assert shown["metrics"] == f"{receiver.endpoint}/v1/metrics"
        doctor = run_cli(tmp_path / "home", "doctor", "--config", str(config))
        assert f"✓ telemetry: the collector at {receiver.endpoint}" in doctor.stdout, doctor.stdout
    dead = _config(tmp_path, upstream, f"http://127.0.0.1:{free_port()}")
    doctor = run_cli(tmp_path / "home", "doctor", "--config", str(dead))
    assert "✗ telemetry" in doctor.stdout, doctor.stdout
    assert doctor.returncode == 1


async def test_a_retry_and_the_reconnection_show_in_the_trace_and_the_metrics(tmp_path: Path) -> None:
    """A server restarted under a handshake-era session forgets it: the call is sent again on a new session. The
    request's span shows the retry (an event with the reason) and the wait for the new connection (a span inside
    it); the metrics count the reconnection."""
    from harness import LocalUpstream

    alpha = LocalUpstream("alpha", tmp_path).start()
    try:
        with Receiver() as receiver:
            config = write_config(
                tmp_path / "config.yaml",
                {"alpha": alpha.server_config()},
                protocol={"upstream": "legacy"},
                telemetry={"enabled": True, "endpoint": receiver.endpoint, "metrics_interval": 1},
            )
            async with bridge_client(config, tmp_path / "home", mode="legacy") as client:
                await _call(client, "alpha__echo", {"text": "before"}, None)
                alpha.restart()
                got = await _call(client, "alpha__echo", {"text": "after"}, None)
                assert got["content"][0]["text"] == "alpha: after"
                await _until(lambda: "mcp_bridge.upstream.reconnects" in receiver.metrics, "the reconnection counted")
            await _until(lambda: len(receiver.named("tools/call echo")) == 2, "both calls' spans")
    finally:
        alpha.kill()
    second = receiver.named("tools/call echo")[-1]
    retries = [attributes for name, attributes in second.events if name == "retry"]
    assert retries and "session" in retries[0]["reason"].lower(), second.events
    waits = [s for s in receiver.named("wait for connection") if s.parent_span_id == second.span_id]
    assert waits and waits[0].attributes["mcp_bridge.server"] == "alpha"
    assert ({"mcp_bridge.server": "alpha"}, 1) in receiver.metrics["mcp_bridge.upstream.reconnects"]


async def test_the_audit_backlog_and_shipping_failures_are_metrics(tmp_path: Path) -> None:
    """With Port, the audit spool's backlog is a gauge and each failed shipment a count: Port refusing every batch
    (503) leaves the call's event waiting, and says so."""
    from port_double import PortDouble, mcp_server_entity

    upstream = _upstream()
    with PortDouble() as double, Receiver() as receiver:
        double.add_client("dev", "telemetry-port-secret")
        double.upsert_entity("_mcp_server", mcp_server_entity("h", upstream.url, ["*"], auth_type="none"))
        double.fail_next("bulk", status=503, times=100_000)
        port = {"base_url": double.base_url, "client_id": "dev", "client_secret": "${env:TEST_PORT_SECRET}"}
        config = write_config(
            tmp_path / "config.yaml",
            {},
            port=port,
            timeouts={"startup_wait": 5},
            telemetry={"enabled": True, "endpoint": receiver.endpoint, "metrics_interval": 1},
        )
        env = {"TEST_PORT_SECRET": "telemetry-port-secret"}
        async with serving(upstream), bridge_client(config, tmp_path / "home", env=env) as client:
            await _call(client, "h__echo", {}, None)

            def backlog() -> bool:
                pending = receiver.metrics.get("mcp_bridge.audit.spool.pending", [])
                return any(v >= 1 for _, v in pending) and "mcp_bridge.audit.ship_failures" in receiver.metrics

            await _until(backlog, "the backlog and a failed shipment in the metrics")


async def test_calls_on_the_short_way_have_their_spans_too(tmp_path: Path) -> None:
    """A 2026-07-28 IDE's ordinary calls take the short way from the second on (ide/fastpath.py): each still gets
    its SERVER span with the request to the server as its child."""
    upstream = _upstream()
    with Receiver() as receiver:
        config = _config(tmp_path, upstream, receiver.endpoint)
        async with serving(upstream), bridge_client(config, tmp_path / "home", mode="2026-07-28") as client:
            for _ in range(3):
                assert (await _call(client, "h__echo", {}, None))["content"][0]["text"] == "h ran echo"
        await _until(lambda: len(receiver.named("tools/call echo")) == 3, "the three calls' spans")
    fronts = receiver.named("tools/call h__echo")
    calls = receiver.named("tools/call echo")
    assert len(fronts) == 3 and all(f.kind == SERVER for f in fronts)
    assert sorted(c.parent_span_id for c in calls) == sorted(f.span_id for f in fronts)
    assert all(f.attributes["mcp_bridge.outcome"] == "Completed" for f in fronts)
    log = (tmp_path / "home" / "bridge-stderr.log").read_text(encoding="utf-8")
    assert re.search(r'"served": 2\b', log), "the second and third calls took the short way"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_what_is_answered_before_the_sdk_loads_has_spans_dated_when_it_was_answered(
    tmp_path: Path, mode: str
) -> None:
    """``serve`` answers the first ``server/discover`` (or ``initialize``) and, from the warm cache, ``tools/list``
    before the SDK and telemetry are loaded: each still gets its span, once telemetry is up, dated when the request
    was read and answered (not when the SDK saw the first again), the list's a child of the IDE's trace context."""
    upstream = _upstream()
    first = "server/discover" if mode == "auto" else "initialize"
    trace_id, ide_span = secrets.token_hex(16), secrets.token_hex(8)
    with Receiver() as receiver:
        config = _config(tmp_path, upstream, receiver.endpoint)
        async with serving(upstream):
            async with bridge_client(config, tmp_path / "home", mode=mode) as client:  # fills the warm cache
                await client.session.send_request(types.ListToolsRequest(), Raw)
                await _call(client, "h__echo", {}, None)
            await _until(lambda: receiver.named(first), "the first run's spans")
            receiver.spans.clear()
            before = time.time_ns()
            async with bridge_client(config, tmp_path / "home", mode=mode) as client:
                connected = time.time_ns()
                listing = types.ListToolsRequest(
                    params=types.PaginatedRequestParams.model_validate(
                        {"_meta": {"traceparent": f"00-{trace_id}-{ide_span}-01"}}
                    )
                )
                listed = await client.session.send_request(listing, Raw)
                answered = time.time_ns()
                assert [t["name"] for t in listed.root["tools"]] == ["h__echo"]
                await _call(client, "h__echo", {}, None)  # the bridge serves on: telemetry is up
            await _until(lambda: receiver.named("tools/call h__echo"), "the second run's spans")
    (opening,) = receiver.named(first)  # one span, though the SDK handled the request too
    assert before <= opening.start_ns <= opening.end_ns <= connected, (before, opening, connected)
    assert opening.kind == SERVER and opening.attributes["mcp_bridge.answered_early"] is True
    lists = receiver.named("tools/list")
    (early,) = [s for s in lists if s.attributes.get("mcp_bridge.answered_early")]
    assert connected <= early.start_ns <= early.end_ns <= answered
    assert (early.trace_id, early.parent_span_id) == (trace_id, ide_span)
    assert early.kind == SERVER and early.attributes["jsonrpc.request.id"]
    assert early.attributes["mcp.protocol.version"] == ("2026-07-28" if mode == "auto" else "2025-11-25")


@pytest.mark.parametrize("upstream_era", ["both", "handshake"])
async def test_the_upstream_session_id_is_on_the_request_span(tmp_path: Path, upstream_era: str) -> None:
    """A handshake-era server gives the bridge a session (``Mcp-Session-Id``): the request's CLIENT span carries it
    as ``mcp.session.id``, as the server got it. A 2026-07-28 server has no sessions, and the IDE's stdio none:
    neither span gets one."""
    upstream = _upstream()
    upstream.era = upstream_era
    with Receiver() as receiver:
        config = _config(tmp_path, upstream, receiver.endpoint)
        async with serving(upstream), bridge_client(config, tmp_path / "home", mode="legacy") as client:
            await _call(client, "h__echo", {}, None)
        await _until(lambda: receiver.named("tools/call echo"), "the spans")
    (call,) = receiver.named("tools/call echo")
    (front,) = receiver.named("tools/call h__echo")
    (post,) = [p for p in upstream.posts if p.method == "tools/call"]
    assert "mcp.session.id" not in front.attributes
    if upstream_era == "handshake":
        assert post.session and call.attributes["mcp.session.id"] == post.session
    else:
        assert post.session is None and "mcp.session.id" not in call.attributes


@pytest.mark.parametrize(("ide", "server"), [("legacy", "2026-07-28"), ("2026-07-28", "legacy")])
async def test_a_call_answered_across_input_rounds_carries_the_bridges_span_to_the_server(
    tmp_path: Path, ide: str, server: str
) -> None:
    """A server asks for input mid-call in the other era than the IDE's. A handshake-era IDE cannot answer a
    2026-07-28 server's ``InputRequiredResult`` itself: the bridge asks it, then sends the call again with the
    answers; a 2026-07-28 IDE answers a handshake-era server's pushed question by retrying, and the bridge hands the
    answer to the call it held. Either way every request the server gets carries the bridge's CLIENT span as the
    trace parent, not the trace context the IDE sent with its call."""
    from mcp.client.session import ClientRequestContext

    from asking import Asking

    async def elicit(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    up = Asking()
    trace_id, ide_span = secrets.token_hex(16), secrets.token_hex(8)
    meta = {"traceparent": f"00-{trace_id}-{ide_span}-01"}
    with Receiver() as receiver:
        config = write_config(
            tmp_path / "config.yaml",
            {up.name: {"url": up.url, "allowed_tools": ["*"], "protocol": server}},
            telemetry={"enabled": True, "endpoint": receiver.endpoint, "metrics_interval": 1},
        )
        async with (
            serving(up),
            bridge_client(config, tmp_path / "home", mode=ide, elicitation_callback=elicit) as client,
        ):
            if ide == "legacy":
                result = await _call(client, "asking__ask", {}, meta)
                text = result["content"][0]["text"]
            else:  # the SDK client answers the round and retries, with the same _meta
                called = await client.call_tool("asking__ask", {}, meta=meta)  # type: ignore[arg-type]
                text = called.content[0].text  # type: ignore[union-attr]
            assert json.loads(text)["answer"]["content"] == {"name": "Ada"}
        await _until(lambda: receiver.named("tools/call ask"), "the spans")
    (call,) = receiver.named("tools/call ask")
    assert call.trace_id == trace_id
    # the first request and, to a 2026-07-28 server, the retry with the answer
    assert len(up.metas) == (2 if server == "2026-07-28" else 1)
    assert [m.get("traceparent") for m in up.metas] == [f"00-{trace_id}-{call.span_id}-01"] * len(up.metas)


async def test_a_call_on_the_short_way_that_asks_ends_its_requests_span_with_the_round(tmp_path: Path) -> None:
    """A 2026-07-28 IDE's ordinary call (the short way, ``ide.fastpath``: its envelope known from a list, nothing
    else in its ``_meta``) to a handshake-era server that asks: the call goes on in the request's task after the
    round answered the request, and the request's span ends with that answer, before the retry's begins."""
    from mcp.client.session import ClientRequestContext

    from asking import Asking

    async def elicit(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        await anyio.sleep(0.05)  # the IDE takes a moment to answer: the call is held meanwhile
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    up = Asking()
    with Receiver() as receiver:
        config = write_config(
            tmp_path / "config.yaml",
            {up.name: {"url": up.url, "allowed_tools": ["*"], "protocol": "legacy"}},
            telemetry={"enabled": True, "endpoint": receiver.endpoint, "metrics_interval": 1},
        )
        async with (
            serving(up),
            bridge_client(config, tmp_path / "home", mode="2026-07-28", elicitation_callback=elicit) as client,
        ):
            await client.session.list_tools()
            called = await client.call_tool("asking__ask", {})
            assert json.loads(called.content[0].text)["answer"]["content"] == {"name": "Ada"}  # type: ignore[union-attr]
        await _until(lambda: len(receiver.named("tools/call asking__ask")) == 2, "the spans")
    first, retry = sorted(receiver.named("tools/call asking__ask"), key=lambda span: span.start_ns)
    assert first.end_ns <= retry.start_ns
    assert "requestState" not in str(first.attributes)
    # the call went on in the first request's task: its outcome is that request's, on the span ended with the round
    assert first.attributes["mcp_bridge.outcome"] == "Completed" and first.attributes["mcp_bridge.tool"] == "ask"


async def test_a_token_refresh_is_counted(tmp_path: Path) -> None:
    """An OAuth server whose access tokens live 5 s (the real authorization server of the tests): after a login, the
    serving bridge refreshes the expired token on its own, and ``mcp_bridge.oauth.token_refreshes`` counts it."""
    from oauth_harness import LocalOAuthUpstream, browser_env

    home = tmp_path / "home"
    home.mkdir()
    env = {
        **browser_env(tmp_path / "browser.jsonl"),
        "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
    }
    with LocalOAuthUpstream("secure", tmp_path, token_lifetime=5) as upstream, Receiver() as receiver:
        config = write_config(
            tmp_path / "config.yaml",
            {"secure": {"url": upstream.url, "allowed_tools": ["*"], "auth": {"type": "oauth"}}},
            timeouts={"connect": 5, "startup_wait": 5, "login": 20},
            telemetry={"enabled": True, "endpoint": receiver.endpoint, "metrics_interval": 1},
        )
        login = run_cli(home, "login", "secure", "--config", str(config), env=env, timeout=120)
        assert login.returncode == 0, login.stderr
        async with bridge_client(config, home, env=env) as client:
            assert (await _call(client, "secure__echo", {"text": "a"}, None))["content"][0]["text"] == "secure: a"
            await anyio.sleep(6)  # the access token has expired
            assert (await _call(client, "secure__echo", {"text": "b"}, None))["content"][0]["text"] == "secure: b"

            def refreshed() -> bool:
                points = receiver.metrics.get("mcp_bridge.oauth.token_refreshes", [])
                return any(a == {"mcp_bridge.outcome": "ok"} and v >= 1 for a, v in points)

            await _until(refreshed, "the refresh counted, in the metrics exported each second")
        assert upstream.stats()["token"].get("refresh_token", 0) >= 1


def _shape(receiver: Receiver) -> tuple[list[Any], dict[tuple[str, str], Any]]:
    """What a collector got, without what differs between two runs (ids, times, durations' sums, request ids)."""
    varying = {"jsonrpc.request.id", "server.port", "mcp.session.id"}
    by_id = {s.span_id: s.name for s in receiver.spans}
    spans = sorted(
        (
            s.name,
            s.kind,
            s.status_code,
            by_id.get(s.parent_span_id, "(remote)" if s.parent_span_id else None),
            json.dumps({k: v for k, v in s.attributes.items() if k not in varying}, sort_keys=True),
            json.dumps({k: v for k, v in s.resource.items() if k != "service.instance.id"}, sort_keys=True),
        )
        for s in receiver.spans
    )
    metrics: dict[tuple[str, str], Any] = {}
    for name, points in receiver.metrics.items():
        for attributes, value in points:  # the last export's value of each point (cumulative)
            metrics[(name, json.dumps(attributes, sort_keys=True))] = value[0] if isinstance(value, tuple) else value
    return spans, metrics


async def test_the_exporters_public_export_gives_the_collector_the_same(tmp_path: Path) -> None:
    """The bridge encodes spans and metrics itself and POSTs them through the OTLP exporters' HTTP clients (a private
    attribute: no public API takes encoded requests). ``MCP_BRIDGE_TELEMETRY_EXPORT=sdk`` takes the way used where
    those clients are not there: the SDK's span and metric objects through the exporters' public ``export()``. A
    collector gets the same spans and metrics either way."""
    shapes = []
    for way in ("direct", "sdk"):
        upstream = _upstream()
        stderr = tmp_path / f"stderr-{way}.log"
        env = {"MCP_BRIDGE_TELEMETRY_EXPORT": way}
        with Receiver() as receiver:
            config = _config(tmp_path, upstream, receiver.endpoint)
            home = tmp_path / f"home-{way}"
            async with serving(upstream), bridge_client(config, home, env=env, stderr_path=stderr) as client:
                await _call(client, "h__echo", {}, {"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"})
                with pytest.raises(MCPError):
                    await _call(client, "h__nope", {}, None)
                await _until(lambda: "mcp_bridge.call.duration" in receiver.metrics, "the metrics")
            await _until(lambda: receiver.named("tools/call echo"), "the spans")
        assert ("telemetry.public_export" in stderr.read_text(encoding="utf-8")) == (way == "sdk")
        shapes.append(_shape(receiver))
    (direct_spans, direct_metrics), (sdk_spans, sdk_metrics) = shapes
    assert direct_spans == sdk_spans
    assert any(name == "tools/call h__nope" and status == 2 for name, _, status, *_ in sdk_spans)
    for key in ("mcp_bridge.call.duration", "mcp_bridge.upstream.state", "mcp_bridge.catalog.tools"):
        assert {k: v for k, v in direct_metrics.items() if k[0] == key} == {
            k: v for k, v in sdk_metrics.items() if k[0] == key
        }, key
    assert {k[0] for k in direct_metrics} == {k[0] for k in sdk_metrics}


def test_measurements_aggregate_whole_across_the_drains_yields() -> None:
    """The export thread yields the interpreter lock every 256 records while it drains: no measurement is lost or
    counted twice across those yields (a histogram's count and sum, a counter's total, per attribute set), whether
    queued loose or derived from a span (a request's duration, the call's outcome)."""
    from opentelemetry.trace import SpanKind

    from mcp_bridge.config import Settings
    from mcp_bridge.telemetry.live import _DRAIN_CHUNK, Live, _Span

    settings = Settings.model_validate({"telemetry": {"enabled": True, "endpoint": f"http://127.0.0.1:{free_port()}"}})
    live = Live(settings, version="test")
    try:
        n = _DRAIN_CHUNK * 3 + 7
        a, b = {"mcp_bridge.server": "a"}, {"mcp_bridge.server": "b"}
        template = ("tools/call t", {"mcp.method.name": "tools/call"}, {"mcp.method.name": "tools/call"})
        outcome = {"mcp_bridge.outcome": "Completed"}
        with live._points_lock:  # (the thread's own drain waits for this one)
            for i in range(n):
                live._measure(live.client_duration, 0.001 * (i % 3), a if i % 2 else b)
                live.count("audit.ship_failures")
                span = _Span(SpanKind.SERVER, template, None)
                span.outcome, span.call_seconds = outcome, 0.002
                live._finish(span, span.start + 1_000_000 * (i % 2))
            live._drain()
            histogram = live._points[live.client_duration]
            counter = live._points[live._counters["audit.ship_failures"]]
            served = live._points[live.server_duration]
            calls = live._points[live.call_duration]
        by_server = {dict(key)["mcp_bridge.server"]: state for key, state in histogram.items()}
        assert by_server["a"][0] + by_server["b"][0] == n
        assert by_server["a"][0] == n // 2
        assert by_server["a"][1] + by_server["b"][1] == pytest.approx(sum(0.001 * (i % 3) for i in range(n)))
        assert list(counter.values()) == [n]
        ((_, (count, total, *_)),) = served.items()
        assert (count, total) == (n, pytest.approx(0.001 * (n // 2)))
        ((key, (count, total, *_)),) = calls.items()
        assert dict(key) == outcome and (count, total) == (n, pytest.approx(0.002 * n))
        assert not live._queue
        assert len(live._encoded) + sum(p[2] for p in live._payloads) == n  # every span encoded, none twice
    finally:
        live.shutdown(0.5)


def test_a_collector_that_never_answers_holds_at_most_eight_batches_and_the_rest_are_counted() -> None:
    """The sending thread waits on a collector that never answers; the export thread goes on handing it span batches:
    eight wait at most, and past that the oldest waiting is dropped and counted (metrics: one batch waits, the latest,
    which holds everything so far)."""
    from mcp_bridge.config import Settings
    from mcp_bridge.telemetry.live import _MAX_PAYLOADS, Live

    with SilentServer() as silent:
        settings = Settings.model_validate(
            {"telemetry": {"enabled": True, "endpoint": f"http://127.0.0.1:{silent.port}"}}
        )
        live = Live(settings, version="test")
        try:
            live._hand(("spans", b"", 1))
            deadline = time.monotonic() + 10
            while live._payloads and time.monotonic() < deadline:  # the sending thread took it, and waits
                time.sleep(0.01)
            assert not live._payloads
            for n in range(2, _MAX_PAYLOADS + 4):  # batches of 2, 3, ... spans
                live._hand(("spans", b"", n))
            with live._points_lock:
                live._hand_metrics()
                live._hand_metrics()
            waiting = [(what, n) for what, _, n in live._payloads]
            assert waiting[-1] == ("metrics", 0) and waiting.count(("metrics", 0)) == 1
            assert len(waiting) == _MAX_PAYLOADS
            assert waiting[0] == ("spans", 5)  # 2 and 3 dropped for newer batches, 4 for the metrics
            assert live.dropped.spans == 2 + 3 + 4
        finally:
            live.shutdown(0.2)


@pytest.mark.parametrize(
    ("endpoint", "env", "traces", "metrics"),
    [
        ("http://collector:4318", {}, "http://collector:4318/v1/traces", "http://collector:4318/v1/metrics"),
        ("http://collector:4318/otlp/", {}, "http://collector:4318/otlp/v1/traces", "http://collector:4318/otlp/v1/metrics"),
        # a query stays a query: the signal's path goes after the URL's path, not into the query
        ("https://c/otlp?tenant=a", {}, "https://c/otlp/v1/traces?tenant=a", "https://c/otlp/v1/metrics?tenant=a"),
        ("http://collector:4318/#x", {}, "http://collector:4318/v1/traces", "http://collector:4318/v1/metrics"),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://gw/o?t=b"}, "https://gw/o/v1/traces?t=b", "https://gw/o/v1/metrics?t=b"),
        # a signal's own variable is used as it is; the other signal keeps the default
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://gw/t?x=1"}, "https://gw/t?x=1", "http://localhost:4318/v1/metrics"),
        (None, {}, "http://localhost:4318/v1/traces", "http://localhost:4318/v1/metrics"),
    ],
)  # fmt: skip
def test_each_signal_goes_under_the_base_urls_path(
    endpoint: str | None, env: dict[str, str], traces: str, metrics: str
) -> None:
    from mcp_bridge import telemetry
    from mcp_bridge.config import Settings

    config = Settings.model_validate({"telemetry": {"enabled": True, "endpoint": endpoint}}).telemetry
    assert telemetry.signal_endpoint(config, "traces", env) == traces
    assert telemetry.signal_endpoint(config, "metrics", env) == metrics


@pytest.mark.usefixtures("ide_mode")
@pytest.mark.parametrize("tracestate", ["k=v\r\nx-injected: 1", "k=v\x00", "k=\u00e9t\u00e9", "k=v\tw"])
async def test_a_tracestate_that_is_no_header_value_is_dropped_and_the_call_goes_on(
    tmp_path: Path, tracestate: str
) -> None:
    """The IDE's ``tracestate`` goes to the server in ``_meta`` and as an HTTP header: one with a line break, a NUL, a
    tab or a non-ASCII character is not a W3C tracestate (nor a header value), and is dropped, as the W3C spec says of
    an invalid one; the call, and the trace (its ``traceparent``), go on."""
    upstream = _upstream()
    trace_id = secrets.token_hex(16)
    with Receiver() as receiver:
        config = _config(tmp_path, upstream, receiver.endpoint)
        async with serving(upstream), bridge_client(config, tmp_path / "home") as client:
            meta = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01", "tracestate": tracestate}
            result = await _call(client, "h__echo", {}, meta)
            assert result["content"][0]["text"] == "h ran echo", result
    calls = [m for m in upstream.metas if "traceparent" in m]
    assert calls and all(m["traceparent"].split("-")[1] == trace_id and "tracestate" not in m for m in calls)
    assert [p.traceparent.split("-")[1] for p in upstream.posts if p.method == "tools/call" and p.traceparent] == [
        trace_id
    ]


@pytest.mark.usefixtures("ide_mode")
async def test_a_servers_endless_tool_name_is_cut_in_the_spans_and_metrics(tmp_path: Path) -> None:
    """A server lists a tool whose name is 5,000 characters long (what its HTTP server still takes in the
    ``Mcp-Name`` header): the IDE calls it (under its short exposed name) and the server is sent its whole name, but
    the spans and metrics carry it cut to 256 characters: the span names, ``gen_ai.tool.name`` and ``mcp_bridge.tool``
    (and nothing exported holds the whole name)."""
    long_name = "n" * 5_000
    upstream = Hostile("h", tools=[tool("echo", "Echo."), tool(long_name, "A name without end.")])
    with Receiver() as receiver:
        config = _config(tmp_path, upstream, receiver.endpoint)
        async with serving(upstream), bridge_client(config, tmp_path / "home") as client:
            listed = (await client.session.send_request(types.ListToolsRequest(), Raw)).root["tools"]
            (exposed,) = [t["name"] for t in listed if t["name"] != "h__echo"]
            assert len(exposed) <= 64
            result = await _call(client, exposed, {}, None)
            assert result["content"][0]["text"] == f"h ran {long_name}", str(result)[:200]
        await _until(
            lambda: [s for s in receiver.spans if s.name.startswith("tools/call")] and receiver.metrics,
            "the call's spans and metrics",
        )
    calls = [s for s in receiver.spans if s.name.startswith("tools/call")]
    assert {s.name for s in calls} == {f"tools/call {exposed}", "tools/call " + "n" * 255 + "…"}, [
        s.name[:80] for s in calls
    ]
    (client_span,) = [s for s in calls if s.name != f"tools/call {exposed}"]
    assert client_span.attributes["gen_ai.tool.name"] == "n" * 255 + "…"
    (server_span,) = [s for s in calls if s.name == f"tools/call {exposed}"]
    assert server_span.attributes["mcp_bridge.tool"] == "n" * 255 + "…"
    assert "n" * 257 not in _all_values(receiver)
    await _until(lambda: "mcp_bridge.call.duration" in receiver.metrics, "the call's duration")
    assert "n" * 257 not in _all_values(receiver)


@pytest.mark.usefixtures("ide_mode")
async def test_a_servers_endless_error_message_is_cut_where_it_is_a_retrys_reason(tmp_path: Path) -> None:
    """A server that says it lost the session, at great length: the call is sent again and answered; the retry's
    reason (the server's message) is cut to 1,024 characters in the span's event and in the bridge's log."""
    upstream = _upstream()
    upstream.fail_calls.append(MCPError(types.INVALID_REQUEST, "Session not found: " + "x" * 200_000))
    stderr = tmp_path / "bridge.stderr"
    with Receiver() as receiver:
        config = _config(tmp_path, upstream, receiver.endpoint)
        async with serving(upstream), bridge_client(config, tmp_path / "home", stderr_path=stderr) as client:
            result = await _call(client, "h__echo", {}, None)
            assert result["content"][0]["text"] == "h ran echo", result
        await _until(lambda: receiver.named("tools/call echo"), "the call's span")
    (span,) = receiver.named("tools/call echo")
    reasons = [attributes["reason"] for name, attributes in span.events if name == "retry"]
    assert reasons and reasons[0].startswith("Session not found: xxx") and len(reasons[0]) <= 1024, reasons
    assert "x" * 1025 not in stderr.read_text(encoding="utf-8", errors="replace")
