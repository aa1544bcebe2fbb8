"""RSA keys: generation, PEM import/export, RSA-PSS signatures, RSA-OAEP key wrapping.

The pycryptodome key objects are wrapped in :class:`RsaPrivateKey` and
:class:`RsaPublicKey` for one reason above all: their ``repr`` prints the
private numbers, and a key object that ends up in a log line or an exception
text must never leak them. The wrappers print only the size and fingerprint.

Choices, fixed for the wire and disk formats:

- private keys are exported as unencrypted PKCS#8 PEM (``BEGIN PRIVATE KEY``),
  public keys as X.509 SubjectPublicKeyInfo PEM (``BEGIN PUBLIC KEY``);
- signatures are RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt;
- key wrapping is RSAES-OAEP with SHA-256 (MGF1-SHA-256, empty label);
- a key fingerprint is the lowercase hex SHA-256 of the public key's DER
  (SubjectPublicKeyInfo), identical for a private key and its public half.
"""

from __future__ import annotations

import hashlib

from Crypto.Cipher import PKCS1_OAEP
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pss
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes as _openssl_hashes
from cryptography.hazmat.primitives.asymmetric import padding as _openssl_padding
from cryptography.hazmat.primitives.asymmetric import rsa as _openssl_rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from bitnode.errors import BadRequest

#: Smallest RSA key generated, imported or accepted from a peer: 1024-bit keys are within reach of factoring.
MIN_RSA_BITS = 2048
DEFAULT_RSA_BITS = 3072
MAX_RSA_BITS = 8192
MAX_PEM_BYTES = 64 * 1024
PSS_SALT_BYTES = 32


class InvalidKey(BadRequest):
    """Key material could not be parsed, or is of an unacceptable kind or size."""


class DecryptionError(BadRequest):
    """Ciphertext could not be decrypted: wrong key, tampered or truncated data."""


class KeyWrapper:
    """What every key wrapper (RSA and Ed25519, public and private) shares.

    It holds a pycryptodome key in ``_key``, is immutable once built (the
    constructor sets its slots with ``object.__setattr__``), and compares
    equal and hashes by :meth:`_identity`: the numbers that make the key.
    """

    __slots__ = ("_key",)

    def _identity(self) -> tuple:
        raise NotImplementedError

    @property
    def raw(self):
        """The underlying pycryptodome key (a private one: never log or print it)."""
        return self._key

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")


class RsaPublicKey(KeyWrapper):
    """An RSA public key (immutable). Compares equal by modulus and exponent."""

    __slots__ = ()

    def __init__(self, key: RSA.RsaKey):
        if key.has_private():
            key = key.public_key()
        object.__setattr__(self, "_key", key)

    @property
    def size_bits(self) -> int:
        """Modulus size in bits (1024, 2048, 3072...)."""
        return self._key.size_in_bits()

    @property
    def size_bytes(self) -> int:
        """Length in bytes of a signature or an OAEP ciphertext made with this key."""
        return self._key.size_in_bytes()

    def to_der(self) -> bytes:
        """SubjectPublicKeyInfo DER (the canonical binary form)."""
        return self._key.export_key(format="DER")

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``)."""
        return self._key.export_key(format="PEM")

    def fingerprint(self) -> str:
        """Lowercase hex SHA-256 of :meth:`to_der`."""
        return hashlib.sha256(self.to_der()).hexdigest()

    def _identity(self) -> tuple:
        return (self._key.n, self._key.e)

    def __repr__(self) -> str:
        return f"<RsaPublicKey {self.size_bits} bits {self.fingerprint()[:16]}>"


class RsaPrivateKey(KeyWrapper):
    """An RSA private key (immutable). Its repr never shows private numbers."""

    __slots__ = ()

    def __init__(self, key: RSA.RsaKey):
        if not key.has_private():
            raise InvalidKey("not an RSA private key")
        object.__setattr__(self, "_key", key)

    @property
    def size_bits(self) -> int:
        """Modulus size in bits."""
        return self._key.size_in_bits()

    def public_key(self) -> RsaPublicKey:
        """The matching public key."""
        return RsaPublicKey(self._key.public_key())

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``). Secret!"""
        return self._key.export_key(format="PEM", pkcs=8)

    def fingerprint(self) -> str:
        """Fingerprint of the public half (see :func:`key_fingerprint`)."""
        return self.public_key().fingerprint()

    def _identity(self) -> tuple:
        return (self._key.n, self._key.d)

    def __repr__(self) -> str:
        return f"<RsaPrivateKey {self.size_bits} bits {self.fingerprint()[:16]}>"

    def __reduce__(self):  # pragma: no cover - guard, not a feature
        raise TypeError("RsaPrivateKey cannot be pickled")


