"""Helpers shared by the crypt tests."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.crypt import keys


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    """``data`` with the bits of ``mask`` flipped in byte ``index`` (a tampered copy)."""
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


class KeysTestBase(unittest.TestCase):
    """Two 2048-bit keys (``self.priv``, ``self.other``), generated once for all subclasses (trial has no
    setUpClass)."""

    _cached: tuple[keys.RsaPrivateKey, ...] = ()

    def setUp(self) -> None:
        if not KeysTestBase._cached:
            KeysTestBase._cached = (keys.generate_rsa(2048), keys.generate_rsa(2048))
        self.priv, self.other = KeysTestBase._cached
