"""HTTP client for identity servers: fetch identity documents and publish our own.

:class:`IdentityClient` talks to identity servers (:mod:`bitnode.userid.id_server`)
with treq over its own connection pool. Every attempt has a deadline on the
injected clock covering the whole exchange (connect, headers and body), and a
failed attempt that might succeed later (:class:`~bitnode.errors.Unavailable`)
is retried ``retries`` more times. Bodies are read incrementally and the
connection is dropped as soon as one grows past ``max_size``, so a hostile
server cannot make us buffer more than that.

Errors (all from :mod:`bitnode.errors`):

- connection refused, reset, DNS failure, 5xx or another odd status: ``Unavailable``;
- no complete answer within ``timeout`` seconds: ``Timeout`` (an ``Unavailable``);
- 404: ``NotFound``;
- a body over ``max_size``, a document that does not parse or verify, or one
  that is not served from one of its own sources: ``BadRequest``;
- on publish, the server's verdict: 400/413 ``BadRequest``, 403 ``Forbidden``,
  409 ``Conflict``.

A lost connection, a timeout or a 5xx answer is retried; ``NotFound``,
``BadRequest``, ``Forbidden`` and ``Conflict`` are final and never retried
(asking again would get the same answer).
"""

from __future__ import annotations

from typing import Any, Iterable

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

from bitnode import boundedjson, globalid
from bitnode.errors import BadRequest, BitnodeError, Conflict, Forbidden, NotFound, Timeout, Unavailable
from bitnode.userid.identity import Identity

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_SIZE = 65536

_XML_HEADERS = {b"Content-Type": [b"text/xml; charset=utf-8"], b"Accept": [b"text/xml"]}
# The order in which a failed publish reports its reason: the most telling first.
_PUBLISH_ERROR_RANK = (Conflict, Forbidden, BadRequest, NotFound, Timeout, Unavailable)


class BodyTooLarge(BadRequest):
    """A server sent a body larger than the client accepts."""


class _CappedBody(Protocol):
    """Collects a response body up to ``limit`` bytes, aborting the connection past it.

    A negative ``limit`` refuses the body as soon as it starts.
    """

    def __init__(self, limit: int, url: str):
        self._limit = limit
        self._url = url
        self._parts: list[bytes] = []
        self._size = 0
        self.finished: Deferred[bytes] = Deferred(self._cancel)

    def connectionMade(self) -> None:
        if self._limit < 0:
            # The headers already announced a body over the limit: refuse it unread.
            self._too_large()

    def _too_large(self) -> None:
        self._parts = []
        if self.transport is not None:
            self.transport.loseConnection()
        self.finished.errback(BodyTooLarge(f"{self._url}: answer is larger than the accepted size"))

    def _cancel(self, _d: Deferred) -> None:
        # A timeout cancels us: drop the connection so it is neither kept nor reused.
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._too_large()
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._parts))
        else:
            self.finished.errback(Unavailable(f"{self._url}: connection lost while reading the answer"))


def _server_message(body: bytes) -> str:
    """The first error text of a server's JSON error envelope, or ``""``."""
    try:
        envelope = boundedjson.loads(body, "error envelope")
        errors = envelope.get("errors") if isinstance(envelope, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], str):
            return errors[0][:300]
    except (ValueError, UnicodeDecodeError):
        pass
    return ""


