"""Finding a peer again after it was recovered on a new machine, or after it forgot us.

A user who recovers an identity from the master key on a new machine comes
back with new contacts, a new packet key (certified by a higher revision of
the identity document) and an empty identity cache, while peers hold the old
document.  The :class:`~bitnode.transport.gateway.Gateway` mixes this in:

- a peer whose packet we cannot verify gets a ``Fail`` asking it to introduce
  itself (:meth:`Reintroduction._on_stranger`, see
  :mod:`bitnode.transport.introduction`); nothing of its packet is used;
- when our packet is refused that way, we send our ``Identity`` and then the
  same packet again, once (:meth:`Reintroduction._reintroduce`); a packet
  sent without waiting is lost, but we still introduce ourselves
  (:meth:`Reintroduction._introduce_once`);
- when a peer does not answer in time, its identity is fetched again (at most
  once per ``REFRESH_INTERVAL``) and a route to an address it no longer
  publishes is forgotten (:meth:`Reintroduction._recheck`); a refused
  connection is handled in the gateway's delivery itself.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from bitnode.errors import BitnodeError
from bitnode.transport.commands import Command
from bitnode.transport.introduction import stranger_refusal
from bitnode.transport.packet import Packet
from bitnode.transport.packet_out import PacketOut
from bitnode.transport.tcp import Address

#: A peer's identity is looked up again, or we introduce ourselves to it, at most this often (seconds).
REFRESH_INTERVAL = 30.0


class Reintroduction:
    """Gateway methods for peers that moved or forgot us (needs the gateway's attributes)."""

    clock: Any
    log: Any
    transport: Any
    _peers: Any

    def _on_stranger(self, packet: Packet, conn: Any) -> None:
        """A packet we could not verify: tell its sender, on its own connection, to introduce itself."""
        try:
            answer = self.build(Command.FAIL, packet.creator_id, stranger_refusal(packet.packet_id))
            self.transport.answer_on(conn, answer)
        except BitnodeError as err:
            self.log.info("could not answer unknown sender {who}: {err}", who=packet.creator_id, err=err)

    async def _reintroduce(self, machine: PacketOut, refusal: Packet) -> None:
        """The peer does not know us (it was recovered, or forgot us): send our identity, then the packet again.

        Once per packet; if either step fails the caller gets the peer's original refusal.
        """
        left = machine.started_at + machine.timeout - self.clock.seconds()
        try:
            await self.ping(machine.packet.remote_id, timeout=max(left, 0.1))
            if not machine.destroyed:
                await self._write(machine)
        except Exception as err:  # whatever went wrong, the peer's refusal stands
            self.log.info("could not introduce ourselves to {who}: {err}", who=machine.packet.remote_id, err=err)
            if not machine.destroyed:
                machine.event("fail", refusal)

    def _introduce_once(self, peer_id: str) -> None:
        """Ping a peer that does not know us, at most once per :data:`REFRESH_INTERVAL`."""
        peer = self._peer(peer_id)
        if self.clock.seconds() - peer.introduced_at < REFRESH_INTERVAL:
            return
        peer.introduced_at = self.clock.seconds()
        self.ping(peer_id).addErrback(
            lambda f: self.log.info("could not introduce ourselves to {who}: {err}", who=peer_id,
                                    err=f.getErrorMessage()))

    def _recheck(self, peer_id: str) -> None:
        """A peer did not answer: if its identity server has other contacts now, forget the old route.

        At most once per :data:`REFRESH_INTERVAL`; the next packet then goes to the new address.
        """
        peer = self._peers.get(peer_id)
        if peer is None or peer.address is None or self.clock.seconds() - peer.refreshed_at < REFRESH_INTERVAL:
            return
        old = peer.address

        def compare(address: Address) -> None:
            if address != old and peer.address == old:
                peer.address = None

        d = Deferred.fromCoroutine(self._resolve(peer, refresh=True))
        d.addCallbacks(compare, lambda f: self.log.info("could not refresh {who}: {err}", who=peer_id,
                                                        err=f.getErrorMessage()))
