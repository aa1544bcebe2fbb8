"""Folders: upload a local folder as it is, and restore it as it was.

Uploading a folder keeps what a user would miss after a restore
(issue 13.6): every file as a new version (with its mode and mtime), every
sub-folder (empty ones too, with their mode and mtime) and every symbolic link
as a link (its target text; never followed, wherever it points). What cannot
be read (a file without read permission, a folder that cannot be listed, a
fifo or device, a name the catalog cannot hold) is reported in ``skipped``
with the reason, and the rest goes on.

Restoring a folder makes its folders first (never through a link:
:mod:`bitnode.storage.local_files`), downloads its files, and once every file
has ended puts the links back and gives each folder its mode and mtime
(deepest first: writing inside a folder changes its mtime).

:func:`scan_folder` runs in a worker thread; :func:`upload_folder` and
:func:`download_folder` use a :class:`~bitnode.storage.transfers.TransferManager`
and its context (clock, thread runner, catalog).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.logger import Logger

from bitnode.errors import BadRequest, BitnodeError, NotFound
from bitnode.globalid import validate_path
from bitnode.storage import local_files
from bitnode.storage.catalog_format import check_link_target
from bitnode.storage.pack_format import PackSource
from bitnode.storage.packs import plan_packs

#: Entries (files, folders and links) one folder upload may hold, unless the setting says otherwise
#: (``services/backups/folder-max-entries``).
MAX_FOLDER_ENTRIES = 100_000
log = Logger()


@dataclass(frozen=True)
class LocalEntry:
    """One thing found in a local folder: where it is below the folder, and what a restore gives back."""

    relative: str
    local_path: str
    mode: int
    mtime_ns: int
    link_target: str | None = None
    #: Bytes (a file's; 0 for the others), as scanned: which files go into packs.
    size: int = 0


@dataclass
class LocalTree:
    """A scanned folder: its folders (itself first, relative ""), files, links, and what was skipped and why."""

    folders: list[LocalEntry] = field(default_factory=list)
    files: list[LocalEntry] = field(default_factory=list)
    links: list[LocalEntry] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def can_read(path: str) -> bool:
    """Whether this process can open the file for reading now (what the kernel says, not the mode bits)."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def scan_folder(root: str, max_entries: int = MAX_FOLDER_ENTRIES,
                readable: Callable[[str], bool] | None = None) -> LocalTree:
    """Everything under the local folder ``root``, links not followed. Worker thread.

    ``readable(path)`` (default :func:`can_read`) says whether a file can be
    read. NotFound / BadRequest when ``root`` is missing or not a folder, or
    holds more than ``max_entries`` entries.
    """
    readable = readable or can_read
    try:
        st = os.stat(root)  # the folder the user named: followed like any path they type
    except FileNotFoundError:
        raise NotFound(f"local path {root} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BadRequest(f"{root} is not a folder")
    tree = LocalTree(folders=[LocalEntry("", root, stat.S_IMODE(st.st_mode), st.st_mtime_ns)])

    def skip(path: str, why: str) -> None:
        tree.skipped.append({"local_path": path, "error": why})

    pending = [(root, "")]
    while pending:
        folder, relative = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name, reverse=True)
        except OSError as err:
            skip(folder, f"folder cannot be listed: {err.strerror}")
            continue
        for entry in entries:
            path = f"{relative}/{entry.name}" if relative else entry.name
            try:
                validate_path(path)
                st = entry.stat(follow_symlinks=False)
            except BadRequest as err:
                skip(entry.path, f"name cannot be stored: {err}")
                continue
            except OSError as err:
                skip(entry.path, f"cannot be read: {err.strerror}")
                continue
            found = LocalEntry(path, entry.path, stat.S_IMODE(st.st_mode), st.st_mtime_ns, None,
                               st.st_size if stat.S_ISREG(st.st_mode) else 0)
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = check_link_target(os.readlink(entry.path))
                except (OSError, BadRequest) as err:
                    skip(entry.path, f"link cannot be read: {getattr(err, 'strerror', None) or err}")
                    continue
                tree.links.append(LocalEntry(path, entry.path, found.mode, found.mtime_ns, target))
            elif stat.S_ISDIR(st.st_mode):
                tree.folders.append(found)
                pending.append((entry.path, path))
            elif not stat.S_ISREG(st.st_mode):
                skip(entry.path, "not a regular file, folder or link (a fifo, socket or device)")
            elif not readable(entry.path):
                skip(entry.path, "cannot be read: permission denied")
            else:
                tree.files.append(found)
            if len(tree.files) + len(tree.folders) + len(tree.links) > max_entries:
                raise BadRequest(f"{root} has more than {max_entries} files, folders and links")
    tree.folders.sort(key=lambda e: e.relative)
    tree.files.sort(key=lambda e: e.relative)
    tree.links.sort(key=lambda e: e.relative)
    return tree