def check_key_size(bits: int, min_bits: int = MIN_RSA_BITS) -> int:
    """Validate an RSA modulus size for generation; raise :class:`BadRequest` if unfit."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise BadRequest("key size must be an integer")
    if bits < min_bits or bits > MAX_RSA_BITS:
        raise BadRequest(f"key size must be between {min_bits} and {MAX_RSA_BITS} bits")
    if bits % 256:
        raise BadRequest("key size must be a multiple of 256 bits")
    return bits


def generate_rsa(bits: int = DEFAULT_RSA_BITS) -> RsaPrivateKey:
    """Generate a fresh RSA key (e = 65537). CPU-heavy: call it off the reactor thread.

    The primes come from OpenSSL (through ``cryptography``): several times
    faster than pycryptodome's own search (about 0.06 s against 0.5 s for
    2048 bits), which matters now that 2048 bits is the minimum.
    """
    check_key_size(bits)
    numbers = _openssl_rsa.generate_private_key(public_exponent=65537, key_size=bits).private_numbers()
    public = numbers.public_numbers
    return RsaPrivateKey(RSA.construct((public.n, public.e, numbers.d, numbers.p, numbers.q)))


def _check_imported(key: RSA.RsaKey) -> None:
    bits = key.size_in_bits()
    if bits < MIN_RSA_BITS or bits > MAX_RSA_BITS:
        raise InvalidKey(f"RSA key size {bits} is outside {MIN_RSA_BITS}..{MAX_RSA_BITS} bits")
    e = key.e
    if e < 3 or e % 2 == 0 or e.bit_length() > 32:
        raise InvalidKey("RSA public exponent is not acceptable")


def _import(pem: bytes | str, what: str) -> RSA.RsaKey:
    if isinstance(pem, str):
        try:
            pem = pem.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidKey(f"{what} PEM must be ASCII") from None
    if not isinstance(pem, (bytes, bytearray)):
        raise InvalidKey(f"{what} PEM must be bytes or text")
    if len(pem) > MAX_PEM_BYTES:
        raise InvalidKey(f"{what} PEM is too large")
    if not bytes(pem).lstrip().startswith(b"-----BEGIN "):
        raise InvalidKey(f"{what} is not in PEM format")
    try:
        key = RSA.import_key(bytes(pem))
    except (ValueError, IndexError, TypeError):
        # The library's message may quote parts of the input: never pass it on.
        raise InvalidKey(f"cannot parse {what} PEM") from None
    return key


def private_from_pem(pem: bytes | str) -> RsaPrivateKey:
    """Parse an RSA private key PEM (PKCS#1 or unencrypted PKCS#8)."""
    key = _import(pem, "RSA private key")
    if not key.has_private():
        raise InvalidKey("expected an RSA private key, got a public key")
    _check_imported(key)
    return RsaPrivateKey(key)


def public_from_pem(pem: bytes | str) -> RsaPublicKey:
    """Parse an RSA public key PEM. A private key PEM is refused (it is not meant to travel)."""
    key = _import(pem, "RSA public key")
    if key.has_private():
        raise InvalidKey("expected an RSA public key, got a private key")
    _check_imported(key)
    return RsaPublicKey(key)


def public_from_der(der: bytes) -> RsaPublicKey:
    """Parse a SubjectPublicKeyInfo DER public key."""
    if not isinstance(der, (bytes, bytearray)) or len(der) > MAX_PEM_BYTES:
        raise InvalidKey("RSA public key DER is not acceptable")
    try:
        key = RSA.import_key(bytes(der))
    except (ValueError, IndexError, TypeError):
        raise InvalidKey("cannot parse RSA public key DER") from None
    if key.has_private():
        raise InvalidKey("expected an RSA public key, got a private key")
    _check_imported(key)
    return RsaPublicKey(key)


def private_to_pem(priv: RsaPrivateKey) -> bytes:
    """Export a private key as PKCS#8 PEM. The result is secret."""
    return priv.to_pem()


def public_to_pem(key: RsaPublicKey | RsaPrivateKey) -> bytes:
    """Export the public half of a key as SubjectPublicKeyInfo PEM."""
    return _public(key).to_pem()


def _public(key: RsaPublicKey | RsaPrivateKey) -> RsaPublicKey:
    if isinstance(key, RsaPrivateKey):
        return key.public_key()
    if isinstance(key, RsaPublicKey):
        return key
    raise TypeError("expected RsaPublicKey or RsaPrivateKey")


def key_fingerprint(key: RsaPublicKey | RsaPrivateKey) -> str:
    """Stable key fingerprint: lowercase hex SHA-256 of the public key DER."""
    return _public(key).fingerprint()


def sign(priv: RsaPrivateKey, data: bytes) -> bytes:
    """RSA-PSS / SHA-256 signature of ``data``; its length is the modulus size in bytes."""
    if not isinstance(priv, RsaPrivateKey):
        raise TypeError("sign needs an RsaPrivateKey")
    digest = SHA256.new(data)
    return pss.new(priv.raw, salt_bytes=PSS_SALT_BYTES).sign(digest)


def verify(pub: RsaPublicKey | RsaPrivateKey, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid RSA-PSS/SHA-256 signature of ``data``.

    Never raises for a bad, truncated or non-bytes signature: it returns False.
    """
    try:
        public = _public(pub)
        if not isinstance(signature, (bytes, bytearray)) or len(signature) != public.size_bytes:
            return False
        digest = SHA256.new(data)
        pss.new(public.raw, salt_bytes=PSS_SALT_BYTES).verify(digest, bytes(signature))
    except (ValueError, TypeError):
        return False
    return True


def verify_der(der: bytes, data: bytes, signature: bytes) -> bool:
    """:func:`verify` against a public key given as DER, on OpenSSL (``cryptography``); never raises.

    For checks of records any peer may send (several per second): pycryptodome
    needs ~2 ms to import the DER and verify, OpenSSL a quarter of that. The
    key must pass the same size and exponent rules as an imported key.
    """
    try:
        public = load_der_public_key(bytes(der))
        if not isinstance(public, _openssl_rsa.RSAPublicKey):
            return False
        e = public.public_numbers().e
        if not MIN_RSA_BITS <= public.key_size <= MAX_RSA_BITS or e < 3 or e % 2 == 0 or e.bit_length() > 32:
            return False
        public.verify(bytes(signature), bytes(data),
                      _openssl_padding.PSS(mgf=_openssl_padding.MGF1(_openssl_hashes.SHA256()),
                                           salt_length=PSS_SALT_BYTES), _openssl_hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def max_wrap_size(pub: RsaPublicKey | RsaPrivateKey) -> int:
    """The largest secret :func:`wrap_key` accepts for this key (OAEP-SHA-256 limit)."""
    return _public(pub).size_bytes - 2 * SHA256.digest_size - 2


def wrap_key(pub: RsaPublicKey | RsaPrivateKey, secret: bytes) -> bytes:
    """Encrypt a short secret (typically a 32-byte AES key) with RSA-OAEP/SHA-256."""
    public = _public(pub)
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError("secret must be bytes")
    if len(secret) > max_wrap_size(public):
        raise BadRequest(f"secret too long to wrap with a {public.size_bits}-bit key")
    return PKCS1_OAEP.new(public.raw, hashAlgo=SHA256).encrypt(bytes(secret))


def unwrap_key(priv: RsaPrivateKey, blob: bytes) -> bytes:
    """Reverse :func:`wrap_key`; raise :class:`DecryptionError` on a wrong key or bad blob."""
    if not isinstance(priv, RsaPrivateKey):
        raise TypeError("unwrap_key needs an RsaPrivateKey")
    if not isinstance(blob, (bytes, bytearray)) or len(blob) != priv.raw.size_in_bytes():
        raise DecryptionError("wrapped key has the wrong length for this key")
    try:
        return PKCS1_OAEP.new(priv.raw, hashAlgo=SHA256).decrypt(bytes(blob))
    except (ValueError, TypeError):
        raise DecryptionError("cannot unwrap key: wrong key or corrupted data") from None
