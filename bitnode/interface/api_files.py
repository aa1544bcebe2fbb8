"""API methods for files: the catalog (files_*, file_*), uploads, downloads and transfers.

Thin: each method checks its arguments and asks service_backups
(:mod:`bitnode.storage.backups_service`) which catalog answers for the path
(mine, or an open share's view), then :mod:`bitnode.storage.queries` (listings,
file_info, uploads, downloads: the catalog always in the thread pool) or its
TransferManager. Remote paths are ``key_id:path``; the key must
be one of mine (403 otherwise). Local paths must be absolute: the node's
working directory means nothing to the caller.

Result shapes:

- an item: ``{"remote_path", "key_id", "path", "name", "type", "size",
  "latest_version", "created"}``, type ``file``, ``folder`` or ``link``
  (file_info adds ``versions`` and ``metadata``);
- a transfer: ``{"id", "kind", "state", "remote_path", "local_path",
  "version_id", "bytes_done", "bytes_total", "progress", "segments_done",
  "segments_total", "speed", "eta", "created", "started", "finished",
  "error", "result"}`` — speed in bytes/s and ETA in seconds (None until
  measured);
- a folder upload or download: ``{"remote_path", "local_path", "files",
  "folders", "links", "transfers": [...], "skipped": [...]}``
  (:mod:`bitnode.storage.folders`).

``wait_result`` (and ``wait_finish`` for uploads) make the call answer only
when the transfer ended: DONE answers the transfer, anything else answers
its error (a paused upload answers why it paused: 503, or 507 for a full
supplier).
"""

from __future__ import annotations

import os
import stat
from typing import Any, Callable

from twisted.internet import defer

from bitnode.errors import BadRequest, NotFound
from bitnode.storage.backups_service import BackupsService
from bitnode.storage.catalog import COMPLETE
from bitnode.storage.queries import FileQueries, local_kind


def _absolute(local_path: str, name: str = "local_path") -> str:
    if not isinstance(local_path, str) or not local_path.strip():
        raise BadRequest(f"{name} is required")
    expanded = os.path.expanduser(local_path)
    if not os.path.isabs(expanded):
        raise BadRequest(f"{name} must be an absolute path, got {local_path!r}")
    return os.path.normpath(expanded)


def _explore(local_path: str) -> dict:
    """A local file, or a folder with its entries. Worker thread."""
    def entry(path: str, st: os.stat_result) -> dict:
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        return {"name": os.path.basename(path) or path, "path": path, "type": kind,
                "size": st.st_size if kind == "file" else 0, "modified": st.st_mtime}

    try:
        st = os.stat(local_path)
    except FileNotFoundError:
        raise NotFound(f"local path {local_path} does not exist") from None
    result = entry(local_path, st)
    if result["type"] == "dir":
        items = []
        try:
            names = sorted(os.listdir(local_path))
        except PermissionError:
            raise BadRequest(f"{local_path} cannot be listed: permission denied") from None
        for name in names:
            path = os.path.join(local_path, name)
            try:
                items.append(entry(path, os.lstat(path)))
            except OSError:
                continue
        result["items"] = items
    return result


