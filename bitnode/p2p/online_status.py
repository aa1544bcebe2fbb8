"""Who is online: per-peer status from the traffic we see, and pings.

A peer's state is one of:

- ``UNKNOWN``   we never exchanged anything;
- ``PING``      a ping (an ``Identity`` packet waiting for its ``Ack``) is in flight;
- ``CONNECTED`` the last thing we heard was a valid packet from them (any
  command: the gateway tells us about every one);
- ``OFFLINE``   the last thing that happened was a failure: a ping without
  an Ack, a packet they did not answer in time, a connection refused.

``CONNECTED`` is only as fresh as ``last_seen``: :meth:`OnlineStatus.check`
pings a peer whose last packet is older than ``online_window`` seconds.
The table is bounded; the peers heard from longest ago are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from bitnode import globalid
from bitnode.errors import BadRequest, NotFound, Timeout, Unavailable
from bitnode.transport.packet_out import PeerRefused

UNKNOWN, PING, CONNECTED, OFFLINE = "UNKNOWN", "PING", "CONNECTED", "OFFLINE"


class _Record:
    def __init__(self, global_id: str) -> None:
        self.global_id = global_id
        self.state = UNKNOWN
        self.since: Optional[float] = None
        self.last_seen: Optional[float] = None
        self.last_round_trip: Optional[float] = None
        self.last_error = ""
        self.pings = 0


class OnlineStatus:
    """Online status of the peers of one node.

    :param clock: time source.
    :param gateway: the :class:`~bitnode.transport.gateway.Gateway` (its
        ``ping`` and ``add_listener``).
    :param online_window: seconds a packet from a peer counts as proof it is online.
    :param max_peers: peers remembered.
    """

    def __init__(self, clock: IReactorTime, gateway: Any, online_window: float = 300.0,
                 max_peers: int = 10_000) -> None:
        self.clock = clock
        self.gateway = gateway
        self.online_window = float(online_window)
        self.max_peers = max_peers
        self._peers: OrderedDict[str, _Record] = OrderedDict()
        gateway.add_listener(self._traffic)

    def stop(self) -> None:
        """Stop listening to the gateway."""
        self.gateway.remove_listener(self._traffic)

    # -- queries ---------------------------------------------------------------

    def status(self, user_id: str) -> dict:
        """The status of ``user_id`` (a global id or an IDURL), from what we saw."""
        global_id = _global_id(user_id)
        record = self._peers.get(global_id) or _Record(global_id)
        now = self.clock.seconds()
        return {
            "global_id": global_id,
            "idurl": globalid.global_id_to_idurl(global_id),
            "state": record.state,
            "online": record.state == CONNECTED and self._fresh(record, now),
            "since": record.since,
            "last_seen": record.last_seen,
            "seconds_since_seen": None if record.last_seen is None else round(now - record.last_seen, 3),
            "last_round_trip": record.last_round_trip,
            "last_error": record.last_error,
        }

    def recent_peers(self, limit: int) -> list[str]:
        """Up to ``limit`` peers heard from within the online window, most recent first."""
        now = self.clock.seconds()
        fresh = [r for r in self._peers.values() if r.last_seen is not None and self._fresh(r, now)]
        fresh.sort(key=lambda r: r.last_seen, reverse=True)
        return [r.global_id for r in fresh[:limit]]

    def counts(self) -> dict:
        """How many peers are in each state."""
        counts = {UNKNOWN: 0, PING: 0, CONNECTED: 0, OFFLINE: 0}
        for record in self._peers.values():
            counts[record.state] += 1
        return counts

    # -- pinging ------------------------------------------------------------------

    def ping(self, user_id: str, timeout: float, retries: int = 0) -> Deferred:
        """Send our identity and wait for an Ack, ``retries`` more times if none comes.

        Each attempt waits up to ``timeout`` seconds.  Fires with the status
        plus ``round_trip`` (seconds) and ``attempts``; fails with ``Timeout``
        or ``Unavailable`` when no attempt got an Ack, ``NotFound`` for an
        unknown user, ``PeerRefused`` (409) when the peer answered Fail.
        """
        global_id = _global_id(user_id)
        if not timeout > 0:
            raise BadRequest("timeout must be positive")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise BadRequest("retries must be a non-negative integer")
        return Deferred.fromCoroutine(self._ping(global_id, float(timeout), retries))

    async def _ping(self, global_id: str, timeout: float, retries: int) -> dict:
        record = self._record(global_id)
        self._set(record, PING)
        last_error: Exception = Timeout(f"no Ack from {global_id}")
        for attempt in range(1, retries + 2):
            started = self.clock.seconds()
            record.pings += 1
            try:
                await self.gateway.ping(global_id, timeout=timeout)
            except PeerRefused as err:
                self._set(record, CONNECTED)  # it answered, but said no
                record.last_error = str(err)
                raise
            except NotFound as err:
                self._failed(record, err)
                raise
            except Unavailable as err:  # Timeout included
                last_error = err
                continue
            round_trip = self.clock.seconds() - started
            record.last_round_trip = round(round_trip, 6)
            record.last_error = ""
            self._set(record, CONNECTED)
            self._seen(record)
            result = self.status(global_id)
            result.update({"round_trip": round(round_trip, 6), "attempts": attempt})
            return result
        self._failed(record, last_error)
        if isinstance(last_error, Timeout):
            raise Timeout(f"{global_id} did not answer {retries + 1} ping(s) within {timeout:g}s each")
        raise last_error

    def check(self, user_id: str, timeout: float) -> Deferred:
        """The status, pinging once first unless a packet came from them within the window.

        Never fails for an offline peer: the answer says ``OFFLINE``.
        """
        global_id = _global_id(user_id)
        record = self._peers.get(global_id)
        if record is not None and record.state == CONNECTED and self._fresh(record, self.clock.seconds()):
            return succeed(self.status(global_id))
        d = self.ping(global_id, timeout, 0)

        def offline(failure: Any) -> dict:
            failure.trap(Unavailable, NotFound, PeerRefused)
            return self.status(global_id)

        return d.addErrback(offline)

    # -- feeding ----------------------------------------------------------------------

    def _traffic(self, peer_id: str, what: str) -> None:
        record = self._record(peer_id)
        if what == "received":
            self._seen(record)
        elif record.state != PING:  # a ping in flight decides for itself
            self._set(record, OFFLINE)
            record.last_error = what

    def _seen(self, record: _Record) -> None:
        record.last_seen = self.clock.seconds()
        if record.state != PING:
            self._set(record, CONNECTED)
        self._peers.move_to_end(record.global_id)

    def _failed(self, record: _Record, err: Exception) -> None:
        self._set(record, OFFLINE)
        record.last_error = str(err)

    def _set(self, record: _Record, state: str) -> None:
        if record.state != state:
            record.state = state
            record.since = self.clock.seconds()

    def _fresh(self, record: _Record, now: float) -> bool:
        return record.last_seen is not None and now - record.last_seen <= self.online_window

    def _record(self, global_id: str) -> _Record:
        record = self._peers.get(global_id)
        if record is None:
            record = self._peers[global_id] = _Record(global_id)
            while len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        return record


def _global_id(user_id: str) -> str:
    """A global id or an IDURL -> the canonical global id (BadRequest otherwise)."""
    return str(globalid.to_global_id(user_id))
