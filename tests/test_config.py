"""The config behaviour users rely on: where the file is found, ``${env:NAME}``, validation messages, defaults,
secrets, the state directory, and that ``config.example.yaml`` always matches the models."""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from mcp_bridge.config import (
    ApiKeyAuth,
    AuditConfig,
    LoadedConfig,
    LogConfig,
    NamingConfig,
    NoAuth,
    OAuthAuth,
    PortApproval,
    PortConfig,
    PortFields,
    ProtocolConfig,
    ServerConfig,
    Settings,
    TelemetryConfig,
    TimeoutsConfig,
    UserConfig,
    home_dir,
    load_config,
    parse_config,
)
from mcp_bridge.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG paths are the Linux layout")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's real config, state dir or home."""
    monkeypatch.delenv("MCP_BRIDGE_CONFIG", raising=False)
    monkeypatch.delenv("MCP_BRIDGE_HOME", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def server_file(path: Path, name: str) -> Path:
    """A config whose only server is ``name``: tells which file was loaded."""
    return write(path, f"servers:\n  {name}:\n    url: https://{name}.example.com/mcp\n")


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> LoadedConfig:
    return load_config(write(tmp_path / "config.yaml", text), environ=environ or {})


def config_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, environ)
    return str(info.value)


def docs_server(body: str) -> str:
    """A one-server file; ``body`` is the server's keys, already indented by four spaces."""
    return "servers:\n  docs:\n" + body


# --- where the file is found ---------------------------------------------------------------------------------------


def test_explicit_path_wins_over_env_var_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    server_file(tmp_path / "xdg" / "mcp-bridge" / "config.yaml", "fromdefault")
    monkeypatch.setenv("MCP_BRIDGE_CONFIG", str(server_file(tmp_path / "env.yaml", "fromenv")))
    explicit = server_file(tmp_path / "explicit.yaml", "fromexplicit")

    loaded = load_config(explicit)

    assert set(loaded.settings.servers) == {"fromexplicit"}
    assert loaded.path == explicit


def test_env_var_wins_over_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    server_file(tmp_path / "xdg" / "mcp-bridge" / "config.yaml", "fromdefault")
    env_file = server_file(tmp_path / "env.yaml", "fromenv")
    monkeypatch.setenv("MCP_BRIDGE_CONFIG", str(env_file))

    loaded = load_config(None)

    assert set(loaded.settings.servers) == {"fromenv"}
    assert loaded.path == env_file


@linux_only
def test_default_location_is_xdg_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    default = server_file(tmp_path / "xdg" / "mcp-bridge" / "config.yaml", "fromdefault")

    loaded = load_config()

    assert set(loaded.settings.servers) == {"fromdefault"}
    assert loaded.path == default


@linux_only
def test_default_location_falls_back_to_home_dot_config() -> None:
    default = server_file(Path(os.environ["HOME"]) / ".config" / "mcp-bridge" / "config.yaml", "fromhome")

    loaded = load_config()

    assert set(loaded.settings.servers) == {"fromhome"}
    assert loaded.path == default


def test_explicit_path_expands_tilde() -> None:
    server_file(Path(os.environ["HOME"]) / "my.yaml", "tilde")

    assert set(load_config("~/my.yaml").settings.servers) == {"tilde"}


def test_missing_explicit_file_is_config_error_naming_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "config.yaml"

    with pytest.raises(ConfigError) as info:
        load_config(missing)

    assert str(missing) in str(info.value)
    assert "--config" in str(info.value)
    assert info.value.exit_code == 2


def test_missing_file_from_env_var_names_path_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "env-missing.yaml"
    monkeypatch.setenv("MCP_BRIDGE_CONFIG", str(missing))

    with pytest.raises(ConfigError) as info:
        load_config()

    assert str(missing) in str(info.value)
    assert "$MCP_BRIDGE_CONFIG" in str(info.value)


@linux_only
def test_missing_default_file_names_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))

    with pytest.raises(ConfigError) as info:
        load_config()

    assert str(tmp_path / "xdg" / "mcp-bridge" / "config.yaml") in str(info.value)


def test_directory_instead_of_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load_config(tmp_path)


# --- ${env:NAME} ----------------------------------------------------------------------------------------------------


