"""Identity packets: how a peer shows us its identity document, and how a stranger introduces itself.

An ``Identity`` packet carries its creator's signed identity document.  For
a sender whose key we already know, the transport verifies the packet as
usual and :func:`carried_identity` reads the document out of it.

A sender we know no key for cannot pass the transport's signature check.
:class:`IntroducingTransport` lets exactly one kind of packet through: an
``Identity`` packet whose document is its creator's own and validly signed
(:func:`introduced_identity`); the packet is then verified with the key in
that document (:class:`IdentityKeyVerifier`) and replay-checked like any
other.  Such a document is not trusted yet: the gateway first asks the
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
from bitnode.transport.packet import BadPacket, BadSignature, Packet, UnknownSender
from bitnode.transport.tcp import PacketConnection, TCPTransport
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
    """A decodable packet for us whose sender we cannot verify; ``packet`` is it, unverified."""

    def __init__(self, error: BadPacket, packet: Packet) -> None:
        super().__init__(str(error))
        self.reason = error.reason  # counted as what it was: unknown_sender or bad_signature
        self.packet = packet


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

    ``fetch_identity(idurl, refresh=True)`` is the identity provider's; its
    errors (server down, unknown user) pass through.  Raises
    :class:`IntroductionRefused` when the published key is another one.
    """
    published = await fetch_identity(document.idurl, refresh=True)
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

    Everything else is the parent's pipeline.  Only when the parent drops a
    packet as ``unknown_sender`` and ``introduce(packet)`` (normally
    :func:`introduced_identity`) returns a document, the packet is verified
    with that document's key and replay-checked; the document is kept in
    :attr:`introductions`, by ``(creator_id, packet_id)``, for the gateway,
    which confirms it before trusting it.
    """

    def __init__(self, *args: Any, introduce: Callable[[Packet], Optional[Identity]],
                 on_stranger: Optional[Callable[[Packet, PacketConnection], Any]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._introduce = introduce
        self._on_stranger = on_stranger
        self.introductions: dict[tuple[str, str], Identity] = {}

    def answer_on(self, conn: PacketConnection, packet: Packet) -> None:
        """Write ``packet`` on ``conn`` itself (an answer goes back where its question came from)."""
        self._write_packet(conn, packet.encode_header(), packet)

    def _validate(self, head: bytes, body: bytes, digest: bytes | None) -> Packet:
        try:
            return super()._validate(head, body, digest)
        except (UnknownSender, BadSignature) as err:
            # BadSignature too: a known sender recovered elsewhere signs with a new packet key
            packet = Packet.decode_parts(head, body, max_payload=self.max_frame, payload_sha256=digest)
            document = self._introduce(packet)
            if document is None:
                if packet.remote_id == self.my_id and packet.command not in _NOT_ANSWERED:
                    raise StrangerPacket(err, packet) from None
                raise
            verifier = IdentityKeyVerifier(document, packet.algorithm)
            packet.verify(lambda _creator: verifier)
            self.replay.check(packet.creator_id, packet.packet_id, packet.date)
            self.introductions[(packet.creator_id, packet.packet_id)] = document
            return packet

    def _dropped(self, conn: PacketConnection, error: BadPacket) -> None:
        if isinstance(error, StrangerPacket) and self._on_stranger is not None:
            try:
                self._on_stranger(error.packet, conn)
            except Exception:
                self.log.failure("answering an unknown sender failed")
