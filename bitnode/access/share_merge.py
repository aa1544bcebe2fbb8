"""What a share holds when several members write into it: the owner's index and the writers' entries, merged.

A share has one owner and any number of *writers* (members granted
read-write). Each writes only its own part: the owner its catalog (published
as the share's index), each writer its *entries* (its own catalog rows of the
share, sealed and signed by the writer, kept on the owner's suppliers beside
the index, :mod:`bitnode.access.share_index`). Whoever reads the share —
a reader, a writer, and the owner taking the writers' files into its own
catalog — builds the same view from those documents with one rule:

1. **The owner's index is the base.** Its rows are taken as they are (they
   include the writers' versions the owner already took in).
2. **Writers are taken in the order of their global ids**, and only those the
   owner's index lists as read-write members (``members``): the entries of
   someone who is not (any more) a writer are ignored.
3. **A writer adds versions, never removes or changes anyone's.** A version
   of its entries is taken when it is complete, not already present (the
   owner's copy of it wins) and not one the owner deleted (``removed`` in the
   index). Its file, and the folders above it, are created when missing.
4. **Concurrent edits of one path are kept as versions of that file.** Two
   members who upload ``docs/plan.txt`` at the same time each make a version;
   the merged view holds both (``file_info`` lists them) and the listing shows
   the newest, by creation time then version id (the catalog's own order);
   either can be downloaded by its version id.
5. **A conflict of kinds is settled for what was there first.** A writer's
   file whose path (or a folder above it) is a folder, link or file of
   another kind in the base, or in an earlier writer's entries, is left out
   and reported (``conflicts``); so is a writer's folder over a file.
6. **A writer's deletions show at once.** A version of a writer's own part
   that the owner already took into its index but that the writer's newest
   entries no longer list was deleted by that writer (its blocks are gone
   from the suppliers): it is left out, and so is a file left without any
   version. The owner forgets it at its next look
   (:mod:`bitnode.access.share_absorb`). Entries that could not be read
   remove nothing.

Whatever goes in was already checked row by row
(:func:`~bitnode.access.share_index.open_index`: a catalog document every
reader can import, of the share's key only, a writer's versions all inside
its own part); what comes out is a catalog export document (format 2) that
:meth:`Catalog.import_ <bitnode.storage.catalog.Catalog.import_>` takes as
it is. A malicious writer can therefore add files under its own versions —
what read-write means — but cannot hide, alter or replace anyone else's, nor
make the merge or a reader fail. Pure functions: CPU work for a thread.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from bitnode.storage import share_scope
from bitnode.storage.catalog_format import COMPLETE, EXPORT_FORMAT, ExportRows, parents_of, parse_export

#: item row fields (format 2): key_id, path, is_folder, created, mode, mtime_ns, link_target
_IS_FOLDER, _LINK = 2, 6


@dataclass
class MergeReport:
    """What the merge took and left out, per writer."""

    taken: dict[str, list[str]] = field(default_factory=dict)
    conflicts: list[dict] = field(default_factory=list)
    ignored_writers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The report as JSON-friendly figures."""
        return {"taken": {w: len(v) for w, v in self.taken.items()}, "conflicts": list(self.conflicts),
                "ignored_writers": list(self.ignored_writers)}


class _Rows:
    """Export rows by key, in insertion order (what is merged into)."""

    def __init__(self, rows: ExportRows):
        self.items = {(r[0], r[1]): r for r in rows.items}
        self.versions = {r[0]: r for r in rows.versions}
        self.segments: dict[str, list[tuple]] = {}
        self.blocks: dict[str, list[tuple]] = {}
        for r in rows.segments:
            self.segments.setdefault(r[0], []).append(r)
        for r in rows.blocks:
            self.blocks.setdefault(r[0], []).append(r)

    def kind(self, key_id: str, path: str) -> str | None:
        row = self.items.get((key_id, path))
        if row is None:
            return None
        return "folder" if row[_IS_FOLDER] else "link" if row[_LINK] is not None else "file"

    def document(self) -> dict:
        """A format 2 export document of these rows."""
        versions = []
        for row in self.versions.values():
            values = list(row)
            values[9] = base64.b64encode(values[9]).decode("ascii")
            versions.append(values)
        return {"format": EXPORT_FORMAT, "items": [list(r) for r in self.items.values()], "versions": versions,
                "segments": [list(r) for rows in self.segments.values() for r in rows],
                "blocks": [list(r) for rows in self.blocks.values() for r in rows]}


