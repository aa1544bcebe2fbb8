"""The local API's limits on what a client may send, and the counters of what they refused.

One :class:`ApiLimits` per node is shared by the HTTP request reader, the
WebSocket protocol and the dispatcher. Its values come from the settings
(``interface/api/max-body-bytes``, ``interface/api/max-json-depth``,
``interface/api/ws-auth-timeout``) and follow them when they change; its counters are in ``process_info`` under
``api_limits``, so an operator sees what was refused and why.
"""

from __future__ import annotations

from typing import Any

from bitnode import boundedjson

MAX_BODY_KEY = "interface/api/max-body-bytes"
MAX_DEPTH_KEY = "interface/api/max-json-depth"
WS_AUTH_TIMEOUT_KEY = "interface/api/ws-auth-timeout"
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_MAX_DEPTH = boundedjson.MAX_DEPTH
DEFAULT_WS_AUTH_TIMEOUT = 10.0

#: What the counters count (each starts at 0).
COUNTERS = (
    "refused_at_headers",    # HTTP requests answered 401/403/429 as soon as their headers arrived
    "body_too_large",        # 413: Content-Length or the streamed body (or a WebSocket message) over the limit
    "body_bytes_discarded",  # body bytes thrown away unread after a refusal
    "json_malformed",        # bodies, frames and JSON-typed values that are not JSON (400)
    "json_too_deep",         # ... or nest deeper than the limit (400)
    "rate_limited",          # 429 answers, HTTP and WebSocket
    "ws_handshakes_refused",  # WebSocket handshakes refused (rate limit, Host, Origin, secret, bad since)
    "ws_auth_timeouts",      # WebSocket clients that never authenticated in time and were closed
)


class ApiLimits:
    """Limits on request bodies and JSON nesting, plus counters of refusals."""

    def __init__(self, max_body_bytes: int = DEFAULT_MAX_BODY, max_json_depth: int = DEFAULT_MAX_DEPTH,
                 ws_auth_timeout: float = DEFAULT_WS_AUTH_TIMEOUT):
        #: Largest request body (HTTP) or message (WebSocket), in bytes.
        self.max_body_bytes = int(max_body_bytes)
        #: Deepest nesting of lists and objects in JSON a client sends.
        self.max_json_depth = int(max_json_depth)
        #: Seconds a WebSocket client connected without the secret has to send its "auth" message.
        self.ws_auth_timeout = float(ws_auth_timeout)
        self.refused: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    @classmethod
    def from_settings(cls, settings: Any) -> ApiLimits:
        """Limits with the values of ``settings``, kept current by a settings listener."""
        limits = cls(settings.get(MAX_BODY_KEY), settings.get(MAX_DEPTH_KEY), settings.get(WS_AUTH_TIMEOUT_KEY))

        def changed(key: str, old: Any, new: Any) -> None:
            if key == MAX_BODY_KEY:
                limits.max_body_bytes = int(new)
            elif key == MAX_DEPTH_KEY:
                limits.max_json_depth = int(new)
            elif key == WS_AUTH_TIMEOUT_KEY:
                limits.ws_auth_timeout = float(new)

        for key in (MAX_BODY_KEY, MAX_DEPTH_KEY, WS_AUTH_TIMEOUT_KEY):
            settings.add_listener(key, changed)
        return limits

    def count(self, what: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``what`` (one of :data:`COUNTERS`)."""
        self.refused[what] += amount

    def count_json_error(self, err: boundedjson.BadJson) -> None:
        """Count a refused JSON document as too deep or malformed."""
        self.count("json_too_deep" if isinstance(err, boundedjson.TooDeep) else "json_malformed")

    def status(self) -> dict:
        """The limits and the counters, for process_info."""
        return {"max_body_bytes": self.max_body_bytes, "max_json_depth": self.max_json_depth,
                "ws_auth_timeout": self.ws_auth_timeout, "refused": dict(self.refused)}