def test_env_reference_replaces_whole_string(tmp_path: Path) -> None:
    loaded = load_text(
        tmp_path,
        docs_server("    url: ${env:DOCS_URL}\n"),
        {"DOCS_URL": "https://docs.example.com/mcp"},
    )

    assert loaded.settings.servers["docs"].url == "https://docs.example.com/mcp"


def test_env_reference_replaced_inside_larger_string(tmp_path: Path) -> None:
    loaded = load_text(
        tmp_path,
        docs_server("    url: https://x.example.com/mcp\n    auth: {type: api_key, value: 'Bearer ${env:T}'}\n"),
        {"T": "tok-123"},
    )

    auth = loaded.settings.servers["docs"].auth
    assert isinstance(auth, ApiKeyAuth)
    assert auth.value == "Bearer tok-123"


def test_several_env_references_in_one_string_and_in_lists(tmp_path: Path) -> None:
    loaded = load_text(
        tmp_path,
        docs_server("    url: https://${env:HOST}:${env:PORT}/mcp\n    allowed_tools: [search, '${env:TOOL}']\n"),
        {"HOST": "h.example.com", "PORT": "8443", "TOOL": "fetch"},
    )

    server = loaded.settings.servers["docs"]
    assert server.url == "https://h.example.com:8443/mcp"
    assert server.allowed_tools == ["search", "fetch"]


def test_text_that_is_not_an_env_reference_is_kept_literally(tmp_path: Path) -> None:
    loaded = load_text(
        tmp_path, docs_server("    url: https://x.example.com/mcp\n    title: '$HOME ${HOME} ${env:}'\n")
    )

    assert loaded.settings.servers["docs"].title == "$HOME ${HOME} ${env:}"


def test_load_config_reads_process_environment_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPB_TEST_URL", "https://from-env.example.com/mcp")
    path = write(tmp_path / "c.yaml", docs_server("    url: ${env:MCPB_TEST_URL}\n"))

    assert load_config(path).settings.servers["docs"].url == "https://from-env.example.com/mcp"


def test_missing_env_var_names_variable_key_path_and_file(tmp_path: Path) -> None:
    message = config_error(
        tmp_path,
        docs_server(
            "    url: https://x.example.com/mcp\n    auth: {type: api_key, value: 'Bearer ${env:DOCS_TOKEN}'}\n"
        ),
    )

    assert "DOCS_TOKEN" in message
    assert "servers.docs.auth.value" in message
    assert str(tmp_path / "config.yaml") in message
    assert "not set" in message


def test_missing_env_var_in_list_names_index(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, docs_server("    url: https://x.example.com/mcp\n    allowed_tools: [a, '${env:NOPE}']\n")
    )

    assert "servers.docs.allowed_tools[1]" in message
    assert "NOPE" in message


# --- validation messages --------------------------------------------------------------------------------------------


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    message = config_error(tmp_path, "servers: {}\nport_typo: 1\n")

    assert "port_typo: unknown key" in message


@pytest.mark.parametrize(
    ("text", "key_path"),
    [
        (docs_server("    url: https://x.example.com/mcp\n    colour: red\n"), "servers.docs.colour"),
        (
            docs_server("    url: https://x.example.com/mcp\n    auth: {type: api_key, value: v, prefix: x}\n"),
            "servers.docs.auth.prefix",
        ),
        (
            docs_server("    url: https://x.example.com/mcp\n    auth: {type: none, value: v}\n"),
            "servers.docs.auth.value",
        ),
        ("timeouts: {conect: 5}\n", "timeouts.conect"),
        ("naming: {seperator: '-'}\n", "naming.seperator"),
    ],
)
def test_unknown_nested_key_names_its_key_path(tmp_path: Path, text: str, key_path: str) -> None:
    assert f"{key_path}: unknown key" in config_error(tmp_path, text)