class FilesMethods:
    """files_*, file_* and transfers_list; mixed into :class:`bitnode.interface.api.API`."""

    def _storage(self, where: str | None = None) -> BackupsService:
        """service_backups, or for ``where`` under another user's open share that share's view (storage routes)."""
        return self.node.service_driver.running(BackupsService).catalog_for(where)

    def _share_to_open(self, where: str) -> bool:
        """Whether ``where`` names a share of another user granted to me that is not open (or not read) yet."""
        return self.node.service_driver.running(BackupsService).other_catalog_to_open(where)

    def _open_share_first(self, where: str) -> defer.Deferred:
        """``share_open`` of the share ``where`` names (open_share)."""
        return self.node.service_driver.running(BackupsService).open_other_catalog(where)

    def _transfer_managers(self) -> list:
        """My TransferManager, then those of the shares of others I have open (their downloads)."""
        return self.node.service_driver.running(BackupsService).all_transfer_managers()

    def _thread(self, fn, *args):
        return self.node.run_in_thread(fn, *args)

    def _queries(self, source) -> FileQueries:
        """The storage queries over ``source`` (service_backups or an open share's view)."""
        return FileQueries(source, self.node.run_in_thread)

    # --- the catalog ----------------------------------------------------------------------

    def files_sync(self) -> dict:
        """Restart backup_monitor (check every supplier, rebuild what is missing) and paused uploads."""
        return self._storage().sync()

    def files_list(self, remote_path: str | None = None, key_id: str | None = None, recursive: bool = True,
                   all_customers: bool = False, include_uploads: bool = False, include_downloads: bool = False,
                   offset: int = 0, limit: int | None = None) -> defer.Deferred:
        """Items under a folder (everything by default), sorted by remote path.

        Without ``remote_path`` and ``key_id``, ``all_customers`` adds the files of
        other users' shares granted to me and open (share_open), after mine, each
        under its share's key id. ``offset``/``limit`` count over the whole list.
        """
        storage = self._storage(key_id or remote_path)
        if key_id is not None:
            storage.check_remote_path(f"{key_id}:")
        if remote_path:
            if ":" not in remote_path:
                remote_path = f"{key_id or storage.master_key_id()}:{remote_path}"
            owner_key, path = storage.check_remote_path(remote_path)
            if key_id is not None and key_id != owner_key:
                raise BadRequest(f"remote_path is under {owner_key}, not under key_id {key_id}")
            key_id = owner_key
        else:
            path = ""
        if offset < 0 or (limit is not None and limit < 0):
            raise BadRequest("offset and limit must not be negative")
        others = self._open_share_views() if all_customers and key_id is None and not path else []
        return defer.Deferred.fromCoroutine(self._queries(storage).list_items(
            key_id, path, recursive, include_uploads, include_downloads, offset, limit, others))

    def _open_share_views(self) -> list:
        return self.node.service_driver.running(BackupsService).other_views()

    def file_exists(self, remote_path: str) -> defer.Deferred:
        """``{"exist": bool, "remote_path", "type"}``."""
        storage = self._storage(remote_path)
        key_id, path = storage.check_remote_path(remote_path)
        return defer.Deferred.fromCoroutine(self._queries(storage).exists(key_id, path))

    def file_info(self, remote_path: str, include_uploads: bool = True, include_downloads: bool = True
                  ) -> defer.Deferred:
        """An item with its versions: size, k-of-n, per-position availability, whether it can be restored.

        ``metadata`` (per version, and for the item) is what a restore gives
        back: mode, permissions, mtime, and a link's target. ``catalog_backup``
        says whether my catalog backup on the suppliers is current (a new
        machine would find this item as it is now), and each version's
        ``in_catalog_backup`` whether a backup stored on k suppliers already
        names it complete.
        """
        storage = self._storage(remote_path)
        key_id, path = storage.check_remote_path(remote_path)
        if not path:
            raise BadRequest("file_info needs a file or folder, not the root")
        return defer.Deferred.fromCoroutine(self._queries(storage).item_info(key_id, path, include_uploads,
                                                                             include_downloads))

    def file_create(self, remote_path: str, as_folder: bool = False, exist_ok: bool = False,
                    force_path_id: str | None = None) -> defer.Deferred:
        """Add a file or folder to the catalog (no upload); 409 if it exists unless ``exist_ok``."""
        if force_path_id is not None:
            raise BadRequest("force_path_id is not supported: catalog items are addressed by their remote path")
        storage = self._storage()
        key_id, path = storage.check_remote_path(remote_path)
        storage.check_catalog_writable()
        return defer.Deferred.fromCoroutine(self._queries(storage).create(key_id, path, as_folder, exist_ok,
                                                                          self.node.clock.seconds()))

    def file_delete(self, remote_path: str) -> defer.Deferred:
        """Delete a file or folder: blocks on the suppliers first, then the catalog rows.

        Under another user's share granted to me read-write, only the versions
        I uploaded are deleted (other members' versions of the same paths stay).
        """
        return self._storage(remote_path).delete(remote_path)

    # --- uploads -------------------------------------------------------------------------------

    def files_uploads(self, include_running: bool = True, include_pending: bool = True) -> dict:
        """``{"running": [...], "pending": [...]}`` (pending: queued or paused), mine and into others' shares."""
        found: dict = {}
        for manager in self._transfer_managers():
            for name, jobs in manager.uploads(include_running, include_pending).items():
                found.setdefault(name, []).extend(jobs)
        return found

    def file_upload_start(self, local_path: str, remote_path: str, wait_result: bool = False,
                          wait_finish: bool = False, open_share: bool = False) -> defer.Deferred:
        """Upload a file (a new version) or a folder (a new version of every file in it).

        A folder keeps its sub-folders (empty ones too), modes, mtimes and
        symbolic links (stored as links, never followed); what cannot be read
        is listed in ``skipped`` with the reason, and the rest goes on.

        A remote path under another user's share (``share_...$owner:path``)
        uploads into that share, with the owner's suppliers, when the owner
        granted me read-write and the share is open (``share_open``; 403 when
        I may only read it). With ``open_share`` a share granted to me that is
        not open yet is opened first (``share_open``); without it such an
        upload is a 409. Waiting for the result then also waits until my
        entries naming the new version are on the owner's suppliers, so the
        other members see it.
        """
        if open_share and self._share_to_open(remote_path):
            return self._open_share_first(remote_path).addCallback(
                lambda _: self.file_upload_start(local_path, remote_path, wait_result, wait_finish, False))
        storage = self._storage(remote_path)
        local = _absolute(local_path)
        key_id, path = storage.check_remote_path(remote_path)
        if not path:
            raise BadRequest("upload to a named file or folder, not to the root")
        manager = storage.upload_transfers  # 403 for a share I may only read
        storage.placement()  # 503 before anything is created when no supplier is hired
        storage.check_catalog_writable()  # 503 while the catalog is being restored from the suppliers
        return defer.Deferred.fromCoroutine(self._queries(storage).upload(manager, local, f"{key_id}:{path}",
                                                                          wait_result or wait_finish))

    def file_upload_stop(self, remote_path: str) -> dict:
        """Cancel the upload of a file (or of everything under a folder)."""
        return self._stop(remote_path, "upload")

    def _stop(self, remote_path: str, kind: str) -> dict:
        return self._queries(self._storage(remote_path)).stop(remote_path, kind)

    # --- downloads -------------------------------------------------------------------------------

    def files_downloads(self) -> list:
        """Downloads running or queued: of my files, then of the shares of others I have open."""
        return [job.info() for manager in self._transfer_managers() for job in manager.jobs("download")]

    def file_download_start(self, remote_path: str, destination_path: str | None = None,
                            wait_result: bool = False, open_share: bool = True) -> defer.Deferred:
        """Download the newest complete version of a file (or every file of a folder).

        ``remote_path`` may also be a version id. Without ``destination_path``
        files go to the ``paths/restore`` folder (default: home). An existing
        destination file is replaced once the download is complete. With
        ``open_share`` (the default) a share of another user granted to me
        that is not open yet is opened first (``share_open``), and a file my
        copy of the owner's index does not list yet makes it read again once.
        """
        if open_share and self._share_to_open(remote_path):
            return self._open_share_first(remote_path).addCallback(
                lambda _: self.file_download_start(remote_path, destination_path, wait_result, False))
        storage = self._storage(remote_path)
        destination = destination_path or self.node.settings.get("paths/restore") or os.path.expanduser("~")
        destination = _absolute(destination, "destination_path")
        d = defer.Deferred.fromCoroutine(self._queries(storage).download(remote_path, destination, wait_result))
        if open_share and storage is not self._storage():
            # Not in my copy of the owner's index: perhaps added since I read it; read it again, once.
            d.addErrback(self._read_share_again, remote_path,
                         lambda: self.file_download_start(remote_path, destination_path, wait_result, False))
        return d

    def _read_share_again(self, failure: Any, where: str, retry: Callable[[], defer.Deferred]) -> defer.Deferred:
        failure.trap(NotFound)
        return self._open_share_first(where).addCallback(lambda _: retry())

    def file_download_stop(self, remote_path: str) -> dict:
        """Cancel the download of a file (or of everything under a folder); no partial file is left."""
        return self._stop(remote_path, "download")

    # --- local files and transfers ---------------------------------------------------------------

    def file_explore(self, local_path: str) -> defer.Deferred:
        """A local file, or a local folder with its entries (name, path, type, size, modified)."""
        return self._thread(_explore, _absolute(local_path))

    def transfers_list(self, include_finished: bool = False) -> list:
        """Every live upload and download with bytes done/total, speed and ETA (downloads from open shares too).

        ``include_finished`` adds the recently ended ones (newest first, with
        their state and error): what became of a transfer, also one a restart
        resumed (``after_restart``) or cleaned up.
        """
        managers = self._transfer_managers()
        live = [info for manager in managers for info in manager.transfers()]
        return live + [info for manager in managers for info in manager.recent()] if include_finished else live

    # --- legacy-only names (spec/bitdust-api-legacy.txt) ------------------------------------------------
    # A "path id" is a remote path, or a path under my master key; a local path maps to the
    # remote path master$me:<local path without its leading "/">.

    def _legacy_remote(self, storage: BackupsService, path_id: str) -> str:
        if not isinstance(path_id, str) or not path_id.strip("/"):
            raise BadRequest("a path id is required")
        return path_id if ":" in path_id else f"{storage.master_key_id()}:{path_id.strip('/')}"

    def _local_remote(self, storage: BackupsService, local_path: str) -> tuple[str, str]:
        local = _absolute(local_path, "path")
        return local, f"{storage.master_key_id()}:{local.lstrip(os.sep).replace(os.sep, '/')}"

    def backups_id_list(self) -> defer.Deferred:
        """Every complete version of a file: ``{"remote_path", "version_id", "size", "created", "completed"}``
        (the packs that hold small files are not listed; their files are)."""
        storage = self._storage()
        d = self._thread(storage.catalog.versions, COMPLETE)
        return d.addCallback(lambda versions: [{k: v[k] for k in ("remote_path", "version_id", "size", "created",
                                                                   "completed")}
                                               for v in versions if not v.get("is_pack")])

    def backup_start_path(self, path: str, bind_local_path: bool = True) -> defer.Deferred:
        """Upload a local file or folder to the remote path named after it."""
        local, remote = self._local_remote(self._storage(), path)
        return self.file_upload_start(local, remote)

    def backup_start_id(self, pathID: str) -> defer.Deferred:
        """Upload again the local file the newest version of an item was read from."""
        storage = self._storage()
        key_id, item_path = storage.check_remote_path(self._legacy_remote(storage, pathID))

        def found(source):
            if source is None:
                raise NotFound(f"{key_id}:{item_path} has no known local file on this machine")
            return self.file_upload_start(source["local_path"], f"{key_id}:{item_path}")

        return self._thread(storage.catalog.latest_source, key_id, item_path).addCallback(found)

    def backup_map_path(self, path: str) -> defer.Deferred:
        """Create the catalog item (file or folder, as on disk) for a local path, without uploading."""
        storage = self._storage()
        local, remote = self._local_remote(storage, path)
        d = self._thread(local_kind, local)
        return d.addCallback(lambda kind: self.file_create(remote, as_folder=kind == "folder", exist_ok=True))

    def backup_dir_add(self, dirpath: str) -> defer.Deferred:
        """Create the catalog folder for a local folder, without uploading."""
        return self.file_create(self._local_remote(self._storage(), dirpath)[1], as_folder=True, exist_ok=True)

    def backup_file_add(self, filepath: str) -> defer.Deferred:
        """Create the catalog file for a local file, without uploading."""
        return self.file_create(self._local_remote(self._storage(), filepath)[1], exist_ok=True)

    def backup_tree_add(self, dirpath: str) -> defer.Deferred:
        """Create catalog items for a local folder and every file in it, without uploading."""
        storage = self._storage()
        local, remote = self._local_remote(storage, dirpath)
        key_id, path = storage.check_remote_path(remote)
        return defer.Deferred.fromCoroutine(self._queries(storage).add_tree(local, remote, key_id, path,
                                                                            self.node.clock.seconds()))

    def backup_delete_local(self, backupID: str) -> defer.Deferred:
        """Nothing of a version is kept locally: answers that nothing was removed (404 for an unknown one)."""
        storage = self._storage()
        return self._thread(storage.catalog.version, backupID).addCallback(
            lambda version: {"version_id": version["version_id"], "local_files_removed": 0})

    def backup_delete_id(self, pathID_or_backupID: str) -> defer.Deferred:
        """Delete one version (a version id) or an item with all its versions (a path id)."""
        storage = self._storage()
        wanted = pathID_or_backupID

        async def delete() -> dict:
            if ":" not in wanted:
                try:
                    await self._thread(storage.catalog.version, wanted)
                except (NotFound, BadRequest):
                    pass
                else:
                    return await storage.delete_version(wanted)
            return await storage.delete(self._legacy_remote(storage, wanted))

        return defer.Deferred.fromCoroutine(delete())

    def backup_delete_path(self, localPath: str) -> defer.Deferred:
        """Delete everything stored for a local path."""
        storage = self._storage()
        return storage.delete(self._local_remote(storage, localPath)[1])

    def backup_cancel_pending(self, path_id: str) -> dict:
        """Cancel an upload that waits (queued or paused); a running one is stopped with file_upload_stop."""
        storage = self._storage()
        key_id, path = storage.check_remote_path(self._legacy_remote(storage, path_id))
        job = storage.transfers.find("upload", f"{key_id}:{path}")
        if job is None or job.state not in ("NEW", "PENDING", "PAUSED"):
            raise NotFound(f"no pending upload of {key_id}:{path}")
        job.event("cancel")
        return job.info()
