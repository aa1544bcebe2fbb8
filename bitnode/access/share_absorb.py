"""The owner of a share takes its writers' files into its own catalog.

What a writer uploads into my share lies on my suppliers, in my space, under
the writer's part of the share (:mod:`bitnode.storage.share_scope`); the
writer lists it in its entries beside my index. Readers see it by merging the
entries into their view (:mod:`bitnode.access.share_merge`), even while I am
away. When I am online I take it into my own catalog, which makes it mine to
keep: my backup_monitor checks and rebuilds its blocks like my own, my
catalog backup carries it (so it survives the writer's machine and mine), my
index lists it (so readers see it even if the writer's entries are lost),
and my files API shows and downloads it.

:func:`absorb` does one round for one share, in three steps:

1. read each writer's newest entries from my suppliers, checked against the
   writer's identity key and opened with the share key generation they name
   (a writer who has not picked up a rotated key yet still used the old one);
2. decide with the merge's own rule (:func:`share_merge.take_entries
   <bitnode.access.share_merge.take_entries>`) what is new: a complete
   version of the writer's part not in my catalog, not one I deleted, of a
   path whose kind does not conflict with mine;
3. write it into my catalog (re-wrapping its version key with the current
   share key) and forget the versions the writer deleted since (its newer
   entries no longer list them; their blocks are deleted from my suppliers).

What I took from whom is remembered per writer (``absorbed`` in my share
records): a version I took and later deleted myself (``file_delete``, or a
prune of old versions) is published in my index as ``removed``, so neither I
nor any reader brings it back from the writer's older entries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer

from bitnode.access import share_index, share_merge
from bitnode.access.share_rotation import unwrap_with_any
from bitnode.crypt import keys
from bitnode.errors import BadRequest, BitnodeError, Conflict, NotFound
from bitnode.storage import share_scope
from bitnode.storage.catalog import split_remote_path
from bitnode.storage.catalog_format import COMPLETE, parse_export
from bitnode.storage.job_context import delete_versions
from bitnode.storage.ports import SegmentMeta


@dataclass
class AbsorbOutcome:
    """One round of :func:`absorb`: what was taken and forgotten per writer, and what went wrong."""

    taken: dict[str, list[str]] = field(default_factory=dict)
    forgotten: dict[str, list[str]] = field(default_factory=dict)
    absorbed: dict[str, list[str]] = field(default_factory=dict)
    conflicts: list[dict] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether my catalog changed."""
        return any(self.taken.values()) or any(self.forgotten.values())

    def as_dict(self) -> dict:
        """Figures for the API and the history."""
        return {"taken": {w: len(v) for w, v in self.taken.items()},
                "forgotten": {w: len(v) for w, v in self.forgotten.items()},
                "conflicts": list(self.conflicts), "problems": dict(self.problems)}


async def absorb(reader: Any, storage: Any, run_in_thread: Callable[..., defer.Deferred], key_id: str,
                 writers: list[str], absorbed: dict[str, list[str]], share_keys: list) -> AbsorbOutcome:
    """One round for share ``key_id`` of mine (see the module docstring).

    ``reader`` is a :class:`~bitnode.access.share_reader.ShareReader` of my
    own share (it reads my suppliers as me); ``storage`` service_backups;
    ``absorbed`` what I took from each writer before; ``share_keys`` the
    generations of the share key I hold, current first.
    """
    placement = storage.placement()
    outcome = AbsorbOutcome()
    found, outcome.problems = await reader.fetch_entries(list(placement.positions), sorted(writers))
    for writer in sorted(writers):
        entries = found.get(writer)
        before = list(absorbed.get(writer, []))
        if entries is None:
            outcome.absorbed[writer] = before  # nothing read: nothing changes
            continue
        plan = await run_in_thread(_plan, storage.catalog, key_id, writer, entries, set(before))
        outcome.conflicts += plan["conflicts"]
        taken = await run_in_thread(_take, storage.catalog, plan["add"], share_keys, key_id)
        forgotten = plan["forget"]
        if forgotten:
            await run_in_thread(_forget, storage.catalog, forgotten)
            await delete_versions(storage.context, forgotten)
        listed = plan["listed"]
        outcome.taken[writer], outcome.forgotten[writer] = taken, forgotten
        outcome.absorbed[writer] = sorted(v for v in set(before) | set(taken) if v in listed)
    return outcome