def catalog_tree(catalog, key_id: str, path: str, tree: LocalTree, now: float, files: bool = False) -> list[dict]:
    """Catalog the folders (with their metadata), the links and (if ``files``) the files of a scanned tree.

    Returns what could not be catalogued, with why. Worker thread.
    """
    skipped = []
    for folder in tree.folders:
        remote = f"{path}/{folder.relative}" if folder.relative else path
        catalog.create(key_id, remote, True, True, now, folder.mode, folder.mtime_ns)
    for entry in tree.files if files else ():
        try:
            catalog.create(key_id, f"{path}/{entry.relative}", False, True, now)
        except BitnodeError as err:
            skipped.append({"local_path": entry.local_path, "error": str(err)})
    for link in tree.links:
        try:
            catalog.create_link(key_id, f"{path}/{link.relative}", link.link_target, link.mtime_ns, now)
        except BitnodeError as err:
            skipped.append({"local_path": link.local_path, "error": str(err)})
    return skipped


async def upload_folder(manager, key_id: str, path: str, local: str, wait: bool = False,
                        max_entries: int | None = None) -> dict:
    """Upload the local folder ``local`` to ``key_id:path``; see the module docstring for the result.

    ``max_entries``: the most files, folders and links it may hold (default: the context's setting).
    """
    ctx = manager.ctx
    tree = await ctx.run_in_thread(scan_folder, local, max_entries or ctx.folder_max_entries())
    link_problems = await ctx.run_in_thread(catalog_tree, ctx.catalog, key_id, path, tree, ctx.clock.seconds())
    skipped = tree.skipped + link_problems
    ctx.on_catalog_changed()
    limits = ctx.pack_limits() if not ctx.version_tag(key_id) else None  # a share's files are stored alone
    groups, alone = plan_packs(tree.files, *limits) if limits else ([], tree.files)
    jobs = []
    for group in groups:
        try:
            jobs.append(manager.start_pack_upload(key_id, path, local,
                                                  [PackSource(e.relative, e.local_path) for e in group]))
        except BitnodeError as err:
            skipped += [{"local_path": e.local_path, "error": str(err)} for e in group]
    for entry in alone:
        try:
            jobs.append(manager.start_upload(entry.local_path, f"{key_id}:{path}/{entry.relative}"))
        except BitnodeError as err:
            skipped.append({"local_path": entry.local_path, "error": str(err)})
    result = await folder_result(local, f"{key_id}:{path}", jobs, skipped, wait)
    # A pack's files count one by one; those it could not read are in its result's "skipped".
    result["files"] = sum(len(g) for g in groups) + len(alone)
    result.update(folders=len(tree.folders), links=len(tree.links) - len(link_problems), packs=len(groups))
    if wait:
        for job in jobs:
            result["skipped"] += job.result.get("skipped", [])
    return result


async def folder_result(local: str, remote: str, jobs: list, skipped: list, wait: bool) -> dict:
    """``{"remote_path", "local_path", "files", "transfers", "skipped"}``; with ``wait``, once every job ended."""
    if wait:
        outcomes = await defer.DeferredList([job.wait() for job in jobs], consumeErrors=True)
        for job, (ok, failure) in zip(jobs, outcomes, strict=True):
            if not ok:
                skipped.append({"local_path": job.local_path, "remote_path": job.remote_path,
                                "error": failure.getErrorMessage()})
    return {"remote_path": remote, "local_path": local, "files": len(jobs),
            "transfers": [job.info() for job in jobs], "skipped": skipped}


# --- restoring ------------------------------------------------------------------------------------


def _parts(name: str, relative: str) -> list[str]:
    return [name, *relative.split("/")] if relative else [name]


def _make_folders(destination: str, name: str, folders: list[dict]) -> list[dict]:
    """Make every folder of the restore (empty ones too). Worker thread."""
    problems = []
    for item in folders:
        try:
            local_files.make_folders(destination, _parts(name, item["relative"]))
        except (OSError, BitnodeError) as err:
            problems.append({"remote_path": item["remote_path"], "error": _why(err)})
    return problems


