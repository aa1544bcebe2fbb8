"""AES-256-GCM encryption of one file segment under a per-version key.

Every stored file version gets its own fresh 32-byte key (:func:`new_version_key`).
A version is cut into segments; each segment is encrypted on its own so that a
restore can decrypt and verify it without the others.

Nonce, format 2 (every block written since block format 3 carries it): a
*synthetic* nonce, the first 12 bytes of
``HMAC-SHA256(nonce_key, "bitnode-seg-siv-v2" || len(version_id) (2 bytes) ||
version_id || segment_index (8) || plaintext_length (8) || plaintext)`` where
``nonce_key = HMAC-SHA256(version_key, "bitnode-seg-nonce-key-v2")``
(:func:`synthetic_nonce`). So:

* the same plaintext at the same place gives the same nonce and the very same
  ciphertext (a resumed upload of an unchanged file re-sends identical blocks);
* *different* plaintext for the same (key, version, segment) — a file that
  changed between an interrupted upload and its resume while keeping its size
  and mtime — gets a different nonce: a GCM nonce is never reused under one
  key with other data (a collision needs a 96-bit HMAC collision).

The nonce is stored in every block of the segment
(:mod:`bitnode.storage.blockformat`), which the catalog's block hash covers,
and GCM authenticates it. :func:`encrypt_segment` returns it with the
ciphertext; :func:`decrypt_segment` takes it back.

Nonce, format 1 (blocks stored before block format 3, still read):
``SHA-256("bitnode-seg-nonce-v1" || version_id)[:4] || segment_index`` (8
bytes, big-endian), :func:`segment_nonce`. It depends only on the place, which
is what made a changed-but-same-size file reuse it on resume; nothing is
encrypted with it any more (:func:`encrypt_segment_v1` exists to make test
vectors of old blocks).

AAD (authenticated, not stored), both formats: ``"bitnode-seg-v1" ||
len(version_id) (2 bytes) || version_id || segment_index (8 bytes) ||
plaintext_length (8 bytes)``. A segment (or the blocks that make it) moved to
another version, another index or cut short fails authentication.

The encrypted form is always ciphertext || 16-byte GCM tag, so the encrypted
length is ``len(plaintext) + TAG_SIZE`` in both formats.
"""

from __future__ import annotations

import hashlib
import hmac
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
_NONCE_KEY_DOMAIN = b"bitnode-seg-nonce-key-v2"
_SIV_DOMAIN = b"bitnode-seg-siv-v2"
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
    """The format 1 nonce of segment ``segment_index`` of ``version_id`` (blocks before block format 3)."""
    validate_version_id(version_id)
    _check_index(segment_index)
    prefix = hashlib.sha256(_NONCE_DOMAIN + version_id.encode("ascii")).digest()[:4]
    return prefix + struct.pack(">Q", segment_index)


def synthetic_nonce(key: bytes, version_id: str, segment_index: int, plaintext) -> bytes:
    """The format 2 nonce: a keyed hash of the segment's place and content (see the module docstring)."""
    _aead(key)  # checks the key
    validate_version_id(version_id)
    _check_index(segment_index)
    nonce_key = hmac.digest(bytes(key), _NONCE_KEY_DOMAIN, "sha256")
    vid = version_id.encode("ascii")
    mac = hmac.new(nonce_key, _SIV_DOMAIN + struct.pack(">H", len(vid)) + vid
                   + struct.pack(">QQ", segment_index, len(plaintext)), "sha256")
    mac.update(plaintext)
    return mac.digest()[:NONCE_SIZE]


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


def encrypt_segment(key: bytes, version_id: str, segment_index: int, plaintext: bytes) -> tuple[bytes, bytes]:
    """Encrypt one segment under its synthetic nonce; returns ``(nonce, ciphertext || 16-byte tag)``."""
    # OpenSSL's AES-GCM (through ``cryptography``): one pass, ciphertext and tag in one buffer, no GIL held.
    nonce = synthetic_nonce(key, version_id, segment_index, plaintext)
    aead = _aead(key)
    return nonce, aead.encrypt(nonce, plaintext, segment_aad(version_id, segment_index, len(plaintext)))


def encrypt_segment_v1(key: bytes, version_id: str, segment_index: int, plaintext: bytes) -> bytes:
    """Encrypt the way blocks before format 3 were (place-only nonce): only to make test vectors of old data."""
    aead = _aead(key)
    return aead.encrypt(segment_nonce(version_id, segment_index), plaintext,
                        segment_aad(version_id, segment_index, len(plaintext)))


def decrypt_segment(
    key: bytes, version_id: str, segment_index: int, plaintext_length: int, encrypted: bytes,
    nonce: bytes | None = None,
) -> bytes:
    """Verify and decrypt one segment made by :func:`encrypt_segment` (``nonce`` None: a format 1 segment).

    Raises :class:`SegmentIntegrityError` if the data, the key, the version,
    the index, the nonce or the expected length do not match what was encrypted.
    """
    if len(encrypted) != plaintext_length + TAG_SIZE:
        raise SegmentIntegrityError(
            f"segment {segment_index} of {version_id}: encrypted length {len(encrypted)}, "
            f"expected {plaintext_length + TAG_SIZE}"
        )
    if nonce is None:
        nonce = segment_nonce(version_id, segment_index)
    elif not isinstance(nonce, bytes | bytearray) or len(nonce) != NONCE_SIZE:
        raise SegmentIntegrityError(f"segment {segment_index} of {version_id}: the nonce must be {NONCE_SIZE} bytes")
    aead = _aead(key)
    try:
        return aead.decrypt(bytes(nonce), encrypted, segment_aad(version_id, segment_index, plaintext_length))
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
