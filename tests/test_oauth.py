"""OAuth end to end: a real authorization server (``mcp.server.auth``, auto-approving) on 127.0.0.1, ``$BROWSER`` set
to a fake browser that follows the authorize URL, and the bridge spawned as the IDE and the user run it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from harness import bridge_client, bridge_env, raw_call, tool_names, write_config
from oauth_harness import LocalOAuthUpstream, browser_env, browser_opens

KEYRING = "keyrings.alt.file.PlaintextKeyring"


class Setup:
    """One OAuth upstream, a config pointing at it, and a shared home/keyring for every bridge process."""

    def __init__(self, tmp_path: Path, upstream: LocalOAuthUpstream, **config: Any) -> None:
        self.tmp = tmp_path
        self.upstream = upstream
        self.home = tmp_path / "home"
        self.home.mkdir(exist_ok=True)
        self.browser_log = tmp_path / "browser.jsonl"
        self.config = write_config(
            tmp_path / "config.yaml",
            {"secure": {"url": upstream.url, "allowed_tools": ["*"], "auth": {"type": "oauth"}}},
            timeouts={"connect": 5, "startup_wait": 5, "login": 20},
            **config,
        )

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **browser_env(self.browser_log),
            "PYTHON_KEYRING_BACKEND": KEYRING,
            "XDG_DATA_HOME": str(self.tmp / "xdg-data"),
            **extra,
        }

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mcp_bridge", *args, "--config", str(self.config)],
            env=bridge_env(self.home, self.env(**env)),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def opens(self) -> int:
        return len(browser_opens(self.browser_log))

    def keyring_blob(self) -> dict[str, Any]:
        """What the bridge stored in the (file-backed test) keyring for this server."""
        import os

        from keyrings.alt.file import PlaintextKeyring

        old = os.environ.get("XDG_DATA_HOME")
        os.environ["XDG_DATA_HOME"] = str(self.tmp / "xdg-data")
        try:
            raw = PlaintextKeyring().get_password("mcp-bridge", f"oauth:{self.upstream.url}")
        finally:
            if old is None:
                os.environ.pop("XDG_DATA_HOME")
            else:
                os.environ["XDG_DATA_HOME"] = old
        assert raw, "nothing stored in the keyring"
        return json.loads(raw)  # type: ignore[no-any-return]


@pytest.fixture
def short_lived(tmp_path: Path) -> Iterator[LocalOAuthUpstream]:
    with LocalOAuthUpstream("secure", tmp_path, token_lifetime=5) as upstream:
        yield upstream


@pytest.mark.anyio
async def test_login_then_serve_refreshes_expired_tokens_without_a_browser_also_after_a_restart(
    tmp_path: Path, short_lived: LocalOAuthUpstream
) -> None:
    s = Setup(tmp_path, short_lived)
    login = s.run("login", "secure")
    assert login.returncode == 0, login.stderr
    assert "secure: logged in" in login.stdout and "Opening a browser" in login.stderr
    assert s.opens() == 1 and short_lived.stats()["authorize"] == 1

    async with bridge_client(s.config, s.home, env=s.env()) as client:
        assert (await raw_call(client, "secure__echo", {"text": "a"}))["content"][0]["text"] == "secure: a"
        await anyio.sleep(6)  # the 5 s access token has expired
        assert (await raw_call(client, "secure__echo", {"text": "b"}))["content"][0]["text"] == "secure: b"
    await anyio.sleep(6)  # expired again, and this time a fresh process has to notice it from storage
    async with bridge_client(s.config, s.home, env=s.env()) as client:
        assert (await raw_call(client, "secure__echo", {"text": "c"}))["content"][0]["text"] == "secure: c"

    stats = short_lived.stats()
    assert stats["authorize"] == 1 and s.opens() == 1  # never a second browser login
    assert stats["token"].get("refresh_token", 0) >= 2


@pytest.mark.anyio
async def test_three_bridges_started_together_cause_exactly_one_authorization(tmp_path: Path) -> None:
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream)
        results: list[str] = []

        async def one_ide(i: int) -> None:
            async with bridge_client(s.config, s.home, env=s.env(), stderr_path=tmp_path / f"bridge{i}.log") as c:
                with anyio.fail_after(60):
                    while "secure__echo" not in await tool_names(c):
                        await anyio.sleep(0.2)
                got = await raw_call(c, "secure__echo", {"text": str(i)})
                results.append(got["content"][0]["text"])

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(one_ide, i)
        stats = upstream.stats()
    assert sorted(results) == ["secure: 0", "secure: 1", "secure: 2"]
    assert stats["authorize"] == 1 and s.opens() == 1


@pytest.mark.anyio
async def test_a_server_that_forgot_the_client_gets_a_fresh_registration(tmp_path: Path) -> None:
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream)
        assert s.run("login", "secure").returncode == 0
        assert upstream.forget_clients(tokens=True) == 1  # the server loses every client and token
        again = s.run("login", "secure")
        assert again.returncode == 0, again.stderr
        stats = upstream.stats()
    assert stats["register"] == 2 and stats["authorize"] == 2  # re-registered, then one more login
    assert stats["token_errors"]  # the dead client was rejected once, not forever


def test_registration_without_an_auth_method_still_authenticates(tmp_path: Path) -> None:
    with LocalOAuthUpstream("secure", tmp_path, auth_method_in_registration=False, token_lifetime=2) as upstream:
        s = Setup(tmp_path, upstream)
        login = s.run("login", "secure")
        assert login.returncode == 0, login.stderr
        time.sleep(3)  # expired: the call below must refresh, which needs the client secret
        called = s.run("call", "secure__echo", "--args", '{"text": "x"}')
        stats = upstream.stats()
    assert called.returncode == 0, called.stderr
    assert stats["token"].get("refresh_token", 0) >= 1 and stats["authorize"] == 1


def test_logout_revokes_and_the_next_call_needs_a_login(tmp_path: Path) -> None:
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream)
        assert s.run("login", "secure").returncode == 0
        assert s.run("call", "secure__echo", "--args", '{"text": "x"}').returncode == 0
        out = s.run("logout", "secure")
        assert out.returncode == 0 and "logged out" in out.stdout and "revoked" in out.stdout
        status = json.loads(s.run("status", "--json").stdout)
        call = s.run("call", "secure__echo", "--args", '{"text": "x"}')
        stats = upstream.stats()
    (row,) = status["servers"]
    assert row["state"] == "needs_auth" and "mcp-bridge login secure" in row["last_error"]
    assert call.returncode == 1 and "login" in call.stderr
    assert stats["revoke"] >= 1
    assert s.opens() == 1  # status and call never open a browser


def test_tokens_appear_in_no_log_stdout_or_file_under_the_bridge_home(tmp_path: Path) -> None:
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream)
        outputs = [s.run("login", "secure", "--log-level", "debug", "--log-file", str(s.home / "bridge.log"))]
        outputs.append(s.run("call", "secure__echo", "--args", "{}", "--log-level", "debug"))
        outputs.append(s.run("status", "--json", "--log-level", "debug"))
    stored = s.keyring_blob()
    secrets = [stored["tokens"]["access_token"], stored["tokens"]["refresh_token"]]
    assert all(len(x) > 10 for x in secrets)
    texts = [o.stdout + o.stderr for o in outputs]
    texts += [p.read_text(errors="replace") for p in s.home.rglob("*") if p.is_file()]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_tools_and_status_say_a_server_needs_a_login_and_exit_1(tmp_path: Path) -> None:
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream)
        tools = s.run("tools")
        status = s.run("status")
    assert tools.returncode == 1 and "Why the list is empty:" in tools.stdout
    assert "✗ server secure: needs a login" in tools.stdout and "fix: run `mcp-bridge login secure`" in tools.stdout
    assert status.returncode == 1 and "needs_auth" in status.stdout
    assert s.opens() == 0  # hand-run commands never open a browser


def test_without_a_keyring_backend_the_error_names_the_options(tmp_path: Path) -> None:
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream)
        status = s.run("status", "--json", PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    (row,) = json.loads(status.stdout)["servers"]
    assert row["state"] == "needs_auth"
    assert "PYTHON_KEYRING_BACKEND" in row["last_error"] and "token_store: file" in row["last_error"]


def test_the_explicit_file_token_store_is_private(tmp_path: Path) -> None:
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream, token_store="file")
        login = s.run("login", "secure", PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
        assert login.returncode == 0, login.stderr
        call = s.run("call", "secure__echo", "--args", "{}", PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    assert call.returncode == 0, call.stderr
    secrets_file = s.home / "oauth-secrets.json"
    assert secrets_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.anyio
async def test_serve_opens_the_browser_once_and_then_announces_the_tools(tmp_path: Path) -> None:
    from harness import Notifications

    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream)
        notes = Notifications()
        async with bridge_client(s.config, s.home, env=s.env(), notifications=notes) as client:
            with anyio.fail_after(30):
                while "secure__echo" not in await tool_names(client):
                    await notes.tools_changed.wait()
                    notes.rearm()
            assert (await raw_call(client, "secure__echo", {"text": "x"}))["content"][0]["text"] == "secure: x"
        assert s.opens() == 1 and upstream.stats()["authorize"] == 1


def test_login_of_an_unknown_or_non_oauth_server_is_a_usage_error(tmp_path: Path) -> None:
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream)
        unknown = s.run("login", "nope")
        assert unknown.returncode == 2 and "not an approved server" in unknown.stderr
    plain = write_config(tmp_path / "plain.yaml", {"p": {"url": "http://127.0.0.1:9/mcp", "allowed_tools": ["*"]}})
    done = subprocess.run(
        [sys.executable, "-m", "mcp_bridge", "login", "p", "--config", str(plain)],
        env=bridge_env(tmp_path / "h2"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "does not use OAuth" in done.stderr


def test_a_manually_registered_client_logs_in_without_registering(tmp_path: Path) -> None:
    import urllib.request

    from harness import free_port

    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        port = free_port()
        body = {
            "redirect_uris": [f"http://127.0.0.1:{port}/callback"],
            "token_endpoint_auth_method": "client_secret_post",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "client_name": "registered by an admin",
        }
        headers = {"content-type": "application/json"}
        request = urllib.request.Request(f"{upstream.issuer}/register", data=json.dumps(body).encode(), headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback test server
            client = json.loads(response.read())
        s = Setup(tmp_path, upstream)
        oauth = {"type": "oauth", "client_id": client["client_id"], "client_secret": "${env:TEST_OAUTH_SECRET}"}
        s.config = write_config(
            tmp_path / "manual.yaml",
            {"secure": {"url": upstream.url, "allowed_tools": ["*"], "auth": {**oauth, "redirect_port": port}}},
            timeouts={"login": 20},
        )
        login = s.run("login", "secure", TEST_OAUTH_SECRET=client["client_secret"])
        call = s.run("call", "secure__echo", "--args", "{}", TEST_OAUTH_SECRET=client["client_secret"])
        stats = upstream.stats()
    assert login.returncode == 0, login.stderr
    assert call.returncode == 0, call.stderr
    assert stats["register"] == 1 and stats["authorize"] == 1  # only the admin's registration
    assert client["client_secret"] not in login.stdout + login.stderr + call.stderr


@pytest.mark.anyio
async def test_serve_does_not_reopen_the_browser_within_the_cooldown(tmp_path: Path) -> None:
    # A "browser" that opens (and is logged) but never logs in: the person walked away.
    idle = tmp_path / "idle_browser.py"
    idle.write_text(
        "import json, os, sys\n"
        "with open(os.environ['FAKE_BROWSER_LOG'], 'a') as f:\n"
        "    f.write(json.dumps({'url': sys.argv[1]}) + '\\n')\n"
    )
    idle_browser = f"{sys.executable} {idle} %s"
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream)
        s.config = write_config(
            tmp_path / "config.yaml",
            {"secure": {"url": upstream.url, "allowed_tools": ["*"], "auth": {"type": "oauth"}}},
            timeouts={"login": 2, "startup_wait": 1},
        )
        env = s.env(BROWSER=idle_browser)
        for _ in range(2):  # two IDE sessions, one after the other
            async with bridge_client(s.config, s.home, env=env) as client:
                assert "secure__echo" not in await tool_names(client)
                with anyio.fail_after(15):
                    while s.opens() == 0:
                        await anyio.sleep(0.1)
                await anyio.sleep(3)  # the login window passes
        status = json.loads(s.run("status", "--json").stdout)
    assert s.opens() == 1  # the second session did not open another browser
    (row,) = status["servers"]
    assert row["state"] == "needs_auth" and "mcp-bridge login secure" in row["last_error"]


# A "browser" that first hits the loopback callback with forged requests (what any local page can make a browser do),
# records what each got, and then (FORGE_THEN=login) logs in for real or (FORGE_THEN=stop) does nothing more.
FORGING_BROWSER = """
import json, os, sys, time, urllib.error, urllib.parse, urllib.request
from mcp_bridge.sandbox.browser import browse

