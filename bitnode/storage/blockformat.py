"""The on-supplier block format, versions 1, 2 and 3.

A stored block is one zfec block of one encrypted segment (the payload) plus a
fixed-layout description of it. :func:`pack` writes version 3 (version 2 when
rebuilding a block of an older version); :func:`unpack` reads all three. All
integers are big-endian.

Versions 2 and 3 put the description after the payload, so the one SHA-256
pass the uploader makes over a block yields both the payload hash (a digest
of the bytes in front of the trailer) and the whole-block hash the catalog
keeps (the same hash state continued over the trailer)::

    offset size field
         0    4 magic               b"BNBK"
         4    1 format version      3 (or 2)
         5    P payload
       5+P    L version id          ASCII, see segment_crypto.validate_version_id
     5+P+L    8 segment index
    13+P+L    2 block index         0..n-1
    15+P+L    2 k                   1..n
    17+P+L    2 n                   1..256
    19+P+L    8 segment plaintext length
    27+P+L    8 payload length      P
    35+P+L   32 SHA-256 of bytes 0..5+P (magic, version and payload)
    67+P+L   12 segment nonce       version 3 only (segment_crypto format 2)
         .    1 version id length   L (1..128), the last byte

Version 3 carries the segment's GCM nonce (the same in every block of a
segment): since segment encryption format 2 the nonce depends on the
segment's content (:func:`bitnode.storage.segment_crypto.synthetic_nonce`) and
cannot be recomputed from the place alone. A version 2 or 1 block was
encrypted with the format 1 nonce (``header.nonce`` is empty).

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
from bitnode.storage.segment_crypto import NONCE_SIZE, TAG_SIZE, validate_version_id

MAGIC = b"BNBK"
FORMAT_VERSION = 3
FORMAT_V1 = 1
FORMAT_V2 = 2
KNOWN_VERSIONS = (FORMAT_V1, FORMAT_V2, FORMAT_VERSION)
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
    magic, version byte and payload (versions 2 and 3). ``nonce`` is the
    segment's GCM nonce (version 3), empty before.
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
    nonce: bytes = b""


def header_size(version_id: str, format_version: int = FORMAT_VERSION) -> int:
    """Number of bytes a block adds to its payload for ``version_id`` in ``format_version``."""
    return _MIN_HEADER + len(version_id) + (NONCE_SIZE if format_version == FORMAT_VERSION else 0)


def pack(
    version_id: str, segment_index: int, block_index: int, k: int, n: int, segment_length: int, payload: bytes,
    nonce: bytes | None = None,
) -> bytes:
    """Build the stored form of one block: version 3 with the segment's ``nonce``, version 2 without."""
    return pack_hashed(version_id, segment_index, block_index, k, n, segment_length, payload, nonce)[0]


def pack_hashed(
    version_id: str, segment_index: int, block_index: int, k: int, n: int, segment_length: int, payload,
    nonce: bytes | None = None,
) -> tuple[bytes, str]:
    """Build one block and the hex SHA-256 of the whole block, in one pass over the payload.

    With ``nonce`` (segment encryption format 2) the block is version 3;
    without, version 2 (to rebuild, byte for byte, a block stored before
    version 3). ``payload`` may be any bytes-like object (a memoryview of an
    erasure block is packed with a single copy).
    """
    packed, block_sha256, _ = pack_with_suffix(version_id, segment_index, block_index, k, n, segment_length,
                                               payload, nonce)
    return packed, block_sha256


def pack_with_suffix(
    version_id: str, segment_index: int, block_index: int, k: int, n: int, segment_length: int, payload,
    nonce: bytes | None = None, suffix: bytes = b"",
) -> tuple[bytes, str, bytes]:
    """:func:`pack_hashed` with ``suffix`` after the block in the same buffer.

    Returns (block + suffix, hex SHA-256 of the block, SHA-256 of block +
    suffix): the uploader appends a ``Data`` payload's trailer
    (:func:`bitnode.storage.wire.data_trailer`) and so gets the payload, the
    block's hash for the catalog and the payload's hash for the packet from
    one copy and one hash pass.
    """
    version = FORMAT_V2 if nonce is None else FORMAT_VERSION
    prefix = MAGIC + bytes([version])
    hasher = hashlib.sha256(prefix)
    hasher.update(payload)
    # digest() leaves the state open for the trailer
    header = _checked_header(version_id, segment_index, block_index, k, n, segment_length, payload,
                             hasher.digest(), version, nonce or b"")
    trailer = _pack_trailer(header)
    hasher.update(trailer)
    block_sha256 = hasher.hexdigest()
    if suffix:
        hasher.update(suffix)
    return b"".join((prefix, payload, trailer, suffix)), block_sha256, hasher.digest()


def pack_v1(
    version_id: str, segment_index: int, block_index: int, k: int, n: int, segment_length: int, payload: bytes
) -> bytes:
    """Build a version 1 block: to rebuild, byte for byte, a block of a version stored before format 2."""
    header = _checked_header(version_id, segment_index, block_index, k, n, segment_length, payload,
                             hashlib.sha256(payload).digest(), FORMAT_V1)
    return pack_header(header) + bytes(payload)


def _checked_header(version_id: str, segment_index: int, block_index: int, k: int, n: int, segment_length: int,
                    payload, payload_sha256: bytes, format_version: int, nonce: bytes = b"") -> BlockHeader:
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
        nonce=bytes(nonce),
    )
    _check_header(header, error=BlockFormatError)
    return header


def _pack_trailer(header: BlockHeader) -> bytes:
    vid = header.version_id.encode("ascii")
    return vid + _pack_fixed(header) + header.nonce + bytes([len(vid)])


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
    if version in (FORMAT_V2, FORMAT_VERSION):
        header, payload, covered = _parse_trailer(view, version)
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


def _parse_trailer(view: memoryview, version: int) -> tuple[BlockHeader, memoryview, memoryview]:
    """Versions 2 and 3: the description after the payload (version 3 with the nonce before the last byte)."""
    vlen = view[-1]
    nonce_size = NONCE_SIZE if version == FORMAT_VERSION else 0
    fixed_at = len(view) - 1 - nonce_size - _FIXED.size
    vid_at = fixed_at - vlen
    if vid_at < len(MAGIC) + 1:
        raise BlockFormatError("block trailer truncated")
    nonce = bytes(view[len(view) - 1 - nonce_size : len(view) - 1])
    header = _header(view, vid_at, fixed_at, version, nonce)
    return header, view[len(MAGIC) + 1 : vid_at], view[:vid_at]


def _header(view: memoryview, vid_at: int, fixed_at: int, version: int, nonce: bytes = b"") -> BlockHeader:
    try:
        version_id = bytes(view[vid_at:fixed_at]).decode("ascii")
    except UnicodeDecodeError as exc:
        raise BlockFormatError("block version id is not ASCII") from exc
    seg, blk, k, n, seg_len, pay_len, digest = _FIXED.unpack_from(view, fixed_at)
    header = BlockHeader(version_id, seg, blk, k, n, seg_len, pay_len, digest, format_version=version, nonce=nonce)
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
    if len(h.nonce) != (NONCE_SIZE if h.format_version == FORMAT_VERSION else 0):
        raise error(f"a version {h.format_version} block has a {len(h.nonce)}-byte nonce")
