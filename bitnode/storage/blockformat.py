"""The on-supplier block format, version 1.

A stored block is a fixed-layout header followed by the payload (one zfec block
of one encrypted segment). All integers are big-endian::

    offset size field
         0    4 magic               b"BNBK"
         4    1 format version      1
         5    1 version id length   L (1..128)
         6    L version id          ASCII, see segment_crypto.validate_version_id
       6+L    8 segment index
      14+L    2 block index         0..n-1
      16+L    2 k                   1..n
      18+L    2 n                   1..256
      20+L    8 segment plaintext length
      28+L    8 payload length
      36+L   32 SHA-256 of payload
      68+L    . payload

:func:`unpack` is strict: wrong magic, unknown version, impossible numbers,
trailing or missing bytes raise :class:`BlockFormatError`; a payload whose
SHA-256 does not match the header raises :class:`BlockCorrupt`. The header is
not secret (the payload is ciphertext) and is not what makes a block trusted:
the catalog keeps the SHA-256 of every whole stored block and GCM
authenticates the segment.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from bitnode.errors import BitnodeError
from bitnode.storage.erasure import MAX_N, block_size
from bitnode.storage.segment_crypto import TAG_SIZE, validate_version_id

MAGIC = b"BNBK"
FORMAT_VERSION = 1
_FIXED = struct.Struct(">QHHHQQ32s")
_MIN_HEADER = len(MAGIC) + 2 + _FIXED.size  # magic, version, id length, fixed fields


class BlockFormatError(BitnodeError):
    """The bytes are not a well-formed block of a known format version."""


class BlockCorrupt(BlockFormatError):
    """The block parses but its payload does not match its hash."""


@dataclass(frozen=True)
class BlockHeader:
    """Everything a block says about itself (format version 1)."""

    version_id: str
    segment_index: int
    block_index: int
    k: int
    n: int
    segment_length: int
    payload_length: int
    payload_sha256: bytes
    format_version: int = FORMAT_VERSION


def header_size(version_id: str) -> int:
    """Number of header bytes in front of the payload for ``version_id``."""
    return _MIN_HEADER + len(version_id)


def pack(
    version_id: str, segment_index: int, block_index: int, k: int, n: int, segment_length: int, payload: bytes
) -> bytes:
    """Build the stored form of one block (header + payload)."""
    header = BlockHeader(
        version_id=version_id,
        segment_index=segment_index,
        block_index=block_index,
        k=k,
        n=n,
        segment_length=segment_length,
        payload_length=len(payload),
        payload_sha256=hashlib.sha256(payload).digest(),
    )
    _check_header(header, error=BlockFormatError)
    return pack_header(header) + payload


def pack_header(header: BlockHeader) -> bytes:
    """Serialise a header (no checks beyond what struct enforces)."""
    vid = header.version_id.encode("ascii")
    fixed = _FIXED.pack(
        header.segment_index,
        header.block_index,
        header.k,
        header.n,
        header.segment_length,
        header.payload_length,
        header.payload_sha256,
    )
    return MAGIC + bytes([header.format_version, len(vid)]) + vid + fixed


def unpack(data: bytes, trusted: bool = False) -> tuple[BlockHeader, bytes]:
    """Parse and verify one stored block; returns its header and payload.

    ``trusted``: the caller has already matched the whole block against a
    hash it trusts (the catalog's), so the payload hash is not computed again
    and the payload comes back as a memoryview into ``data`` (no copy).
    """
    view = memoryview(data)
    if len(view) < _MIN_HEADER + 1:
        raise BlockFormatError(f"block too short: {len(view)} bytes")
    if bytes(view[:4]) != MAGIC:
        raise BlockFormatError("not a bitnode block (bad magic)")
    if view[4] != FORMAT_VERSION:
        raise BlockFormatError(f"unknown block format version {view[4]}")
    vlen = view[5]
    start = 6 + vlen
    if len(view) < start + _FIXED.size:
        raise BlockFormatError("block header truncated")
    try:
        version_id = bytes(view[6:start]).decode("ascii")
    except UnicodeDecodeError as exc:
        raise BlockFormatError("block version id is not ASCII") from exc
    seg, blk, k, n, seg_len, pay_len, digest = _FIXED.unpack_from(view, start)
    header = BlockHeader(version_id, seg, blk, k, n, seg_len, pay_len, digest)
    _check_header(header, error=BlockFormatError)
    payload = view[start + _FIXED.size :]
    if len(payload) != pay_len:
        raise BlockFormatError(f"payload is {len(payload)} bytes, header says {pay_len}")
    if trusted:
        return header, payload
    if hashlib.sha256(payload).digest() != digest:
        raise BlockCorrupt(f"block {blk} of segment {seg} of {version_id}: payload hash mismatch")
    return header, bytes(payload)


def _check_header(h: BlockHeader, error: type[BitnodeError]) -> None:
    try:
        validate_version_id(h.version_id)
    except BitnodeError as exc:
        raise error(str(exc)) from exc
    if h.format_version != FORMAT_VERSION:
        raise error(f"unknown block format version {h.format_version}")
    if not 1 <= h.k <= h.n <= MAX_N:
        raise error(f"impossible k={h.k} n={h.n}")
    if not 0 <= h.block_index < h.n:
        raise error(f"block index {h.block_index} out of range for n={h.n}")
    if not 0 <= h.segment_index < 2**64 or not 0 <= h.segment_length < 2**64:
        raise error("segment index or length out of range")
    if h.payload_length != block_size(h.segment_length + TAG_SIZE, h.k):
        raise error(
            f"payload length {h.payload_length} does not fit segment length {h.segment_length} and k={h.k}"
        )
    if len(h.payload_sha256) != 32:
        raise error("payload hash must be 32 bytes")
