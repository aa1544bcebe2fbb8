"""k-of-n erasure coding of one encrypted segment with zfec.

The segment is zero-padded to ``k * block_size`` where
``block_size = ceil(len(data) / k)``, cut into k *data* blocks (positions
``0..k-1``, the padded data itself, since zfec is systematic) and zfec adds
``n - k`` *parity* blocks (positions ``k..n-1``). All n blocks have the same
size. Any k distinct blocks give the data back; the true length travels next to
the blocks (block header, catalog), so the padding is simply cut off.

A zero-length segment gives n empty blocks and decodes back to ``b""``.
Decoding from the k data blocks is a plain concatenation; zfec runs only when
a data block is missing.
"""

from __future__ import annotations

import zfec

from bitnode.errors import BadRequest, Unavailable

MAX_N = 256


class NotEnoughBlocks(Unavailable):
    """Fewer than k usable blocks: the segment cannot be rebuilt (yet)."""


def default_k(n: int) -> int:
    """The default number of needed blocks for n blocks: ``ceil(n / 2)``."""
    check_params(1, n)
    return (n + 1) // 2


def check_params(k: int, n: int) -> None:
    """Raise :class:`BadRequest` unless ``1 <= k <= n <= 256``."""
    if not isinstance(k, int) or not isinstance(n, int) or isinstance(k, bool) or isinstance(n, bool):
        raise BadRequest(f"k and n must be integers, got k={k!r} n={n!r}")
    if not 1 <= k <= n <= MAX_N:
        raise BadRequest(f"erasure parameters must satisfy 1 <= k <= n <= {MAX_N}, got k={k} n={n}")


def block_size(data_len: int, k: int) -> int:
    """Size of every block for a segment of ``data_len`` bytes split k ways."""
    if data_len < 0:
        raise BadRequest(f"negative data length: {data_len}")
    return -(-data_len // k)


def encode(data: bytes, k: int, n: int) -> list[bytes]:
    """Split ``data`` into n equal-size blocks, any k of which rebuild it."""
    return [bytes(b) for b in encode_views(data, k, n)]


def encode_views(data: bytes, k: int, n: int) -> list[bytes | memoryview]:
    """:func:`encode` without copying: the data blocks are views into ``data`` (only a padded one is new).

    For a caller that copies the blocks anyway (the uploader packs each into
    its stored form); ``data`` must not change while the views are used.
    """
    check_params(k, n)
    size = block_size(len(data), k)
    view = memoryview(data)
    primary: list[bytes | memoryview] = []
    for i in range(k):
        piece = view[i * size : (i + 1) * size]
        primary.append(piece if len(piece) == size else bytes(piece) + b"\x00" * (size - len(piece)))
    if k == n:
        return primary
    return primary + list(zfec.Encoder(k, n).encode(primary, tuple(range(k, n))))


def choose_blocks(available: list[int] | set[int] | tuple[int, ...], k: int) -> list[int]:
    """The k positions to use among ``available``: data blocks first, then parity."""
    chosen = sorted(set(available))[:k]
    if len(chosen) < k:
        raise NotEnoughBlocks(f"need {k} blocks, only {len(chosen)} available")
    return chosen


def decode(blocks: dict[int, bytes], k: int, n: int, data_len: int) -> bytes:
    """Rebuild the ``data_len`` bytes from ANY k of the n blocks.

    ``blocks`` maps block position to block bytes; extra blocks are ignored
    (data blocks are preferred). Raises :class:`NotEnoughBlocks` with fewer than
    k blocks, :class:`BadRequest` for positions out of range or blocks of the
    wrong size.
    """
    size = _check_blocks(blocks, k, n, data_len)
    primary = _data_blocks(blocks, k, n)
    # One copy: the padding is cut off before joining, not after.
    pieces, left = [], data_len
    for block in primary:
        if left <= 0:
            break
        pieces.append(block if left >= size else memoryview(block)[:left])
        left -= size
    return b"".join(pieces)


def regenerate(blocks: dict[int, bytes], k: int, n: int, data_len: int, positions) -> dict[int, bytes]:
    """The blocks at ``positions`` made again from ANY k of the n blocks: ``{position: block}``.

    Byte for byte ``encode(decode(blocks, k, n, data_len), k, n)[p]``, but
    without joining the segment: the data blocks are taken as they are (zfec
    decodes only when one is missing), and only the wanted parity blocks are
    computed. What a rebuild needs. Same errors as :func:`decode`.
    """
    size = _check_blocks(blocks, k, n, data_len)
    wanted = sorted(set(positions))
    for pos in wanted:
        if not isinstance(pos, int) or not 0 <= pos < n:
            raise BadRequest(f"block position {pos!r} out of range 0..{n - 1}")
    primary = _data_blocks(blocks, k, n)
    out = {pos: bytes(primary[pos]) for pos in wanted if pos < k}
    parity = tuple(pos for pos in wanted if pos >= k)
    if parity:
        made = zfec.Encoder(k, n).encode(list(primary), parity) if size else [b""] * len(parity)
        out.update((pos, bytes(block)) for pos, block in zip(parity, made, strict=True))
    return out


def _check_blocks(blocks: dict[int, bytes], k: int, n: int, data_len: int) -> int:
    """Valid parameters, positions and sizes (:class:`BadRequest` otherwise); the block size."""
    check_params(k, n)
    size = block_size(data_len, k)
    for pos, blk in blocks.items():
        if not isinstance(pos, int) or not 0 <= pos < n:
            raise BadRequest(f"block position {pos!r} out of range 0..{n - 1}")
        if len(blk) != size:
            raise BadRequest(f"block {pos} has {len(blk)} bytes, expected {size}")
    return size


def _data_blocks(blocks: dict[int, bytes], k: int, n: int) -> list:
    """The k data blocks (padded) from any k blocks: as they are, or decoded by zfec when one is missing."""
    chosen = choose_blocks(list(blocks), k)
    if chosen == list(range(k)):
        return [blocks[i] for i in chosen]
    return zfec.Decoder(k, n).decode(tuple(blocks[i] for i in chosen), tuple(chosen))
