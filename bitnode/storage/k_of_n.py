"""The k-of-n policy: how many of a segment's n blocks (one per supplier position) restore it.

Written once, here: the storage jobs encode with it, the customer side asks
each supplier for a quota from it and writes it into the suppliers record
(``ecc_map`` "k-of-n"). ``services/backups/data-blocks`` (an option of
``service_backups``) sets k; 0 means half the positions, rounded up.
"""

from __future__ import annotations

from typing import Any

from bitnode.main.options import INTEGER, Option

DATA_BLOCKS_KEY = "services/backups/data-blocks"
DATA_BLOCKS_OPTION = Option(
    DATA_BLOCKS_KEY, INTEGER, 0,
    "Blocks needed to restore a segment (k of n suppliers); 0 means half the suppliers, rounded up.",
    minimum=0, maximum=256)


def data_blocks(n: int, wanted: int = 0) -> int:
    """k for ``n`` positions: ``wanted`` (at most n) when set, else ceil(n/2); 0 only for n = 0."""
    if n <= 0:
        return 0
    return max(1, min(wanted, n) if wanted else (n + 1) // 2)


def configured_data_blocks(settings: Any) -> int:
    """The ``data-blocks`` setting; 0 (the default rule) on a node without service_backups."""
    return int(settings.get(DATA_BLOCKS_KEY)) if DATA_BLOCKS_KEY in settings.keys() else 0


def ecc_map(n: int, wanted: int = 0) -> str:
    """The "k-of-n" text of the suppliers record."""
    return f"{data_blocks(n, wanted)}-of-{n}"


def parse_ecc_map(text: str) -> tuple[int, int]:
    """``"3-of-5"`` -> ``(3, 5)``; ValueError for anything else."""
    k, sep, n = str(text).partition("-of-")
    if not sep:
        raise ValueError(f"not a k-of-n map: {text!r}")
    return int(k), int(n)
