"""Ed25519 signatures for the per-packet data path (RFC 8032).

An RSA private-key operation costs milliseconds; the data path signs every
packet, so it uses an Ed25519 key instead. That key is published in the
identity document (``signingkey``), where the RSA identity signature certifies
it.

Formats: the public key travels as its raw 32 bytes (RFC 8032 encoding); the
private key is stored as unencrypted PKCS#8 PEM. Signatures are 64 bytes, pure
Ed25519 (no context, no pre-hash).

Measured once (pycryptodome 4.4, CPython 3.11, one core, 1 KiB message):
Ed25519 sign ~0.2 ms, verify ~0.45 ms; RSA-3072 PSS sign ~3.3 ms, verify
~0.2 ms. So :func:`sign` and :func:`verify` run on OpenSSL (``cryptography``,
about 0.1 ms / 0.2 ms, same deterministic signatures); the key objects still
wrap pycryptodome keys (``.raw``) for parsing and export. For bulk data,
prefer authenticating the connection once and protecting frames with a
session key.
"""

from __future__ import annotations

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519 as _openssl

from bitnode.crypt.keys import MAX_PEM_BYTES, InvalidKey, KeyWrapper

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
_CURVE = "Ed25519"


class Ed25519PublicKey(KeyWrapper):
    """An Ed25519 public key (immutable). Compares equal by its raw bytes."""

    __slots__ = ("_raw", "_openssl")

    def __init__(self, key: ECC.EccKey):
        if key.curve != _CURVE:
            raise InvalidKey("not an Ed25519 key")
        if key.has_private():
            key = key.public_key()
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_raw", key.export_key(format="raw"))
        object.__setattr__(self, "_openssl", _openssl.Ed25519PublicKey.from_public_bytes(self._raw))

    def to_raw(self) -> bytes:
        """The 32-byte RFC 8032 encoding."""
        return self._raw

    def _identity(self) -> tuple:
        return (self._raw,)

    def __repr__(self) -> str:
        return f"<Ed25519PublicKey {self._raw.hex()[:16]}>"


class Ed25519PrivateKey(KeyWrapper):
    """An Ed25519 private key (immutable). Its repr never shows the seed."""

    __slots__ = ("_openssl",)

    def __init__(self, key: ECC.EccKey):
        if key.curve != _CURVE or not key.has_private():
            raise InvalidKey("not an Ed25519 private key")
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_openssl", _openssl.Ed25519PrivateKey.from_private_bytes(key.seed))

    def public_key(self) -> Ed25519PublicKey:
        """The matching public key."""
        return Ed25519PublicKey(self._key.public_key())

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM. Secret!"""
        return self._key.export_key(format="PEM").encode("ascii")

    def _identity(self) -> tuple:
        return (self._key.seed,)

    def __repr__(self) -> str:
        return f"<Ed25519PrivateKey {self.public_key().to_raw().hex()[:16]}>"

    def __reduce__(self):
        raise TypeError("Ed25519PrivateKey cannot be pickled")


def generate_ed25519() -> Ed25519PrivateKey:
    """A fresh Ed25519 key."""
    return Ed25519PrivateKey(ECC.generate(curve=_CURVE))


def private_to_pem(priv: Ed25519PrivateKey) -> bytes:
    """Export as PKCS#8 PEM (secret)."""
    return priv.to_pem()


def private_from_pem(pem: bytes | str) -> Ed25519PrivateKey:
    """Parse an unencrypted PKCS#8 PEM Ed25519 private key."""
    if isinstance(pem, (bytes, bytearray)):
        try:
            pem = bytes(pem).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidKey("Ed25519 private key PEM must be ASCII") from None
    if not isinstance(pem, str) or len(pem) > MAX_PEM_BYTES:
        raise InvalidKey("Ed25519 private key PEM is not acceptable")
    if not pem.lstrip().startswith("-----BEGIN "):
        raise InvalidKey("Ed25519 private key is not in PEM format")
    try:
        key = ECC.import_key(pem)
    except (ValueError, IndexError, TypeError, KeyError):
        raise InvalidKey("cannot parse Ed25519 private key PEM") from None
    if key.curve != _CURVE or not key.has_private():
        raise InvalidKey("expected an Ed25519 private key")
    return Ed25519PrivateKey(key)


def public_to_raw(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.to_raw()


def public_from_raw(raw: bytes) -> Ed25519PublicKey:
    """Parse a raw 32-byte public key; :class:`InvalidKey` if it is not a curve point."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != PUBLIC_KEY_SIZE:
        raise InvalidKey(f"Ed25519 public key must be {PUBLIC_KEY_SIZE} bytes")
    try:
        key = eddsa.import_public_key(bytes(raw))
    except (ValueError, TypeError):
        raise InvalidKey("not a valid Ed25519 public key") from None
    return Ed25519PublicKey(key)


def sign(priv: Ed25519PrivateKey, data: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``data``."""
    if not isinstance(priv, Ed25519PrivateKey):
        raise TypeError("sign needs an Ed25519PrivateKey")
    return priv._openssl.sign(data)


def verify(pub: Ed25519PublicKey, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is valid for ``data``; never raises on a bad signature."""
    if not isinstance(pub, Ed25519PublicKey):
        return False
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        pub._openssl.verify(bytes(signature), data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
