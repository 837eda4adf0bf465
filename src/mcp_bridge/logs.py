"""Logging: structlog to stderr (console on a TTY, JSON otherwise) and optionally a JSON file; secrets redacted.

stdout carries only the protocol, so no handler here ever writes to it. Every string that reaches a log line or an
error message passes :func:`clean`, which masks the secrets registered with :func:`register_secrets` (credentials
and every value the config took from the environment) and bearer-like tokens in free text. On a terminal, lines are
rendered for people (not as JSON) and their text passes :func:`mcp_bridge.terminal.printable` first: a server's text
in a log line cannot act on the terminal.

structlog (and :mod:`logging` and :mod:`asyncio`, which it imports: ~80 ms) loads with the first message logged,
not on import, so that ``serve`` can answer ``initialize`` before it (:mod:`mcp_bridge.ide.handshake`).
:func:`configure` with ``defer=True`` only records the settings; they take effect with that first message at or
above the level, or at :func:`activate`.

Files the bridge appends to (the log file, the audit JSONL copy) are private (0600): :func:`open_private`.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, TextIO

from mcp_bridge.terminal import printable

if TYPE_CHECKING:
    import logging

MASK = "***"
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}  # logging.DEBUG ... logging.ERROR
_METHOD_LEVELS = {**_LEVELS, "warn": 30, "exception": 40, "critical": 50, "fatal": 50}
_MIN_SECRET_LEN = 4
_TOKENISH = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*"),
    re.compile(r"(?i)((?:access_token|refresh_token|id_token|client_secret|api_key|apikey|token)=)[^&\s\"']+"),
    # An OAuth authorization code; not a small number (an exit, status or JSON-RPC error code such as code=0).
    re.compile(r"(?i)(code=)(?!-?\d{1,6}(?![^&\s\"',;)}\]]))[^&\s\"']+"),
    re.compile(r"(?i)(://)[^/@\s:]+:[^/@\s]+@"),
]

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secrets(values: Iterable[str]) -> None:
    """Add strings that must never appear in logs or messages (longest first, so substrings do not leak)."""
    global _secrets
    with _lock:
        merged = set(_secrets) | {v for v in values if v and len(v) >= _MIN_SECRET_LEN}
        _secrets = tuple(sorted(merged, key=len, reverse=True))


def clean(text: str) -> str:
    """``text`` with every registered secret and bearer-like token masked."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern in _TOKENISH:
        text = pattern.sub(lambda m: m.group(1) + MASK + ("@" if m.group(1) == "://" else ""), text)
    return text


def cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: cut, its trailing space dropped, and an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


LOG_TEXT = 4096
"""Characters a logged text value keeps (a server's error message is as long as it likes); the rest is counted."""


def _clean_value(value: Any) -> Any:
    if isinstance(value, str):
        text = clean(value)  # masked whole first: a cut could leave a secret's head where the mask would not match
        return text if len(text) <= LOG_TEXT else text[:LOG_TEXT] + f"… ({len(text) - LOG_TEXT} more characters)"
    if isinstance(value, dict):
        return {k: _clean_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_value(v) for v in value]
    if isinstance(value, BaseException):
        return clean(f"{type(value).__name__}: {value}")
    return value


