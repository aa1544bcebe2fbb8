"""What the files API asks of a catalog: listings, an item with its versions' safety, transfers of a path.

The API (:mod:`bitnode.interface.api_files`) checks its arguments and calls a
:class:`FileQueries` over a *catalog source*: service_backups for my own files,
or an open share's view for another user's
(:meth:`~bitnode.storage.backups_service.BackupsService.catalog_for` says which).
Both have ``catalog``, ``transfers``, ``placement()`` and
``check_remote_path()``. Whatever touches sqlite or the local disk runs through
``run_in_thread``; the answers are the API's JSON shapes (see api_files).
"""

from __future__ import annotations

import os
import stat
from typing import Any, Callable, Iterable

from bitnode.errors import BadRequest, NotFound, Unavailable
from bitnode.storage import folders
from bitnode.storage.catalog import COMPLETE
from bitnode.storage.catalog_format import describe_metadata
from bitnode.storage.redundancy import version_report


def local_kind(local_path: str) -> str:
    """"file" or "folder" (the path the user named is followed); NotFound / BadRequest otherwise. Worker thread."""
    try:
        st = os.stat(local_path)
    except FileNotFoundError:
        raise NotFound(f"local path {local_path} does not exist") from None
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    raise BadRequest(f"{local_path} is neither a file nor a folder")


def download_target(destination: str, name: str, is_folder: bool) -> str:
    """Where a download goes; BadRequest when it cannot be written there. Worker thread."""
    if os.path.isdir(destination):
        target = os.path.join(destination, name)
    elif is_folder:
        raise BadRequest(f"destination {destination} must be an existing folder")
    else:
        target = destination
    parent = os.path.dirname(target) if not is_folder else destination
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise BadRequest(f"destination folder {parent} does not exist or is not writable")
    if not is_folder and os.path.isdir(target):
        raise BadRequest(f"destination {target} is a folder")
    return target


def item_summary(row: dict) -> dict:
    """A catalog row as the API shows an item: remote_path, key_id, path, name, type, size, latest_version, created."""
    path = row["path"]
    return {"remote_path": row["remote_path"], "key_id": row["key_id"], "path": path, "type": row["type"],
            "created": row["created"], "name": path.rsplit("/", 1)[-1], "size": row.get("size", 0),
            "latest_version": row.get("latest_version")}


def jobs_under(manager: Any, remote_path: str, kind: str) -> list:
    """The ``kind`` ("upload"/"download") jobs of a TransferManager for ``remote_path`` or anything under it."""
    return [job for job in manager.jobs(kind)
            if job.remote_path == remote_path or job.remote_path.startswith(remote_path.rstrip("/") + "/")]