@pytest.mark.parametrize("name", ["oauth", "api_key", "none"])
def test_server_named_like_an_auth_type_keeps_its_name_in_key_path(tmp_path: Path, name: str) -> None:
    text = f"servers:\n  {name}:\n    url: https://x.example.com/mcp\n    colour: red\n"

    assert f"servers.{name}.colour: unknown key" in config_error(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "key_path"),
    [
        ("timeouts: {connect: soon}\n", "timeouts.connect"),
        ("servers: [docs]\n", "servers"),
        ("disabled_tools: 5\n", "disabled_tools"),
        (docs_server("    url: https://x.example.com/mcp\n    allowed_tools: 7\n"), "servers.docs.allowed_tools"),
        (
            docs_server("    url: https://x.example.com/mcp\n    allow_insecure_http: maybe\n"),
            "servers.docs.allow_insecure_http",
        ),
        ("log: {level: verbose}\n", "log.level"),
    ],
)
def test_wrong_type_names_key_path(tmp_path: Path, text: str, key_path: str) -> None:
    message = config_error(tmp_path, text)

    assert f": {key_path}: " in message
    assert "unknown key" not in message


@pytest.mark.parametrize(
    ("text", "key_path"),
    [
        ("naming: {max_length: 8}\n", "naming.max_length"),
        ("naming: {max_length: 500}\n", "naming.max_length"),
        ("naming: {separator: '.'}\n", "naming.separator"),
        ("timeouts: {connect: 0}\n", "timeouts.connect"),
        ("timeouts: {call: -1}\n", "timeouts.call"),
        ("timeouts: {startup_wait: 31}\n", "timeouts.startup_wait"),
        (
            docs_server("    url: https://x.example.com/mcp\n    auth: {type: oauth, redirect_port: 70000}\n"),
            "servers.docs.auth.redirect_port",
        ),
        (
            docs_server(
                "    url: https://x.example.com/mcp\n    auth: {type: oauth, client_metadata_url: 'https://a/'}\n"
            ),
            "servers.docs.auth.client_metadata_url",
        ),
        (
            docs_server("    url: https://x.example.com/mcp\n    auth: {type: api_key, header: 'X Key', value: v}\n"),
            "servers.docs.auth.header",
        ),
        (
            docs_server("    url: https://x.example.com/mcp\n    auth: {type: api_key, value: ''}\n"),
            "servers.docs.auth.value",
        ),
    ],
)
def test_out_of_range_value_names_key_path(tmp_path: Path, text: str, key_path: str) -> None:
    assert f": {key_path}: " in config_error(tmp_path, text)


def test_unknown_auth_type_lists_the_allowed_ones(tmp_path: Path) -> None:
    message = config_error(tmp_path, docs_server("    url: https://x.example.com/mcp\n    auth: {type: basic}\n"))

    assert "servers.docs.auth: unknown type" in message
    for kind in ("none", "api_key", "oauth"):
        assert kind in message


def test_auth_without_type_says_type_is_required(tmp_path: Path) -> None:
    message = config_error(tmp_path, docs_server("    url: https://x.example.com/mcp\n    auth: {value: v}\n"))

    assert "servers.docs.auth: `type` is required" in message


def test_api_key_without_value_is_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, docs_server("    url: https://x.example.com/mcp\n    auth: {type: api_key}\n"))

    assert "servers.docs.auth.value: required key is missing" in message


def test_server_without_url_is_refused(tmp_path: Path) -> None:
    assert "servers.docs.url: required key is missing" in config_error(tmp_path, "servers:\n  docs: {}\n")


@pytest.mark.parametrize(
    "name",
    [
        "has space",
        "comma,name",
        "..",
        "semi;colon",
        # Port identifiers allow these, but a server's name may one day name a file or a URI authority
        "team/docs",
        "team\\docs",
        "host:8080",
        "a@b",
        "../up",
        "a..b",
        ".hidden",
        "trailing.",
        "-looks-like-an-option",
        "ünï",
    ],
)
def test_server_name_with_unsafe_characters_is_refused(tmp_path: Path, name: str) -> None:
    message = config_error(tmp_path, f"servers:\n  '{name}':\n    url: https://x.example.com/mcp\n")

    assert repr(name) in message
    assert "servers:" in message
    assert "may only use ASCII letters, digits, '_', '-' and '.'" in message


