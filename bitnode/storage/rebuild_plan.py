"""What a rebuild works from: each recorded segment's plan, and remaking its stored blocks.

:func:`catalog_snapshot` reads every recorded segment of the catalog (its
length and, per position, the block's SHA-256 and holder) into
:class:`SegmentPlan` values; :func:`regenerate_blocks` decodes a segment from
k payloads and packs the missing positions byte for byte as they were stored
(block format 3 with the segment's nonce, else 2, else 1). Both run in a
worker thread; :mod:`bitnode.storage.backup_monitor` drives them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bitnode.errors import NotFound
from bitnode.storage import blockformat, erasure
from bitnode.storage.catalog import COMPLETE, UPLOADING, Catalog
from bitnode.storage.segment_crypto import TAG_SIZE


@dataclass(frozen=True)
class SegmentPlan:
    """One recorded segment: its length and, per position, (sha256, holder)."""

    version_id: str
    index: int
    k: int
    n: int
    plaintext_length: int
    blocks: tuple[tuple[str, str], ...]


def catalog_snapshot(catalog: Catalog) -> list[SegmentPlan]:
    """Every recorded segment of every complete or uploading version. Worker thread."""
    plans = []
    for version in catalog.versions():
        if version["state"] not in (COMPLETE, UPLOADING):
            continue
        version_id = version["version_id"]
        try:
            lengths = {m.index: m.plaintext_length for m in catalog.segments(version_id)}
            rows = catalog.blocks(version_id)
        except NotFound:  # deleted while we looked
            continue
        per_segment: dict[int, list[tuple[str, str]]] = {}
        for seg, _pos, sha, holder in rows:
            per_segment.setdefault(seg, []).append((sha, holder))
        for seg, blocks in sorted(per_segment.items()):
            if len(blocks) == version["n"]:
                plans.append(SegmentPlan(version_id, seg, version["k"], version["n"], lengths[seg], tuple(blocks)))
    return plans


def regenerate_blocks(payloads: dict[int, bytes], plan: SegmentPlan, positions: list[int],
                      nonce: bytes | None = None) -> dict[int, bytes]:
    """Decode the encrypted segment from k payloads and re-make the stored blocks at ``positions``. Worker thread.

    ``nonce`` is the one the fetched blocks carry (block format 3); None for
    older blocks, rebuilt as they were (format 2, else format 1).
    """
    raw = erasure.regenerate(payloads, plan.k, plan.n, plan.plaintext_length + TAG_SIZE, positions)
    blocks = {}
    for pos in positions:
        args = (plan.version_id, plan.index, pos, plan.k, plan.n, plan.plaintext_length, raw[pos])
        block = blockformat.pack(*args, nonce=nonce)
        if nonce is None and hashlib.sha256(block).hexdigest() != plan.blocks[pos][0]:
            block = blockformat.pack_v1(*args)  # a version stored before block format 2 is rebuilt as it was
        blocks[pos] = block
    return blocks