class FileQueries:
    """Reads and transfers of one catalog source (service_backups, or an open share's view)."""

    def __init__(self, source: Any, run_in_thread: Callable[..., Any]) -> None:
        self.source = source
        self._thread = run_in_thread

    def transfers_of(self, remote_path: str, kind: str) -> list:
        """The infos of the ``kind`` jobs for ``remote_path`` or anything under it."""
        return [job.info() for job in jobs_under(self.source.transfers, remote_path, kind)]

    def stop(self, remote_path: str, kind: str) -> dict:
        """Cancel the ``kind`` jobs of a file (or of everything under a folder); NotFound when there are none."""
        key_id, path = self.source.check_remote_path(remote_path)
        remote = f"{key_id}:{path}"
        manager = self.source.upload_transfers if kind == "upload" else self.source.transfers
        jobs = jobs_under(manager, remote, kind)
        if not jobs:
            raise NotFound(f"no {kind} of {remote} is running or queued")
        for job in jobs:
            job.event("cancel")
        return {"remote_path": remote, "cancelled": [job.info() for job in jobs]}

    # --- reading the catalog -----------------------------------------------------------------------

    async def rows(self, key_id: str | None, path: str, recursive: bool) -> list:
        """The catalog rows of a file (just its own), or of everything under a folder (the root when no path)."""
        catalog = self.source.catalog
        if path:
            item = await self._thread(catalog.list_item, key_id, path)
            if item["type"] == "file":
                return [item]
            return await self._thread(catalog.list, key_id, path, recursive)
        return await self._thread(catalog.list, key_id, "", recursive)

    async def list_items(self, key_id: str | None, path: str, recursive: bool, uploads: bool, downloads: bool,
                         offset: int, limit: int | None, others: Iterable[Any] = ()) -> list:
        """files_list: my items under ``path``, then every item of the ``others`` views; offset/limit over all."""
        sources = [(self, await self.rows(key_id, path, recursive))]
        for view in others:
            queries = FileQueries(view, self._thread)
            sources.append((queries, await queries.rows(view.key_id, "", recursive)))
        listed = [(queries, row) for queries, rows in sources for row in rows]
        listed = listed[offset:] if limit is None else listed[offset:offset + limit]
        items = []
        for queries, row in listed:
            item = item_summary(row)
            if uploads:
                item["uploads"] = queries.transfers_of(item["remote_path"], "upload")
            if downloads:
                item["downloads"] = queries.transfers_of(item["remote_path"], "download")
            items.append(item)
        return items

    async def exists(self, key_id: str, path: str) -> dict:
        """file_exists: ``{"exist", "remote_path", "type"}`` (the root is a folder)."""
        try:
            item = await self._thread(self.source.catalog.get, key_id, path) if path else {"type": "folder"}
        except NotFound:
            return {"exist": False, "remote_path": f"{key_id}:{path}", "type": None}
        return {"exist": True, "remote_path": f"{key_id}:{path}", "type": item["type"]}

    async def item_info(self, key_id: str, path: str, uploads: bool, downloads: bool) -> dict:
        """file_info: an item with its versions, each with k-of-n, per-position availability and restorability."""
        source, catalog = self.source, self.source.catalog
        item = await self._thread(catalog.get, key_id, path)
        out = item_summary(item)
        try:
            placement = source.placement()
            positions, holders = list(placement.positions), set(placement.holders())
            retiring = {supplier_id for _, supplier_id, _ in placement.retiring}
            layout = (source.data_blocks(len(positions)), len(positions)) if hasattr(source, "data_blocks") else None
        except Unavailable:
            positions, holders, retiring, layout = [], None, set(), None
        versions = []
        for version in item["versions"]:
            if "pack" in version:
                report = await self._packed_report(version, positions, holders, retiring, layout)
            else:
                blocks = await self._thread(catalog.blocks, version["version_id"])
                report = version_report(version, blocks, positions, holders, retiring, layout)
            report["metadata"] = describe_metadata("file", version.get("mode"), version.get("mtime_ns"))
            versions.append(report)
        if item.get("packs"):  # a folder small files were uploaded into: the packs that hold them
            out["packs"] = []
            for pack in item["packs"]:
                blocks = await self._thread(catalog.blocks, pack["version_id"])
                out["packs"].append(version_report(pack, blocks, positions, holders, retiring, layout))
        backup_state = getattr(source, "catalog_backup_state", None)  # my catalog (not someone's share)
        if backup_state is not None:
            backup = backup_state()
            covered_at = backup.get("covered_at")
            for report, version in zip(versions, item["versions"], strict=True):
                report["in_catalog_backup"] = (version["state"] == COMPLETE and covered_at is not None
                                               and version["completed"] is not None
                                               and version["completed"] <= covered_at)
            out["catalog_backup"] = {k: backup.get(k) for k in ("current", "pending", "serial", "error",
                                                                "restore_pending")}
        out["versions"] = versions
        if versions:  # the newest complete version's (what a download gets)
            out["redundancy"] = next((v for v in versions if v["state"] == COMPLETE), versions[0])["redundancy"]
        # What a restore gives back (13.6): the newest complete version's for a file, the item's otherwise.
        if out["type"] == "file":
            shown = next((v for v in versions if v["state"] == COMPLETE), versions[0] if versions else None)
            out["metadata"] = shown["metadata"] if shown else describe_metadata("file", None, None)
        else:
            out["metadata"] = describe_metadata(out["type"], item.get("mode"), item.get("mtime_ns"),
                                                item.get("link_target"))
        if out["type"] == "file" and versions and out["latest_version"] is None:
            out["size"] = versions[0]["size"]
        if uploads:
            out["uploads"] = self.transfers_of(out["remote_path"], "upload")
        if downloads:
            out["downloads"] = self.transfers_of(out["remote_path"], "download")
        return out

    async def _packed_report(self, version: dict, positions: list, holders: set | None, retiring: set,
                             layout: tuple | None) -> dict:
        """A file version stored in a pack: its own facts, with the availability (blocks, positions,
        redundancy, restorable) of the pack that holds it, and which pack that is."""
        catalog = self.source.catalog
        pack_id = version["pack"]["pack_id"]
        pack = await self._thread(catalog.version, pack_id)
        blocks = await self._thread(catalog.blocks, pack_id)
        report = version_report(pack, blocks, positions, holders, retiring, layout)
        report.update({key: version[key] for key in ("version_id", "state", "size", "created", "completed")})
        report["restorable"] = version["state"] == COMPLETE and report["restorable"]
        report["pack"] = dict(version["pack"], remote_path=pack["remote_path"], pack_size=pack["size"],
                              pack_segments=pack["segments_total"])
        return report

    async def create(self, key_id: str, path: str, as_folder: bool, exist_ok: bool, now: float) -> dict:
        """file_create: a new catalog file or folder (Conflict when it exists, unless ``exist_ok``)."""
        item = await self._thread(self.source.catalog.create, key_id, path, as_folder, exist_ok, now)
        self.source.catalog_changed()
        return item_summary(item)

    # --- uploads and downloads -----------------------------------------------------------------------

    async def upload(self, manager: Any, local: str, remote: str, wait: bool) -> dict:
        """Upload a local file (its transfer) or folder (folders.upload_folder's answer) through ``manager``.

        ``manager`` is the source's ``upload_transfers`` (a share I may write to has its own).
        Waiting also waits until the source says the upload settled (entries on the owner's suppliers).
        """
        if await self._thread(local_kind, local) == "file":
            job = manager.start_upload(local, remote)
            if wait:
                await job.wait()
                await self.source.upload_settled()
            return job.info()
        key_id, _, path = remote.partition(":")
        result = await folders.upload_folder(manager, key_id, path, local, wait)
        if wait:
            await self.source.upload_settled()
        return result

    async def download(self, remote_path: str, destination: str, wait: bool) -> dict:
        """Download a file (a remote path or a version id), a link or a whole folder into ``destination``."""
        source, catalog = self.source, self.source.catalog
        version_id = None
        if isinstance(remote_path, str) and ":" not in remote_path:
            version = await self._thread(catalog.version, remote_path)
            version_id, remote_path = version["version_id"], version["remote_path"]
        key_id, path = source.check_remote_path(remote_path)
        if not path:
            raise BadRequest("download a named file or folder, not the root")
        remote = f"{key_id}:{path}"
        item = await self._thread(catalog.get, key_id, path)
        name = path.rsplit("/", 1)[-1]
        if item["type"] == "file":
            target = await self._thread(download_target, destination, name, False)
            job = source.transfers.start_download(remote, target, version_id)
            if wait:
                await job.wait()
            return job.info()
        if item["type"] == "link":
            target = await self._thread(download_target, destination, name, False)
            await self._thread(folders.restore_link, target, item)
            return {"remote_path": remote, "local_path": target, "link_target": item["link_target"]}
        await self._thread(download_target, destination, name, True)
        return await folders.download_folder(source.transfers, key_id, path, destination, wait)

    async def add_tree(self, local: str, remote: str, key_id: str, path: str, now: float) -> dict:
        """Catalog items for a local folder and every file in it, without uploading (backup_tree_add)."""
        if await self._thread(local_kind, local) != "folder":
            raise BadRequest(f"{local} is not a folder")
        tree = await self._thread(folders.scan_folder, local)
        skipped = await self._thread(folders.catalog_tree, self.source.catalog, key_id, path, tree, now, True)
        self.source.catalog_changed()
        return {"remote_path": remote, "files": len(tree.files), "skipped": tree.skipped + skipped}