@pytest.mark.parametrize("name", ["notion.so", "docs", "Team_Docs-2", "_internal", "a.b-c_d"])
def test_server_names_may_use_port_identifier_characters(tmp_path: Path, name: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"servers:\n  '{name}':\n    url: https://x.example.com/mcp\n", encoding="utf-8")

    assert name in load_config(path, environ={}).settings.servers


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    message = config_error(tmp_path, "bogus: 1\ntimeouts: {connect: soon}\n")

    assert "bogus: unknown key" in message
    assert "timeouts.connect" in message


# --- URLs -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["ftp://x.example.com/mcp", "file:///etc/passwd", "docs.example.com/mcp", "https://", "ws://x.example.com"]
)
def test_url_that_is_not_http_or_https_is_refused(tmp_path: Path, url: str) -> None:
    message = config_error(tmp_path, docs_server(f"    url: '{url}'\n"))

    assert "servers.docs" in message
    assert "not an http(s) URL" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:8080/mcp",
        "http://docs.example.com/mcp",
        "http://localhost.example.com/mcp",
        "http://128.0.0.1/mcp",
        "http://[::2]/mcp",
    ],
)
def test_plain_http_to_non_loopback_host_is_refused(tmp_path: Path, url: str) -> None:
    message = config_error(tmp_path, docs_server(f"    url: '{url}'\n"))

    assert "servers.docs" in message
    assert "allow_insecure_http" in message


def test_plain_http_to_non_loopback_host_accepted_with_allow_insecure_http(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, docs_server("    url: http://10.0.0.5:8080/mcp\n    allow_insecure_http: true\n"))

    assert loaded.settings.servers["docs"].allow_insecure_http is True


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/mcp",
        "http://127.5.6.7/mcp",
        "http://[::1]:8080/mcp",
        "http://localhost:8080/mcp",
        "http://LOCALHOST/mcp",
        "https://docs.example.com/mcp",
    ],
)
def test_plain_http_to_loopback_and_https_anywhere_are_accepted(tmp_path: Path, url: str) -> None:
    assert load_text(tmp_path, docs_server(f"    url: '{url}'\n")).settings.servers["docs"].url == url


@pytest.mark.parametrize("url", ["https://user:pa55word@x.example.com/mcp", "https://user@x.example.com/mcp"])
def test_url_with_credentials_is_refused_without_echoing_them(tmp_path: Path, url: str) -> None:
    message = config_error(tmp_path, docs_server(f"    url: '{url}'\n"))

    assert "must not carry credentials" in message
    assert "pa55word" not in message


# --- YAML and empty files -------------------------------------------------------------------------------------------


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, "servers:\n  docs:\n    url: https://x\n  - broken\n")

    assert "not valid YAML" in message
    assert "line 4" in message


def test_top_level_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    assert "top level must be a mapping" in config_error(tmp_path, "- docs\n- notion\n")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    assert load_text(tmp_path, text).settings == Settings()


def test_defaults_match_design() -> None:
    settings = parse_config("", environ={}).settings

    assert settings.servers == {}
    assert settings.disabled_tools == []
    assert settings.naming.separator == "__"
    assert settings.naming.max_length == 64
    assert settings.timeouts.connect == 10
    assert settings.timeouts.call == 120
    assert settings.timeouts.startup_wait == 3
    assert settings.log.level == "info"
    assert settings.log.file is None


def test_server_defaults_deny_all_tools_and_need_no_auth() -> None:
    server = parse_config(docs_server("    url: https://x.example.com/mcp\n"), environ={}).settings.servers["docs"]

    assert server.allowed_tools is None
    assert isinstance(server.auth, NoAuth)
    assert server.allow_insecure_http is False


def test_api_key_header_defaults_to_authorization() -> None:
    text = docs_server("    url: https://x.example.com/mcp\n    auth: {type: api_key, value: k}\n")
    auth = parse_config(text, environ={}).settings.servers["docs"].auth

    assert isinstance(auth, ApiKeyAuth)
    assert auth.header == "Authorization"


def test_oauth_defaults_send_resource_and_have_no_client() -> None:
    text = docs_server("    url: https://x.example.com/mcp\n    auth: {type: oauth}\n")
    auth = parse_config(text, environ={}).settings.servers["docs"].auth

    assert isinstance(auth, OAuthAuth)
    assert auth.resource is True
    assert auth.client_id is None
    assert auth.client_secret is None
    assert auth.scopes is None
    assert auth.redirect_port is None
    assert auth.client_metadata_url is None


