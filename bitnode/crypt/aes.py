"""AES-256-GCM with a versioned envelope, and RSA+AES hybrid encryption.

Symmetric envelope, version 1 (all lengths fixed)::

    0x01 | nonce (12 bytes, random) | tag (16 bytes) | ciphertext

The GCM associated data is the version byte followed by the caller's ``aad``,
so the version cannot be swapped without the tag failing.

Hybrid envelope, version 1 (for messages and key sharing)::

    0x01 | len(wrapped) (2 bytes, big endian) | wrapped | symmetric envelope

``wrapped`` is a fresh random AES-256 key encrypted with RSA-OAEP/SHA-256
(:func:`bitnode.crypt.keys.wrap_key`). The symmetric envelope is made with that
key and associated data ``header | wrapped | aad`` where ``header`` is the
first three bytes, binding the wrapped key to the ciphertext.

Nonces are random (96 bits); with a fresh key per file version, or per
message, that is far below the GCM birthday bound.
"""

from __future__ import annotations

import struct

from Crypto.Cipher import AES
from Crypto.Random import get_random_bytes

from bitnode.crypt import keys
from bitnode.crypt.keys import DecryptionError, RsaPrivateKey, RsaPublicKey
from bitnode.errors import BadRequest

__all__ = [
    "DecryptionError",
    "KEY_SIZE",
    "OVERHEAD",
    "decrypt",
    "encrypt",
    "generate_key",
    "hybrid_decrypt",
    "hybrid_encrypt",
]

VERSION_1 = 1
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
HEADER_SIZE = 1 + NONCE_SIZE + TAG_SIZE
OVERHEAD = HEADER_SIZE
"""Bytes :func:`encrypt` adds to the plaintext."""

HYBRID_VERSION_1 = 1
_HYBRID_HEADER = struct.Struct(">BH")


def generate_key() -> bytes:
    """A fresh random AES-256 key."""
    return get_random_bytes(KEY_SIZE)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
        raise BadRequest(f"AES key must be {KEY_SIZE} bytes")
    return bytes(key)


def encrypt(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Encrypt and authenticate ``plaintext``; ``aad`` is authenticated, not stored."""
    cipher = AES.new(_check_key(key), AES.MODE_GCM, nonce=get_random_bytes(NONCE_SIZE), mac_len=TAG_SIZE)
    version = bytes([VERSION_1])
    cipher.update(version)
    if aad:
        cipher.update(aad)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return b"".join((version, cipher.nonce, tag, ciphertext))


def decrypt(key: bytes, blob: bytes, aad: bytes = b"") -> bytes:
    """Decrypt an :func:`encrypt` envelope.

    Raises :class:`DecryptionError` for a blob that is too short, has an
    unknown version, or fails authentication (wrong key, wrong ``aad``, any
    modified byte).
    """
    key = _check_key(key)
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise DecryptionError("encrypted data must be bytes")
    view = memoryview(blob)
    if len(view) < HEADER_SIZE:
        raise DecryptionError("encrypted data is truncated")
    if view[0] != VERSION_1:
        raise DecryptionError(f"unknown encryption format version {view[0]}")
    nonce = bytes(view[1 : 1 + NONCE_SIZE])
    tag = bytes(view[1 + NONCE_SIZE : HEADER_SIZE])
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_SIZE)
    cipher.update(bytes(view[:1]))
    if aad:
        cipher.update(aad)
    try:
        return cipher.decrypt_and_verify(view[HEADER_SIZE:], tag)
    except ValueError:
        raise DecryptionError("decryption failed: wrong key or tampered data") from None


def hybrid_encrypt(pub: RsaPublicKey | RsaPrivateKey, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Encrypt ``plaintext`` for the holder of ``pub``'s private key."""
    session_key = generate_key()
    wrapped = keys.wrap_key(pub, session_key)
    header = _HYBRID_HEADER.pack(HYBRID_VERSION_1, len(wrapped))
    body = encrypt(session_key, plaintext, aad=header + wrapped + aad)
    return header + wrapped + body


def hybrid_decrypt(priv: RsaPrivateKey, blob: bytes, aad: bytes = b"") -> bytes:
    """Decrypt a :func:`hybrid_encrypt` envelope; :class:`DecryptionError` on any failure."""
    if not isinstance(blob, (bytes, bytearray)):
        raise DecryptionError("encrypted data must be bytes")
    blob = bytes(blob)
    if len(blob) < _HYBRID_HEADER.size:
        raise DecryptionError("encrypted message is truncated")
    version, wrapped_len = _HYBRID_HEADER.unpack_from(blob)
    if version != HYBRID_VERSION_1:
        raise DecryptionError(f"unknown hybrid encryption format version {version}")
    start = _HYBRID_HEADER.size
    if len(blob) < start + wrapped_len + HEADER_SIZE:
        raise DecryptionError("encrypted message is truncated")
    wrapped = blob[start : start + wrapped_len]
    session_key = keys.unwrap_key(priv, wrapped)
    if len(session_key) != KEY_SIZE:
        raise DecryptionError("wrapped session key has the wrong size")
    return decrypt(session_key, blob[start + wrapped_len :], aad=blob[:start] + wrapped + aad)
