"""Knowing a server's open connections, so a stopping service can close them.

Stopping to listen leaves accepted connections open, with their idle timers;
a node (or its identity server) that stops must close them itself, or they
outlive it. Tracking happens once per connection, in the protocol's
``connectionMade``/``connectionLost`` (:class:`TrackedProtocol`), not by
wrapping every read and write.

Use: give the factory a ``connections = ConnectionSet()`` attribute and build
protocols that mix in :class:`TrackedProtocol`; :class:`TrackingSite` does
both for a ``twisted.web`` Site.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.web.http import HTTPChannel
from twisted.web.server import Site


class ConnectionSet:
    """The open connections (protocols) of one server factory."""

    def __init__(self) -> None:
        self._open: set = set()
        self._when_empty: list[defer.Deferred] = []

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self):
        return iter(list(self._open))

    def opened(self, protocol) -> None:
        """A connection was made."""
        self._open.add(protocol)

    def closed(self, protocol) -> None:
        """A connection went away; tell :meth:`close_all` when it was the last one."""
        self._open.discard(protocol)
        if not self._open and self._when_empty:
            waiters, self._when_empty = self._when_empty, []
            for waiter in waiters:
                waiter.callback(None)

    def close_all(self, clock: IReactorTime | None = None, grace: float = 0.0) -> defer.Deferred:
        """Close every connection; fires once all are gone.

        With ``grace`` > 0 (and a ``clock``), connections are closed politely
        first — a protocol with a ``close_for_shutdown()`` method closes itself
        (a WebSocket close frame), others lose the connection once written
        data is flushed — and those still open after ``grace`` seconds are
        aborted. Without, every connection is aborted at once.
        """
        if not self._open:
            return defer.succeed(None)
        done: defer.Deferred = defer.Deferred()
        self._when_empty.append(done)
        if grace <= 0 or clock is None:
            self._abort_all()
            return done
        for protocol in list(self._open):
            closer = getattr(protocol, "close_for_shutdown", None)
            if closer is not None:
                closer()
            elif protocol.transport is not None:
                protocol.transport.loseConnection()
        abort = clock.callLater(grace, self._abort_all)

        def cancel_abort(result):
            if abort.active():
                abort.cancel()
            return result

        return done.addBoth(cancel_abort)

    def _abort_all(self) -> None:
        for protocol in list(self._open):
            if protocol.transport is not None:
                protocol.transport.abortConnection()


class TrackedProtocol:
    """Protocol mixin (put it first in the bases): registers the connection in ``factory.connections``."""

    def connectionMade(self):
        """Register, then let the protocol start."""
        self.factory.connections.opened(self)
        super().connectionMade()

    def connectionLost(self, reason):
        """Let the protocol clean up, then unregister."""
        try:
            super().connectionLost(reason)
        finally:
            self.factory.connections.closed(self)


class TrackedHTTPChannel(TrackedProtocol, HTTPChannel):
    """An HTTP/1.1 channel that registers itself with its Site (plain TCP: no HTTP/2 negotiation)."""


class TrackingSite(Site):
    """A ``twisted.web`` Site whose open connections are in ``self.connections``."""

    protocol = TrackedHTTPChannel

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.connections = ConnectionSet()
