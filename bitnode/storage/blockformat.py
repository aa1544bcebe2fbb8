"""The on-supplier block format, versions 1 and 2.

A stored block is one zfec block of one encrypted segment (the payload) plus a
fixed-layout description of it. :func:`pack` writes version 2; :func:`unpack`
reads both. All integers are big-endian.

Version 2 puts the description after the payload, so the one SHA-256 pass the
uploader makes over a block yields both the payload hash (a digest of the
bytes in front of the trailer) and the whole-block hash the catalog keeps
(the same hash state continued over the trailer)::

    offset size field
         0    4 magic               b"BNBK"
         4    1 format version      2
         5    P payload
       5+P    L version id          ASCII, see segment_crypto.validate_version_id
     5+P+L    8 segment index
    13+P+L    2 block index         0..n-1
    15+P+L    2 k                   1..n
    17+P+L    2 n                   1..256
    19+P+L    8 segment plaintext length
    27+P+L    8 payload length      P
    35+P+L   32 SHA-256 of bytes 0..5+P (magic, version and payload)
    67+P+L    1 version id length   L (1..128), the last byte

Version 1 (still read) has the description in front of the payload::

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
FORMAT_VERSION = 2
FORMAT_V1 = 1
KNOWN_VERSIONS = (FORMAT_V1, FORMAT_VERSION)
_FIXED = struct.Struct(">QHHHQQ32s")
_MIN_HEADER = len(MAGIC) + 2 + _FIXED.size  # magic, version, id length, fixed fields


class BlockFormatError(BitnodeError):
    """The bytes are not a well-formed block of a known format version."""


class BlockCorrupt(BlockFormatError):
    """The block parses but its payload does not match its hash."""


@dataclass(frozen=True)
class BlockHeader:
    """Everything a block says about itself.

    ``payload_sha256`` is the SHA-256 of the payload (version 1) or of the
    magic, version byte and payload (version 2).
    """

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
    """Number of bytes a block adds to its payload for ``version_id`` (both versions)."""
    return _MIN_HEADER + len(version_id)


def pack(
    version_id: str, segment_index: int, block_index: int, k: int, n: int, segment_length: int, payload: bytes
) -> bytes:
    """Build the stored form of one block (format version 2)."""
    return pack_hashed(version_id, segment_index, block_index, k, n, segment_length, payload)[0]


def pack_hashed(
    version_id: str, segment_index: int, block_index: int, k: int, n: int, segment_length: int, payload
) -> tuple[bytes, str]:
    """Build one version 2 block and the hex SHA-256 of the whole block, in one pass over the payload.

    ``payload`` may be any bytes-like object (a memoryview of an erasure
    block is packed with a single copy).
    """
    prefix = MAGIC + bytes([FORMAT_VERSION])
    hasher = hashlib.sha256(prefix)
    hasher.update(payload)
    # digest() leaves the state open for the trailer
    header = _checked_header(version_id, segment_index, block_index, k, n, segment_length, payload,
                             hasher.digest(), FORMAT_VERSION)
    trailer = _pack_trailer(header)
    hasher.update(trailer)
    return b"".join((prefix, payload, trailer)), hasher.hexdigest()


def pack_v1(
    version_id: str, segment_index: int, block_index: int, k: int, n: int, segment_length: int, payload: bytes
) -> bytes:
    """Build a version 1 block: to rebuild, byte for byte, a block of a version stored before format 2."""
    header = _checked_header(version_id, segment_index, block_index, k, n, segment_length, payload,
                             hashlib.sha256(payload).digest(), FORMAT_V1)
    return pack_header(header) + bytes(payload)


def _checked_header(version_id: str, segment_index: int, block_index: int, k: int, n: int, segment_length: int,
                    payload, payload_sha256: bytes, format_version: int) -> BlockHeader:
    """The header of ``payload`` in ``format_version``; BlockFormatError if a field is out of range."""
    header = BlockHeader(
        version_id=version_id,
        segment_index=segment_index,
        block_index=block_index,
        k=k,
        n=n,
        segment_length=segment_length,
        payload_length=len(memoryview(payload)),
        payload_sha256=payload_sha256,
        format_version=format_version,
    )
    _check_header(header, error=BlockFormatError)
    return header


def _pack_trailer(header: BlockHeader) -> bytes:
    vid = header.version_id.encode("ascii")
    return vid + _pack_fixed(header) + bytes([len(vid)])


def _pack_fixed(header: BlockHeader) -> bytes:
    return _FIXED.pack(
        header.segment_index,
        header.block_index,
        header.k,
        header.n,
        header.segment_length,
        header.payload_length,
        header.payload_sha256,
    )


def pack_header(header: BlockHeader) -> bytes:
    """Serialise a version 1 header, which precedes the payload (no checks beyond struct's)."""
    vid = header.version_id.encode("ascii")
    return MAGIC + bytes([header.format_version, len(vid)]) + vid + _pack_fixed(header)


def unpack(data: bytes, trusted: bool = False) -> tuple[BlockHeader, bytes]:
    """Parse and verify one stored block of either version; returns its header and payload.

    ``trusted``: the caller has already matched the whole block against a
    hash it trusts (the catalog's), so the payload hash is not computed again
    and the payload comes back as a memoryview into ``data`` (no copy).
    """
    view = memoryview(data)
    if len(view) < _MIN_HEADER + 1:
        raise BlockFormatError(f"block too short: {len(view)} bytes")
    if bytes(view[:4]) != MAGIC:
        raise BlockFormatError("not a bitnode block (bad magic)")
    version = view[4]
    if version == FORMAT_VERSION:
        header, payload, covered = _parse_v2(view)
    elif version == FORMAT_V1:
        header, payload, covered = _parse_v1(view)
    else:
        raise BlockFormatError(f"unknown block format version {version}")
    if len(payload) != header.payload_length:
        raise BlockFormatError(f"payload is {len(payload)} bytes, header says {header.payload_length}")
    if trusted:
        return header, payload
    if hashlib.sha256(covered).digest() != header.payload_sha256:
        raise BlockCorrupt(
            f"block {header.block_index} of segment {header.segment_index} of {header.version_id}: "
            "payload hash mismatch"
        )
    return header, bytes(payload)


def _parse_v1(view: memoryview) -> tuple[BlockHeader, memoryview, memoryview]:
    vlen = view[5]
    start = 6 + vlen
    if len(view) < start + _FIXED.size:
        raise BlockFormatError("block header truncated")
    header = _header(view, 6, start, FORMAT_V1)
    payload = view[start + _FIXED.size :]
    return header, payload, payload


def _parse_v2(view: memoryview) -> tuple[BlockHeader, memoryview, memoryview]:
    vlen = view[-1]
    fixed_at = len(view) - 1 - _FIXED.size
    vid_at = fixed_at - vlen
    if vid_at < len(MAGIC) + 1:
        raise BlockFormatError("block trailer truncated")
    header = _header(view, vid_at, fixed_at, FORMAT_VERSION)
    return header, view[len(MAGIC) + 1 : vid_at], view[:vid_at]


def _header(view: memoryview, vid_at: int, fixed_at: int, version: int) -> BlockHeader:
    try:
        version_id = bytes(view[vid_at:fixed_at]).decode("ascii")
    except UnicodeDecodeError as exc:
        raise BlockFormatError("block version id is not ASCII") from exc
    seg, blk, k, n, seg_len, pay_len, digest = _FIXED.unpack_from(view, fixed_at)
    header = BlockHeader(version_id, seg, blk, k, n, seg_len, pay_len, digest, format_version=version)
    _check_header(header, error=BlockFormatError)
    return header


def _check_header(h: BlockHeader, error: type[BitnodeError]) -> None:
    try:
        validate_version_id(h.version_id)
    except BitnodeError as exc:
        raise error(str(exc)) from exc
    if h.format_version not in KNOWN_VERSIONS:
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