def _redact(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        event_dict[key] = _clean_value(value)
    return event_dict


def _printable_values(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if isinstance(value, str):
            event_dict[key] = printable(value)
    return event_dict


def _redact_record(record: logging.LogRecord) -> bool:
    """Applies :func:`clean` to records from other libraries (the SDK, httpx2) before any handler sees them."""
    import logging

    if isinstance(record.msg, dict):
        return True  # from structlog: already redacted by its processor chain
    try:
        message = record.getMessage()
    except Exception:  # a library's bad format string must not kill logging
        message = str(record.msg)
    record.msg = clean(message)
    record.args = None
    if record.exc_info and record.exc_info[1] is not None:
        record.exc_text = clean(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
    return True


class _Settings:
    """What :func:`configure` was last asked for, while it is not applied yet."""

    pending: tuple[str, str | None, TextIO | None] | None = None
    level = _LEVELS["info"]


def configure(
    level: str = "info", file: str | None = None, stream: TextIO | None = None, *, defer: bool = False
) -> None:
    """Route structlog and stdlib logging to stderr (and ``file``), with redaction. Safe to call again.

    ``defer``: only record the settings; they are applied (and structlog loaded) with the first message logged at
    or above ``level``, or at :func:`activate`.
    """
    with _lock:
        _Settings.level = _LEVELS.get(level, _LEVELS["info"])
        _Settings.pending = (level, file, stream)
    if not defer:
        activate()


def activate() -> None:
    """Apply the settings :func:`configure` recorded, unless they are applied already."""
    with _lock:  # held while applying: another thread's first message waits for the handlers, never goes astray
        if _Settings.pending is not None:
            _apply(*_Settings.pending)
            _Settings.pending = None


def _apply(level: str, file: str | None, stream: TextIO | None) -> None:
    import logging

    import structlog

    stream = stream or sys.stderr
    numeric = _LEVELS.get(level, logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )
    tty = hasattr(stream, "isatty") and stream.isatty()
    # On a terminal, log lines are shown as they are (not as JSON, which escapes): their text passes the one
    # sanitiser of what reaches a terminal first, so that a server's text in an event cannot act on it.
    rendering: list[Any] = [structlog.processors.JSONRenderer()]
    if tty:
        rendering = [_printable_values, structlog.dev.ConsoleRenderer(colors=True)]
    console = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        foreign_pre_chain=shared,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_mcp_bridge", False):
            root.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = []
    err = logging.StreamHandler(stream)
    err.setFormatter(console)
    handlers.append(err)
    notes: list[str] = []
    if file:
        fh = _private_file_handler(file, notes)
        fh.setFormatter(
            structlog.stdlib.ProcessorFormatter(processor=structlog.processors.JSONRenderer(), foreign_pre_chain=shared)
        )
        handlers.append(fh)
    for handler in handlers:
        handler.addFilter(_redact_record)
        handler._mcp_bridge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(numeric)
    # Libraries are chatty below WARNING (httpx2 logs every request line); let them through only when debugging.
    for name in ("httpx2", "httpcore", "mcp", "uvicorn", "sse_starlette"):
        logging.getLogger(name).setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)
    # The SDK logs a traceback for every ended OAuth flow, also for "needs a login", which the bridge reports itself.
    logging.getLogger("mcp.client.auth").setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.CRITICAL)
    for note in notes:  # structlog's own logger: this module's holds the lock this runs under
        structlog.get_logger(__name__).warning("log.file_permissions", path=file, note=note)


def _private_file_handler(file: str, notes: list[str]) -> logging.FileHandler:
    """A ``FileHandler`` whose file is private (0600), also when it opens the file again; notes go to ``notes``.

    The log holds tool names, URLs, digests and the user's email: only its owner reads it, like every state file."""
    import logging

    class PrivateFileHandler(logging.FileHandler):
        def _open(self) -> Any:
            fd, note = open_private(self.baseFilename)
            if note:
                notes.append(note)
            return open(fd, "a", encoding=self.encoding, errors=self.errors)

    return PrivateFileHandler(file, encoding="utf-8")


def open_private(path: str | os.PathLike[str]) -> tuple[int, str | None]:
    """Open ``path`` for appending, created with mode 0600; an existing file that others may read is narrowed to 0600.

    Returns the descriptor and, when the file was readable by others, a note saying what was done (for the caller to
    log: this module's logger may not be usable yet, e.g. while the log file itself is being opened)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    if os.name != "posix":  # permission bits mean little elsewhere (Windows: only read-only)
        return fd, None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not mode & 0o077:
        return fd, None
    try:
        os.fchmod(fd, 0o600)
    except OSError as exc:  # not the owner: the file still works, and the caller says what is wrong
        return fd, f"the file is readable by others (mode {mode:04o}) and could not be made private: {exc.strerror}"
    return fd, f"the file was readable by others (mode {mode:04o}); it is now private (0600)"


def enabled_for(level: int) -> bool:
    """Whether a message at ``level`` (``logging.DEBUG`` ...) would be logged: the configured level decides.

    The answer ``get_logger(name).is_enabled_for(level)`` gives, without building a structlog logger to ask (it is
    not cached, so every question costs a new bound logger: too slow for the call path).
    """
    return level >= _Settings.level


def get_logger(name: str) -> Any:
    """structlog's logger for ``name``; structlog itself loads with the first message (see the module docstring)."""
    return _Logger(name)


class _Logger:
    __slots__ = ("_name", "_proxy")

    def __init__(self, name: str) -> None:
        self._name = name
        self._proxy: Any = None

    def __getattr__(self, method: str) -> Any:
        if self._proxy is None:
            if _Settings.pending is not None and _METHOD_LEVELS.get(method, 100) < _Settings.level:
                return _drop  # a message below the configured level: no reason to load structlog for it
            activate()
            import structlog

            self._proxy = structlog.get_logger(self._name)
        return getattr(self._proxy, method)


def _drop(*args: Any, **kwargs: Any) -> None:
    return None