def test_a_client_metadata_document_url_reaches_the_oauth_client(tmp_path: Path) -> None:
    """With ``client_metadata_url`` the SDK's OAuth client uses it as the client id where the authorization server
    supports Client ID Metadata Documents (the conformance suite's auth/basic-cimd checks it end to end); a
    manually registered client (``client_id``) wins over it."""
    from mcp_bridge.auth.oauth import LoginPolicy, build_provider
    from mcp_bridge.auth.store import FileBackend, ServerTokenStorage

    cimd = "https://platform.example.com/mcp-bridge/client.json"
    auth = OAuthAuth(type="oauth", client_metadata_url=cimd)
    storage = ServerTokenStorage("https://x.example.com/mcp", FileBackend(tmp_path / "secrets.json"), tmp_path)
    policy = LoginPolicy(interactive=False, cooldown=0, timeout=1)
    provider = build_provider("docs", "https://x.example.com/mcp", auth, storage, tmp_path, policy)
    assert provider.context.client_metadata_url == cimd
    manual = auth.model_copy(update={"client_id": "registered"})
    provider = build_provider("docs", "https://x.example.com/mcp", manual, storage, tmp_path, policy)
    assert provider.context.client_metadata_url is None


def test_loaded_settings_are_frozen() -> None:
    settings = parse_config(docs_server("    url: https://x.example.com/mcp\n"), environ={}).settings

    with pytest.raises(ValidationError):
        settings.servers["docs"].allowed_tools = ["*"]


# --- allowlist ------------------------------------------------------------------------------------------------------


def test_allows_star_admits_every_tool() -> None:
    server = ServerConfig(url="https://x.example.com/mcp", allowed_tools=["*"])

    assert server.allows("search")
    assert server.allows("delete-everything")


def test_allows_list_admits_only_listed_names_exactly() -> None:
    server = ServerConfig(url="https://x.example.com/mcp", allowed_tools=["search", "fetch"])

    assert server.allows("search")
    assert server.allows("fetch")
    assert not server.allows("delete")
    assert not server.allows("Search")
    assert not server.allows("search*")


@pytest.mark.parametrize("allowed", [None, []])
def test_allows_missing_or_empty_list_admits_nothing(allowed: list[str] | None) -> None:
    server = ServerConfig(url="https://x.example.com/mcp", allowed_tools=allowed)

    assert not server.allows("search")
    assert not server.allows("*")


def test_allowed_tools_missing_in_file_admits_nothing(tmp_path: Path) -> None:
    server = load_text(tmp_path, docs_server("    url: https://x.example.com/mcp\n")).settings.servers["docs"]

    assert not server.allows("search")


# --- secrets --------------------------------------------------------------------------------------------------------

SECRET_CONFIG = """\
servers:
  docs:
    url: https://docs.example.com/mcp?tenant=${env:TENANT}
    allowed_tools: ["${env:TOOL}"]
    auth: {type: api_key, header: X-Api-Key, value: "Bearer ${env:DOCS_TOKEN}"}
  literal:
    url: https://literal.example.com/mcp
    auth: {type: api_key, value: literal-key-0001}
  github:
    url: https://api.example.com/mcp
    auth: {type: oauth, client_id: Iv1.0123, client_secret: "${env:GH_SECRET}"}
  inline:
    url: https://inline.example.com/mcp
    auth: {type: oauth, client_secret: inline-secret-0002}
"""
SECRET_ENV = {"TENANT": "tenant-xyz", "TOOL": "search", "DOCS_TOKEN": "docs-tok-0003", "GH_SECRET": "gh-sec-0004"}


def test_secrets_hold_every_env_substituted_value_and_every_credential(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, SECRET_CONFIG, SECRET_ENV)

    for value in SECRET_ENV.values():
        assert value in loaded.secrets
    assert "Bearer docs-tok-0003" in loaded.secrets
    assert "literal-key-0001" in loaded.secrets
    assert "inline-secret-0002" in loaded.secrets


def test_secrets_never_contain_the_empty_string(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, docs_server("    url: https://x.example.com/mcp${env:EMPTY}\n"), {"EMPTY": ""})

    assert "" not in loaded.secrets