def _finish_tree(destination: str, name: str, folders: list[dict], links: list[dict]) -> list[dict]:
    """Put the links back, then each folder's mode and mtime, deepest first. Worker thread."""
    problems = []
    for item in links:
        try:
            local_files.make_link(destination, _parts(name, item["relative"]), item["link_target"], item["mtime_ns"])
        except (OSError, BitnodeError) as err:
            problems.append({"remote_path": item["remote_path"], "error": _why(err)})
    for item in sorted(folders, key=lambda i: i["relative"].count("/") if i["relative"] else -1, reverse=True):
        try:
            local_files.set_folder_meta(destination, _parts(name, item["relative"]), item["mode"], item["mtime_ns"])
        except (OSError, BitnodeError) as err:
            problems.append({"remote_path": item["remote_path"], "error": _why(err)})
    return problems


def restore_link(target: str, item: dict) -> None:
    """Put one catalogued link back at the local path ``target`` (its folder is the one the user named). Worker thread."""
    folder, name = os.path.split(os.path.abspath(target))
    local_files.make_link(folder, [name], item["link_target"], item.get("mtime_ns"))


def _why(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err)


async def download_folder(manager, key_id: str, path: str, destination: str, wait: bool = False) -> dict:
    """Restore the folder ``key_id:path`` into the existing local folder ``destination``."""
    ctx = manager.ctx
    top = await ctx.run_in_thread(ctx.catalog.get, key_id, path)
    rows = await ctx.run_in_thread(ctx.catalog.list, key_id, path, True)
    name = path.rsplit("/", 1)[-1]
    root = os.path.join(destination, name)

    def entry(row: dict, relative: str) -> dict:
        return {"remote_path": row["remote_path"], "relative": relative, "mode": row.get("mode"),
                "mtime_ns": row.get("mtime_ns"), "link_target": row.get("link_target")}

    folders = [entry(top, "")] + [entry(r, r["path"][len(path) + 1:]) for r in rows if r["type"] == "folder"]
    links = [entry(r, r["path"][len(path) + 1:]) for r in rows if r["type"] == "link"]
    skipped = await ctx.run_in_thread(_make_folders, destination, name, folders)
    jobs = []
    # Files of packs: one job per pack, which reads the pack once for all of its files here.
    in_packs: dict[str, tuple[list[dict], list[str]]] = {}
    for member in await ctx.run_in_thread(ctx.catalog.packed_under, key_id, path):
        files, targets = in_packs.setdefault(member["pack_id"], ([], []))
        files.append(member)
        targets.append(os.path.join(root, *member["path"][len(path) + 1:].split("/")))
    packed = {m["remote_path"] for files, _ in in_packs.values() for m in files}
    for pack_id, (files, targets) in in_packs.items():
        try:
            jobs.append(manager.start_pack_download(f"{key_id}:{path}", root, pack_id, files, targets, destination))
        except BitnodeError as err:
            skipped += [{"remote_path": m["remote_path"], "error": str(err)} for m in files]
    for row in rows:
        if row["type"] != "file" or row["remote_path"] in packed:
            continue
        if row["latest_version"] is None:
            skipped.append({"remote_path": row["remote_path"], "error": "no complete version"})
            continue
        target = os.path.join(root, *row["path"][len(path) + 1:].split("/"))
        try:
            jobs.append(manager.start_download(row["remote_path"], target, root=destination))
        except BitnodeError as err:
            skipped.append({"remote_path": row["remote_path"], "error": str(err)})

    async def finish() -> list[dict]:
        await defer.DeferredList([job.wait() for job in jobs], consumeErrors=True)
        return await ctx.run_in_thread(_finish_tree, destination, name, folders, links)

    finishing = defer.Deferred.fromCoroutine(finish())
    result = await folder_result(root, f"{key_id}:{path}", jobs, skipped, wait)
    result["files"] = len(packed) + len(jobs) - len(in_packs)
    result.update(folders=len(folders), links=len(links), packs=len(in_packs))
    if wait:
        for job in jobs:
            result["skipped"] += job.result.get("problems", [])
    if wait:
        result["skipped"] += await finishing
    else:
        finishing.addCallback(lambda problems: [log.warn("restoring {remote_path}: {error}", **p) for p in problems])
        finishing.addErrback(lambda f: None if f.check(defer.CancelledError)
                             else log.failure("restoring the folders and links of {path}", f, path=path))
        manager.track(finishing)
    return result
