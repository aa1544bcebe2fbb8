"""How safe one stored version is: blocks held against blocks needed, per segment.

"Restorable" alone hides the danger: a 2-of-4 file whose last two positions
were given up still restores, with no block to spare, one failure from loss.
:func:`version_report` counts, for every segment, the blocks the catalog says
are held by a supplier still under contract (a current one, or a retiring one
still read from) and reports the weakest segment against k, plus whether the
version is in the layout the node uses now (see :mod:`bitnode.storage.relayout`).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable


def version_report(version: dict, blocks: Iterable[tuple[int, int, str, str]], positions: list[str],
                   holders: set[str] | None, retiring: set[str], layout: tuple[int, int] | None) -> dict:
    """file_info's facts about one version.

    ``blocks`` are the catalog's ``(segment, position, sha256, holder)`` rows;
    ``positions`` the current supplier of each position; ``holders`` every
    supplier under contract (current and retiring), or None when that is not
    known (no supplier provider): then any recorded holder counts; ``layout``
    the ``(k, n)`` new versions get now, or None.
    """
    k, n = version["k"], version["n"]
    held: dict[int, int] = {}
    per_position = [0] * n
    on_retiring = recorded = 0
    for seg, pos, _, holder in blocks:
        recorded += 1
        counts = bool(holder) and (holders is None or holder in holders)
        held[seg] = held.get(seg, 0) + counts
        per_position[pos] += counts
        on_retiring += holder in retiring
    whole = len(held) == version["segments_total"]
    weakest = min(held.values()) if held and whole else 0
    by_held = Counter(held.values())
    return {
        **{key: version[key] for key in ("version_id", "state", "size", "segment_size", "segments_total",
                                         "segments_done", "k", "n", "created", "completed")},
        "restorable": version["state"] == "complete" and whole and weakest >= k,
        "blocks_total": recorded,
        "blocks_missing": recorded - sum(per_position),
        "weakest_segment_blocks": weakest,
        "redundancy": {
            "blocks_needed": k,
            "min_blocks_held": weakest,
            "spare_blocks": weakest - k,
            "segments_by_blocks_held": {str(count): segments for count, segments in sorted(by_held.items())},
            "segments_without_spare": sum(segments for count, segments in by_held.items() if count <= k),
            "blocks_on_retiring": on_retiring,
            "layout": f"{k}-of-{n}",
            "layout_current": layout is None or layout == (k, n),
            "target_layout": f"{layout[0]}-of-{layout[1]}" if layout else None,
        },
        "positions": [{"position": i, "supplier": version["suppliers"][i],
                       "current_supplier": positions[i] if i < len(positions) else "",
                       "blocks_held": per_position[i]} for i in range(n)],
    }
