"""What reaches the log: the ``logs/debug-level`` setting, and secrets kept out of every line.

Two pieces:

- :class:`LogControl`, one per process (``twistd bitnode`` builds it): it wraps
  the process's log observer, drops events below the level that
  ``logs/debug-level`` asks for, and redacts secrets from every event that
  passes. It also sets txaio's level, which decides whether autobahn's own
  loggers make debug events at all.
- :class:`RedactingLogger`, a ``twisted.logger.Logger`` for code that handles
  secrets in the open (the WebSocket protocol, whose library logs handshake
  URLs and headers): its debug events cost nothing unless debug is on, and
  what it emits is redacted already, whoever observes the log.

Redaction removes the value after an ``api_secret``/``api-secret`` name in
URLs (``?api_secret=...``), header lines (``api_secret: ...``) and reprs of
dicts (``'api_secret': '...'``), and any secret registered with
:meth:`LogControl.add_secret`, wherever it appears.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

DEBUG_LEVEL_KEY = "logs/debug-level"
REDACTED = "<redacted>"

_PRIORITY = {LogLevel.debug: 0, LogLevel.info: 1, LogLevel.warn: 2, LogLevel.error: 3, LogLevel.critical: 4}

# A secret's name, what separates it from its value (=, :, quotes, %3D / %3A when %-encoded), then the value.
_NAMED = r"(api[_-]secret)((?:['\"]?\s*(?:=|:|%3[dDaA])\s*['\"]?))([^&\s'\",;<>]+)"
_NAMED_TEXT = re.compile(_NAMED, re.IGNORECASE)
_NAMED_BYTES = re.compile(_NAMED.encode("ascii"), re.IGNORECASE)
_SECRET_KEYS = frozenset({"api_secret", "api-secret"})


def level_for(debug_level: int) -> LogLevel:
    """The lowest log level written for a ``logs/debug-level`` value (0 quiet ... 20 everything).

    0 writes errors only, 1-3 warnings too, 4-7 (the default 4) information,
    8 and more debug events as well.
    """
    if debug_level <= 0:
        return LogLevel.error
    if debug_level < 4:
        return LogLevel.warn
    if debug_level < 8:
        return LogLevel.info
    return LogLevel.debug


#: How deep redaction looks into dicts, lists and tuples of a log event (deeper values are kept as they are).
MAX_REDACT_DEPTH = 6


def redact(value: Any, secrets: Iterable[str] = (), _depth: int = 0) -> Any:
    """``value`` with secrets replaced by ``<redacted>``; text, bytes, dicts, lists and tuples are searched.

    Returns ``value`` itself (the same object) when there is nothing to hide.
    """
    if isinstance(value, str):
        out = _NAMED_TEXT.sub(r"\1\2" + REDACTED, value) if "secret" in value.lower() else value
        for secret in secrets:
            if secret in out:
                out = out.replace(secret, REDACTED)
        return out if out != value else value
    if isinstance(value, (bytes, bytearray)):
        out = bytes(value)
        if b"secret" in out.lower():
            out = _NAMED_BYTES.sub(rb"\1\2" + REDACTED.encode("ascii"), out)
        for secret in secrets:
            raw = secret.encode("utf-8", "replace")
            if raw in out:
                out = out.replace(raw, REDACTED.encode("ascii"))
        return out if out != value else value
    if _depth >= MAX_REDACT_DEPTH:
        return value
    if isinstance(value, dict):
        changed = {}
        for key, item in value.items():
            name = key.decode("latin-1") if isinstance(key, (bytes, bytearray)) else key
            if isinstance(name, str) and name.lower() in _SECRET_KEYS:
                changed[key] = REDACTED
                continue
            hidden = redact(item, secrets, _depth + 1)
            if hidden is not item:
                changed[key] = hidden
        return {**value, **changed} if changed else value
    if isinstance(value, (list, tuple)):
        items = [redact(item, secrets, _depth + 1) for item in value]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return type(value)(items) if isinstance(value, tuple) else items
    return value


def redact_event(event: dict, secrets: Iterable[str] = ()) -> dict:
    """A log event with secrets redacted from its fields, its format and its failure's message.

    The same dict when there is nothing to hide, else a copy (the original may be seen by others).
    """
    changed = {}
    for key, value in event.items():
        if key == "log_failure":
            failure = _redact_failure(value, secrets)
            if failure is not value:
                changed[key] = failure
        elif key in ("log_logger", "log_level", "log_time", "log_trace", "log_source", "log_observer"):
            continue
        else:
            hidden = redact(value, secrets)
            if hidden is not value:
                changed[key] = hidden
    return {**event, **changed} if changed else event


def _redact_failure(failure: Any, secrets: Iterable[str]) -> Any:
    if not isinstance(failure, Failure):
        return failure
    message = str(failure.value)
    hidden = redact(message, secrets)
    if hidden is message:
        return failure
    # The exception's own text held a secret: keep its type and the redacted text (its traceback goes).
    return Failure(RuntimeError(f"{failure.type.__name__}: {hidden}"))


class LogControl:
    """The process's log filter (see the module docstring); follows one node's settings."""

    def __init__(self, debug_level: int = 4):
        self._secrets: list[str] = []
        self.level = LogLevel.info
        self.set_debug_level(debug_level)

    def set_debug_level(self, debug_level: int) -> None:
        """Apply a ``logs/debug-level`` value: the level written, and txaio's (autobahn's loggers)."""
        import txaio

        txaio.use_twisted()  # autobahn's twisted side does the same on import; needed before setting the level
        self.level = level_for(int(debug_level))
        self._priority = _PRIORITY[self.level]
        txaio.set_global_log_level("debug" if self.level is LogLevel.debug else "info")

    def follow(self, settings: Any) -> None:
        """Take ``logs/debug-level`` from ``settings`` now and whenever it changes."""
        self.set_debug_level(settings.get(DEBUG_LEVEL_KEY))
        settings.add_listener(DEBUG_LEVEL_KEY, lambda key, old, new: self.set_debug_level(new))

    def add_secret(self, secret: str) -> None:
        """Redact ``secret`` wherever it appears from now on (secrets shorter than 8 characters are ignored)."""
        if secret and len(secret) >= 8 and secret not in self._secrets:
            self._secrets.append(secret)

    def wrap(self, observer: Callable[[dict], None]) -> ILogObserver:
        """An observer that filters and redacts events, then hands them to ``observer``."""
        control = self

        @implementer(ILogObserver)
        def filtered(event: dict) -> None:
            if _PRIORITY.get(event.get("log_level"), 1) < control._priority:
                return
            observer(redact_event(event, control._secrets))

        return filtered


class RedactingLogger(Logger):
    """A Logger whose events are redacted before anyone sees them, and whose debug events are off by default.

    ``debug_enabled`` is a callable asked on each debug call (cheap: the
    node's current setting), so debug chatter from a busy protocol costs one
    call when it is off.
    """

    def __init__(self, namespace: str | None = None, source: object = None, observer=None,
                 debug_enabled: Callable[[], bool] = lambda: False, secrets: Callable[[], Iterable[str]] = tuple):
        super().__init__(namespace, source, observer)
        self._debug_enabled = debug_enabled
        self._secrets = secrets

    def __get__(self, instance, owner=None):
        """Used as a class attribute, it logs with the instance as the source (like Logger)."""
        if instance is None:
            return self
        return RedactingLogger(self.namespace, instance, self.observer, self._debug_enabled, self._secrets)

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        """Drop a debug event unless debug is on; redact the rest, then emit."""
        if level is LogLevel.debug and not self._debug_enabled():
            return
        secrets = tuple(self._secrets())
        hidden = redact_event(kwargs, secrets)
        super().emit(level, redact(format, secrets) if format else format, **hidden)