@pytest.mark.parametrize("render", [repr, str])
def test_repr_of_loaded_config_never_shows_credentials(tmp_path: Path, render: object) -> None:
    assert callable(render)
    loaded = load_text(tmp_path, SECRET_CONFIG, SECRET_ENV)

    for shown in (render(loaded), render(loaded.settings), render(loaded.settings.servers["docs"])):
        for secret in ("docs-tok-0003", "literal-key-0001", "gh-sec-0004", "inline-secret-0002"):
            assert secret not in shown


@pytest.mark.parametrize(
    "body",
    [
        # A validator quotes the URL it refuses.
        "    url: ftp://x.example.com/mcp?key=${env:SECRET}\n",
        "    url: http://10.0.0.5/${env:SECRET}/mcp\n",
        # A validator quotes the header name it refuses.
        "    url: https://x.example.com/mcp\n    auth: {type: api_key, header: '${env:SECRET}', value: v}\n",
        # The secret is fine, something else in the file is not.
        "    url: https://x.example.com/mcp\n    auth: {type: api_key, value: '${env:SECRET}'}\n    colour: red\n",
        "    url: https://x.example.com/mcp\n    auth: {type: api_key, value: '${env:SECRET}', bogus: 1}\n",
        "    url: https://x.example.com/mcp\n    allowed_tools: '${env:SECRET}'\n",
    ],
)
def test_error_messages_never_contain_substituted_secret(tmp_path: Path, body: str) -> None:
    message = config_error(tmp_path, docs_server(body), {"SECRET": "s3cr3t value-0005"})

    assert "s3cr3t value-0005" not in message
    assert "servers.docs" in message


# --- every message names the file -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "bogus: 1\n",
        "servers: [1]\n",
        "servers:\n  docs:\n    url: x\n  - broken\n",
        "- a\n",
        docs_server("    url: ${env:MISSING_VAR}\n"),
        docs_server("    url: http://10.0.0.5/mcp\n"),
        docs_server("    url: https://x.example.com/mcp\n    auth: {type: basic}\n"),
    ],
)
def test_every_config_error_names_the_file(tmp_path: Path, text: str) -> None:
    message = config_error(tmp_path, text)

    for line in message.splitlines():
        assert line.startswith(f"{tmp_path / 'config.yaml'}: ")


