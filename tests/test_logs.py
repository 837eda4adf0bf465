"""Redaction: secrets and bearer-like tokens never reach a log line or a message."""

from __future__ import annotations

import io
import json
import logging

from mcp_bridge.logs import clean, configure, enabled_for, get_logger, register_secrets


def test_registered_secrets_and_token_shapes_are_masked() -> None:
    register_secrets(["s3cr3t-value-xyz"])
    text = clean("key s3cr3t-value-xyz; Authorization: Bearer abc.def-123; url https://u:pw@host/x?access_token=zz&a=1")
    assert "s3cr3t-value-xyz" not in text and "abc.def-123" not in text and "pw@" not in text and "zz" not in text
    assert "a=1" in text and "https://***@host/x" in text


def test_structlog_and_library_records_are_redacted_and_go_to_the_given_stream() -> None:
    register_secrets(["another-secret-42"])
    stream = io.StringIO()
    configure("info", stream=stream)
    get_logger("t").info("event", detail="token another-secret-42 inside", nested={"v": ["another-secret-42"]})
    logging.getLogger("mcp_bridge.lib").warning("library says %s", "another-secret-42")
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert len(lines) == 2
    assert "another-secret-42" not in stream.getvalue()
    assert lines[0]["event"] == "event" and lines[0]["detail"] == "token *** inside"


def test_deferred_setup_loads_structlog_with_the_first_message_at_the_level() -> None:
    """``serve`` defers the setup so that ``initialize`` is answered before structlog (and asyncio) load."""
    import subprocess
    import sys

    code = """if True:
        import io, sys
        from mcp_bridge.logs import configure, get_logger
        log = get_logger("t")
        stream = io.StringIO()
        configure("info", stream=stream, defer=True)
        log.debug("below the level")
        assert "structlog" not in sys.modules and "asyncio" not in sys.modules, "loaded before the first message"
        log.info("first", n=1)
        assert "structlog" in sys.modules
        log.debug("still below the level")
        sys.stderr.write(stream.getvalue())
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # nothing on stdout, ever
    assert [json.loads(line)["event"] for line in done.stderr.splitlines()] == ["first"]


def test_enabled_for_answers_as_the_configured_logger_does() -> None:
    for level in ("debug", "info", "warning", "error"):
        configure(level, stream=io.StringIO())
        log = get_logger("t")
        for numeric in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
            assert enabled_for(numeric) == log.is_enabled_for(numeric), (level, numeric)
    configure("info", stream=io.StringIO())


def test_an_authorization_code_is_masked_but_small_numeric_codes_stay() -> None:
    assert clean("GET /callback?code=Sx81kQ_z0-aa&state=abc") == "GET /callback?code=***&state=abc"
    assert clean("code=123456789") == "code=***"  # too long for an exit, status or JSON-RPC code
    for harmless in ("exit code=0", "error code=-32600, message", "status_code=500", "(code=404)"):
        assert clean(harmless) == harmless


def test_on_a_terminal_log_lines_show_control_characters_escaped() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    configure("info", stream=stream)
    try:
        get_logger("t").warning(
            "upstream.failed\x1b[5m", error="error:\x1b]0;owned\x07 \x1b[2J\u202eevil ünï", bare="\x1b[41mX"
        )
        logging.getLogger("mcp_bridge.lib").warning("library says %s", "\x1b[31mred\x00")
    finally:
        configure("info", stream=io.StringIO())
    text = stream.getvalue()
    assert "x1b]0;owned" in text and "x07" in text and "u202eevil ünï" in text  # shown escaped (by us, or repr)
    assert "library says \\x1b[31mred\\x00" in text and "\\x1b[5m" in text
    assert "\x07" not in text and "\x00" not in text and "\u202e" not in text
    assert "\x1b]" not in text and "\x1b[31mred" not in text and "\x1b[5m" not in text and "\x1b[41m" not in text


def test_a_long_text_value_is_cut_after_its_secrets_are_masked() -> None:
    """A server's error message may be megabytes: a logged text keeps 4,096 characters and says how many it left
    out; a secret that straddles the cut is masked first, so not even its head is written."""
    from mcp_bridge.logs import LOG_TEXT

    secret = "straddling-secret-" + "s" * 40
    register_secrets([secret])
    stream = io.StringIO()
    configure("info", stream=stream)
    text = "x" * (LOG_TEXT - 10) + secret + "y" * 100_000
    get_logger("t").info("event", error=text)
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert len(line["error"]) < LOG_TEXT + 100
    assert line["error"].startswith("x" * (LOG_TEXT - 10) + "***")
    assert line["error"].endswith(f"… ({len(text) - len(secret) + 3 - LOG_TEXT} more characters)")
    assert "straddling" not in stream.getvalue()
