"""The keys of an identity: a new one with its first signed revision, and the packet signer/verifier.

A node has two keys: the RSA master key signs its identity document; the
Ed25519 packet key (certified by the identity's ``signingkey`` field) signs
every packet. :class:`Ed25519Signer` and :class:`Ed25519Verifier` are what the
transport's ``Signer`` and ``Verifier`` expect; :mod:`bitnode.userid.id_service`
hands them out.
"""

from __future__ import annotations

import base64

from bitnode.crypt import fastsign, keys
from bitnode.crypt.fastsign import Ed25519PrivateKey, Ed25519PublicKey
from bitnode.crypt.keys import RsaPrivateKey
from bitnode.userid.identity import Identity, format_date

ALGORITHM = "ed25519"


class Ed25519Signer:
    """Signs packets with my Ed25519 key (the transport's ``Signer``)."""

    algorithm = ALGORITHM

    def __init__(self, key: Ed25519PrivateKey):
        self._key = key

    def sign(self, data: bytes) -> bytes:
        """The 64-byte signature of ``data``."""
        return fastsign.sign(self._key, data)

    def __repr__(self) -> str:
        return f"<Ed25519Signer {self._key.public_key()!r}>"


class Ed25519Verifier:
    """Checks packet signatures with someone's certified Ed25519 key (the transport's ``Verifier``)."""

    algorithm = ALGORITHM

    def __init__(self, key: Ed25519PublicKey):
        self.public_key = key

    def verify(self, data: bytes, signature: bytes) -> bool:
        """True for a valid signature; never raises."""
        return fastsign.verify(self.public_key, data, signature)


def generate_identity(name: str, sources: list[str], contacts: list[str], key_size: int,
                      now: float) -> tuple[RsaPrivateKey, Ed25519PrivateKey, Identity]:
    """Thread side of identity creation: both keys and the signed revision 1."""
    master = keys.generate_rsa(key_size)
    packet_key = fastsign.generate_ed25519()
    identity = Identity(
        name=name,
        sources=tuple(sources),
        contacts=tuple(contacts),
        revision=1,
        date=format_date(now),
        public_key=master.public_key().to_pem().decode("ascii"),
        signing_key=signing_key_text(packet_key),
    )
    return master, packet_key, identity.sign(master)


def signing_key_text(packet_key: Ed25519PrivateKey) -> str:
    """The identity's ``signingkey`` field: the raw Ed25519 public key, base64."""
    return base64.b64encode(fastsign.public_to_raw(packet_key)).decode("ascii")
