"""Who may call the local API: the secret token, local Host/Origin checks, and rate limits.

Order of the checks for every request (REST) and every WebSocket handshake
and message: the rate limit first, per client host, so that guessing the
secret costs tokens like any other request; then Origin and Host; then the
secret.
"""

from __future__ import annotations

import hmac
import os
import secrets
from urllib.parse import urlsplit

from twisted.internet.interfaces import IReactorTime

from bitnode.errors import Forbidden, TooManyRequests, Unauthorized
from bitnode.main.fileutil import atomic_write

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def load_or_create_secret(path: str) -> str:
    """Read the API secret from ``path``, creating a random one (mode 0600) on first start."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            secret = handle.read().strip()
        if secret:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
            return secret
    secret = secrets.token_urlsafe(32)
    atomic_write(path, secret.encode("ascii"), mode=0o600)
    return secret


def _host_of(value: str) -> str:
    """Host part of a Host header ("127.0.0.1:8180", "[::1]:8180", "localhost")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


class ApiGuard:
    """Checks every API request: local Host, local or absent Origin, right secret."""

    # Host header values already accepted ("127.0.0.1:8180"): clients send the same one every time.
    MAX_KNOWN_HOSTS = 64

    def __init__(self, secret: str, extra_hosts: tuple[str, ...] = ()):
        self._secret = secret.encode("utf-8")
        self._hosts = LOCAL_HOSTS | {h.lower() for h in extra_hosts if h and h not in ("0.0.0.0", "::")}
        self._known_hosts: set[str | bytes] = set()

    def check_host(self, host_header: str | bytes | None) -> None:
        """Refuse requests addressed to a non-local name (DNS rebinding). A missing Host is allowed."""
        if not host_header or host_header in self._known_hosts:
            return
        text = host_header.decode("latin-1") if isinstance(host_header, bytes) else host_header
        if _host_of(text) not in self._hosts:
            raise Forbidden("requests must be addressed to this machine (Host header is not local)")
        if len(self._known_hosts) < self.MAX_KNOWN_HOSTS:
            self._known_hosts.add(host_header)

    def check_origin(self, origin: str | bytes | None) -> None:
        """Refuse browser requests from foreign pages (CSRF). Non-browser clients send no Origin."""
        if not origin:
            return
        if isinstance(origin, bytes):
            origin = origin.decode("latin-1")
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https", "ws", "wss") or (parts.hostname or "").lower() not in self._hosts:
            raise Forbidden("requests from a foreign Origin are refused")

    def check_secret(self, given: str | bytes | None) -> None:
        """Compare the given token with the secret in constant time."""
        if given is None or given == "" or given == b"":
            raise Unauthorized("missing api_secret (header 'api_secret', see basedir/metadata/apisecret)")
        if not isinstance(given, (str, bytes)):
            raise Unauthorized("api_secret must be text")
        if isinstance(given, str):
            given = given.encode("utf-8", "replace")
        if not hmac.compare_digest(given, self._secret):
            raise Unauthorized("wrong api_secret")

    def check_local(self, host: str | bytes | None, origin: str | bytes | None) -> None:
        """Origin and Host only (a WebSocket client may send the secret in its first message instead)."""
        if origin:
            self.check_origin(origin)
        if host and host not in self._known_hosts:
            self.check_host(host)

    def check(self, host: str | bytes | None, origin: str | bytes | None, secret: str | bytes | None) -> None:
        """All three checks, in the order that leaks least: origin and host, then the secret.

        Header values may be given as received (bytes) or as text.
        """
        self.check_local(host, origin)
        if type(secret) is bytes and secret and hmac.compare_digest(secret, self._secret):
            return  # the usual case, without one more call
        self.check_secret(secret)


class RateLimiter:
    """Token buckets per client: ``rate`` requests per second, bursts up to ``burst``.

    A client is a host (an IP address), the same key for HTTP and WebSocket:
    opening more connections buys no more requests. The limits are values,
    changed with :meth:`configure` (the node calls it when the settings
    change), not read from the settings on every request.
    """

    MAX_CLIENTS = 4096

    def __init__(self, clock: IReactorTime, rate: float, burst: float):
        self._clock = clock
        self.rate = 0.0
        self._burst = 1.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self.configure(rate, burst)

    @property
    def burst(self) -> float:
        """Requests a client may send at once."""
        return self._burst

    def configure(self, rate: float, burst: float) -> None:
        """New limits, applied from the next request on; every client starts again with a full burst."""
        #: Requests per second per client; 0 (false) when there is no limit, so callers may skip :meth:`hit`.
        self.rate = max(0.0, float(rate))
        self._burst = float(burst)
        self._buckets.clear()

    def hit(self, client: str) -> None:
        """Take one token for ``client`` or raise TooManyRequests with the wait in seconds."""
        rate = self.rate
        if rate <= 0:
            return
        burst = self._burst
        now = self._clock.seconds()
        tokens, last = self._buckets.get(client, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            raise TooManyRequests("too many requests; slow down", retry_after=(1.0 - tokens) / rate)
        if len(self._buckets) >= self.MAX_CLIENTS and client not in self._buckets:
            self._buckets.clear()
        self._buckets[client] = (tokens - 1.0, now)