def removed_versions(catalog: Any, key_id: str, absorbed: dict[str, list[str]]) -> list[str]:
    """The writers' versions I took and have deleted since: what my index lists as ``removed``. Worker thread."""
    present = {v["version_id"] for v in catalog.versions() if v["remote_path"].startswith(key_id + ":")}
    return sorted(v for ids in absorbed.values() for v in ids if v not in present)[-100_000:]


def _plan(catalog: Any, key_id: str, writer: str, entries: dict, before: set[str]) -> dict:
    """What to add from a writer's entries and what to forget. Worker thread."""
    mine = share_merge._Rows(parse_export(share_index.share_subset(catalog.export(), key_id)))
    rows = parse_export(entries["catalog"])
    listed = {row[0] for row in rows.versions}
    present = set(mine.versions)
    deleted_by_me = {v for v in before if v not in present}
    report = share_merge.MergeReport()
    adding = share_merge.take_entries(mine, rows, writer, deleted_by_me, report)
    alias = share_scope.share_alias(key_id)
    forget = sorted(v for v in before if v in present and v not in listed
                    and share_scope.is_writer_version(v, alias, writer))
    add = {"items": [mine.items[key] for key in mine.items if key not in _item_keys(catalog, key_id)],
           "versions": [mine.versions[v] for v in adding],
           "segments": {v: mine.segments.get(v, []) for v in adding},
           "blocks": {v: mine.blocks.get(v, []) for v in adding}}
    return {"add": add, "forget": forget, "listed": listed, "conflicts": report.conflicts}


def _item_keys(catalog: Any, key_id: str) -> set[tuple[str, str]]:
    return {(row["key_id"], row["path"]) for row in catalog.list(key_id, "", True)}


def _take(catalog: Any, add: dict, share_keys: list, key_id: str) -> list[str]:
    """Write the planned folders, links and versions into my catalog; the version ids written. Worker thread."""
    current = share_keys[0].public_key() if share_keys else None
    for key, path, is_folder, created, mode, mtime_ns, link in add["items"]:
        try:
            if link is not None:
                catalog.create_link(key, path, link, mtime_ns, created)
            elif is_folder:
                catalog.create(key, path, as_folder=True, exist_ok=True, now=created, mode=mode, mtime_ns=mtime_ns)
        except (Conflict, BadRequest):
            continue  # my catalog changed since the plan: the next round sees it
    taken = []
    for row in add["versions"]:
        (version_id, key, path, _state, size, segment_size, segments_total, k, n, wrapped, suppliers,
         created, completed, mode, mtime_ns) = row
        try:
            if current is not None:
                wrapped = keys.wrap_key(current, unwrap_with_any(share_keys, wrapped, key_id))
            catalog.begin_version(key, path, version_id, size, segment_size, segments_total, k, n, wrapped,
                                  json.loads(suppliers), created, None, mode, mtime_ns)
            for seg_index, length in ((s[1], s[2]) for s in add["segments"][version_id]):
                blocks = sorted((b for b in add["blocks"][version_id] if b[1] == seg_index), key=lambda b: b[2])
                meta = SegmentMeta(seg_index, length, tuple(b[3] for b in blocks),
                                   tuple(b[2] for b in blocks if b[4]))
                catalog.record_segment(version_id, meta, [b[4] for b in blocks])
            catalog.finish_version(version_id, COMPLETE, completed if completed is not None else created)
        except BitnodeError:
            try:
                catalog.drop_version(version_id, forget_new_file=False)
            except NotFound:
                pass
            continue
        taken.append(version_id)
    return taken


def _forget(catalog: Any, version_ids: list[str]) -> None:
    """Drop versions a writer deleted from my catalog, and files left without a version (their blocks go
    separately). Worker thread."""
    for version_id in version_ids:
        try:
            key_id, path = split_remote_path(catalog.version(version_id)["remote_path"])
            catalog.drop_version(version_id)
            item = catalog.get(key_id, path)
        except NotFound:
            continue
        if item["type"] == "file" and not item["versions"]:
            catalog.delete(key_id, path)
