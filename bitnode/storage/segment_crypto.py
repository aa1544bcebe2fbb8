"""AES-256-GCM encryption of one file segment under a per-version key.

Every stored file version gets its own fresh 32-byte key (:func:`new_version_key`).
A version is cut into segments; each segment is encrypted on its own so that a
restore can decrypt and verify it without the others.

Nonce: ``SHA-256("bitnode-seg-nonce-v1" || version_id)[:4] || segment_index``
(8 bytes, big-endian). It is deterministic, so re-encrypting an unchanged
segment (a resumed upload, a rebuild) produces the same ciphertext, and it is
unique because:

* a key is generated for ONE version only, so the pair (key, nonce) repeats
  only if the same segment index of the same version is encrypted again;
* within a version the 8-byte segment index is different for every segment.

The version-hash prefix is defence in depth should a key ever be wrongly reused
for a second version. The one thing the caller must never do is encrypt
*different* plaintext for the same (version, segment): a version is an
immutable snapshot, so resuming an upload of a file that changed since the
first attempt must start a new version with a new key.

AAD (authenticated, not stored): ``"bitnode-seg-v1" || len(version_id) (2 bytes)
|| version_id || segment_index (8 bytes) || plaintext_length (8 bytes)``. A
segment (or the blocks that make it) moved to another version, another index
or cut short fails authentication.

Output of :func:`encrypt_segment`: ciphertext || 16-byte GCM tag, so the
encrypted length is always ``len(plaintext) + TAG_SIZE``.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bitnode.errors import BadRequest, BitnodeError

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_SEGMENT_INDEX = 2**64 - 1

_AAD_DOMAIN = b"bitnode-seg-v1"
_NONCE_DOMAIN = b"bitnode-seg-nonce-v1"
_VERSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SegmentIntegrityError(BitnodeError):
    """A segment failed GCM authentication: wrong key, tampered or misplaced data."""


def validate_version_id(version_id: str) -> str:
    """Return ``version_id`` if it is a usable id, else raise :class:`BadRequest`.

    1-128 characters of ``[A-Za-z0-9._-]``, not starting with a dot or dash, so
    it is safe as a path component on a supplier.
    """
    if not isinstance(version_id, str) or not _VERSION_ID_RE.match(version_id):
        raise BadRequest(f"invalid version id: {version_id!r}")
    return version_id


def new_version_key(randbytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """Make a fresh random 32-byte key for one new file version."""
    key = randbytes(KEY_SIZE)
    if len(key) != KEY_SIZE:
        raise BadRequest("random source returned a short key")
    return key


def segment_nonce(version_id: str, segment_index: int) -> bytes:
    """The 12-byte GCM nonce of segment ``segment_index`` of ``version_id``."""
    validate_version_id(version_id)
    _check_index(segment_index)
    prefix = hashlib.sha256(_NONCE_DOMAIN + version_id.encode("ascii")).digest()[:4]
    return prefix + struct.pack(">Q", segment_index)


def segment_aad(version_id: str, segment_index: int, plaintext_length: int) -> bytes:
    """The associated data binding a segment to its version, index and length."""
    validate_version_id(version_id)
    _check_index(segment_index)
    if not isinstance(plaintext_length, int) or plaintext_length < 0:
        raise BadRequest(f"invalid plaintext length: {plaintext_length!r}")
    vid = version_id.encode("ascii")
    return (
        _AAD_DOMAIN + struct.pack(">H", len(vid)) + vid + struct.pack(">QQ", segment_index, plaintext_length)
    )


def encrypt_segment(key: bytes, version_id: str, segment_index: int, plaintext: bytes) -> bytes:
    """Encrypt one segment; returns ciphertext followed by the 16-byte tag."""
    # OpenSSL's AES-GCM (through ``cryptography``): one pass, ciphertext and tag in one buffer, no GIL held.
    aead = _aead(key)
    return aead.encrypt(segment_nonce(version_id, segment_index), plaintext,
                        segment_aad(version_id, segment_index, len(plaintext)))


def decrypt_segment(
    key: bytes, version_id: str, segment_index: int, plaintext_length: int, encrypted: bytes
) -> bytes:
    """Verify and decrypt one segment made by :func:`encrypt_segment`.

    Raises :class:`SegmentIntegrityError` if the data, the key, the version,
    the index or the expected length do not match what was encrypted.
    """
    if len(encrypted) != plaintext_length + TAG_SIZE:
        raise SegmentIntegrityError(
            f"segment {segment_index} of {version_id}: encrypted length {len(encrypted)}, "
            f"expected {plaintext_length + TAG_SIZE}"
        )
    aead = _aead(key)
    try:
        return aead.decrypt(segment_nonce(version_id, segment_index), encrypted,
                            segment_aad(version_id, segment_index, plaintext_length))
    except InvalidTag as exc:
        raise SegmentIntegrityError(
            f"segment {segment_index} of {version_id} failed authentication (wrong key or tampered data)"
        ) from exc


def _aead(key: bytes) -> AESGCM:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise BadRequest("a version key must be 32 bytes")
    return AESGCM(bytes(key))


def _check_index(segment_index: int) -> None:
    if not isinstance(segment_index, int) or not 0 <= segment_index <= MAX_SEGMENT_INDEX:
        raise BadRequest(f"invalid segment index: {segment_index!r}")