def merge(index: dict, entries: list[dict]) -> tuple[dict, MergeReport]:
    """The merged catalog document of a share (see the module docstring) and what was taken or left out.

    ``index`` and each of ``entries`` are what :func:`share_index.open_index
    <bitnode.access.share_index.open_index>` returned.
    """
    base = _Rows(parse_export(index["catalog"]))
    report = MergeReport()
    members, removed = index.get("members", {}), set(index.get("removed", ()))
    for doc in sorted(entries, key=lambda d: d["writer"]):
        writer = doc["writer"]
        if members.get(writer) != "rw":
            report.ignored_writers.append(writer)
            continue
        rows = parse_export(doc["catalog"])
        _drop_deleted(base, {row[0] for row in rows.versions}, writer)
        report.taken[writer] = take_entries(base, rows, writer, removed, report)
    return base.document(), report


def _drop_deleted(base: _Rows, listed: set[str], writer: str) -> None:
    """Rule 6: the writer's versions in ``base`` its entries no longer list go, with files left empty."""
    dropped = [v for v, row in base.versions.items()
               if v not in listed and share_scope.is_writer_version(v, share_scope.share_alias(row[1]), writer)]
    emptied = set()
    for version_id in dropped:
        row = base.versions.pop(version_id)
        base.segments.pop(version_id, None)
        base.blocks.pop(version_id, None)
        emptied.add((row[1], row[2]))
    still = {(row[1], row[2]) for row in base.versions.values()}
    for key in emptied - still:
        if base.kind(*key) == "file":
            del base.items[key]


def take_entries(base: _Rows, rows: ExportRows, writer: str, removed: set[str], report: MergeReport) -> list[str]:
    """Add to ``base`` what rule 3-5 of the module docstring lets in from one writer's rows; the version ids taken."""
    entries = _Rows(rows)
    taken = []
    for (key_id, path), row in entries.items.items():  # folders and links first: files bring their own parents
        if row[_IS_FOLDER] or row[_LINK] is not None:
            _add_item(base, entries, key_id, path, writer, report)
    for version_id, version in entries.versions.items():
        key_id, path = version[1], version[2]
        alias = share_scope.share_alias(key_id)
        if (version[3] != COMPLETE or version_id in base.versions or version_id in removed
                or not share_scope.is_writer_version(version_id, alias, writer)):
            continue
        if not _add_item(base, entries, key_id, path, writer, report):
            continue
        base.versions[version_id] = version
        base.segments[version_id] = list(entries.segments.get(version_id, []))
        base.blocks[version_id] = list(entries.blocks.get(version_id, []))
        taken.append(version_id)
    return taken


def _add_item(base: _Rows, entries: _Rows, key_id: str, path: str, writer: str, report: MergeReport) -> bool:
    """Make ``path`` (and its folders) in ``base`` as ``entries`` has them; False on a conflict of kinds."""
    wanted = entries.kind(key_id, path)
    for parent in parents_of(path):
        if base.kind(key_id, parent) not in (None, "folder"):
            report.conflicts.append({"writer": writer, "path": path, "reason": f"{parent} is not a folder"})
            return False
    found = base.kind(key_id, path)
    if found is not None and found != wanted:
        report.conflicts.append({"writer": writer, "path": path, "reason": f"a {found} is there already"})
        return False
    if found is None:
        created = entries.items[(key_id, path)][3]
        for parent in parents_of(path):
            if base.kind(key_id, parent) is None:
                folder = entries.items.get((key_id, parent)) or (key_id, parent, 1, created, None, None, None)
                base.items[(key_id, parent)] = folder
        base.items[(key_id, path)] = entries.items[(key_id, path)]
    return True


def merged_bytes(index: dict, entries: list[dict]) -> tuple[bytes, dict]:
    """:func:`merge` as the bytes :meth:`Catalog.import_` takes, and the report as a dict."""
    document, report = merge(index, entries)
    return json.dumps(document, separators=(",", ":")).encode("utf-8"), report.as_dict()
