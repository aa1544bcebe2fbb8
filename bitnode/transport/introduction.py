"""Identity packets: how a peer shows us its identity document, and how a stranger introduces itself.

An ``Identity`` packet carries its creator's signed identity document.  For
a sender whose key we already know, the transport verifies the packet as
usual and :func:`carried_identity` reads the document out of it.

A sender we know no key for cannot pass the transport's signature check.
:class:`IntroducingTransport` lets exactly one kind of packet through: an
``Identity`` packet, of at most a few KiB, whose document is its creator's
own and validly signed (:func:`introduced_identity`); the packet is then
verified with the key in that document (:class:`IdentityKeyVerifier`) and
replay-checked in a cache of its own (strangers never touch the one
confirmed peers use).  Each source IP may make only so many introductions a
minute.  Such a document is not trusted yet: the gateway first asks the
sender's identity server for the published one and compares the keys
(:func:`confirm_introduction`), so a made-up document cannot pin a wrong key.
The same path serves a known sender whose packet no longer verifies with the
cached key: a node recovered on a new machine signs with a new packet key,
certified in a newer revision of its identity (same pinned master key).

Any other packet from a sender we cannot verify is not processed; the
transport tells the gateway (``on_stranger``), which answers it on the same
connection with a ``Fail`` saying :data:`UNKNOWN_SENDER` (:func:`stranger_refusal`).  The
sender then introduces itself with an ``Identity`` packet and sends again
(:func:`asks_introduction`).  That ``Fail`` only goes back where the frame
came from, so a forged packet cannot direct it at anybody else.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred

from bitnode.crypt import fastsign, keys
from bitnode.errors import BadRequest, Forbidden
from bitnode.transport.commands import Command
from bitnode.transport.limits import PeerLimits, RateLimit
from bitnode.transport.packet import BadPacket, Packet, PacketHead, UnknownSender
from bitnode.transport.replay import ReplayCache
from bitnode.transport.tcp import INTRODUCTION, PacketConnection, TCPTransport
from bitnode.userid.identity import Identity

#: The ``Fail`` payload a node answers to a packet whose sender it cannot verify.
UNKNOWN_SENDER = "unknown sender: introduce yourself with an Identity packet"

#: Commands never answered with that ``Fail`` (no answers to answers; a bad Identity is just dropped).
_NOT_ANSWERED = frozenset({Command.ACK.value, Command.FAIL.value, Command.IDENTITY.value})


def stranger_refusal(packet_id: str) -> bytes:
    """The payload of that ``Fail``: the text, then the refused packet's id on its own line.

    The ``Fail`` has a packet id of its own: answering with the refused one
    would make the answer to the packet sent again look like a replay.
    """
    return f"{UNKNOWN_SENDER}\n{packet_id}".encode("utf-8")


def asks_introduction(response: Packet) -> Optional[str]:
    """The id of our packet a peer could not verify, if ``response`` is such a ``Fail``; else None."""
    if response.command != Command.FAIL.value:
        return None
    text, _, packet_id = response.payload.decode("utf-8", errors="replace").partition("\n")
    return packet_id if text == UNKNOWN_SENDER and packet_id else None


class StrangerPacket(UnknownSender):
    """A decodable packet for us whose sender we cannot verify; ``packet`` is its header, unverified."""

    def __init__(self, error: BadPacket, packet: PacketHead) -> None:
        super().__init__(str(error))
        self.reason = error.reason  # counted as what it was: unknown_sender or bad_signature
        self.packet = packet


class StrangerRateLimited(BadPacket):
    """The stranger's IP has used up its introductions (and answers) for now."""

    reason = "rate_limited"


class StrangerTooLarge(BadPacket):
    """A stranger's Identity packet is larger than a stranger may send."""

    reason = "stranger_oversize"


class IntroductionRefused(Forbidden):
    """A stranger's identity document does not have the key its identity server publishes."""


def carried_identity(packet: Packet) -> Identity:
    """The identity document ``packet`` carries, if it is its creator's own and signed.

    Raises BadRequest otherwise, with the text the sender is told in its ``Fail``.
    """
    try:
        document = Identity.from_xml(packet.payload)
    except BadRequest as err:
        raise BadRequest(f"bad identity document: {err}") from None
    if document.global_id != packet.creator_id or not document.verify():
        raise BadRequest("the identity document is not yours or not signed")
    return document


def introduced_identity(packet: Packet) -> Optional[Identity]:
    """The document an unknown sender's packet introduces it with; None unless an Identity packet with a valid one."""
    if packet.command != Command.IDENTITY.value:
        return None
    try:
        return carried_identity(packet)
    except BadRequest:
        return None


async def confirm_introduction(fetch_identity: Callable[..., Deferred], document: Identity) -> None:
    """Check an introduced ``document`` against the one its identity server publishes now.

    ``fetch_identity(idurl, refresh=True, stranger=True)`` is the identity
    provider's (``stranger``: the IDURL is a stranger's choice, so the
    provider's limits for such fetches apply); its
    errors (server down, unknown user) pass through.  Raises
    :class:`IntroductionRefused` when the published key is another one.
    """
    published = await fetch_identity(document.idurl, refresh=True, stranger=True)
    if published.rsa_public_key() != document.rsa_public_key():
        raise IntroductionRefused(f"{document.global_id} introduced itself with a key its identity server "
                                  "does not publish")


