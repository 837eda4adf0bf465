"""The Port double follows Port's published OpenAPI spec (shared/port-openapi.json), and its behaviour holds.

Every response the sync client below receives is validated against the spec's response schema for its route and
status (``spec_checked`` event hook), so the behaviour tests double as shape tests. The spec documents no 429 and no
5xx for these three routes: those responses are checked against the spec's own error shape (its 422 schema, the
strictest: ``ok: false``, ``error`` and ``message`` required, nothing else).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest

from port_double import (
    AUDIT_BLUEPRINT,
    BULK_PATH,
    DEFAULT_EXPIRES_IN,
    MAX_BODY_BYTES,
    MCP_REGISTRY_BLUEPRINT,
    MCP_REGISTRY_RELATIONS,
    MCP_REGISTRY_SCHEMA,
    MCP_SERVER_BLUEPRINT,
    SEARCH_PATH,
    TOKEN_PATH,
    PortDouble,
    _match,
    load_spec,
    mcp_server_entity,
    registry_entity,
    request_validator,
    response_validator,
)

BP = MCP_SERVER_BLUEPRINT
SEARCH = f"/v1/blueprints/{BP}/entities/search"
BULK = f"/v1/blueprints/{AUDIT_BLUEPRINT}/entities/bulk?upsert=true&merge=true"
UNDOCUMENTED = {429, 500, 502, 503}
ALICE = ("alice", "alice-secret")

checked: set[tuple[str, int]] = set()  # (route, status) pairs validated against the spec in this run


def spec_problems(route: str, status: int, body: Any) -> list[str]:
    path = {"token": TOKEN_PATH, "search": SEARCH_PATH, "bulk": BULK_PATH}[route]
    try:
        validator = response_validator(path, status)
    except KeyError:
        assert status in UNDOCUMENTED, f"{route} answered {status}, which its spec does not document"
        validator = response_validator(path, 422)  # Port's error shape, as the spec gives it for this route
    checked.add((route, status))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]


def spec_checked(response: httpx2.Response) -> None:
    route, _ = _match(response.request.method, response.request.url.path)
    if route is None:
        return
    response.read()
    assert response.headers["content-type"].startswith("application/json")
    problems = spec_problems(route, response.status_code, response.json())
    assert not problems, f"{route} {response.status_code} does not match the spec: {problems}"


@pytest.fixture(scope="module")
def running_double() -> Iterator[PortDouble]:
    with PortDouble() as d:
        yield d


@pytest.fixture
def double(running_double: PortDouble) -> Iterator[PortDouble]:
    """One running double for the module, reset for each test (starting and stopping one costs ~0.2 s)."""
    running_double.reset()
    running_double.add_client("alice", "alice-secret")
    yield running_double
    assert not running_double.internal_errors, running_double.internal_errors


@pytest.fixture
def http(double: PortDouble) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=double.base_url, timeout=10, event_hooks={"response": [spec_checked]}) as client:
        yield client


def login(http: httpx2.Client, credentials: tuple[str, str] = ALICE) -> dict[str, str]:
    client_id, secret = credentials
    r = http.post(TOKEN_PATH, json={"clientId": client_id, "clientSecret": secret})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['accessToken']}"}


def search(http: httpx2.Client, headers: dict[str, str], body: dict[str, Any], bp: str = BP) -> httpx2.Response:
    return http.post(f"/v1/blueprints/{bp}/entities/search", json=body, headers=headers)


def ids(response: httpx2.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [e["identifier"] for e in response.json()["entities"]]


def seed(double: PortDouble, n: int, bp: str = BP) -> list[str]:
    names = [f"srv-{i:03d}" for i in range(n)]
    for name in names:
        double.upsert_entity(bp, mcp_server_entity(name, f"https://{name}.example.com/mcp", ["*"], title=name))
    return names


# ---------------------------------------------------------------------------------------------------------------------
# The spec itself
# ---------------------------------------------------------------------------------------------------------------------


def test_spec_documents_these_statuses_and_no_429_or_5xx() -> None:
    paths = load_spec()["paths"]
    documented = {
        p: sorted(int(s) for s in paths[p]["post"]["responses"]) for p in (TOKEN_PATH, SEARCH_PATH, BULK_PATH)
    }
    assert documented == {
        TOKEN_PATH: [200, 401, 404, 413, 422],
        SEARCH_PATH: [200, 401, 404, 413, 422],
        BULK_PATH: [200, 207, 401, 404, 413, 422],
    }
    assert "429" not in json.dumps(load_spec()["paths"])  # no route of the whole spec documents a 429
    assert "ratelimit" not in json.dumps(load_spec()).lower()


def test_response_validation_is_not_vacuous() -> None:
    """The checks above would pass vacuously if a ``$ref`` did not resolve; these bodies must be rejected."""
    assert not spec_problems("search", 200, {"ok": True, "entities": [{"identifier": "a", "properties": {}}]})
    assert spec_problems("search", 200, {"ok": True, "entities": [{"identifier": "a", "blueprint": BP}]})
    assert spec_problems("search", 200, {"ok": True, "entities": [], "cursor": "x"})
    assert spec_problems("search", 200, {"entities": []})
    assert spec_problems("search", 200, {"ok": True, "entities": [{"identifier": "a", "relations": {"r": 1}}]})
    assert spec_problems("bulk", 207, {"ok": False, "entities": [], "errors": [{"identifier": "a", "index": 0}]})
    assert spec_problems("bulk", 200, {"ok": True, "entities": []})
    assert spec_problems("token", 200, {"ok": True, "accessToken": "t", "expiresIn": 1, "tokenType": "Bearer", "x": 1})
    assert spec_problems("token", 401, {"ok": True, "error": "e"})
    assert spec_problems("search", 422, {"ok": False, "error": "e"})  # 422 requires `message`; 401 does not
    assert not spec_problems("search", 401, {"ok": False, "error": "e"})
    assert spec_problems("search", 429, {"ok": False, "error": "e", "message": "m", "retryAfter": 3})


def test_identifier_pattern_needs_unicode_letter_classes() -> None:
    """``\\p{L}`` is why validation uses the ``regex`` module: Python's ``re`` cannot compile the spec's pattern."""
    schema = load_spec()["paths"][BULK_PATH]["post"]["requestBody"]["content"]["application/json"]["schema"]
    pattern = schema["properties"]["entities"]["items"]["properties"]["identifier"]["oneOf"][0]["pattern"]
    assert r"\p{L}" in pattern
    with pytest.raises(re.error):
        re.compile(pattern)
    validator = request_validator(BULK_PATH)
    for good in ["svc", "Ünïcødé-名前", "a.b@c+d:e/f=g_h", "x\\y"]:
        assert validator.is_valid({"entities": [{"identifier": good}]}), good
    for bad in [".", "..", "a b", "", "²", "emoji🙂"]:
        assert not validator.is_valid({"entities": [{"identifier": bad}]}), bad


# ---------------------------------------------------------------------------------------------------------------------
# Every status the double produces, per route, validated against the spec
# ---------------------------------------------------------------------------------------------------------------------


def _produce(double: PortDouble, http: httpx2.Client, route: str, status: int) -> httpx2.Response:
    """Make the double answer ``status`` on ``route`` through its real behaviour (injected only for 429/500)."""
    double.add_client("bob", "bob-secret")
    if route == "token":
        bodies = {
            200: {"clientId": "bob", "clientSecret": "bob-secret"},
            401: {"clientId": "bob", "clientSecret": "wrong"},
            422: {"clientId": "bob"},
        }
        if status == 413:
            return http.post(
                TOKEN_PATH, content=b" " * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"}
            )
        if status in UNDOCUMENTED:
            double.fail_next("token", status=status)
            status = 200
        return http.post(TOKEN_PATH, json=bodies[status])
    headers = login(http, ("bob", "bob-secret"))
    url = SEARCH if route == "search" else BULK
    good: dict[str, Any] = {"query": {"combinator": "and", "rules": []}} if route == "search" else {}
    if route == "bulk":
        good = {"entities": [{"identifier": "ev-1", "title": "t", "properties": {"status": "Completed"}}]}
    if status == 401:
        return http.post(url, json=good, headers={"Authorization": "Bearer not-a-token"})
    if status == 404:
        return http.post(url.replace(BP, "nope").replace(AUDIT_BLUEPRINT, "nope"), json=good, headers=headers)
    if status == 413:
        big = {"entities": [{"identifier": "big", "properties": {"blob": "x" * MAX_BODY_BYTES}}]}
        return http.post(url, json=big, headers=headers)
    if status == 422:
        return http.post(url, json={"limit": 0} if route == "search" else {"entities": []}, headers=headers)
    if status == 207:
        double.fail_bulk_identifiers(["ev-2"])
        good["entities"].append({"identifier": "ev-2", "properties": {}})
    if status in UNDOCUMENTED:
        double.fail_next(route, status=status)
    return http.post(url, json=good, headers=headers)


CASES = [
    *[("token", s) for s in (200, 401, 413, 422, 429, 500)],
    *[("search", s) for s in (200, 401, 404, 413, 422, 429, 500)],
    *[("bulk", s) for s in (200, 207, 401, 404, 413, 422, 429, 500)],
]


@pytest.mark.parametrize(("route", "status"), CASES)
def test_every_status_matches_the_spec(double: PortDouble, http: httpx2.Client, route: str, status: int) -> None:
    response = _produce(double, http, route, status)  # the event hook validates the body against the spec
    assert response.status_code == status, response.text
    assert (route, status) in checked
    body = response.json()
    if status >= 400:
        assert body["ok"] is False and body["error"] and body["message"]


def test_the_only_documented_status_the_double_never_produces_is_404_on_the_token_route() -> None:
    paths = load_spec()["paths"]
    produced = {(r, s) for r, s in CASES}
    missing = {
        (route, int(s))
        for route, path in (("token", TOKEN_PATH), ("search", SEARCH_PATH), ("bulk", BULK_PATH))
        for s in paths[path]["post"]["responses"]
        if (route, int(s)) not in produced
    }
    assert missing == {("token", 404)}


# ---------------------------------------------------------------------------------------------------------------------
# Request bodies: the double answers 422 exactly when the spec rejects the body
# ---------------------------------------------------------------------------------------------------------------------

RULE = {"property": "exposed", "operator": "=", "value": True}
REQUESTS: list[tuple[str, Any, bool]] = [
    ("token", {"clientId": "alice", "clientSecret": "alice-secret"}, True),
    ("token", {"clientId": "alice"}, False),
    ("token", {"clientId": "alice", "clientSecret": "alice-secret", "scope": "x"}, False),
    ("token", {"clientId": 1, "clientSecret": "alice-secret"}, False),
    ("token", [], False),
    ("search", {}, True),
    ("search", {"query": {"combinator": "and", "rules": [RULE]}, "limit": 1000, "include": ["$identifier"]}, True),
    ("search", {"query": {"combinator": "or", "rules": [RULE, {"combinator": "and", "rules": [RULE]}]}}, True),
    ("search", {"query": {"combinator": "and", "rules": [{"property": "x", "operator": "isEmpty"}]}}, True),
    ("search", {"query": {"combinator": "and", "rules": [{"property": "x", "operator": "in", "value": ["a"]}]}}, True),
    ("search", {"query": {"combinator": "xor", "rules": []}}, False),
    ("search", {"query": {"combinator": "and"}}, False),
    ("search", {"query": {"combinator": "and", "rules": [{"property": "x", "operator": "like", "value": "a"}]}}, False),
    (
        "search",
        {"query": {"combinator": "and", "rules": [{"property": "x", "operator": "isEmpty", "value": 1}]}},
        False,
    ),
    ("search", {"limit": 0}, False),
    ("search", {"limit": 1001}, False),
    ("search", {"limit": "10"}, False),
    ("search", {"from": 3}, False),
    ("search", {"unknown": True}, False),
    ("bulk", {"entities": [{"identifier": "a", "properties": {"k": 1}, "relations": {"mcp_server": "srv"}}]}, True),
    ("bulk", {"entities": [{"title": "no identifier: Port generates one"}]}, True),
    ("bulk", {"entities": [{"identifier": "a", "extra": "entity items allow more keys"}]}, True),
    ("bulk", {"entities": []}, False),
    ("bulk", {"entities": [{"identifier": str(i)} for i in range(21)]}, False),
    ("bulk", {"entities": [{"identifier": ".."}]}, False),
    ("bulk", {"entities": [{"identifier": "a b"}]}, False),
    ("bulk", {"entities": [{"identifier": "a", "properties": []}]}, False),
    ("bulk", {"entities": [{"identifier": "a", "relations": {"r": 5}}]}, False),
    ("bulk", {"entities": [{"identifier": "a"}], "more": 1}, False),
    ("bulk", {}, False),
]


@pytest.mark.parametrize(("route", "body", "valid"), REQUESTS)
def test_double_answers_422_exactly_when_the_spec_rejects_the_body(
    double: PortDouble, http: httpx2.Client, route: str, body: Any, valid: bool
) -> None:
    path = {"token": TOKEN_PATH, "search": SEARCH_PATH, "bulk": BULK_PATH}[route]
    assert request_validator(path).is_valid(body) is valid  # the table agrees with the spec
    url = {"token": TOKEN_PATH, "search": SEARCH, "bulk": BULK}[route]
    headers = login(http) if route != "token" else {}
    response = http.post(url, json=body, headers=headers)
    assert (response.status_code == 422) is (not valid), response.text


def test_bad_json_and_missing_bodies_are_422(double: PortDouble, http: httpx2.Client) -> None:
    headers = login(http)
    assert http.post(TOKEN_PATH, content=b"{not json").status_code == 422
    assert http.post(TOKEN_PATH).status_code == 422  # the token route's body is required
    assert http.post(BULK, headers=headers).status_code == 422  # and so is bulk's
    assert http.post(SEARCH, content=b"[", headers=headers).status_code == 422
    assert ids(http.post(SEARCH, headers=headers)) == []  # search's body is optional in the spec


def test_bulk_query_string_is_checked_against_the_spec(double: PortDouble, http: httpx2.Client) -> None:
    headers = login(http)
    url = f"/v1/blueprints/{AUDIT_BLUEPRINT}/entities/bulk"
    body = {"entities": [{"identifier": "e1"}]}
    missing = http.post(url, json=body, headers=headers)  # `upsert` is `required: true` in the spec
    assert missing.status_code == 422 and "upsert" in missing.json()["message"]
    assert http.post(url + "?upsert=yes", json=body, headers=headers).status_code == 422
    assert http.post(url + "?upsert=true&merge=1", json=body, headers=headers).status_code == 422
    assert http.post(url + "?upsert=false", json=body, headers=headers).status_code == 200
    ok = http.post(url + "?upsert=true&merge=false&validation_only=false&run_id=r1", json=body, headers=headers)
    assert ok.status_code == 200


def test_stored_entities_must_be_something_port_could_return(double: PortDouble) -> None:
    with pytest.raises(ValueError, match="not an entity"):
        double.upsert_entity(BP, {"identifier": "a", "blueprint": BP})  # search's entity has no `blueprint` key
    with pytest.raises(ValueError, match="not an entity"):
        double.upsert_entity(BP, {"identifier": "a b"})
    with pytest.raises(ValueError, match="not an entity"):
        double.upsert_entity(BP, {"title": "no identifier"})


# ---------------------------------------------------------------------------------------------------------------------
# Auth
# ---------------------------------------------------------------------------------------------------------------------


def test_token_response_and_use(double: PortDouble, http: httpx2.Client) -> None:
    r = http.post(TOKEN_PATH, json={"clientId": "alice", "clientSecret": "alice-secret"})
    body = r.json()
    assert body["ok"] is True and body["tokenType"] == "Bearer" and body["expiresIn"] == DEFAULT_EXPIRES_IN == 10800
    assert body["accessToken"].count(".") == 2  # JWT-shaped, like Port's
    headers = {"Authorization": f"Bearer {body['accessToken']}"}
    assert ids(search(http, headers, {})) == []
    assert search(http, {}, {}).status_code == 401  # no header
    assert search(http, {"Authorization": body["accessToken"]}, {}).status_code == 401  # no "Bearer"
    assert search(http, {"Authorization": "Bearer forged"}, {}).status_code == 401
    assert http.post(TOKEN_PATH, json={"clientId": "mallory", "clientSecret": "alice-secret"}).status_code == 401


def test_tokens_expire_on_the_doubles_clock(double: PortDouble, http: httpx2.Client) -> None:
    double.expires_in = 600
    headers = login(http)
    assert http.post(TOKEN_PATH, json={"clientId": "alice", "clientSecret": "alice-secret"}).json()["expiresIn"] == 600
    double.advance(599)
    assert search(http, headers, {}).status_code == 200
    double.advance(2)
    expired = search(http, headers, {})
    assert expired.status_code == 401 and expired.json()["error"] == "token_expired"
    assert search(http, login(http), {}).status_code == 200  # a renewed token works


def test_tokens_expire_in_real_time(double: PortDouble, http: httpx2.Client) -> None:
    double.expires_in = 0.2
    headers = login(http)
    deadline = time.monotonic() + 5
    while (status := search(http, headers, {}).status_code) == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert status == 401


def test_expire_all_tokens(double: PortDouble, http: httpx2.Client) -> None:
    double.add_client("bob", "bob-secret")
    a, b = login(http), login(http, ("bob", "bob-secret"))
    double.expire_all_tokens()
    assert search(http, a, {}).status_code == 401 and search(http, b, {}).status_code == 401
    assert search(http, login(http), {}).status_code == 200
    renewals = [r for r in double.requests_to("token") if r.status == 200]
    assert len(renewals) == 3


def test_rbac_two_credentials_see_different_entities(double: PortDouble, http: httpx2.Client) -> None:
    seed(double, 6)
    double.add_client("team-a", "s-a", visible={"srv-000", "srv-002", "srv-004"})
    double.add_client("team-b", "s-b", visible=lambda e: e["identifier"] in {"srv-001", "srv-002"})
    assert ids(search(http, login(http, ("team-a", "s-a")), {})) == ["srv-000", "srv-002", "srv-004"]
    assert ids(search(http, login(http, ("team-b", "s-b")), {})) == ["srv-001", "srv-002"]
    assert len(ids(search(http, login(http), {}))) == 6  # alice has no restriction
    paged = search(http, login(http, ("team-a", "s-a")), {"limit": 2})
    assert ids(paged) == ["srv-000", "srv-002"] and "next" in paged.json()


# ---------------------------------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------------------------------


def test_pagination_across_pages(double: PortDouble, http: httpx2.Client) -> None:
    names = seed(double, 25)
    headers = login(http)
    seen: list[str] = []
    body: dict[str, Any] = {"query": {"combinator": "and", "rules": []}, "limit": 10}
    sizes = []
    for _ in range(10):
        page = search(http, headers, body).json()
        sizes.append(len(page["entities"]))
        seen += [e["identifier"] for e in page["entities"]]
        if "next" not in page:
            break
        body["from"] = page["next"]
    assert sizes == [10, 10, 5]
    assert seen == names


def test_pagination_default_limit_and_exact_fit(double: PortDouble, http: httpx2.Client) -> None:
    seed(double, 201)
    headers = login(http)
    first = search(http, headers, {}).json()
    assert len(first["entities"]) == 200 and "next" in first  # the spec's default limit
    assert len(search(http, headers, {"from": first["next"]}).json()["entities"]) == 1
    exact = search(http, headers, {"limit": 201}).json()
    assert len(exact["entities"]) == 201 and "next" not in exact  # no `next` when nothing remains
    assert search(http, headers, {"from": "bm90IGEgY3Vyc29y"}).status_code == 422


def test_pagination_survives_changes_between_pages(double: PortDouble, http: httpx2.Client) -> None:
    seed(double, 6)
    headers = login(http)
    page = search(http, headers, {"limit": 3}).json()
    double.delete_entity(BP, "srv-001")  # already returned
    double.delete_entity(BP, "srv-003")  # not yet returned
    rest = search(http, headers, {"limit": 3, "from": page["next"]})
    assert ids(rest) == ["srv-004", "srv-005"]


def _rule(prop: str, op: str, value: Any = None) -> dict[str, Any]:
    return (
        {"property": prop, "operator": op}
        if op in ("isEmpty", "isNotEmpty")
        else {"property": prop, "operator": op, "value": value}
    )


def _and(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"combinator": "and", "rules": list(rules)}


def _or(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"combinator": "or", "rules": list(rules)}


RULE_CASES: list[tuple[dict[str, Any], list[str]]] = [
    (_and(_rule("exposed", "=", True)), ["docs", "github"]),
    (_and(_rule("exposed", "!=", True)), ["legacy", "notion"]),
    (_and(_rule("exposed", "=", 1)), []),  # JSON true is not 1
    (_and(_rule("auth_type", "=", None)), ["notion"]),  # absent counts as null
    (_and(_rule("$identifier", "in", ["docs", "notion", "nope"])), ["docs", "notion"]),
    (_and(_rule("$identifier", "notIn", ["docs", "notion"])), ["github", "legacy"]),
    (_and(_rule("$title", "=", "GitHub")), ["github"]),
    (_and(_rule("$blueprint", "=", BP)), ["docs", "github", "legacy", "notion"]),
    (_and(_rule("$blueprint", "=", "other")), []),
    (_and(_rule("url", "contains", "example.com")), ["docs", "legacy"]),
    (_and(_rule("allowed_tools", "contains", "search")), ["docs", "github"]),
    (_and(_rule("allowed_tools", "containsAny", ["fetch", "get_me"])), ["docs", "github"]),
    (_and(_rule("allowed_tools", "in", ["*"])), ["legacy", "notion"]),
    (_and(_rule("url", "beginsWith", "https://")), ["docs", "github", "notion"]),
    (_and(_rule("url", "endsWith", "/mcp/")), ["github"]),
    (_and(_rule("tool_pins", "isEmpty")), ["docs", "legacy", "notion"]),
    (_and(_rule("tool_pins", "isNotEmpty")), ["github"]),
    (_and(_rule("description", "isEmpty")), ["legacy"]),
    (_and(_rule("priority", ">", 1)), ["github", "notion"]),
    (_and(_rule("priority", "<=", 1)), ["docs"]),
    (_and(_rule("mcp_owner", "=", "team-x")), ["docs"]),  # a relation by identifier
    (
        _or(_rule("$identifier", "=", "docs"), _and(_rule("exposed", "=", False), _rule("auth_type", "=", "none"))),
        ["docs", "legacy"],
    ),
    (
        _and(_rule("exposed", "=", True), _or(_rule("auth_type", "=", "oauth"), _rule("auth_type", "=", "api_key"))),
        ["docs", "github"],
    ),
    (_and(), ["docs", "github", "legacy", "notion"]),
    (_or(), ["docs", "github", "legacy", "notion"]),
]


@pytest.mark.parametrize(("query", "expected"), RULE_CASES)
def test_rules(double: PortDouble, http: httpx2.Client, query: dict[str, Any], expected: list[str]) -> None:
    docs = mcp_server_entity(
        "docs",
        "https://docs.example.com/mcp",
        ["search", "fetch"],
        title="Docs",
        auth_type="api_key",
        description="Docs",
    )
    docs["properties"]["priority"] = 1
    docs["relations"] = {"mcp_owner": "team-x"}
    github = mcp_server_entity(
        "github",
        "https://api.githubcopilot.com/mcp/",
        ["get_me", "search"],
        title="GitHub",
        auth_type="oauth",
        tool_pins={"get_me": "ab" * 32},
        description="GH",
    )
    github["properties"]["priority"] = 2
    legacy = mcp_server_entity(
        "legacy", "http://10.0.0.5:8080/mcp?x=example.com", ["*"], auth_type="none", exposed=False, description=""
    )
    notion = mcp_server_entity("notion", "https://mcp.notion.com/mcp", ["*"], exposed=None, description="Notion")
    notion["properties"]["priority"] = 3
    for entity in (docs, github, legacy, notion):
        double.upsert_entity(BP, entity)
    assert request_validator(SEARCH_PATH).is_valid({"query": query})
    assert ids(search(http, login(http), {"query": query})) == expected


def test_rules_the_double_cannot_evaluate_are_loud(double: PortDouble, http: httpx2.Client) -> None:
    seed(double, 1)
    query = _and({"property": "$createdAt", "operator": "between", "value": {"preset": "lastWeek"}})
    assert request_validator(SEARCH_PATH).is_valid({"query": query})  # valid for Port
    response = search(http, login(http), {"query": query})
    assert response.status_code == 500 and "not supported by the stand-in" in response.json()["message"]
    assert double.internal_errors
    double.internal_errors.clear()


def test_include_and_exclude(double: PortDouble, http: httpx2.Client) -> None:
    entity = mcp_server_entity("docs", "https://d/mcp", ["a"], title="Docs", description="d")
    entity["relations"] = {"owner": "team-x"}
    double.upsert_entity(BP, entity)
    headers = login(http)
    only = search(http, headers, {"include": ["$identifier", "url", "owner"]}).json()["entities"]
    assert only == [{"identifier": "docs", "properties": {"url": "https://d/mcp"}, "relations": {"owner": "team-x"}}]
    without = search(http, headers, {"exclude": ["$title", "description", "owner"]}).json()["entities"][0]
    assert "title" not in without and "description" not in without["properties"] and without["relations"] == {}
    assert without["properties"]["allowed_tools"] == ["a"]


def test_unknown_blueprint_is_404(double: PortDouble, http: httpx2.Client) -> None:
    response = search(http, login(http), {}, bp="no_such_blueprint")
    assert response.status_code == 404 and "no_such_blueprint" in response.json()["message"]
    double.add_blueprint("no_such_blueprint")
    assert ids(search(http, login(http), {}, bp="no_such_blueprint")) == []


# ---------------------------------------------------------------------------------------------------------------------
# Bulk
# ---------------------------------------------------------------------------------------------------------------------


def _event(identifier: str, **properties: Any) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "title": "docs__search",
        "properties": properties,
        "relations": {"mcp_server": "docs"},
    }


def test_bulk_creates_overwrites_and_merges(double: PortDouble, http: httpx2.Client) -> None:
    headers = login(http)
    url = f"/v1/blueprints/{AUDIT_BLUEPRINT}/entities/bulk"
    first = http.post(
        url + "?upsert=true&merge=true",
        json={"entities": [_event("e1", status="Completed", duration_ms=5), _event("e2")]},
        headers=headers,
    )
    assert first.status_code == 200
    assert first.json() == {
        "ok": True,
        "entities": [
            {"created": True, "identifier": "e1", "index": 0},
            {"created": True, "identifier": "e2", "index": 1},
        ],
        "errors": [],
    }
    merged = http.post(
        url + "?upsert=true&merge=true", json={"entities": [_event("e1", status="Failed")]}, headers=headers
    )
    assert merged.json()["entities"] == [{"created": False, "identifier": "e1", "index": 0}]
    assert double.entities(AUDIT_BLUEPRINT)["e1"]["properties"] == {"status": "Failed", "duration_ms": 5}
    http.post(url + "?upsert=true", json={"entities": [_event("e1", error="boom")]}, headers=headers)
    assert double.entities(AUDIT_BLUEPRINT)["e1"]["properties"] == {"error": "boom"}  # upsert without merge replaces
    conflict = http.post(url + "?upsert=false", json={"entities": [_event("e1"), _event("e3")]}, headers=headers)
    assert conflict.status_code == 207
    assert conflict.json()["errors"][0]["statusCode"] == 409 and conflict.json()["errors"][0]["index"] == 0
    assert set(double.entities(AUDIT_BLUEPRINT)) == {"e1", "e2", "e3"}
    assert double.received_counts(AUDIT_BLUEPRINT) == {"e1": 4, "e2": 1, "e3": 1}


def test_bulk_generates_missing_identifiers_and_validation_only_stores_nothing(
    double: PortDouble, http: httpx2.Client
) -> None:
    headers = login(http)
    made = http.post(BULK, json={"entities": [{"title": "anonymous"}]}, headers=headers).json()["entities"][0]
    assert made["created"] and made["identifier"] in double.entities(AUDIT_BLUEPRINT)
    url = f"/v1/blueprints/{AUDIT_BLUEPRINT}/entities/bulk?upsert=true&validation_only=true"
    assert http.post(url, json={"entities": [_event("dry")]}, headers=headers).status_code == 200
    assert "dry" not in double.entities(AUDIT_BLUEPRINT)


def test_bulk_limits(double: PortDouble, http: httpx2.Client) -> None:
    headers = login(http)
    twenty = {"entities": [_event(f"e{i}") for i in range(20)]}
    assert http.post(BULK, json=twenty, headers=headers).status_code == 200
    too_many = http.post(BULK, json={"entities": [_event(f"x{i}") for i in range(21)]}, headers=headers)
    assert too_many.status_code == 422 and "entities" in too_many.json()["message"]
    blob = "x" * (MAX_BODY_BYTES // 4)
    too_big = {"entities": [_event(f"b{i}", arguments=blob) for i in range(5)]}
    assert len(json.dumps(too_big)) > MAX_BODY_BYTES
    assert http.post(BULK, json=too_big, headers=headers).status_code == 413
    fits = {"entities": [_event("fits", arguments="x" * (MAX_BODY_BYTES - 200))]}
    assert len(json.dumps(fits)) <= MAX_BODY_BYTES
    assert http.post(BULK, json=fits, headers=headers).status_code == 200
    assert not {"x0", "b0"} & set(double.entities(AUDIT_BLUEPRINT))


def test_bulk_partial_failure_then_retry(double: PortDouble, http: httpx2.Client) -> None:
    headers = login(http)
    double.fail_bulk_identifiers(["e2", "e4"])
    batch = {"entities": [_event(f"e{i}") for i in range(5)]}
    response = http.post(BULK, json=batch, headers=headers)
    assert response.status_code == 207
    body = response.json()
    assert [e["identifier"] for e in body["entities"]] == ["e0", "e1", "e3"]
    assert [(e["identifier"], e["index"], e["statusCode"]) for e in body["errors"]] == [("e2", 2, 500), ("e4", 4, 500)]
    assert set(double.entities(AUDIT_BLUEPRINT)) == {"e0", "e1", "e3"}
    retry = http.post(
        BULK, json={"entities": [e for e in batch["entities"] if e["identifier"] in ("e2", "e4")]}, headers=headers
    )
    assert retry.status_code == 200  # the failure was once
    assert set(double.entities(AUDIT_BLUEPRINT)) == {f"e{i}" for i in range(5)}
    assert double.received_counts(AUDIT_BLUEPRINT) == {"e0": 1, "e1": 1, "e2": 2, "e3": 1, "e4": 2}
    assert [r.outcome for r in double.received(AUDIT_BLUEPRINT)][:5] == [
        "created",
        "created",
        "failed",
        "created",
        "failed",
    ]


def test_bulk_validates_against_a_blueprint_schema(double: PortDouble, http: httpx2.Client) -> None:
    double.add_blueprint(MCP_REGISTRY_BLUEPRINT, schema=MCP_REGISTRY_SCHEMA)
    headers = login(http)
    url = f"/v1/blueprints/{MCP_REGISTRY_BLUEPRINT}/entities/bulk?upsert=true"
    good = registry_entity("fs", "https://fs.example.com/mcp", ["read_file"])
    bad = registry_entity("bad", None, status="approved-ish")
    response = http.post(url, json={"entities": [good, bad]}, headers=headers)
    assert response.status_code == 207
    assert response.json()["errors"][0]["identifier"] == "bad" and response.json()["errors"][0]["statusCode"] == 422
    assert set(double.entities(MCP_REGISTRY_BLUEPRINT)) == {"fs"}


# ---------------------------------------------------------------------------------------------------------------------
# Fault injection
# ---------------------------------------------------------------------------------------------------------------------


def test_fail_next_counts_and_scopes_by_route(double: PortDouble, http: httpx2.Client) -> None:
    headers = login(http)
    double.fail_next("search", status=500, times=2)
    assert http.post(BULK, json={"entities": [_event("e")]}, headers=headers).status_code == 200  # other route
    assert [search(http, headers, {}).status_code for _ in range(3)] == [500, 500, 200]
    double.fail_next(status=503)  # any route
    assert http.post(TOKEN_PATH, json={"clientId": "alice", "clientSecret": "alice-secret"}).status_code == 503
    assert search(http, headers, {}).status_code == 200
    with pytest.raises(ValueError, match="unknown route"):
        double.fail_next("serach")


def test_429_carries_ports_rate_limit_headers(double: PortDouble, http: httpx2.Client) -> None:
    headers = login(http)
    double.fail_next("bulk", status=429, reset=7)
    limited = http.post(BULK, json={"entities": [_event("e")]}, headers=headers)
    assert limited.status_code == 429
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert limited.headers["x-ratelimit-reset"] == "7"  # seconds until the window resets
    assert int(limited.headers["x-ratelimit-limit"]) > 0 and int(limited.headers["x-ratelimit-period"]) > 0
    assert "retry-after" not in limited.headers  # Port documents only the x-ratelimit-* headers
    assert "e" not in double.entities(AUDIT_BLUEPRINT)
    assert http.post(BULK, json={"entities": [_event("e")]}, headers=headers).status_code == 200


def test_429_reset_and_retry_timing_is_observable(double: PortDouble, http: httpx2.Client) -> None:
    headers = login(http)
    double.fail_next("search", status=429, reset=0.2)
    first = search(http, headers, {})
    wait = float(first.headers["x-ratelimit-reset"])
    time.sleep(wait)  # what a client honouring the header does
    assert search(http, headers, {}).status_code == 200
    a, b = double.requests_to("search")[-2:]
    assert (a.status, b.status) == (429, 200) and b.timestamp - a.timestamp >= wait


def test_real_rate_limiter(http: httpx2.Client, double: PortDouble) -> None:
    double.rate_limit = (3, 60)
    headers = login(http)  # 1
    seen = [search(http, headers, {}) for _ in range(3)]  # 2, 3, 4th is over
    assert [r.status_code for r in seen] == [200, 200, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in seen] == ["1", "0", "0"]
    assert all(r.headers["x-ratelimit-period"] == "60" for r in seen)
    assert 0 < int(seen[-1].headers["x-ratelimit-reset"]) <= 60
    double.advance(60)
    assert search(http, headers, {}).status_code == 200


def test_injected_401_and_delay(double: PortDouble, http: httpx2.Client) -> None:
    headers = login(http)
    double.fail_next("search", status=401)
    assert search(http, headers, {}).status_code == 401
    assert search(http, headers, {}).status_code == 200
    double.slow_next("search", 0.3)
    started = time.monotonic()
    assert search(http, headers, {}).status_code == 200
    assert time.monotonic() - started >= 0.3
    double.fail_next("search", status=502, delay=0.1)
    started = time.monotonic()
    assert search(http, headers, {}).status_code == 502
    assert time.monotonic() - started >= 0.1
    with pytest.raises(httpx2.ReadTimeout):
        double.slow_next("search", 3)
        with httpx2.Client(base_url=double.base_url, timeout=0.2) as impatient:
            impatient.post(SEARCH, json={}, headers=headers)
    double.clear_faults()


def test_down_and_back_on_the_same_port() -> None:
    with PortDouble() as double, httpx2.Client(base_url=double.base_url, timeout=10) as http:
        double.add_client(*ALICE)
        _down_and_back(double, http)
        assert not double.internal_errors


def _down_and_back(double: PortDouble, http: httpx2.Client) -> None:
    seed(double, 2)
    headers = login(http)
    port = double.port
    double.stop()
    with pytest.raises(httpx2.ConnectError):
        search(http, headers, {})
    double.start()
    assert double.port == port and double.base_url == f"http://127.0.0.1:{port}"
    assert ids(search(http, headers, {})) == ["srv-000", "srv-001"]  # state and tokens survive

    # A delayed answer in flight does not hold the shutdown.
    double.slow_next("search", 30)
    arrived = len(double.requests_to("search")) + 1
    outcome: list[object] = []

    def slow_call() -> None:
        try:
            with httpx2.Client(base_url=double.base_url, timeout=10) as client:
                outcome.append(client.post(SEARCH, json={}, headers=headers).status_code)
        except httpx2.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=slow_call)
    caller.start()
    deadline = time.monotonic() + 5
    while len(double.requests_to("search")) < arrived and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    double.stop()
    assert time.monotonic() - started < 5
    caller.join(10)
    assert len(outcome) == 1  # answered early or cut off, but not left hanging
    double.start()


# ---------------------------------------------------------------------------------------------------------------------
# The request log, async use, helpers
# ---------------------------------------------------------------------------------------------------------------------


def test_request_log(double: PortDouble, http: httpx2.Client) -> None:
    headers = login(http)
    search(http, headers, {"limit": 5})
    http.post(BULK, json={"entities": [_event("e")]}, headers=headers)
    token, found, bulk = double.requests
    assert (token.route, token.status, token.has_authorization, token.client_id) == ("token", 200, False, None)
    assert token.json == {"clientId": "alice", "clientSecret": "alice-secret"}
    assert (found.method, found.path, found.route, found.blueprint) == ("POST", SEARCH, "search", BP)
    assert (found.status, found.has_authorization, found.client_id, found.json) == (200, True, "alice", {"limit": 5})
    assert found.token == headers["Authorization"].removeprefix("Bearer ")
    assert bulk.query == {"upsert": "true", "merge": "true"} and bulk.blueprint == AUDIT_BLUEPRINT
    assert token.timestamp <= found.timestamp <= bulk.timestamp
    http.get("/v1/blueprints")  # not a route of the double
    assert double.requests[-1].route is None and double.requests[-1].status == 404
    double.clear_requests()
    assert double.requests == []


@pytest.mark.anyio
async def test_async_clients_work_concurrently() -> None:
    with PortDouble() as double:
        double.add_client("alice", "alice-secret")
        seed(double, 3)
        double.slow_next("search", 0.3, times=5)
        async with httpx2.AsyncClient(base_url=double.base_url, timeout=10) as client:
            token = (await client.post(TOKEN_PATH, json={"clientId": "alice", "clientSecret": "alice-secret"})).json()
            headers = {"Authorization": f"Bearer {token['accessToken']}"}
            results: list[httpx2.Response] = []

            async def one() -> None:
                results.append(await client.post(SEARCH, json={}, headers=headers))

            started = time.monotonic()
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    for _ in range(5):
                        tg.start_soon(one)
            assert time.monotonic() - started < 1.2  # served concurrently, not one after another
        for r in results:
            assert r.status_code == 200 and not spec_problems("search", 200, r.json())
        assert not double.internal_errors


def test_mcp_server_entity_follows_design(double: PortDouble, http: httpx2.Client) -> None:
    entity = mcp_server_entity(
        "github",
        "https://api.githubcopilot.com/mcp/",
        ["get_me", "search_code"],
        title="GitHub",
        description="Code search",
        auth_type="oauth",
        oauth_config={"client_id": "Iv1.0123", "scopes": ["repo"]},
        tool_pins={"get_me": "0" * 64},
    )
    assert entity == {
        "identifier": "github",
        "title": "GitHub",
        "properties": {
            "url": "https://api.githubcopilot.com/mcp/",
            "allowed_tools": ["get_me", "search_code"],
            "exposed": True,
            "auth_type": "oauth",
            "oauth_config": {"client_id": "Iv1.0123", "scopes": ["repo"]},
            "description": "Code search",
            "tool_pins": {"get_me": "0" * 64},
        },
        "relations": {},
    }
    minimal = mcp_server_entity("docs", "https://d/mcp", ["*"])
    assert minimal["properties"] == {"url": "https://d/mcp", "allowed_tools": ["*"], "exposed": True}
    assert "title" not in minimal and "auth_type" not in minimal["properties"]  # absent = oauth per DESIGN
    double.upsert_entity(BP, entity)
    assert search(http, login(http), {}).json()["entities"] == [entity]


def test_registry_entity_follows_ports_guide(double: PortDouble, http: httpx2.Client) -> None:
    assert MCP_REGISTRY_SCHEMA["required"] == ["type", "status", "description"]
    assert MCP_REGISTRY_SCHEMA["properties"]["status"]["enum"] == ["approved", "pending", "rejected"]
    assert set(MCP_REGISTRY_SCHEMA["properties"]) == {
        "type", "status", "description", "labels", "installation_instructions",
        "repository_url", "endpoint", "command", "tools", "prompts",
    }  # fmt: skip
    assert {k: v["target"] for k, v in MCP_REGISTRY_RELATIONS.items()} == {
        "owningTeam": "_team",
        "requestedBy": "_user",
    }
    entity = registry_entity(
        "filesystem-mcp", "https://fs.example.com/mcp", ["read_file", "write_file"], title="Filesystem MCP",
        labels=["files"], requested_by="dev@example.com",
    )  # fmt: skip
    assert entity["properties"] == {
        "type": "external",
        "status": "approved",
        "description": "",
        "endpoint": "https://fs.example.com/mcp",
        "tools": ["read_file", "write_file"],
        "labels": ["files"],
    }
    assert entity["relations"] == {"requestedBy": "dev@example.com"}
    double.add_blueprint(MCP_REGISTRY_BLUEPRINT, schema=MCP_REGISTRY_SCHEMA)
    double.upsert_entity(MCP_REGISTRY_BLUEPRINT, entity)
    double.upsert_entity(MCP_REGISTRY_BLUEPRINT, registry_entity("wip", None, status="pending"))
    with pytest.raises(ValueError, match="status"):
        double.upsert_entity(MCP_REGISTRY_BLUEPRINT, registry_entity("x", None, status="maybe"))
    approved = search(http, login(http), {"query": _and(_rule("status", "=", "approved"))}, bp=MCP_REGISTRY_BLUEPRINT)
    assert ids(approved) == ["filesystem-mcp"]


def test_the_vendored_spec_matches_the_published_one() -> None:
    """The copy in tests/ is Port's published spec; where the team's shared/ copy is present, they must agree."""
    from port_double import SHARED_SPEC, VENDORED_SPEC

    if not SHARED_SPEC.is_file():
        pytest.skip(f"no shared copy of the spec at {SHARED_SPEC} to compare with")
    assert VENDORED_SPEC.read_bytes() == SHARED_SPEC.read_bytes(), "tests/port-openapi.json drifted from shared/"
