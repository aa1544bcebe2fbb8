"""Small Ed25519 signers/verifiers (pycryptodome) and key books for transport tests.

bitnode.crypt is written separately; these tests only need the ``Signer`` and
``Verifier`` shapes, so they build them here from pycryptodome directly.
"""

from __future__ import annotations

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from twisted.trial import unittest


class Ed25519Signer:
    """Signs with an Ed25519 key built from a 32-byte seed."""

    algorithm = "ed25519"

    def __init__(self, seed: bytes) -> None:
        self._key = ECC.construct(curve="ed25519", seed=seed)

    def sign(self, data: bytes) -> bytes:
        return eddsa.new(self._key, "rfc8032").sign(data)

    def verifier(self) -> Ed25519Verifier:
        return Ed25519Verifier(self._key.public_key())


class Ed25519Verifier:
    """Verifies Ed25519 signatures; never raises."""

    algorithm = "ed25519"

    def __init__(self, public_key: ECC.EccKey) -> None:
        self._key = public_key

    def verify(self, data: bytes, signature: bytes) -> bool:
        try:
            eddsa.new(self._key, "rfc8032").verify(data, signature)
        except ValueError:
            return False
        return True


def seed(n: int) -> bytes:
    """A fixed 32-byte seed derived from ``n``."""
    return bytes((n + i) % 256 for i in range(32))


class KeyBook:
    """``creator_id -> Verifier`` lookups, as a node's identity cache would answer."""

    def __init__(self) -> None:
        self.verifiers: dict[str, Ed25519Verifier] = {}

    def add(self, global_id: str, signer: Ed25519Signer) -> None:
        self.verifiers[global_id] = signer.verifier()

    def __call__(self, creator_id: str) -> Ed25519Verifier | None:
        return self.verifiers.get(creator_id)


class SupportTests(unittest.TestCase):
    def test_signature_verifies_only_with_the_matching_key(self) -> None:
        alice, mallory = Ed25519Signer(seed(1)), Ed25519Signer(seed(2))
        sig = alice.sign(b"hello")
        self.assertTrue(alice.verifier().verify(b"hello", sig))
        self.assertFalse(alice.verifier().verify(b"hellO", sig))
        self.assertFalse(mallory.verifier().verify(b"hello", sig))