# --- state directory ------------------------------------------------------------------------------------------------


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """With umask 0 only the code's own mode argument keeps the directory private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
@pytest.mark.usefixtures("umask_zero")
def test_home_dir_honours_env_and_creates_private_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state" / "mcp-bridge"
    monkeypatch.setenv("MCP_BRIDGE_HOME", str(target))

    result = home_dir()

    assert result == target
    assert result.is_dir()
    assert stat.S_IMODE(result.stat().st_mode) == 0o700


def test_home_dir_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_BRIDGE_HOME", str(tmp_path / "state"))

    assert home_dir() == home_dir() == tmp_path / "state"


def test_home_dir_expands_tilde(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_BRIDGE_HOME", "~/bridge-state")

    assert home_dir() == Path(os.environ["HOME"]) / "bridge-state"


@linux_only
def test_home_dir_defaults_to_user_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))

    result = home_dir()

    assert result == tmp_path / "data" / "mcp-bridge"
    assert result.is_dir()


# --- config.example.yaml --------------------------------------------------------------------------------------------


def example_environ(text: str) -> dict[str, str]:
    return {name: f"example-value-for-{name}" for name in ENV_REF.findall(text)}


def test_example_config_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    environ = example_environ(text)
    assert "DOCS_TOKEN" in environ
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    loaded = load_config(EXAMPLE)

    servers = loaded.settings.servers
    assert isinstance(servers["docs"].auth, ApiKeyAuth)
    assert servers["docs"].auth.value == "Bearer example-value-for-DOCS_TOKEN"
    assert any(isinstance(s.auth, NoAuth) for s in servers.values())
    assert "example-value-for-DOCS_TOKEN" in loaded.secrets


def test_example_oauth_block_parses_when_uncommented() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "# --- oauth example start ---" in line)
    end = next(i for i, line in enumerate(lines) if "# --- oauth example end ---" in line)
    assert end - start > 3
    for i in range(start + 1, end):
        lines[i] = re.sub(r"^(\s*)# ?", r"\1", lines[i], count=1)
    text = "".join(lines)

    servers = parse_config(text, environ=example_environ(text)).settings.servers

    assert isinstance(servers["notion"].auth, OAuthAuth)
    assert servers["notion"].auth.client_secret == "example-value-for-NOTION_SECRET"


def test_example_port_block_parses_when_uncommented() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "# --- port example start ---" in line)
    end = next(i for i, line in enumerate(lines) if "# --- port example end ---" in line)
    for i in range(start + 1, end):
        lines[i] = re.sub(r"^(\s*)# ?", r"\1", lines[i], count=1)
    text = "".join(lines)

    stored = {name: f"stored-value-of-{name}" for name in re.findall(r"\$\{keyring:(\w+)\}", text)}
    port = parse_config(text, environ=example_environ(text), keyring=stored.get).settings.port

    assert port is not None
    assert port.client_secret == "stored-value-of-PORT_CLIENT_SECRET"  # from the keyring, as the example advises
    assert port.api_url == "https://api.port.io"
    assert port.effective_blueprint == "_mcp_server"
    assert port.effective_approval.property == "exposed" and port.effective_approval.equals is True


@pytest.mark.parametrize(
    "model",
    [
        Settings,
        ServerConfig,
        NoAuth,
        ApiKeyAuth,
        OAuthAuth,
        NamingConfig,
        TimeoutsConfig,
        LogConfig,
        PortConfig,
        PortFields,
        PortApproval,
        AuditConfig,
        UserConfig,
        ProtocolConfig,
        TelemetryConfig,
    ],
)
def test_example_documents_every_key(model: type[BaseModel]) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")

    for key in model.model_fields:
        assert re.search(rf"(^|[\s{{,]){re.escape(key)}:", text, re.MULTILINE), f"{model.__name__}.{key} undocumented"


# ------------------------------------------------------------------------------------------------ protocol eras


@pytest.mark.parametrize(
    ("text", "ide", "upstream"),
    [
        ("", "auto", "auto"),
        ("protocol: {upstream: legacy}", "auto", "legacy"),
        ("protocol: {ide: '2026-07-28', upstream: 2026-07-28}", "2026-07-28", "2026-07-28"),  # unquoted: a date
    ],
)
def test_protocol_keys(text: str, ide: str, upstream: str) -> None:
    settings = parse_config(text, environ={}).settings
    assert (settings.protocol.ide, settings.protocol.upstream) == (ide, upstream)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("protocol: {upstream: modern}", "protocol.upstream: 'modern' is not one of auto | legacy | 2026-07-28"),
        ("protocol: {ide: 2025-11-25}", "protocol.ide: '2025-11-25' is not a choice here: write `legacy`"),
        ("protocol: {upstream: auto, extra: 1}", "protocol.extra: unknown key"),
        (
            "servers: {a: {url: 'http://127.0.0.1/mcp', protocol: handshake}}",
            "servers.a.protocol: 'handshake' is not one of auto | legacy | 2026-07-28",
        ),
    ],
)
def test_protocol_errors_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={})
    assert message in str(caught.value)


def test_the_environment_overrides_the_upstream_protocol_everywhere() -> None:
    text = "protocol: {upstream: 2026-07-28}\nservers: {a: {url: 'http://127.0.0.1/mcp', protocol: auto}}"
    settings = parse_config(text, environ={}).settings
    assert settings.upstream_protocol(settings.servers["a"]) == "auto"  # the server's own key wins over the global
    settings = parse_config(text, environ={"MCP_BRIDGE_PROTOCOL_UPSTREAM": "legacy"}).settings
    assert settings.protocol.upstream == settings.upstream_protocol(settings.servers["a"]) == "legacy"
    assert parse_config(text, environ={"MCP_BRIDGE_PROTOCOL_UPSTREAM": ""}).settings.protocol.upstream == "2026-07-28"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={"MCP_BRIDGE_PROTOCOL_UPSTREAM": "2025-06-18"})
    assert "$MCP_BRIDGE_PROTOCOL_UPSTREAM: '2025-06-18' is not a choice here" in str(caught.value)
    assert caught.value.fix is not None and "unset it" in caught.value.fix