class IdentityKeyVerifier:
    """Verifies packets with the keys written in an identity document.

    Used only for a sender that introduces itself: ``ed25519`` packets with
    the document's certified signing key, ``rsa-pss-sha256`` ones with its
    RSA key; any other algorithm never verifies.
    """

    def __init__(self, identity: Identity, algorithm: str) -> None:
        self.identity = identity
        self.algorithm = algorithm

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is valid for ``data`` under the document's key."""
        if self.algorithm == "ed25519":
            key = self.identity.fast_public_key()
            return key is not None and fastsign.verify(key, data, signature)
        if self.algorithm == "rsa-pss-sha256":
            return keys.verify(self.identity.rsa_public_key(), data, signature)
        return False


class IntroducingTransport(TCPTransport):
    """A TCP transport that lets an ``Identity`` packet vouch for an unknown sender.

    Everything else is the parent's pipeline.  A header whose sender the
    parent cannot verify (``unknown_sender``, or ``bad_signature``: a known
    sender recovered elsewhere signs with a new packet key) gets this far:

    - any command but ``Identity``/``Ack``/``Fail``: its payload is read past
      unkept and ``on_stranger`` is told (the gateway answers it);
    - an ``Identity`` packet: its payload is kept only up to
      ``max_stranger_body`` bytes; once in, ``introduce(packet)`` (normally
      :func:`introduced_identity`) must return its creator's own signed
      document, whose key must verify the header; the packet is then
      replay-checked in :attr:`introduction_replay`, a cache of its own, so
      strangers never fill (or raise a floor in) the one confirmed peers use;
      the document waits in :attr:`introductions`, by ``(creator_id,
      packet_id)``, for the gateway, which confirms it before trusting it.

    Both cost the stranger's IP a token of :attr:`strangers` (a
    :class:`~bitnode.transport.limits.RateLimit`): past it, headers are
    dropped as ``rate_limited`` before any work is done for them.
    """

    #: Documents waiting for the gateway; more than this (the gateway takes each at once) is a bug, not a flood.
    MAX_WAITING_INTRODUCTIONS = 1000

    def __init__(self, *args: Any, introduce: Callable[[Packet], Optional[Identity]],
                 on_stranger: Optional[Callable[[PacketHead, PacketConnection], Any]] = None,
                 introduction_replay: Optional[ReplayCache] = None, strangers: Optional[RateLimit] = None,
                 max_stranger_body: int = PeerLimits.max_stranger_body, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._introduce = introduce
        self._on_stranger = on_stranger
        if introduction_replay is None:  # (an empty cache is falsy: it has a length)
            introduction_replay = ReplayCache(self.clock, window_seconds=900.0, max_entries=1000,
                                              refuse_before_start=True)
        self.introduction_replay = introduction_replay
        self.strangers = strangers if strangers is not None else RateLimit(self.clock, per_minute=60)
        self.max_stranger_body = max_stranger_body
        self.introductions: dict[tuple[str, str], Identity] = {}

    def answer_on(self, conn: PacketConnection, packet: Packet) -> None:
        """Write ``packet`` on ``conn`` itself (an answer goes back where its question came from)."""
        self._write_packet(conn, packet.encode_header(), packet)

    def confirmed(self, packet: Packet) -> None:
        """The gateway confirmed this introduction: remember it where confirmed peers' packets are remembered."""
        try:
            self.replay.check(packet.creator_id, packet.packet_id, packet.date)
        except BadPacket:
            pass  # too old by now, or already there: either way it cannot be played again

    def _stranger_head(self, conn: PacketConnection, head: PacketHead, body_length: int, error: BadPacket) -> str:
        if head.command != Command.IDENTITY.value:
            if head.command in _NOT_ANSWERED:
                raise error
            self._take_token(conn)
            raise StrangerPacket(error, head)
        if body_length > self.max_stranger_body:
            raise StrangerTooLarge(f"an Identity packet of {body_length} bytes from a stranger; the limit is "
                                   f"{self.max_stranger_body}")
        # the free checks first (date, replay): only an introduction that could go on costs a token
        self.introduction_replay.peek(head.creator_id, head.packet_id, head.date)
        self._take_token(conn)
        return INTRODUCTION

    def _take_token(self, conn: PacketConnection) -> None:
        if not self.strangers.allow(conn.address[0]):
            raise StrangerRateLimited(f"too many packets from strangers at {conn.address[0]}")

    def _stranger_packet(self, conn: PacketConnection, incoming: Any, packet: Packet) -> Packet:
        document = self._introduce(packet)
        if document is None:  # counted as what the header was: unknown_sender or bad_signature
            raise incoming.error
        verifier = IdentityKeyVerifier(document, packet.algorithm)
        incoming.head.verify(lambda _creator: verifier)
        self.replay.peek(packet.creator_id, packet.packet_id, packet.date)
        self.introduction_replay.check(packet.creator_id, packet.packet_id, packet.date)
        while len(self.introductions) >= self.MAX_WAITING_INTRODUCTIONS:
            self.introductions.pop(next(iter(self.introductions)))
        self.introductions[(packet.creator_id, packet.packet_id)] = document
        return packet

    def _dropped(self, conn: PacketConnection, error: BadPacket) -> None:
        if isinstance(error, StrangerPacket) and self._on_stranger is not None:
            self._on_stranger(error.packet, conn)

    def limits_stats(self) -> dict:
        """The parent's, plus the strangers' rate limit and the introductions' own replay cache."""
        return dict(super().limits_stats(), introductions=dict(self.strangers.stats(),
                                                              replay=self.introduction_replay.stats(),
                                                              waiting=len(self.introductions)))