url = sys.argv[1]
query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
callback, state = query["redirect_uri"][0], query["state"][0]
pages = []
for forged in json.loads(os.environ["FORGED"]):
    params = {k: (state if v == "<the real state>" else v) for k, v in forged.items()}
    try:
        with urllib.request.urlopen(callback + "?" + urllib.parse.urlencode(params), timeout=10) as response:
            pages.append([response.status, response.read().decode()])
    except urllib.error.HTTPError as e:
        pages.append([e.code, e.read().decode()])
    except OSError as e:  # the listener is gone: the login was aborted
        pages.append([0, repr(e)])
if os.environ["FORGE_THEN"] == "login":
    browse(url, time.monotonic() + 10)
with open(os.environ["FORGED_PAGES"], "w") as f:
    json.dump(pages, f)
"""

HOSTILE_DESCRIPTION = "<script>alert(1)</script>\x1b[31m\x1b]0;pwned\x07 & more"


def _forging_browser(tmp_path: Path, forged: list[dict[str, str]], then: str) -> dict[str, str]:
    script = tmp_path / "forging_browser.py"
    script.write_text(FORGING_BROWSER, encoding="utf-8")
    return {
        "BROWSER": f"{sys.executable} {script} %s",
        "FORGED": json.dumps(forged),
        "FORGE_THEN": then,
        "FORGED_PAGES": str(tmp_path / "forged-pages.json"),
    }


def test_callbacks_with_another_state_are_ignored_and_the_real_login_completes(tmp_path: Path) -> None:
    forged = [
        {"error": "access_denied", "error_description": HOSTILE_DESCRIPTION, "state": "not-the-state"},
        {"error": "access_denied", "error_description": HOSTILE_DESCRIPTION},  # no state at all
        {"code": "forged-code", "state": "not-the-state"},
        {"code": "forged-code"},
    ]
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream)
        login = s.run("login", "secure", **_forging_browser(tmp_path, forged, "login"))
        stats = upstream.stats()
    assert login.returncode == 0, login.stderr  # none of the forged callbacks aborted the login
    assert "secure: logged in" in login.stdout and stats["authorize"] == 1
    pages = json.loads((tmp_path / "forged-pages.json").read_text())
    assert len(pages) == len(forged)
    for status, body in pages:
        assert status == 400 and "not part of a login in progress" in body
        assert "<script>" not in body and "alert" not in body and "forged-code" not in body


def test_the_error_page_and_the_terminal_show_the_servers_error_escaped(tmp_path: Path) -> None:
    forged = [{"error": "access_denied", "error_description": HOSTILE_DESCRIPTION, "state": "<the real state>"}]
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream)
        login = s.run("login", "secure", **_forging_browser(tmp_path, forged, "stop"))
    ((status, body),) = json.loads((tmp_path / "forged-pages.json").read_text())
    assert status == 400
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "<script>" not in body
    assert "\x1b" not in body and "\x07" not in body
    assert login.returncode == 1  # the login was refused, at once (not after the login timeout)
    assert "the login was refused: <script>alert(1)</script>\\x1b[31m\\x1b]0;pwned\\x07 & more" in login.stderr
    assert "\x1b" not in login.stderr + login.stdout and "\x07" not in login.stderr + login.stdout


def test_connect_connections_and_disconnect_for_the_user(tmp_path: Path) -> None:
    """``connections`` shows a server that needs a login as such, with the command that connects it; ``connect``
    (``login`` by its clearer name) connects it; its row then has the token's expiry and the tools enabled of
    allowed of offered, which the user's ``tools disable`` narrows; ``disconnect`` (``logout``) undoes it."""
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream)
        before = s.run("connections")
        (waiting,) = json.loads(s.run("connections", "--json").stdout)
        assert s.run("connect", "secure").returncode == 0
        (connected,) = json.loads(s.run("connections", "--json").stdout)
        disabled = s.run("tools", "disable", "secure__echo")
        (narrowed,) = json.loads(s.run("connections", "--json").stdout)
        shown = s.run("connections")
        assert s.run("disconnect", "secure").returncode == 0
        (after,) = json.loads(s.run("connections", "--json").stdout)
    assert before.returncode == 0 and "needs connection" in before.stdout
    assert "`mcp-bridge connect secure`" in before.stdout
    assert (waiting["name"], waiting["state"]) == ("secure", "needs_auth")
    assert connected["state"] == "connected" and connected["token_expires_at"] > time.time()
    offered = connected["tools_offered"]
    assert offered >= 5 and connected["tools_enabled"] == connected["tools_allowed"] == offered
    assert disabled.returncode == 0 and "disabled" in disabled.stdout
    assert (narrowed["tools_enabled"], narrowed["tools_allowed"]) == (offered - 1, offered)
    assert f"{offered - 1} of {offered} of {offered}" in shown.stdout and "expires in" in shown.stdout
    assert after["state"] == "needs_auth"
    assert s.opens() == 1  # connections never opens a browser; connect did, once


def test_a_login_after_status_uses_the_redirect_uri_the_client_was_registered_with(tmp_path: Path) -> None:
    """``status`` first (it cannot log in, but registers the client), then ``login``: the login's redirect URI is
    the registered one, so the authorization server accepts it (it answered 400 before)."""
    with LocalOAuthUpstream("secure", tmp_path) as upstream:
        s = Setup(tmp_path, upstream)
        status = s.run("status", "--json")
        login = s.run("login", "secure")
        stats = upstream.stats()
    assert json.loads(status.stdout)["servers"][0]["state"] == "needs_auth"
    assert login.returncode == 0, login.stderr
    assert stats["register"] == 1 and stats["authorize"] == 1