class IdentityClient:
    """Fetches and publishes identity documents over HTTP.

    ``reactor`` makes the connections, ``clock`` times the attempts (tests may
    pass the reactor for both). Call :meth:`close` when done: it cancels
    requests in flight and closes the pooled connections.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        clock: IReactorTime,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 1,
        max_size: int = DEFAULT_MAX_SIZE,
    ):
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries must not be negative")
        if max_size <= 0:
            raise ValueError("max_size must be positive")
        self._clock = clock
        self._timeout = float(timeout)
        self._retries = int(retries)
        self._max_size = int(max_size)
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 2
        self._http = HTTPClient(Agent(reactor, pool=self._pool))
        self._in_flight: set[Deferred] = set()
        self._closed = False

    # -- public -----------------------------------------------------------

    def fetch(self, idurl: str) -> Deferred[Identity]:
        """GET the identity document at ``idurl``; fires with a verified :class:`Identity`.

        The document must be served from one of its own sources (normally its
        IDURL, the first source), so a server cannot hand out someone else's
        identity under this address.
        """
        return Deferred.fromCoroutine(self._fetch(idurl))

    def fetch_any(self, idurls: Iterable[str]) -> Deferred[Identity]:
        """Try each IDURL in turn; the first verified document wins, else the last error."""
        return Deferred.fromCoroutine(self._fetch_any(list(idurls)))

    def publish(self, identity: Identity) -> Deferred[list[str]]:
        """POST ``identity`` to each of its sources; fires with the sources that accepted it.

        Fails when none accepted, with the most telling refusal (``Conflict``
        when the name belongs to another key, then ``Forbidden``,
        ``BadRequest``, else ``Unavailable``).
        """
        return Deferred.fromCoroutine(self._publish(identity, identity.sources))

    def publish_to(self, identity: Identity, sources: Iterable[str]) -> Deferred[list[str]]:
        """Like :meth:`publish`, to some of its sources only (a new primary first, when rotating)."""
        wanted = [source for source in identity.sources if source in set(sources)]
        if not wanted:
            return defer.fail(BadRequest("none of those is a source of the identity"))
        return Deferred.fromCoroutine(self._publish(identity, wanted))

    def close(self) -> Deferred[None]:
        """Cancel requests in flight and close pooled connections."""
        self._closed = True
        for d in list(self._in_flight):
            d.cancel()
        return self._pool.closeCachedConnections()

    # -- fetching -----------------------------------------------------------

    async def _fetch(self, idurl: str) -> Identity:
        url = str(globalid.IdUrl.parse(idurl))
        code, body = await self._with_retries("GET", url, None)
        if code == 404:
            raise NotFound(f"{url}: no such identity")
        if code != 200:
            raise Unavailable(f"{url}: identity server answered HTTP {code}")
        identity = Identity.from_xml(body)
        if url not in identity.sources:
            raise BadRequest(f"{url}: served the identity of {identity.idurl}, not the one asked for")
        if not identity.verify():
            raise BadRequest(f"{url}: identity signature does not verify")
        return identity

    async def _fetch_any(self, idurls: list[str]) -> Identity:
        if not idurls:
            raise BadRequest("no IDURL to fetch the identity from")
        last: BaseException | None = None
        for idurl in idurls:
            try:
                return await self._fetch(idurl)
            except BitnodeError as err:
                self.log.debug("identity fetch from {idurl} failed: {err}", idurl=idurl, err=err)
                last = err
        assert last is not None
        raise last

    # -- publishing -----------------------------------------------------------

    async def _publish(self, identity: Identity, sources: list[str] | tuple[str, ...]) -> list[str]:
        if not identity.verify():
            raise BadRequest("refusing to publish an identity that is not validly signed")
        body = identity.to_xml()
        results = await defer.DeferredList(
            [Deferred.fromCoroutine(self._publish_one(source, body)) for source in sources],
            consumeErrors=True,
        )
        accepted: list[str] = []
        errors: list[BaseException] = []
        for source, (ok, result) in zip(sources, results, strict=True):
            if ok:
                accepted.append(source)
            else:
                errors.append(result.value)
        if accepted:
            return accepted
        raise min(errors, key=_publish_rank)

    async def _publish_one(self, url: str, body: bytes) -> None:
        code, answer = await self._with_retries("POST", url, body)
        if code == 200:
            return
        message = _server_message(answer) or f"HTTP {code}"
        text = f"{url}: identity server refused the identity: {message}"
        if code in (400, 413):
            raise BadRequest(text)
        if code == 403:
            raise Forbidden(text)
        if code == 404:
            raise NotFound(text)
        if code == 409:
            raise Conflict(text)
        raise Unavailable(text)

    # -- transport ------------------------------------------------------------

    async def _with_retries(self, method: str, url: str, body: bytes | None) -> tuple[int, bytes]:
        """Fires with the last ``(code, body)``; a 5xx answer is retried like a lost connection."""
        attempt = 0
        while True:
            try:
                code, answer = await self._attempt(method, url, body)
                if code < 500 or attempt >= self._retries or self._closed:
                    return code, answer
                reason: object = f"HTTP {code}"
            except Unavailable as err:
                if attempt >= self._retries or self._closed:
                    raise
                reason = err
            attempt += 1
            self.log.debug("{method} {url} failed ({why}); retry {n}", method=method, url=url, why=reason, n=attempt)

    def _attempt(self, method: str, url: str, body: bytes | None) -> Deferred[tuple[int, bytes]]:
        """One request with a deadline; fires with ``(status code, body)``."""
        if self._closed:
            return defer.fail(Unavailable("identity client is closed"))
        d = Deferred.fromCoroutine(self._exchange(method, url, body))
        timed_out: list[bool] = []

        def on_deadline() -> None:
            timed_out.append(True)
            d.cancel()

        deadline = self._clock.callLater(self._timeout, on_deadline)
        self._in_flight.add(d)

        def finish(result: Any) -> Any:
            self._in_flight.discard(d)
            if deadline.active():
                deadline.cancel()
            if isinstance(result, Failure):
                # Cancelling surfaces as CancelledError or, mid-request, wrapped in a
                # ResponseNeverReceived: the deadline flag says which it was.
                if timed_out:
                    raise Timeout(f"{method} {url}: no answer within {self._timeout:g} s")
                if result.check(CancelledError) or self._closed:
                    raise Unavailable(f"{method} {url}: cancelled")
                if result.check(BitnodeError) is None:
                    raise Unavailable(f"{method} {url}: {_describe(result)}")
            return result

        return d.addBoth(finish)

    async def _exchange(self, method: str, url: str, body: bytes | None) -> tuple[int, bytes]:
        response = await self._http.request(
            method,
            url,
            data=body,
            headers=_XML_HEADERS if body is not None else {b"Accept": [b"text/xml"]},
            allow_redirects=False,
            unbuffered=True,
        )
        length = response.length
        too_big = isinstance(length, int) and length > self._max_size
        # A limit of -1 makes the collector refuse the body before reading a byte of it.
        collector = _CappedBody(-1 if too_big else self._max_size, url)
        response.deliverBody(collector)
        data = await collector.finished
        return response.code, data


def _describe(failure: Failure) -> str:
    """A short text for a transport-level failure."""
    if failure.check(ConnectError, DNSLookupError):
        return f"cannot connect ({failure.getErrorMessage()})"
    if failure.check(ResponseFailed, ConnectionClosed):
        return "connection failed before an answer arrived"
    return f"{failure.type.__name__}: {failure.getErrorMessage()}"


def _publish_rank(err: BaseException) -> int:
    for rank, kind in enumerate(_PUBLISH_ERROR_RANK):
        if isinstance(err, kind):
            return rank
    return len(_PUBLISH_ERROR_RANK)
