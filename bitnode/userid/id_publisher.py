"""Where my identity is published, and publishing it with a background retry.

:func:`parse_server` reads an identity server address (``host:port``) as the
user gives it in ``preferred_servers`` or ``personal/identity-servers``.

:class:`Publisher` posts my identity through the identity client. A publish
that no server accepted is remembered (:attr:`Publisher.last_error`) and tried
again later with a growing pause (30 s, 60 s ... 10 min), through the owner's
lock so it never interleaves with a change of my identity. Time comes from the
injected ``call_later`` (the node's, so a stopped node leaves no timer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from bitnode import globalid
from bitnode.errors import BadRequest, BitnodeError
from bitnode.userid.identity import Identity

FIRST_DELAY = 30.0
MAX_DELAY = 600.0


def parse_server(text: str) -> tuple[str, int]:
    """An identity server ``host:port`` (also ``host``, ``http://host:port/``) -> (host, port)."""
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("identity server must be 'host:port'")
    value = text.strip()
    if value.lower().startswith("http://"):
        value = value[len("http://"):]
    value = value.rstrip("/")
    host, sep, port_text = value.partition(":")
    host = host.lower()
    try:
        globalid.validate_host(host)
        port = int(port_text) if sep else globalid.DEFAULT_PORT
        globalid.validate_port(port)
    except (BadRequest, ValueError):
        raise BadRequest(f"identity server {text!r} is not of the form host:port") from None
    return host, port


def parse_servers(texts: list[str]) -> list[tuple[str, int]]:
    """Several servers, parsed, duplicates dropped, order kept."""
    servers: list[tuple[str, int]] = []
    for text in texts:
        server = parse_server(text)
        if server not in servers:
            servers.append(server)
    return servers


@dataclass(eq=False, repr=False)
class Publisher:
    """Publishes my identity; retries failed publishes in the background.

    ``client()`` returns the identity client (None once stopped),
    ``current()`` my identity now (None once erased), ``serialise(fn)`` runs
    ``fn() -> Deferred`` under the owner's lock, ``call_later`` schedules.
    """

    log = Logger()

    _client: Callable[[], Any]
    _current: Callable[[], Identity | None]
    _serialise: Callable[[Callable[[], Deferred]], Deferred]
    _call_later: Callable[..., Any]
    published_revision: int = field(init=False, default=0)
    last_error: str = field(init=False, default="")
    _call: Any = field(init=False, default=None)
    _failures: int = field(init=False, default=0)

    async def publish(self, identity: Identity) -> list[str]:
        """Publish ``identity``; fires with the accepting sources. On failure schedule a retry and re-raise."""
        try:
            accepted = await self._client().publish(identity)
        except BitnodeError as err:
            self._failed(err)
            raise
        self.mark_published(identity)
        return accepted

    async def publish_or_retry(self, identity: Identity) -> list[str]:
        """Like :meth:`publish`, but a failure only schedules the retry (fires with ``[]``)."""
        try:
            return await self.publish(identity)
        except BitnodeError:
            return []

    def mark_published(self, identity: Identity) -> None:
        """Record that the servers hold ``identity`` (a retry is no longer needed)."""
        self.published_revision = max(self.published_revision, identity.revision)
        self.last_error = ""
        self._failures = 0
        self.cancel()

    def reset(self) -> None:
        """Forget everything (my identity was erased)."""
        self.cancel()
        self._failures = 0
        self.published_revision = 0
        self.last_error = ""

    def cancel(self) -> None:
        """Cancel a scheduled retry."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    @property
    def retry_pending(self) -> bool:
        """True while a retry is scheduled."""
        return self._call is not None and self._call.active()

    def _failed(self, err: BaseException) -> None:
        self.last_error = str(err)
        self.log.warn("publishing my identity failed: {err}", err=err)
        if not self.retry_pending:
            delay = min(FIRST_DELAY * 2 ** self._failures, MAX_DELAY)
            self._failures += 1
            self._call = self._call_later(delay, self._retry)

    def _retry(self) -> None:
        self._call = None

        async def again() -> None:
            identity = self._current()
            if identity is not None and self._client() is not None:
                await self.publish_or_retry(identity)

        d = self._serialise(lambda: Deferred.fromCoroutine(again()))
        d.addErrback(lambda failure: self.log.failure("republishing my identity failed", failure))
